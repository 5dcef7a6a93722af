use hpke::aead::AesGcm128;

use super::*;

const VECTOR: &str = include_str!("../../../tests/fixtures/hpke/rfc9180-a3.json");

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn field(v: &serde_json::Value, name: &str) -> Vec<u8> {
    hex(v[name].as_str().expect(name))
}

/// Hands out fixed bytes: the sender's ephemeral key material of the vector.
struct Fixed(Vec<u8>);
impl rand_core::RngCore for Fixed {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }
    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let n = dest.len();
        dest.copy_from_slice(&self.0[..n]);
        self.0.drain(..n);
    }
}
impl rand_core::CryptoRng for Fixed {}

#[test]
fn rfc9180_p256_vector_derives_encapsulates_and_opens() {
    let v: serde_json::Value = serde_json::from_str(VECTOR).expect("vector");
    assert_eq!(
        (v["kem_id"].as_u64(), v["kdf_id"].as_u64()),
        (Some(16), Some(1))
    );
    let recipient = KeyPair::derive(&field(&v, "ikmR"));
    assert_eq!(recipient.public().as_bytes(), field(&v, "pkRm"));
    assert_eq!(recipient.private.to_bytes().to_vec(), field(&v, "skRm"));
    let ephemeral = KeyPair::derive(&field(&v, "ikmE"));
    assert_eq!(ephemeral.public().as_bytes(), field(&v, "pkEm"));

    // Sender side with the vector's ephemeral key: the same enc and, at sequence 0, the same
    // ciphertext (the vector's AEAD is AES-128-GCM; the KEM and key schedule are ours).
    let info = field(&v, "info");
    let first = &v["encryptions"][0];
    assert_eq!(first["seq"].as_u64(), Some(0));
    let (enc, ct) = hpke::single_shot_seal::<AesGcm128, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        &recipient.public().hpke().expect("pk"),
        &info,
        &field(first, "pt"),
        &field(first, "aad"),
        &mut Fixed(field(&v, "ikmE")),
    )
    .expect("seal");
    assert_eq!(enc.to_bytes().to_vec(), field(&v, "enc"));
    assert_eq!(ct, field(first, "ct"));

    let opened = hpke::single_shot_open::<AesGcm128, HkdfSha256, Kem>(
        &OpModeR::Base,
        &recipient.private,
        &EncappedKey::from_bytes(&field(&v, "enc")).expect("enc"),
        &info,
        &field(first, "ct"),
        &field(first, "aad"),
    )
    .expect("open");
    assert_eq!(opened, field(first, "pt"));
}

fn ctx<'a>(user: &'a str, provider: &'a str, version: i64) -> SealContext<'a> {
    SealContext {
        user,
        provider,
        version,
    }
}

const TOKEN: &[u8] = br#"{"claudeAiOauth":{"accessToken":"fake-access-token-0001"}}"#;

#[test]
fn opens_only_for_its_key_user_provider_and_version() {
    let user = KeyPair::generate().expect("key");
    let sealed = seal(user.public(), &ctx("alice", "codex", 2), TOKEN).expect("seal");
    assert_eq!(sealed.suite, SUITE);
    assert_eq!(
        user.open(&ctx("alice", "codex", 2), &sealed)
            .expect("open")
            .as_slice(),
        TOKEN
    );
    for wrong in [
        ctx("bob", "codex", 2),
        ctx("alice", "claude_code", 2),
        ctx("alice", "codex", 1),
        ctx("alicec", "odex", 2),
    ] {
        assert_eq!(
            user.open(&wrong, &sealed),
            Err(SealError::Authentication),
            "{wrong:?}"
        );
    }
    let other = KeyPair::generate().expect("key");
    assert_eq!(
        other.open(&ctx("alice", "codex", 2), &sealed),
        Err(SealError::Authentication)
    );
}

#[test]
fn truncated_tampered_or_foreign_envelopes_are_refused() {
    let user = KeyPair::generate().expect("key");
    let c = ctx("alice", "codex", 1);
    let sealed = seal(user.public(), &c, TOKEN).expect("seal");

    let mut tampered = sealed.clone();
    tampered.ciphertext[3] ^= 1;
    assert_eq!(user.open(&c, &tampered), Err(SealError::Authentication));

    let mut truncated = sealed.clone();
    truncated.ciphertext.truncate(10);
    assert!(matches!(
        user.open(&c, &truncated),
        Err(SealError::Malformed(_))
    ));

    let mut short_enc = sealed.clone();
    short_enc.enc.truncate(64);
    assert!(matches!(
        user.open(&c, &short_enc),
        Err(SealError::Malformed(_))
    ));

    let mut swapped = sealed.clone();
    swapped.enc = KeyPair::generate()
        .expect("key")
        .public()
        .as_bytes()
        .to_vec();
    assert_eq!(user.open(&c, &swapped), Err(SealError::Authentication));

    let mut suite = sealed;
    suite.suite = "hpke-base-x25519".into();
    assert!(matches!(
        user.open(&c, &suite),
        Err(SealError::UnknownSuite(_))
    ));
}

#[test]
fn public_keys_are_checked_points() {
    let key = KeyPair::generate().expect("key");
    let text = key.public().to_base64();
    assert_eq!(PublicKey::from_base64(&text).expect("parse"), *key.public());
    let mut off_curve = key.public().as_bytes().to_vec();
    off_curve[40] ^= 1;
    assert_eq!(
        PublicKey::from_bytes(&off_curve),
        Err(SealError::BadPublicKey)
    );
    assert_eq!(
        PublicKey::from_bytes(&[4; 33]),
        Err(SealError::BadPublicKey)
    );
    assert_eq!(
        PublicKey::from_base64("not base64!"),
        Err(SealError::BadPublicKey)
    );
    assert!(serde_json::from_str::<PublicKey>("\"AAAA\"").is_err());
    assert_eq!(key.public().fingerprint().len(), 16);
}

#[test]
fn nothing_secret_reaches_debug() {
    let key = KeyPair::generate().expect("key");
    let sealed = seal(key.public(), &ctx("alice", "codex", 1), TOKEN).expect("seal");
    let shown = format!("{key:?} {sealed:?}");
    assert!(!shown.contains(&key.public().to_base64()), "{shown}");
    let json = serde_json::to_string(&sealed).expect("json");
    assert!(!json.contains("fake-access"));
}

#[test]
fn info_is_length_prefixed() {
    let a = ctx("ab", "c", 1).info();
    let b = ctx("a", "bc", 1).info();
    assert_ne!(a, b);
    assert!(a.starts_with(b"vm-agent.credential.v1\0\0\0\0\x02ab\0\0\0\x01c"));
    assert!(a.ends_with(&1i64.to_be_bytes()));
}
