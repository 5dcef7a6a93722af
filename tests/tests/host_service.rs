//! The host service as a person's browser would use it, over HTTP on loopback, with VMs as local
//! agent processes (the real agent binary; `tests/tests/vm_*.rs` cover real microVMs). The CLIs
//! are the fake ones (a recorded real login replayed: the providers cannot be reached here), and
//! prompts go to a stand-in of the provider's API (`test_kit::service::StandinApi`) that checks the
//! bearer token is the captured credential's.

use std::sync::Arc;
use std::time::Duration;

use host_service::ServiceConfig;
use serde_json::{json, Value};
use test_kit::local_backend::LocalAgentBackend;
use test_kit::service::{file_config, Client, ServiceRig, SseEvent, StandinApi, STANDIN_ANSWER};

const PASSWORD: &str = "correct horse battery";

struct Rig {
    service: ServiceRig,
    backend: Arc<LocalAgentBackend>,
    api: StandinApi,
    dir: tempfile::TempDir,
}

fn local_backend(dir: &std::path::Path) -> Arc<LocalAgentBackend> {
    test_kit::service::fake_cli_backend(dir).expect("fake CLIs")
}

async fn rig_with(config: ServiceConfig) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = local_backend(dir.path());
    let api = StandinApi::start().await.expect("stand-in API");
    let file = file_config(&dir.path().join("state.db"), &[("FAKE_API_URL", &api.url)]);
    let service = ServiceRig::start(&file, backend.clone(), config)
        .await
        .expect("service");
    Rig {
        service,
        backend,
        api,
        dir,
    }
}

async fn rig() -> Rig {
    rig_with(ServiceConfig::default()).await
}

async fn user(rig: &Rig, name: &str) -> Client {
    let mut c = rig.service.client();
    let r = c
        .register(&format!("{name}@example.test"), PASSWORD)
        .await
        .expect("register");
    assert_eq!(r.status, 201, "{r:?}");
    c
}

fn is_state(ev: &SseEvent, state: &str) -> bool {
    ev.event == "login" && ev.data["type"] == "state" && ev.data["state"] == state
}

fn is_end(ev: &SseEvent) -> bool {
    ev.event == "login"
        && ev.data["type"] == "state"
        && ["completed", "failed", "timeout", "cancelled"]
            .contains(&ev.data["state"].as_str().unwrap_or(""))
}

/// Starts a link and follows it to the URL; returns the session id and the events so far.
async fn link_to_url(c: &Client, provider: &str) -> (String, Vec<SseEvent>) {
    let r = c
        .post(&format!("/v1/accounts/{provider}/link/start"), json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.json["login_session_id"].as_str().unwrap().to_owned();
    let events = c
        .sse_until(
            &format!("/v1/accounts/{provider}/link/{id}/events"),
            Duration::from_secs(120),
            |ev| ev.data["type"] == "auth_url" || is_end(ev),
        )
        .await
        .unwrap();
    (id, events)
}

/// Pastes the code into a login at its URL and follows it to its end; returns every event.
async fn paste_code(c: &Client, provider: &str, id: &str) -> Vec<SseEvent> {
    let r = c
        .post(
            &format!("/v1/accounts/{provider}/link/{id}/code"),
            json!({"code": "fake-auth-code-0001"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    c.sse_until(
        &format!("/v1/accounts/{provider}/link/{id}/events"),
        Duration::from_secs(120),
        is_end,
    )
    .await
    .unwrap()
}

/// Links `provider` for the client's user to completion.
async fn link(c: &Client, provider: &str) -> String {
    let (id, events) = link_to_url(c, provider).await;
    assert!(
        events.iter().any(|e| e.data["type"] == "auth_url"),
        "{events:?}"
    );
    let events = paste_code(c, provider, &id).await;
    assert!(
        events.iter().any(|e| is_state(e, "completed")),
        "{events:?}"
    );
    id
}

/// Output text and the end event of a job's stream.
async fn job_output(c: &Client, id: &str) -> (String, Value) {
    let events = c
        .sse_until(
            &format!("/v1/jobs/{id}/stream"),
            Duration::from_secs(60),
            |e| e.event == "end",
        )
        .await
        .unwrap();
    let text: String = events
        .iter()
        .filter(|e| e.event == "output")
        .map(|e| e.data["text"].as_str().unwrap_or("").to_owned())
        .collect();
    let end = events
        .iter()
        .find(|e| e.event == "end")
        .map(|e| e.data.clone())
        .expect("an end event");
    (text, end)
}

fn cli_credential(rig: &Rig, user_id: &str) -> Value {
    let vm = rig.backend.cli_vm_of(user_id).expect("CLI VM");
    let home = rig.backend.home_of(&vm).unwrap();
    serde_json::from_slice(&std::fs::read(home.join(".claude/.credentials.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_links_a_cli_runs_a_prompt_and_revokes() {
    let rig = rig().await;
    let c = user(&rig, "ada").await;
    let me = c.get("/v1/auth/me").await.unwrap();
    assert_eq!(me.json["email"], "ada@example.test");
    let user_id = me.json["id"].as_str().unwrap().to_owned();
    let providers = c.get("/v1/providers").await.unwrap();
    let ids: Vec<&str> = providers
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["claude_code", "codex", "gemini_cli"]);

    // Link: URL on the event stream, a second start gives the running session, paste the code.
    let (id, events) = link_to_url(&c, "claude_code").await;
    let url = events
        .iter()
        .find(|e| e.data["type"] == "auth_url")
        .expect("URL event");
    assert!(
        url.data["url"]
            .as_str()
            .unwrap()
            .starts_with("https://claude"),
        "{url:?}"
    );
    let again = c
        .post("/v1/accounts/claude_code/link/start", json!({}))
        .await
        .unwrap();
    assert_eq!(
        again.json["login_session_id"],
        id.as_str(),
        "a second link returns the running one"
    );
    let ticket = c
        .post(
            &format!("/v1/accounts/claude_code/link/{id}/desktop"),
            json!({}),
        )
        .await
        .unwrap();
    assert!(
        ticket.json["viewer_url"]
            .as_str()
            .unwrap()
            .starts_with("/viewer?signal=/v1/desktop/"),
        "{ticket:?}"
    );
    let events = paste_code(&c, "claude_code", &id).await;
    let states: Vec<&str> = events
        .iter()
        .filter(|e| e.data["type"] == "state")
        .map(|e| e.data["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "pending",
            "vm_created",
            "ready",
            "awaiting_user_auth",
            "authenticating",
            "completed"
        ]
    );

    // The account: linked, with the credential's own expiry and scopes, and the egress port.
    let accounts = c.get("/v1/accounts").await.unwrap();
    let a = &accounts.json[0];
    assert_eq!(a["provider"], "claude_code", "{accounts:?}");
    assert_eq!(a["status"], "linked");
    assert_eq!(a["expires_at"], 4102444800000i64);
    assert!(a["scopes"]
        .as_array()
        .unwrap()
        .contains(&json!("user:inference")));
    assert!(a["egress_port"].as_u64().is_some(), "{a}");
    assert!(a["last_used"].is_null());

    // A prompt runs in the CLI VM with the captured token; its output streams as it comes.
    let token = cli_credential(&rig, &user_id)["claudeAiOauth"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    rig.api.accept(&token);
    let job = c
        .post(
            "/v1/jobs",
            json!({"provider": "claude_code", "prompt": "what is the answer?"}),
        )
        .await
        .unwrap();
    assert_eq!(job.status, 201, "{job:?}");
    let job_id = job.json["id"].as_str().unwrap().to_owned();
    let (text, end) = job_output(&c, &job_id).await;
    assert_eq!(text, STANDIN_ANSWER.concat());
    assert_eq!(end["state"], "exited", "{end}");
    assert_eq!(end["exit_code"], 0);
    let seen = rig.api.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(token.clone(), "what is the answer?".to_owned())]
    );
    let view = c.get(&format!("/v1/jobs/{job_id}")).await.unwrap();
    assert_eq!(view.json["state"], "exited");
    let accounts = c.get("/v1/accounts").await.unwrap();
    assert!(
        accounts.json[0]["last_used"].as_i64().is_some(),
        "{accounts:?}"
    );

    // Rotate: a new port.
    let old_port = accounts.json[0]["egress_port"].as_u64().unwrap();
    let rotated = c
        .post("/v1/accounts/claude_code/rotate-egress", json!({}))
        .await
        .unwrap();
    assert_eq!(rotated.status, 200, "{rotated:?}");
    assert_ne!(rotated.json["new_port"].as_u64().unwrap(), old_port);

    // Revoke: the store forgets it and the CLI VM's file is wiped; a prompt now fails.
    let revoked = c
        .post("/v1/accounts/claude_code/revoke", json!({}))
        .await
        .unwrap();
    assert_eq!(revoked.json["stored"], true, "{revoked:?}");
    assert_eq!(
        revoked.json["wiped"].as_array().unwrap().len(),
        1,
        "{revoked:?}"
    );
    let vm = rig.backend.cli_vm_of(&user_id).unwrap();
    assert!(!rig
        .backend
        .home_of(&vm)
        .unwrap()
        .join(".claude/.credentials.json")
        .exists());
    assert_eq!(c.get("/v1/accounts").await.unwrap().json, json!([]));
    let job = c
        .post(
            "/v1/jobs",
            json!({"provider": "claude_code", "prompt": "again?"}),
        )
        .await
        .unwrap();
    let (text, end) = job_output(&c, job.json["id"].as_str().unwrap()).await;
    assert_eq!(end["exit_code"], 1, "{end}");
    assert!(text.contains("Not logged in"), "{text}");
    rig.service.stop().await;
    drop(rig.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_user_can_see_or_drive_another_users_things() {
    let rig = rig().await;
    let alice = user(&rig, "alice").await;
    let bob = user(&rig, "bob").await;
    let alice_id = alice.get("/v1/auth/me").await.unwrap().json["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Alice has a login in progress, a linked account and a job.
    link(&alice, "claude_code").await;
    let token = cli_credential(&rig, &alice_id)["claudeAiOauth"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    rig.api.accept(&token);
    let job = alice
        .post(
            "/v1/jobs",
            json!({"provider": "claude_code", "prompt": "mine"}),
        )
        .await
        .unwrap();
    let job_id = job.json["id"].as_str().unwrap().to_owned();
    let (session, _) = link_to_url(&alice, "codex").await;

    // Bob sees none of it and drives none of it: each route answers as if it did not exist.
    let session_routes = ["events", "code", "cancel", "desktop"];
    for route in session_routes {
        let path = format!("/v1/accounts/codex/link/{session}/{route}");
        let r = if route == "events" {
            bob.get(&path).await
        } else {
            bob.post(&path, json!({"code": "x"})).await
        }
        .unwrap();
        assert_eq!(
            (r.status, r.code()),
            (404, "not_found"),
            "bob {route}: {r:?}"
        );
    }
    for r in [
        bob.get(&format!("/v1/jobs/{job_id}")).await.unwrap(),
        bob.get(&format!("/v1/jobs/{job_id}/stream")).await.unwrap(),
        bob.delete(&format!("/v1/jobs/{job_id}")).await.unwrap(),
    ] {
        assert_eq!((r.status, r.code()), (404, "not_found"), "{r:?}");
    }
    assert_eq!(bob.get("/v1/accounts").await.unwrap().json, json!([]));
    // Bob's revoke is Bob's: Alice's credential stays, in the store and in her CLI VM.
    let r = bob
        .post("/v1/accounts/claude_code/revoke", json!({}))
        .await
        .unwrap();
    assert_eq!(r.json["stored"], false, "{r:?}");
    assert_eq!(
        alice.get("/v1/accounts").await.unwrap().json[0]["provider"],
        "claude_code"
    );
    assert!(cli_credential(&rig, &alice_id)["claudeAiOauth"]["accessToken"].is_string());
    // Bob's job runs in Bob's CLI VM, which has no credential.
    let bobs = bob
        .post(
            "/v1/jobs",
            json!({"provider": "claude_code", "prompt": "steal"}),
        )
        .await
        .unwrap();
    let (text, _) = job_output(&bob, bobs.json["id"].as_str().unwrap()).await;
    assert!(text.contains("Not logged in"), "{text}");
    // Alice's session and job are untouched.
    let (text, end) = job_output(&alice, &job_id).await;
    assert_eq!(
        (text.as_str(), end["state"].as_str()),
        (STANDIN_ANSWER.concat().as_str(), Some("exited"))
    );
    let r = alice
        .post(
            &format!("/v1/accounts/codex/link/{session}/cancel"),
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(r.json["cancelled"], true, "{r:?}");

    // Without a token (or with a wrong one) every route but sign-up, sign-in, the document and
    // the ticketed signalling answers 401.
    let mut anonymous = rig.service.client();
    let mut forged = rig.service.client();
    forged.token = Some("not-a-token".into());
    for (method, path, _) in host_service::API {
        if matches!(
            *path,
            "/v1/auth/register" | "/v1/auth/login" | "/v1/openapi.json" | "/v1/desktop/{ticket}"
        ) {
            continue;
        }
        let path = path
            .replace("{provider}", "claude_code")
            .replace("{session}", &session)
            .replace("{id}", &job_id);
        for c in [&mut anonymous, &mut forged] {
            let m = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let r = c.request(m, &path).json(&json!({})).send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path}");
        }
    }
    rig.service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_the_service_stays_up() {
    let rig = rig_with(ServiceConfig {
        auth_per_minute: 5,
        ..ServiceConfig::default()
    })
    .await;
    let mut c = rig.service.client();
    // Malformed JSON, missing fields, bad email, short password.
    let r = c
        .post_raw("/v1/auth/register", "{\"email\": ")
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (400, "bad_json"), "{r:?}");
    assert!(r.json["message"].as_str().is_some_and(|m| !m.is_empty()));
    let r = c
        .post(
            "/v1/auth/register",
            json!({"email": "x@example.test", "password": "short"}),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (400, "bad_request"), "{r:?}");
    let r = c
        .post(
            "/v1/auth/register",
            json!({"email": "not-an-email", "password": PASSWORD}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    let r = c.register("eve@example.test", PASSWORD).await.unwrap();
    assert_eq!(r.status, 201);
    let r = c
        .post(
            "/v1/auth/register",
            json!({"email": "EVE@example.test", "password": PASSWORD}),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (409, "email_taken"), "{r:?}");
    let r = c
        .post(
            "/v1/auth/login",
            json!({"email": "eve@example.test", "password": "wrong password"}),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (401, "bad_credentials"), "{r:?}");
    // The sixth counted attempt from this address within the minute is refused.
    let r = c
        .post(
            "/v1/auth/login",
            json!({"email": "eve@example.test", "password": PASSWORD}),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{r:?}");

    // Unknown provider, unknown route, argv that is not the CLI, a bad timeout, both prompt and argv.
    let r = c
        .post("/v1/accounts/nope/link/start", json!({}))
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (404, "unknown_provider"), "{r:?}");
    let r = c
        .post("/v1/jobs", json!({"provider": "nope", "prompt": "x"}))
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (404, "unknown_provider"), "{r:?}");
    let r = c.get("/v1/nothing-here").await.unwrap();
    assert_eq!((r.status, r.code()), (404, "no_route"), "{r:?}");
    for body in [
        json!({"provider": "claude_code", "argv": ["sh", "-c", "id"]}),
        json!({"provider": "claude_code", "prompt": "x", "argv": ["claude"]}),
        json!({"provider": "claude_code", "prompt": "x", "timeout_s": 0}),
        json!({"provider": "claude_code", "prompt": "   "}),
        json!({"provider": "claude_code", "prompt": "x", "extra": 1}),
    ] {
        let r = c.post("/v1/jobs", body.clone()).await.unwrap();
        assert_eq!(r.status, 400, "{body}: {r:?}");
    }
    let r = c
        .post(
            "/v1/accounts/claude_code/link/no-such-session/code",
            json!({"code": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{r:?}");

    // A job whose VM dies: its stream ends with the failure.
    let me = c.get("/v1/auth/me").await.unwrap();
    let user_id = me.json["id"].as_str().unwrap();
    link(&c, "claude_code").await;
    rig.api.accept(
        cli_credential(&rig, user_id)["claudeAiOauth"]["accessToken"]
            .as_str()
            .unwrap(),
    );
    // A client that leaves mid-stream: the job goes on to its end and can be streamed again.
    let job = c
        .post(
            "/v1/jobs",
            json!({"provider": "claude_code", "prompt": "left"}),
        )
        .await
        .unwrap();
    let left = job.json["id"].as_str().unwrap().to_owned();
    let first = c
        .sse_until(
            &format!("/v1/jobs/{left}/stream"),
            Duration::from_secs(60),
            |e| e.event == "output",
        )
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let (text, end) = job_output(&c, &left).await;
    assert_eq!(
        (text.as_str(), end["state"].as_str()),
        (STANDIN_ANSWER.concat().as_str(), Some("exited"))
    );

    // DELETE kills a running job.
    let job = c
        .post(
            "/v1/jobs",
            json!({"provider": "claude_code", "prompt": "kill me"}),
        )
        .await
        .unwrap();
    let killed = job.json["id"].as_str().unwrap().to_owned();
    let r = c.delete(&format!("/v1/jobs/{killed}")).await.unwrap();
    assert_eq!(r.json["state"], "killed", "{r:?}");

    let job = c
        .post(
            "/v1/jobs",
            json!({"provider": "claude_code", "prompt": "long"}),
        )
        .await
        .unwrap();
    let job_id = job.json["id"].as_str().unwrap().to_owned();
    c.sse_until(
        &format!("/v1/jobs/{job_id}/stream"),
        Duration::from_secs(60),
        |e| e.event == "output",
    )
    .await
    .unwrap();
    assert!(rig
        .backend
        .kill_agent(&rig.backend.cli_vm_of(user_id).unwrap()));
    let (_, end) = job_output(&c, &job_id).await;
    assert_eq!(end["state"], "failed", "{end}");
    assert!(
        end["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{end}"
    );
    let r = c.get("/v1/accounts").await.unwrap();
    assert_eq!(r.status, 200, "the service is up: {r:?}");

    // The OpenAPI document lists exactly the routed API, and each of its routes is routed.
    let doc = c.get("/v1/openapi.json").await.unwrap().json;
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), p.clone()))
        })
        .collect();
    documented.sort();
    let mut table: Vec<(String, String)> = host_service::API
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    table.sort();
    assert_eq!(documented, table);
    for (method, path) in &documented {
        let m = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        let r = c
            .request(m, &path.replace('{', "x").replace('}', ""))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(
            status != 405 && body["code"] != "no_route",
            "{method} {path} is not routed: {status} {body}"
        );
    }
    rig.service.stop().await;
}

use orchestrator::vm::VmBackend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_login_ends_the_login_as_failed_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backend = local_backend(dir.path());
    let file = file_config(&dir.path().join("state.db"), &[]);
    let first = ServiceRig::start(&file, backend.clone(), ServiceConfig::default())
        .await
        .unwrap();
    let mut c = first.client();
    c.register("max@example.test", PASSWORD).await.unwrap();
    let (session, _) = link_to_url(&c, "gemini_cli").await;
    let user_id = c.get("/v1/auth/me").await.unwrap().json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let browser_vms: Vec<String> = backend
        .vm_ids()
        .into_iter()
        .filter(|id| Some(id) != backend.cli_vm_of(&user_id).as_ref())
        .collect();
    assert_eq!(browser_vms.len(), 1, "{browser_vms:?}");
    first.stop().await;

    // The new run closes what the old one left: the session failed with a reason, its browser VM
    // gone (the backend outlived the service, as a VMM daemon would), no active row.
    let second = ServiceRig::start(&file, backend.clone(), ServiceConfig::default())
        .await
        .unwrap();
    let store = orchestrator::store::Store::open(
        &orchestrator::store::StoreConfig::Sqlite {
            path: dir.path().join("state.db"),
        },
        "host-test",
    )
    .await
    .unwrap();
    let row = store.session(&session).await.unwrap().unwrap();
    assert_eq!(row.state, "failed");
    assert_eq!(
        row.reason.as_deref(),
        Some(orchestrator::login::RESTART_REASON)
    );
    assert!(store.active_sessions().await.unwrap().is_empty());
    assert!(!backend.vm_ids().contains(&browser_vms[0]));
    let active: Vec<_> = store
        .active_vms(None)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.kind.as_str())
        .collect();
    assert_eq!(active, ["cli"]);
    // The user signs in on the new run and starts over.
    let mut c = second.client();
    let r = c
        .post(
            "/v1/auth/login",
            json!({"email": "max@example.test", "password": PASSWORD}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    c.token = r.json["token"].as_str().map(str::to_owned);
    let r = c
        .post("/v1/accounts/gemini_cli/link/start", json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    assert_ne!(r.json["login_session_id"], session.as_str());
    let id = r.json["login_session_id"].as_str().unwrap().to_owned();
    c.post(
        &format!("/v1/accounts/gemini_cli/link/{id}/cancel"),
        json!({}),
    )
    .await
    .unwrap();
    second.stop().await;
    for vm in backend.vm_ids() {
        let _ = backend.destroy_vm(&vm).await;
    }
}

/// A vault made as `HOST_SERVICE_VAULT_KEY=<spec>` makes it (the first key is the active one).
fn vault_of(spec: &str) -> Arc<orchestrator::vault::Vault> {
    let active = spec.split(':').next().unwrap();
    Arc::new(orchestrator::vault::Vault::new(
        orchestrator::vault::Keyring::from_spec(spec, active).unwrap(),
    ))
}

/// Key rotation as an operator does it: a new key in front, a restart (the service re-seals what
/// is under the old key, audited), then the old key removed; the credential still opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_vault_key_reseals_stored_credentials_at_start_and_the_old_key_can_go() {
    // Obviously fake key material.
    const OLD: &str = "old:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const NEW: &str = "new:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    let dir = tempfile::tempdir().unwrap();
    let backend = local_backend(dir.path());
    let file = file_config(&dir.path().join("state.db"), &[]);
    let store = || async {
        orchestrator::store::Store::open(
            &orchestrator::store::StoreConfig::Sqlite {
                path: dir.path().join("state.db"),
            },
            "host-test",
        )
        .await
        .unwrap()
    };
    let first = ServiceRig::start_with_vault(
        &file,
        backend.clone(),
        vault_of(OLD),
        ServiceConfig::default(),
    )
    .await
    .unwrap();
    let mut c = first.client();
    c.register("rotate@example.test", PASSWORD).await.unwrap();
    link(&c, "codex").await;
    let user_id = c.get("/v1/auth/me").await.unwrap().json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    first.stop().await;
    let before = store()
        .await
        .credential(&user_id, "codex")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.envelope.key_id.as_str(), "old");

    // Restarted with the new key in front: the record moves to it, same version, audited.
    let second = ServiceRig::start_with_vault(
        &file,
        backend.clone(),
        vault_of(&format!("{NEW},{OLD}")),
        ServiceConfig::default(),
    )
    .await
    .unwrap();
    second.stop().await;
    let after = store()
        .await
        .credential(&user_id, "codex")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.envelope.key_id.as_str(), "new");
    assert_eq!(after.version, before.version);
    assert_ne!(after.envelope.ciphertext, before.envelope.ciphertext);
    let audit = store().await.audit_log(Some(&user_id)).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.event == "credential_resealed" && e.detail.contains("new")),
        "{audit:?}"
    );

    // The old key removed: the service starts, the account is there, and the new key alone opens
    // the record to what the CLI VM holds.
    let third = ServiceRig::start_with_vault(
        &file,
        backend.clone(),
        vault_of(NEW),
        ServiceConfig::default(),
    )
    .await
    .unwrap();
    let mut again = third.client();
    again.token = c.token.take();
    let accounts = again.get("/v1/accounts").await.unwrap();
    assert_eq!(accounts.json[0]["provider"], "codex", "{accounts:?}");
    third.stop().await;
    let opened = vault_of(NEW)
        .open(
            &orchestrator::vault::RecordContext {
                user_id: &user_id,
                provider: "codex",
                version: after.version,
            },
            &after.envelope,
        )
        .expect("opens with the new key alone");
    let cli = backend.cli_vm_of(&user_id).unwrap();
    let in_vm = std::fs::read(backend.home_of(&cli).unwrap().join(".codex/auth.json")).unwrap();
    assert_eq!(opened.expose(), in_vm.as_slice());

    // A configuration that lost the key a record is under does not start silently: it says which.
    let Err(err) = ServiceRig::start_with_vault(
        &file,
        backend.clone(),
        vault_of("other:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="),
        ServiceConfig::default(),
    )
    .await
    else {
        panic!("a service without the record's key started");
    };
    let err = format!("{err:#}");
    assert!(err.contains("new"), "{err}");
    assert!(!err.contains("AQEBAQ"), "no key material in errors: {err}");
    for vm in backend.vm_ids() {
        let _ = backend.destroy_vm(&vm).await;
    }
}

/// The service with its state in PostgreSQL (a throwaway cluster): users, tokens and a linked
/// account survive a restart of the service, as on a host that shares its database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgresql_users_and_accounts_outlive_a_restart() {
    let url = test_kit::postgres::shared_url().expect("PostgreSQL");
    // A database of this test's own, so other tests' rows do not mix in.
    let db = format!("svc_{}", std::process::id());
    let status = std::process::Command::new("psql")
        .arg(&url)
        .args(["-q", "-c", &format!("CREATE DATABASE {db}")])
        .status()
        .expect("psql");
    assert!(status.success());
    let db_url = match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => panic!("URL without a database: {url}"),
    };
    std::env::set_var(host_service::config::DATABASE_URL_ENV, &db_url);
    let dir = tempfile::tempdir().unwrap();
    let backend = local_backend(dir.path());
    let mut file = file_config(&dir.path().join("unused.db"), &[]);
    file.store = host_service::config::StoreSection {
        sqlite: None,
        postgres: true,
    };
    let first = ServiceRig::start(&file, backend.clone(), ServiceConfig::default())
        .await
        .expect("service on PostgreSQL");
    let mut c = first.client();
    assert_eq!(
        c.register("pg@example.test", PASSWORD)
            .await
            .unwrap()
            .status,
        201
    );
    link(&c, "codex").await;
    first.stop().await;

    let second = ServiceRig::start(&file, backend.clone(), ServiceConfig::default())
        .await
        .unwrap();
    let mut again = second.client();
    again.token = c.token.take();
    let accounts = again.get("/v1/accounts").await.unwrap();
    assert_eq!(
        accounts.status, 200,
        "the token still signs in: {accounts:?}"
    );
    assert_eq!(accounts.json[0]["provider"], "codex", "{accounts:?}");
    second.stop().await;
    use orchestrator::vm::VmBackend;
    for vm in backend.vm_ids() {
        let _ = backend.destroy_vm(&vm).await;
    }
}
