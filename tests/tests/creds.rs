//! Credentials as the host uses them: the real agent binary over a Unix socket, driven by
//! `agentctl creds watch|put|wipe` and by the orchestrator's client; real files, real inotify.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use orchestrator::ClientError;
use protocol::creds::{
    CredentialFile, CredsPutRequest, CredsPutSealedRequest, CredsScope, CredsWatchRequest,
};
use protocol::sealed::{seal, KeyPair, PublicKey, SealContext};
use protocol::secret::EnvVars;
use protocol::{ErrorBody, ErrorCode};
use serde_json::Value;
use test_kit::{workspace_bin, AgentProcess};

fn claude_json(tag: &str) -> String {
    format!(
        r#"{{"claudeAiOauth":{{"accessToken":"fake-access-token-{tag}","refreshToken":"fake-refresh-token-{tag}","expiresAt":1767225600000,"scopes":["user:inference"]}}}}"#
    )
}

fn agentctl(agent: &AgentProcess) -> Command {
    let mut cmd = Command::new(workspace_bin("agentctl"));
    cmd.arg("--connect")
        .arg(format!("unix:{}", agent.socket().display()));
    cmd
}

/// Runs agentctl to completion: (exit code, stdout JSON lines, stderr).
fn run(cmd: &mut Command) -> (i32, Vec<Value>, String) {
    let out = cmd.output().expect("run agentctl");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn home(agent: &AgentProcess) -> PathBuf {
    agent.dir().join("home")
}

#[tokio::test]
async fn agentctl_watch_sees_a_push_then_wipe_removes_it() {
    let agent = AgentProcess::start().await;
    let home = home(&agent);
    // The watch starts before ~/.claude exists.
    let mut watch = agentctl(&agent)
        .args([
            "creds",
            "watch",
            "--provider",
            "claude_code",
            "--count",
            "1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("agentctl creds watch");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let first: Value =
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("json");
    assert_eq!(first["event"], "watching");
    let cred = home.join(".claude/.credentials.json");
    assert_eq!(first["paths"][0], cred.display().to_string());

    let local = agent.dir().join("local-creds.json");
    std::fs::write(&local, claude_json("0001")).expect("local file");
    let (code, out, err) = run(agentctl(&agent).args([
        "creds",
        "put",
        "--provider",
        "claude_code",
        "--file",
        &format!(".claude/.credentials.json={}", local.display()),
    ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out[0]["event"], "written");
    assert_eq!(out[0]["path"], cred.display().to_string());
    assert_eq!(
        out[0]["created_dirs"][0],
        home.join(".claude").display().to_string()
    );
    assert_eq!(
        std::fs::read_to_string(&cred).expect("pushed file"),
        claude_json("0001")
    );
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&cred), 0o600);
    assert_eq!(mode(&home.join(".claude")), 0o700);

    let captured: Value =
        serde_json::from_str(&lines.next().expect("a capture").expect("read")).expect("json");
    assert_eq!(captured["event"], "captured");
    assert_eq!(captured["provider"], "claude_code");
    assert_eq!(captured["path"], cred.display().to_string());
    assert_eq!(captured["sha256"], out[0]["sha256"]);
    assert!(watch.wait().expect("watch exits after --count 1").success());

    let (code, out, err) =
        run(agentctl(&agent).args(["creds", "wipe", "--provider", "claude_code"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out[0]["removed"][0], cred.display().to_string());
    assert!(!cred.exists());
    let (_, out, _) = run(agentctl(&agent).args(["creds", "wipe", "--provider", "claude_code"]));
    assert_eq!(out[0]["removed"], serde_json::json!([]));
}

#[tokio::test]
async fn bad_pushes_are_refused_clearly_and_nothing_is_written() {
    let agent = AgentProcess::start().await;
    let home = home(&agent);
    let outside = agent.dir().join("outside");
    std::fs::create_dir(&outside).expect("outside dir");
    let local = agent.dir().join("local.json");
    std::fs::write(&local, claude_json("0002")).expect("local");
    let put = |guest: &str, provider: &str| {
        run(agentctl(&agent).args([
            "creds",
            "put",
            "--provider",
            provider,
            "--file",
            &format!("{guest}={}", local.display()),
        ]))
    };

    let (code, _, err) = put("../outside/x.json", "claude_code");
    assert_eq!(code, 2);
    assert!(err.contains("`..`"), "{err}");
    let (code, _, err) = put(&outside.join("x.json").display().to_string(), "claude_code");
    assert_eq!(code, 2);
    assert!(err.contains("outside the allowed roots"), "{err}");
    let (code, _, err) = put(".claude/.credentials.json", "no_such_cli");
    assert_eq!(code, 2);
    assert!(err.contains("unknown provider"), "{err}");

    // A planted symlink: ~/.claude -> outside.
    std::os::unix::fs::symlink(&outside, home.join(".claude")).expect("symlink");
    let (code, _, err) = put(".claude/.credentials.json", "claude_code");
    assert_eq!(code, 2);
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(
        std::fs::read_dir(&outside).expect("outside").count(),
        0,
        "nothing written through the link"
    );
    std::fs::remove_file(home.join(".claude")).expect("unlink");

    // An incomplete credential file (no refresh token) is refused before anything is written.
    std::fs::write(
        &local,
        r#"{"claudeAiOauth":{"accessToken":"fake-access-token-0003"}}"#,
    )
    .expect("local");
    let (code, _, err) = put(".claude/.credentials.json", "claude_code");
    assert_eq!(code, 2);
    assert!(err.contains("not a complete"), "{err}");
    assert!(
        !err.contains("fake-access-token"),
        "no content in errors: {err}"
    );
    assert!(!home.join(".claude").exists());

    // The agent and the connection survive all of it.
    let client = agent.client().await;
    let res = client
        .creds_put(&CredsPutRequest {
            scope: CredsScope {
                provider: "claude_code".into(),
                ..Default::default()
            },
            files: vec![CredentialFile {
                path: "~/.claude/.credentials.json".into(),
                content: claude_json("0004").into_bytes(),
            }],
        })
        .await
        .expect("a good push after bad ones");
    assert_eq!(res.written.len(), 1);
    let err = client
        .creds_put(&CredsPutRequest {
            scope: CredsScope {
                provider: "claude_code".into(),
                ..Default::default()
            },
            files: vec![CredentialFile {
                path: "/etc/passwd".into(),
                content: b"{}".to_vec(),
            }],
        })
        .await
        .expect_err("outside the home");
    assert!(matches!(
        err,
        ClientError::Agent(ErrorBody {
            code: ErrorCode::Forbidden,
            ..
        })
    ));
    assert_eq!(client.health().await.expect("health").status, "ok");
}

/// A push of several files is all or nothing: when one cannot be written, none is replaced and
/// no temporary file is left.
#[tokio::test]
async fn a_push_of_several_files_is_all_or_nothing() {
    let agent = AgentProcess::start().await;
    let home = home(&agent);
    let client = agent.client().await;
    let put = |files: Vec<CredentialFile>| {
        let client = client.clone();
        async move {
            client
                .creds_put(&CredsPutRequest {
                    scope: CredsScope {
                        provider: "claude_code".into(),
                        ..Default::default()
                    },
                    files,
                })
                .await
        }
    };
    let file = |path: &str, tag: &str| CredentialFile {
        path: path.into(),
        content: claude_json(tag).into_bytes(),
    };
    put(vec![file("~/.claude/.credentials.json", "0001")])
        .await
        .expect("first push");
    // The second file's directory is a planted symlink: the push is refused whole.
    let outside = agent.dir().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, home.join("planted")).unwrap();
    let err = put(vec![
        file("~/.claude/.credentials.json", "0002"),
        file("~/planted/extra.json", "0002"),
    ])
    .await
    .expect_err("refused");
    assert!(err.to_string().contains("symlink"), "{err}");
    assert_eq!(
        std::fs::read_to_string(home.join(".claude/.credentials.json")).unwrap(),
        claude_json("0001"),
        "the first file was not replaced"
    );
    let left: Vec<_> = std::fs::read_dir(home.join(".claude"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "temporary files left: {left:?}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

/// A `creds_put_sealed` of `content` as `owner`'s `version`, sealed to `key` for `sealed_as`.
async fn put_sealed(
    client: &orchestrator::AgentClient,
    key: &PublicKey,
    owner: &str,
    version: i64,
    sealed_as: SealContext<'_>,
    content: &str,
) -> Result<protocol::creds::CredsPutResponse, ClientError> {
    client
        .creds_put_sealed(&CredsPutSealedRequest {
            scope: CredsScope {
                provider: "claude_code".into(),
                ..Default::default()
            },
            path: "~/.claude/.credentials.json".into(),
            owner: owner.into(),
            version,
            sealed: seal(key, &sealed_as, content.as_bytes()).expect("seal"),
        })
        .await
}

#[tokio::test]
async fn sealed_pushes_open_only_for_their_context_and_never_go_back_a_version() {
    let agent = AgentProcess::start().await;
    let file = home(&agent).join(".claude/.credentials.json");
    let client = agent.client().await;
    let key = client.creds_key().await.expect("the VM's key");
    assert_eq!(
        client.creds_key().await.expect("again"),
        key,
        "one key for the agent's life"
    );
    let ctx = |user, version| SealContext {
        user,
        provider: "claude_code",
        version,
    };
    let refused = |r: Result<_, ClientError>, code: ErrorCode, says: &str| match r {
        Err(ClientError::Agent(body)) => {
            assert_eq!(body.code, code, "{body:?}");
            assert!(body.message.contains(says), "{says:?} in {body:?}");
            assert!(!body.message.contains("fake-"), "no content in errors");
        }
        other => panic!("expected a refusal ({says}), got {other:?}"),
    };

    // Version 2 opens and is written.
    put_sealed(&client, &key, "u1", 2, ctx("u1", 2), &claude_json("0002"))
        .await
        .expect("version 2");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), claude_json("0002"));

    // Sealed for another user or version, or to another key: refused, nothing written.
    let other = KeyPair::generate().unwrap();
    for (r, what) in [
        (
            put_sealed(&client, &key, "u1", 3, ctx("u2", 3), &claude_json("0003")).await,
            "another user",
        ),
        (
            put_sealed(&client, &key, "u1", 3, ctx("u1", 4), &claude_json("0003")).await,
            "another version",
        ),
        (
            put_sealed(
                &client,
                other.public(),
                "u1",
                3,
                ctx("u1", 3),
                &claude_json("0003"),
            )
            .await,
            "another VM's key",
        ),
    ] {
        eprintln!("checking {what}");
        refused(r, ErrorCode::Forbidden, "does not open");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), claude_json("0002"));

    // A replayed older version opens (it was sealed for this VM) but is refused: the file keeps
    // the newer one. The same version again is a retry and is written.
    refused(
        put_sealed(&client, &key, "u1", 1, ctx("u1", 1), &claude_json("0001")).await,
        ErrorCode::Forbidden,
        "older than version 2",
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), claude_json("0002"));
    put_sealed(&client, &key, "u1", 2, ctx("u1", 2), &claude_json("0002"))
        .await
        .expect("a retry of the same version");
    put_sealed(&client, &key, "u1", 3, ctx("u1", 3), &claude_json("0003"))
        .await
        .expect("version 3");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), claude_json("0003"));
    assert_eq!(client.health().await.expect("health").status, "ok");
}

#[tokio::test]
async fn codex_home_override_and_writer_styles_through_the_client() {
    let agent = AgentProcess::start().await;
    let home = home(&agent);
    let codex_home = home.join("state/codex");
    let client = agent.client().await;
    let scope = CredsScope {
        provider: "codex".into(),
        env: EnvVars::from_pairs([("CODEX_HOME", codex_home.display().to_string())]),
        ..Default::default()
    };
    let mut watch = client
        .creds_watch(&CredsWatchRequest {
            scope: scope.clone(),
            include_existing: false,
            seal_to: None,
        })
        .await
        .expect("watch");
    let auth = codex_home.join("auth.json");
    assert_eq!(watch.paths(), [auth.display().to_string()]);
    let codex = |n: &str| {
        format!(
            r#"{{"auth_mode":"chatgpt","OPENAI_API_KEY":null,"tokens":{{"id_token":"fake.id.token-{n}","access_token":"fake-access-token-{n}","refresh_token":"fake-refresh-token-{n}","account_id":"fake-account"}},"last_refresh":"2026-01-01T00:00:00Z"}}"#
        )
    };
    // Several directory levels appear, then a writer rewrites the file in place in chunks.
    std::fs::create_dir_all(&codex_home).expect("mkdir -p");
    {
        use std::io::Write;
        let body = codex("0005");
        let mut f = std::fs::File::create(&auth).expect("create");
        for chunk in body.as_bytes().chunks(40) {
            f.write_all(chunk).expect("write");
            f.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let c = tokio::time::timeout(Duration::from_secs(10), watch.next_capture())
        .await
        .expect("a capture within 10 s")
        .expect("capture")
        .expect("watch open");
    assert_eq!(c.content, codex("0005").as_bytes());
    assert_eq!(c.provider, "codex");
    assert!(c.mtime_ms > 0);
    assert!(!format!("{c:?}").contains("fake-access-token"));

    // A concurrent push of a refreshed token is the next capture, whole.
    let res = client
        .creds_put(&CredsPutRequest {
            scope,
            files: vec![CredentialFile {
                path: auth.display().to_string(),
                content: codex("0006").into_bytes(),
            }],
        })
        .await
        .expect("push");
    let c = tokio::time::timeout(Duration::from_secs(10), watch.next_capture())
        .await
        .expect("a capture within 10 s")
        .expect("capture")
        .expect("watch open");
    assert_eq!(c.content, codex("0006").as_bytes());
    assert_eq!(c.sha256, res.written[0].sha256);
}

/// A CLI that makes its config directory several levels deep while the watch is starting (the
/// race of `mkdir -p` against the watch on the deepest existing directory): every round captures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_made_while_the_watch_starts_are_followed() {
    let agent = AgentProcess::start().await;
    let client = agent.client().await;
    let codex = |n: usize| {
        format!(
            r#"{{"auth_mode":"chatgpt","tokens":{{"id_token":"fake.id.token","access_token":"fake-access-token-{n:04}","refresh_token":"fake-refresh-token","account_id":"fake-account"}}}}"#
        )
    };
    for round in 0..20 {
        let codex_home = home(&agent).join(format!("r{round}/a/b/c"));
        let scope = CredsScope {
            provider: "codex".into(),
            env: EnvVars::from_pairs([("CODEX_HOME", codex_home.display().to_string())]),
            ..Default::default()
        };
        let request = CredsWatchRequest {
            scope,
            include_existing: false,
            seal_to: None,
        };
        let (watch, ()) = tokio::join!(client.creds_watch(&request), async {
            // Races the watch's set-up: some rounds create before it looks, some while it adds
            // watches, some after.
            tokio::time::sleep(Duration::from_micros(round * 150)).await;
            std::fs::create_dir_all(&codex_home).expect("mkdir -p");
        });
        let mut watch = watch.expect("watch");
        std::fs::write(codex_home.join("auth.json"), codex(round as usize)).expect("write");
        let c = tokio::time::timeout(Duration::from_secs(20), watch.next_capture())
            .await
            .unwrap_or_else(|_| panic!("round {round}: no capture"))
            .expect("capture")
            .expect("watch open");
        assert_eq!(c.content, codex(round as usize).as_bytes(), "round {round}");
    }
}
