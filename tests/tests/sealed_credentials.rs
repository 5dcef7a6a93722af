//! Zero-knowledge credentials through the host service (`sealing = "user"`): the browser VM seals
//! the capture to the user's key, the "page" (this test, with the same HPKE suite the page's
//! WebCrypto code has: `tests/page/hpke.cjs` checks that code) opens it and re-seals it to the CLI
//! VM's key, the CLI VM's agent writes it, and a refresh in the CLI VM comes back sealed as
//! version 2. A tap on every byte the host handles (agent streams, the service's HTTP traffic,
//! trace-level logs, the store's files) finds no token in any encoding; the same tap in the
//! host-sealed mode does find it (the tap sees what it should).
//!
//! VMs are local agent processes; the CLI is the fake one (a recorded real login replayed: the
//! providers cannot be reached here).

use std::sync::Arc;
use std::time::Duration;

use host_service::ServiceConfig;
use orchestrator::login::Sealing;
use protocol::sealed::{seal, KeyPair, PublicKey, SealContext, Sealed};
use serde_json::{json, Value};
use test_kit::local_backend::LocalAgentBackend;
use test_kit::service::{fake_cli_backend, file_config, Client, ServiceRig};
use test_kit::tap::{find_token, tcp_tap, trace_log, Tap, TapBackend};

const PASSWORD: &str = "correct horse battery";
/// The upstream proxy's password (obviously fake): in no log, store file or HTTP answer.
const PROXY_PASSWORD: &str = "fake-proxy-password-0001";
/// The vault's key, as `HOST_SERVICE_VAULT_KEY` would give it (obviously fake, not all zeros so
/// its raw bytes cannot match by chance).
const VAULT_KEY: [u8; 32] = *b"fake-vault-key-0001-not-a-secret";

/// [`VAULT_KEY`] in base64, as the configuration holds it.
fn vault_key_b64() -> String {
    "ZmFrZS12YXVsdC1rZXktMDAwMS1ub3QtYS1zZWNyZXQ=".to_owned()
}

/// The host's own secrets, scanned for beside the tokens.
fn host_secrets() -> Vec<String> {
    vec![PROXY_PASSWORD.to_owned(), vault_key_b64()]
}

/// Fails if any of `secrets` (in any form) or the vault key's raw bytes is in one of `scanned`.
fn assert_no_secret(scanned: &[(&'static str, Vec<u8>)], secrets: &[String]) {
    for (what, bytes) in scanned {
        if let Some((i, form)) = find_token(bytes, secrets) {
            panic!("secret {i} found in the {what} as {form:?}");
        }
        assert!(
            !bytes.windows(VAULT_KEY.len()).any(|w| w == VAULT_KEY),
            "the vault key's bytes are in the {what}"
        );
    }
}

struct Rig {
    service: ServiceRig,
    backend: Arc<LocalAgentBackend>,
    agents: Tap,
    http: Tap,
    client: Client,
    user: String,
    dir: tempfile::TempDir,
}

async fn rig(sealing: Sealing) -> Rig {
    trace_log();
    let dir = tempfile::tempdir().unwrap();
    let backend = fake_cli_backend(dir.path()).unwrap();
    let (tapped, agents) = TapBackend::new(backend.clone());
    let mut file = file_config(&dir.path().join("state.db"), &[]);
    file.sealing = sealing;
    // A real deployment's secrets, so the scans can look for them too.
    file.egress.proxy_host = Some("proxy.example.test:3128".into());
    file.egress.proxy_user = Some("fake-proxy-user".into());
    std::env::set_var(host_service::config::PROXY_PASSWORD_ENV, PROXY_PASSWORD);
    let vault = Arc::new(orchestrator::vault::Vault::new(
        orchestrator::vault::Keyring::from_spec(&format!("scan:{}", vault_key_b64()), "scan")
            .unwrap(),
    ));
    let service = ServiceRig::start_with_vault(&file, tapped, vault, ServiceConfig::default())
        .await
        .unwrap();
    let (base, http) = tcp_tap(service.base.trim_start_matches("http://").to_owned())
        .await
        .unwrap();
    let mut client = Client::new(&base);
    let r = client
        .register("sealed@example.test", PASSWORD)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let user = client.get("/v1/auth/me").await.unwrap().json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    Rig {
        service,
        backend,
        agents,
        http,
        client,
        user,
        dir,
    }
}

impl Rig {
    /// Links Claude Code to completion; returns every event.
    async fn link(&self) -> Vec<Value> {
        let c = &self.client;
        let r = c
            .post("/v1/accounts/claude_code/link/start", json!({}))
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{r:?}");
        let id = r.json["login_session_id"].as_str().unwrap().to_owned();
        let events = format!("/v1/accounts/claude_code/link/{id}/events");
        c.sse_until(&events, Duration::from_secs(120), |e| {
            e.data["type"] == "auth_url"
        })
        .await
        .unwrap();
        let r = c
            .post(
                &format!("/v1/accounts/claude_code/link/{id}/code"),
                json!({"code": "fake-auth-code-0001"}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 204, "{r:?}");
        let all = c
            .sse_until(&events, Duration::from_secs(120), |e| {
                e.data["type"] == "state"
                    && ["completed", "failed", "timeout", "cancelled"]
                        .contains(&e.data["state"].as_str().unwrap_or(""))
            })
            .await
            .unwrap();
        all.into_iter().map(|e| e.data).collect()
    }

    async fn account(&self) -> Value {
        let r = self.client.get("/v1/accounts").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        r.json
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["provider"] == "claude_code")
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn cli_file(&self) -> std::path::PathBuf {
        let vm = self.backend.cli_vm_of(&self.user).expect("a CLI VM");
        self.backend
            .home_of(&vm)
            .unwrap()
            .join(".claude/.credentials.json")
    }

    async fn deliver(&self, body: Value) -> test_kit::service::Reply {
        self.client
            .post("/v1/accounts/claude_code/delivery", body)
            .await
            .unwrap()
    }

    /// Every byte the host handled, but the agent streams (kept apart: the host-sealed control
    /// looks there).
    fn host_bytes(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut out = vec![
            ("http", self.http.bytes()),
            ("trace log", trace_log().lock().unwrap().clone()),
        ];
        for suffix in ["", "-wal", "-shm"] {
            let path = self.dir.path().join(format!("state.db{suffix}"));
            if let Ok(bytes) = std::fs::read(&path) {
                out.push(("store file", bytes));
            }
        }
        out
    }
}

fn sealed_of(v: &Value) -> Sealed {
    serde_json::from_value(v.clone()).expect("an envelope")
}

fn ctx<'a>(user: &'a str, provider: &'a str, version: i64) -> SealContext<'a> {
    SealContext {
        user,
        provider,
        version,
    }
}

fn tokens_of(file: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(file).expect("credential JSON");
    ["accessToken", "refreshToken"]
        .iter()
        .filter_map(|k| v["claudeAiOauth"][k].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_sealed_credentials_reach_the_cli_vm_and_refresh_without_the_host_reading_them() {
    let rig = rig(Sealing::User).await;
    let c = &rig.client;

    // Without a key the service says what to do.
    let r = c
        .post("/v1/accounts/claude_code/link/start", json!({}))
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (409, "no_user_key"), "{r:?}");
    let r = c.get("/v1/keys/user").await.unwrap();
    assert_eq!(r.json["sealing"], "user", "{r:?}");
    assert_eq!(r.json["public_key"], Value::Null, "{r:?}");
    let bad = c
        .put("/v1/keys/user", json!({"public_key": "AAAA"}))
        .await
        .unwrap();
    assert_eq!(bad.status, 400, "{bad:?}");

    // The user's key: made and kept by the page; only the public half is registered.
    let user_key = KeyPair::generate().unwrap();
    let r = c
        .put(
            "/v1/keys/user",
            json!({"public_key": user_key.public().to_base64()}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["fingerprint"], user_key.public().fingerprint());

    let events = rig.link().await;
    let last = events.last().unwrap();
    assert_eq!(last["state"], "completed", "{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "progress" && e["step"] == "push_pending"),
        "{events:#?}"
    );
    let account = rig.account().await;
    assert_eq!(
        (&account["status"], &account["sealing"], &account["version"]),
        (&json!("pending_push"), &json!("user"), &json!(1)),
        "{account}"
    );
    assert!(
        !rig.cli_file().exists(),
        "nothing reaches the CLI VM without the user"
    );

    // The page: the stored envelope opens with the user's key, for exactly this user, provider
    // and version.
    let pending = c.get("/v1/accounts/claude_code/delivery").await.unwrap();
    assert_eq!(pending.status, 200, "{pending:?}");
    let p = &pending.json;
    assert_eq!(p["version"], 1);
    let stored = sealed_of(&p["sealed"]);
    let plain = user_key
        .open(&ctx(&rig.user, "claude_code", 1), &stored)
        .expect("opens with the user's key");
    let tokens = tokens_of(&plain);
    assert_eq!(tokens.len(), 2, "access and refresh tokens");
    assert!(user_key
        .open(&ctx(&rig.user, "claude_code", 2), &stored)
        .is_err());
    assert!(KeyPair::generate()
        .unwrap()
        .open(&ctx(&rig.user, "claude_code", 1), &stored)
        .is_err());
    let vm_key = PublicKey::from_base64(p["vm_key"].as_str().unwrap()).unwrap();
    let vm_id = p["vm_id"].as_str().unwrap().to_owned();

    // Bad deliveries: each refused with a clear error, nothing written.
    let to_vm = |c: SealContext<'_>| seal(&vm_key, &c, &plain).unwrap();
    let mut tampered = to_vm(ctx(&rig.user, "claude_code", 1));
    tampered.ciphertext[5] ^= 1;
    let mut truncated = to_vm(ctx(&rig.user, "claude_code", 1));
    truncated.ciphertext.truncate(12);
    let bad = [
        (
            "another user",
            "does not open",
            json!({"version": 1, "vm_id": vm_id, "sealed": to_vm(ctx("someone-else", "claude_code", 1))}),
        ),
        (
            "another provider",
            "does not open",
            json!({"version": 1, "vm_id": vm_id, "sealed": to_vm(ctx(&rig.user, "codex", 1))}),
        ),
        (
            "another version",
            "does not open",
            json!({"version": 1, "vm_id": vm_id, "sealed": to_vm(ctx(&rig.user, "claude_code", 2))}),
        ),
        (
            "a version not stored",
            "not the stored version",
            json!({"version": 2, "vm_id": vm_id, "sealed": to_vm(ctx(&rig.user, "claude_code", 2))}),
        ),
        (
            "the user's key, not the VM's",
            "does not open",
            json!({"version": 1, "vm_id": vm_id, "sealed": seal(user_key.public(), &ctx(&rig.user, "claude_code", 1), &plain).unwrap()}),
        ),
        (
            "another VM",
            "fetch the delivery again",
            json!({"version": 1, "vm_id": "cli-of-someone", "sealed": to_vm(ctx(&rig.user, "claude_code", 1))}),
        ),
        (
            "tampered",
            "does not open",
            json!({"version": 1, "vm_id": vm_id, "sealed": tampered}),
        ),
        (
            "truncated",
            "malformed",
            json!({"version": 1, "vm_id": vm_id, "sealed": truncated}),
        ),
    ];
    for (what, why, body) in bad {
        let r = rig.deliver(body).await;
        assert_eq!((r.status, r.code()), (409, "refused"), "{what}: {r:?}");
        let message = r.json["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{what}: {message}");
        assert!(!rig.cli_file().exists(), "{what}: nothing written");
    }
    let r = rig.deliver(json!({"version": 1})).await;
    assert_eq!((r.status, r.code()), (400, "bad_json"), "{r:?}");

    // The real delivery.
    let r = rig
        .deliver(json!({"version": 1, "vm_id": vm_id, "sealed": to_vm(ctx(&rig.user, "claude_code", 1))}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(std::fs::read(rig.cli_file()).unwrap(), *plain);
    assert_eq!(rig.account().await["status"], "linked");
    let r = c.get("/v1/accounts/claude_code/delivery").await.unwrap();
    assert_eq!(r.status, 404, "nothing left to deliver: {r:?}");

    // The CLI refreshes its tokens in the CLI VM: the new file comes back sealed, as version 2.
    let refreshed = br#"{"claudeAiOauth":{"accessToken":"fake-refreshed-access-token-0002","refreshToken":"fake-refreshed-refresh-token-0002","expiresAt":1900000000000,"scopes":["user:inference","user:profile"]}}"#;
    let path = rig.cli_file();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, refreshed).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let account = loop {
        let a = rig.account().await;
        if a["version"] == 2 {
            break a;
        }
        assert!(tokio::time::Instant::now() < deadline, "no version 2: {a}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        account["status"], "linked",
        "the refresh is the VM's own: {account}"
    );
    assert_eq!(account["expires_at"], 1_900_000_000_000i64, "{account}");
    assert_eq!(account["scopes"], json!(["user:inference", "user:profile"]));
    let store = orchestrator::store::Store::open(
        &orchestrator::store::StoreConfig::Sqlite {
            path: rig.dir.path().join("state.db"),
        },
        "reader",
    )
    .await
    .unwrap();
    let record = store
        .credential(&rig.user, "claude_code")
        .await
        .unwrap()
        .unwrap();
    let v2 = record.envelope.user_sealed().expect("user-sealed");
    let opened = user_key
        .open(&ctx(&rig.user, "claude_code", 2), &v2)
        .expect("version 2 opens with the user's key");
    assert_eq!(opened.as_slice(), refreshed);
    assert!(KeyPair::generate()
        .unwrap()
        .open(&ctx(&rig.user, "claude_code", 2), &v2)
        .is_err());
    assert!(user_key
        .open(&ctx(&rig.user, "claude_code", 1), &v2)
        .is_err());
    let audit = store.audit_log(Some(&rig.user)).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.event == "credential_refreshed" && e.detail.starts_with("version=2")),
        "{audit:?}"
    );

    // A replayed old version is refused; the CLI VM keeps version 2.
    let r = rig
        .deliver(json!({"version": 1, "vm_id": vm_id, "sealed": to_vm(ctx(&rig.user, "claude_code", 1))}))
        .await;
    assert_eq!((r.status, r.code()), (409, "refused"), "{r:?}");
    assert_eq!(std::fs::read(rig.cli_file()).unwrap(), refreshed);

    // No token crossed the host in any form, nor the host's own secrets (the store's file holds
    // the session reasons and audit rows too).
    let mut all_tokens = tokens;
    all_tokens.extend(tokens_of(refreshed));
    all_tokens.extend(host_secrets());
    let mut scanned = rig.host_bytes();
    scanned.push(("agent streams", rig.agents.bytes()));
    for (what, bytes) in &scanned {
        assert!(!bytes.is_empty(), "{what} was tapped");
    }
    assert_no_secret(&scanned, &all_tokens);
    assert!(
        String::from_utf8_lossy(&trace_log().lock().unwrap()).contains("TRACE"),
        "the log really is at trace level"
    );

    // Revoke removes the stored record and the CLI VM's copy.
    let r = c
        .post("/v1/accounts/claude_code/revoke", json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(store
        .credential(&rig.user, "claude_code")
        .await
        .unwrap()
        .is_none());
    assert!(!rig.cli_file().exists());
    rig.service.stop().await;
}

/// The control: in the host-sealed mode the host pushes the file itself, so the tap on the agent
/// streams must see the token (else the scan above proves nothing); the store, logs and HTTP
/// traffic still hold none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_host_sealed_mode_the_tap_sees_the_pushed_token_and_only_there() {
    let rig = rig(Sealing::Host).await;
    let events = rig.link().await;
    assert_eq!(events.last().unwrap()["state"], "completed", "{events:#?}");
    let tokens = tokens_of(&std::fs::read(rig.cli_file()).unwrap());
    assert_eq!(rig.account().await["sealing"], "host");
    assert!(
        find_token(&rig.agents.bytes(), &tokens).is_some(),
        "the tap sees the pushed file"
    );
    let mut secrets = tokens;
    secrets.extend(host_secrets());
    assert_no_secret(&rig.host_bytes(), &secrets);
    // The proxy password never reaches a VM either (the gateway holds it, not the agents).
    assert_no_secret(&[("agent streams", rig.agents.bytes())], &host_secrets());
    rig.service.stop().await;
}
