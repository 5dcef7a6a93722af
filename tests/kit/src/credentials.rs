//! Credential files as the real CLIs write them, with obviously fake values: what tests push into
//! a VM to make the real `claude auth status` / `codex login status` say logged in.

/// `~/.claude/.credentials.json` of a logged-in claude-code.
pub fn claude() -> String {
    r#"{"claudeAiOauth":{"accessToken":"fake-access-token-0001","refreshToken":"fake-refresh-token-0001","expiresAt":1767225600000,"scopes":["user:inference","user:profile"],"subscriptionType":"max"}}"#.into()
}

/// `~/.codex/auth.json` of a codex logged in with ChatGPT. codex parses the id_token as a JWT; an
/// unsigned one with an obviously fake payload will do.
pub fn codex() -> String {
    let id_token = format!(
        "{}.{}.fake-signature",
        b64url(r#"{"alg":"none","typ":"JWT"}"#),
        b64url(r#"{"email":"user@example.invalid"}"#)
    );
    format!(
        r#"{{"auth_mode":"chatgpt","OPENAI_API_KEY":null,"tokens":{{"id_token":"{id_token}","access_token":"fake-access-token-0001","refresh_token":"fake-refresh-token-0001","account_id":"fake-account-0001"}},"last_refresh":"2026-01-01T00:00:00Z"}}"#
    )
}

/// Pushes one credential file (`path` under the home of the agent's user) for `provider`, as the
/// orchestrator delivers it.
pub async fn push(client: &orchestrator::AgentClient, provider: &str, path: &str, content: String) {
    client
        .creds_put(&protocol::creds::CredsPutRequest {
            scope: protocol::creds::CredsScope {
                provider: provider.into(),
                ..Default::default()
            },
            files: vec![protocol::creds::CredentialFile {
                path: path.into(),
                content: content.into_bytes(),
            }],
        })
        .await
        .expect("push");
}

/// base64url without padding.
fn b64url(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | (u32::from(c) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
