// HPKE (RFC 9180) base mode on WebCrypto: DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-GCM.
// The same suite as the Rust side (protocol::sealed), with AES-256-GCM for credentials; the AEAD
// key length is a parameter only so that RFC 9180's P-256 vector (AES-128-GCM) checks this code.
// The user's private key never leaves this page except in the recovery file the user downloads.
"use strict";
(() => {
  const subtle = crypto.subtle;
  const te = new TextEncoder();
  const AEAD = { 1: 16, 2: 32 }; // aead_id -> key length
  const CREDENTIAL_AEAD = 2;
  const SUITE = "hpke-base-p256-sha256-aes256gcm";
  const P256_ORDER = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;

  const concat = (...parts) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  };
  const i2osp = (n, width) => {
    const out = new Uint8Array(width);
    for (let i = width - 1; i >= 0; i--) { out[i] = n & 0xff; n = Math.floor(n / 256); }
    return out;
  };
  const b64 = (bytes) => btoa(String.fromCharCode(...bytes));
  const unb64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  const unhex = (text) => Uint8Array.from(text.match(/../g) || [], (h) => parseInt(h, 16));

  // HMAC-SHA256; an empty key is the same as 32 zero bytes (HMAC pads keys with zeros), and
  // WebCrypto refuses empty HMAC keys.
  async function hmac(key, data) {
    const k = await subtle.importKey("raw", key.length ? key : new Uint8Array(32), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    return new Uint8Array(await subtle.sign("HMAC", k, data));
  }
  async function expand(prk, info, length) {
    let t = new Uint8Array(0), out = new Uint8Array(0);
    for (let i = 1; out.length < length; i++) {
      t = await hmac(prk, concat(t, info, Uint8Array.of(i)));
      out = concat(out, t);
    }
    return out.slice(0, length);
  }
  const labeledExtract = (suite, salt, label, ikm) =>
    hmac(salt, concat(te.encode("HPKE-v1"), suite, te.encode(label), ikm));
  const labeledExpand = (suite, prk, label, info, length) =>
    expand(prk, concat(i2osp(length, 2), te.encode("HPKE-v1"), suite, te.encode(label), info), length);

  const KEM_SUITE = concat(te.encode("KEM"), i2osp(0x0010, 2));
  const hpkeSuite = (aead) => concat(te.encode("HPKE"), i2osp(0x0010, 2), i2osp(0x0001, 2), i2osp(aead, 2));

  const ECDH = { name: "ECDH", namedCurve: "P-256" };
  const rawPublic = async (key) => new Uint8Array(await subtle.exportKey("raw", key));
  const importPublic = (raw) => subtle.importKey("raw", raw, ECDH, true, []);
  const dh = async (privateKey, publicKey) =>
    new Uint8Array(await subtle.deriveBits({ name: "ECDH", public: publicKey }, privateKey, 256));

  async function sharedSecret(dhBytes, enc, pkRm) {
    const prk = await labeledExtract(KEM_SUITE, new Uint8Array(0), "eae_prk", dhBytes);
    return labeledExpand(KEM_SUITE, prk, "shared_secret", concat(enc, pkRm), 32);
  }

  async function keySchedule(aead, shared, info) {
    const suite = hpkeSuite(aead);
    const empty = new Uint8Array(0);
    const pskIdHash = await labeledExtract(suite, empty, "psk_id_hash", empty);
    const infoHash = await labeledExtract(suite, empty, "info_hash", info);
    const context = concat(Uint8Array.of(0), pskIdHash, infoHash);
    const secret = await labeledExtract(suite, shared, "secret", empty);
    const key = await labeledExpand(suite, secret, "key", context, AEAD[aead]);
    const baseNonce = await labeledExpand(suite, secret, "base_nonce", context, 12);
    return { context, secret, key, baseNonce };
  }

  // RFC 9180 DeriveKeyPair for P-256: the private scalar from ikm, the key pair through PKCS#8
  // (the browser computes the public point).
  async function deriveKeyPair(ikm) {
    const prk = await labeledExtract(KEM_SUITE, new Uint8Array(0), "dkp_prk", ikm);
    for (let counter = 0; counter < 256; counter++) {
      const bytes = await labeledExpand(KEM_SUITE, prk, "candidate", Uint8Array.of(counter), 32);
      const sk = BigInt("0x" + hex(bytes));
      if (sk === 0n || sk >= P256_ORDER) continue;
      const pkcs8 = concat(unhex("3041020100301306072a8648ce3d020106082a8648ce3d030107042730250201010420"), bytes);
      const privateKey = await subtle.importKey("pkcs8", pkcs8, ECDH, true, ["deriveBits"]);
      const jwk = await subtle.exportKey("jwk", privateKey);
      const b64url = (t) => Uint8Array.from(atob(t.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
      const publicKey = await importPublic(concat(Uint8Array.of(4), b64url(jwk.x), b64url(jwk.y)));
      return { privateKey, publicKey, sk: bytes };
    }
    throw new Error("DeriveKeyPair: no valid scalar");
  }

  // Base-mode single-shot seal at sequence 0. `ephemeral` is for test vectors only.
  async function sealWith(aead, recipientRaw, info, plaintext, aad, ephemeral) {
    const pkR = await importPublic(recipientRaw);
    const eph = ephemeral || await subtle.generateKey(ECDH, true, ["deriveBits"]);
    const enc = await rawPublic(eph.publicKey);
    const shared = await sharedSecret(await dh(eph.privateKey, pkR), enc, recipientRaw);
    const ks = await keySchedule(aead, shared, info);
    const key = await subtle.importKey("raw", ks.key, "AES-GCM", false, ["encrypt"]);
    const ct = new Uint8Array(await subtle.encrypt({ name: "AES-GCM", iv: ks.baseNonce, additionalData: aad }, key, plaintext));
    return { enc, ct, shared, ks };
  }

  async function openWith(aead, keyPair, enc, info, ct, aad) {
    const pkE = await importPublic(enc);
    const pkRm = await rawPublic(keyPair.publicKey);
    const shared = await sharedSecret(await dh(keyPair.privateKey, pkE), enc, pkRm);
    const ks = await keySchedule(aead, shared, info);
    const key = await subtle.importKey("raw", ks.key, "AES-GCM", false, ["decrypt"]);
    try {
      return new Uint8Array(await subtle.decrypt({ name: "AES-GCM", iv: ks.baseNonce, additionalData: aad }, key, ct));
    } catch (_) {
      throw new Error("the envelope does not open with this key (another key, user, provider or version, or tampered)");
    }
  }

  // What an envelope is bound to; byte for byte the Rust SealContext::info.
  function info(user, provider, version) {
    const field = (s) => { const b = te.encode(s); return concat(i2osp(b.length, 4), b); };
    const v = new Uint8Array(8);
    new DataView(v.buffer).setBigInt64(0, BigInt(version));
    return concat(te.encode("vm-agent.credential.v1\0"), field(user), field(provider), v);
  }

  async function fingerprint(raw) {
    return hex(new Uint8Array(await subtle.digest("SHA-256", raw)).slice(0, 8));
  }

  window.hpke = {
    SUITE,
    b64, unb64, hex, unhex, info, fingerprint, deriveKeyPair, sealWith, openWith,
    // The user's key pair: extractable so the recovery file can hold it.
    generateKeyPair: () => subtle.generateKey(ECDH, true, ["deriveBits"]),
    publicKeyBase64: async (keyPair) => b64(await rawPublic(keyPair.publicKey)),
    // Credentials: AES-256-GCM, empty AAD, bound through info.
    async seal(recipientBase64, ctx, plaintext) {
      const r = await sealWith(CREDENTIAL_AEAD, unb64(recipientBase64), info(ctx.user, ctx.provider, ctx.version), plaintext, new Uint8Array(0));
      return { suite: SUITE, enc: b64(r.enc), ciphertext: b64(r.ct) };
    },
    async open(keyPair, ctx, sealed) {
      if (sealed.suite !== SUITE) throw new Error(`unknown suite ${sealed.suite}`);
      return openWith(CREDENTIAL_AEAD, keyPair, unb64(sealed.enc), info(ctx.user, ctx.provider, ctx.version), unb64(sealed.ciphertext), new Uint8Array(0));
    },
    // The recovery file: the private key as JWK, with its public key to check against.
    async exportRecovery(keyPair, account) {
      return JSON.stringify({ kind: "vm-agent-user-key", version: 1, account, suite: SUITE,
        public_key: b64(await rawPublic(keyPair.publicKey)),
        private_jwk: await subtle.exportKey("jwk", keyPair.privateKey) }, null, 1);
    },
    async importRecovery(text) {
      const file = JSON.parse(text);
      if (file.kind !== "vm-agent-user-key" || !file.private_jwk) throw new Error("this is not a recovery file of this service");
      const privateKey = await subtle.importKey("jwk", file.private_jwk, ECDH, true, ["deriveBits"]);
      const { d, ...pub } = file.private_jwk;
      const publicKey = await subtle.importKey("jwk", { ...pub, key_ops: [] }, ECDH, true, []);
      if (b64(await rawPublic(publicKey)) !== file.public_key) throw new Error("the recovery file is damaged (its keys do not match)");
      return { privateKey, publicKey };
    },
  };
})();
