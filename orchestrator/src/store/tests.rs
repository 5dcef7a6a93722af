use super::testing::both;
use super::*;
use crate::vault::{Envelope, KeyId, Scheme};
use crate::vm::VmKind;

static NO_META: protocol::creds::CredentialMeta = protocol::creds::CredentialMeta {
    expires_at_ms: None,
    scopes: Vec::new(),
};

fn new(version: i64, envelope: &Envelope) -> NewVersion<'_> {
    NewVersion {
        version,
        envelope,
        meta: &NO_META,
        from_vm: None,
    }
}

fn envelope(byte: u8) -> Envelope {
    Envelope {
        scheme: Scheme::HostAes256Gcm,
        key_id: KeyId::new("k1").expect("id"),
        nonce: vec![byte; 12],
        ciphertext: vec![byte, 0, 255, 7],
    }
}

#[tokio::test]
async fn credentials_keep_versions_in_order_and_track_pushes() {
    for t in both("host-a").await {
        let s = &t.store;
        let b = s.backend_name();
        assert!(
            s.credential("alice", "codex").await.expect("get").is_none(),
            "{b}"
        );
        assert!(
            s.put_credential("alice", "codex", new(1, &envelope(1)))
                .await
                .expect("put"),
            "{b}"
        );
        // A stale writer (also writing version 1) loses and writes nothing.
        assert!(
            !s.put_credential("alice", "codex", new(1, &envelope(9)))
                .await
                .expect("put"),
            "{b}"
        );
        assert!(
            !s.put_credential("alice", "codex", new(3, &envelope(9)))
                .await
                .expect("put"),
            "{b}"
        );
        let got = s
            .credential("alice", "codex")
            .await
            .expect("get")
            .expect("present");
        assert_eq!((got.version, &got.envelope), (1, &envelope(1)), "{b}");
        assert!(got.push_pending(), "{b}");
        assert_eq!(
            s.credentials_pending_push().await.expect("pending").len(),
            1,
            "{b}"
        );
        s.mark_credential_pushed("alice", "codex", 1, "cli-1")
            .await
            .expect("pushed");
        assert!(
            s.credentials_pending_push()
                .await
                .expect("pending")
                .is_empty(),
            "{b}"
        );
        assert!(
            s.put_credential("alice", "codex", new(2, &envelope(2)))
                .await
                .expect("put v2"),
            "{b}"
        );
        let got = s
            .credential("alice", "codex")
            .await
            .expect("get")
            .expect("present");
        assert_eq!(
            (got.version, got.pushed_version, got.push_pending()),
            (2, Some(1), true),
            "{b}"
        );
        assert!(
            s.reseal_credential("alice", "codex", 2, &envelope(3))
                .await
                .expect("reseal"),
            "{b}"
        );
        assert_eq!(
            s.credential("alice", "codex")
                .await
                .expect("get")
                .expect("present")
                .envelope,
            envelope(3)
        );
        assert!(
            s.delete_credential("alice", "codex").await.expect("delete"),
            "{b}"
        );
        assert!(
            s.credential("alice", "codex").await.expect("get").is_none(),
            "{b}"
        );
    }
}

#[tokio::test]
async fn one_active_session_per_user_and_provider() {
    for t in both("host-a").await {
        let s = &t.store;
        let b = s.backend_name();
        let far = now_ms() + 300_000;
        let new = |id| NewSession {
            id,
            user_id: "alice",
            provider: "codex",
            state: "pending",
            expires_at_ms: far,
        };
        assert_eq!(
            s.insert_session(&new("s1")).await.expect("insert"),
            SessionInsert::Created,
            "{b}"
        );
        match s.insert_session(&new("s2")).await.expect("insert") {
            SessionInsert::Existing(row) => assert_eq!(row.id, "s1", "{b}"),
            other => panic!("{b}: {other:?}"),
        }
        // Another provider is independent.
        let other = NewSession {
            provider: "gemini_cli",
            ..new("s3")
        };
        assert_eq!(
            s.insert_session(&other).await.expect("insert"),
            SessionInsert::Created,
            "{b}"
        );
        assert!(
            s.set_session_state("s1", "cancelled", Some("user cancelled"))
                .await
                .expect("set"),
            "{b}"
        );
        // Terminal is final.
        assert!(
            !s.set_session_state("s1", "ready", None).await.expect("set"),
            "{b}"
        );
        assert_eq!(
            s.insert_session(&new("s4")).await.expect("insert"),
            SessionInsert::Created,
            "{b}"
        );
        let row = s.session("s1").await.expect("get").expect("present");
        assert_eq!(
            (row.state.as_str(), row.reason.as_deref()),
            ("cancelled", Some("user cancelled")),
            "{b}"
        );
        let mut active: Vec<_> = s
            .active_sessions()
            .await
            .expect("active")
            .into_iter()
            .map(|r| r.id)
            .collect();
        active.sort();
        assert_eq!(active, ["s3", "s4"], "{b}");
    }
}

#[tokio::test]
async fn a_session_abandoned_by_a_dead_host_is_closed_on_the_next_start() {
    for t in both("host-a").await {
        let s = &t.store;
        let b = s.backend_name();
        let long_ago = now_ms() - 3_600_000;
        let old = NewSession {
            id: "old",
            user_id: "bob",
            provider: "codex",
            state: "ready",
            expires_at_ms: long_ago,
        };
        assert_eq!(
            s.insert_session(&old).await.expect("insert"),
            SessionInsert::Created
        );
        let fresh = NewSession {
            id: "new",
            expires_at_ms: now_ms() + 300_000,
            ..old.clone()
        };
        assert_eq!(
            s.insert_session(&fresh).await.expect("insert"),
            SessionInsert::Created,
            "{b}"
        );
        assert_eq!(
            s.session("old").await.expect("get").expect("row").state,
            "timeout",
            "{b}"
        );
    }
}

#[tokio::test]
async fn vms_and_audit_log() {
    for t in both("host-a").await {
        let s = &t.store;
        let b = s.backend_name();
        s.record_vm_created("vm-1", "alice", VmKind::Browser, Some("s1"))
            .await
            .expect("vm");
        s.record_vm_created("vm-2", "alice", VmKind::Cli, None)
            .await
            .expect("vm");
        s.record_vm_created("vm-3", "bob", VmKind::Cli, None)
            .await
            .expect("vm");
        assert_eq!(
            s.active_vms(Some("alice")).await.expect("vms").len(),
            2,
            "{b}"
        );
        assert_eq!(s.active_vms(None).await.expect("vms").len(), 3, "{b}");
        assert!(s.record_vm_destroyed("vm-1").await.expect("destroy"), "{b}");
        assert!(
            !s.record_vm_destroyed("vm-1").await.expect("destroy twice"),
            "{b}"
        );
        let vm = s.vm("vm-1").await.expect("vm").expect("row");
        assert_eq!(
            (vm.kind, vm.state.as_str(), vm.session_id.as_deref()),
            (VmKind::Browser, "destroyed", Some("s1"))
        );
        assert!(vm.destroyed_at_ms.is_some(), "{b}");

        s.audit(
            Some("alice"),
            &AuditEvent::VmCreated {
                vm_id: "vm-1".into(),
                kind: "browser".into(),
            },
        )
        .await
        .expect("audit");
        let removed = vec!["process".to_string(), "socket".to_string()];
        s.audit(
            Some("alice"),
            &AuditEvent::VmDestroyed {
                vm_id: "vm-1".into(),
                removed,
            },
        )
        .await
        .expect("audit");
        s.audit(
            Some("bob"),
            &AuditEvent::CredentialCaptured {
                provider: "codex".into(),
                version: 1,
            },
        )
        .await
        .expect("audit");
        let log = s.audit_log(Some("alice")).await.expect("log");
        let events: Vec<_> = log
            .iter()
            .map(|e| (e.event.as_str(), e.subject.as_str()))
            .collect();
        assert_eq!(
            events,
            [("vm_created", "vm-1"), ("vm_destroyed", "vm-1")],
            "{b}"
        );
        assert_eq!(log[1].detail, "removed=process,socket", "{b}");
        assert_eq!(log[1].host_id, "host-a", "{b}");
        assert_eq!(s.audit_log(None).await.expect("log").len(), 3, "{b}");
    }
}

#[tokio::test]
async fn reopening_keeps_data_and_does_not_rerun_migrations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig::Sqlite {
        path: dir.path().join("s.db"),
    };
    let s = Store::open(&config, "h").await.expect("open");
    assert!(s.claim_egress_port("alice", 10001).await.expect("claim"));
    s.close().await;
    let s = Store::open(&config, "h").await.expect("reopen");
    assert_eq!(s.egress_port_of("alice").await.expect("port"), Some(10001));

    let config = testing::postgres_config().await;
    let (a, b) = tokio::join!(Store::open(&config, "a"), Store::open(&config, "b"));
    let (a, b) = (a.expect("open a"), b.expect("open b"));
    assert!(a.claim_egress_port("alice", 10001).await.expect("claim"));
    assert_eq!(b.egress_port_of("alice").await.expect("port"), Some(10001));
}

#[tokio::test]
async fn a_bad_postgres_url_is_a_config_error_without_the_password() {
    let config = StoreConfig::Postgres {
        url: protocol::secret::Secret::new("not a url:hunter2".into()),
        max_connections: 1,
    };
    let err = Store::open(&config, "h").await.expect_err("bad url");
    assert!(matches!(err, StoreError::Config(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test]
async fn refreshes_from_a_vm_keep_metadata_and_holder_and_user_keys_persist() {
    for t in both("host-a").await {
        let s = &t.store;
        let b = s.backend_name();
        let meta = protocol::creds::CredentialMeta {
            expires_at_ms: Some(1_900_000_000_000),
            scopes: vec!["user:inference".into(), "user:profile".into()],
        };
        let e1 = envelope(1);
        assert!(
            s.put_credential("bob", "claude_code", new(1, &e1))
                .await
                .expect("v1"),
            "{b}"
        );
        let e2 = envelope(2);
        let refreshed = NewVersion {
            version: 2,
            envelope: &e2,
            meta: &meta,
            from_vm: Some("cli-bob"),
        };
        assert!(
            s.put_credential("bob", "claude_code", refreshed)
                .await
                .expect("v2"),
            "{b}"
        );
        // Replaying version 2 (or going back to 1) is refused.
        assert!(
            !s.put_credential("bob", "claude_code", refreshed)
                .await
                .expect("v2 again"),
            "{b}"
        );
        assert!(
            !s.put_credential("bob", "claude_code", new(1, &e1))
                .await
                .expect("v1 again"),
            "{b}"
        );
        let got = s
            .credential("bob", "claude_code")
            .await
            .expect("get")
            .expect("present");
        assert_eq!(got.version, 2, "{b}");
        assert_eq!(got.meta, meta, "{b}");
        assert_eq!(got.holder_vm.as_deref(), Some("cli-bob"), "{b}");
        assert!(
            !got.push_pending(),
            "a refresh is the VM's own version already ({b})"
        );

        // A record starts at version 1: a refresh arriving after a revoke does not recreate it.
        assert!(
            !s.put_credential("carol", "codex", new(3, &e1))
                .await
                .expect("v3"),
            "{b}"
        );
        assert!(
            s.credential("carol", "codex").await.expect("get").is_none(),
            "{b}"
        );

        let active = KeyId::new("k2").expect("id");
        assert_eq!(
            s.credentials_not_under(&active).await.expect("list").len(),
            1,
            "{b}"
        );
        assert!(
            s.credentials_not_under(&KeyId::new("k1").expect("id"))
                .await
                .expect("list")
                .is_empty(),
            "{b}"
        );

        assert_eq!(s.user_key("bob").await.expect("key"), None, "{b}");
        s.set_user_key("bob", "BASE64-A").await.expect("set");
        s.set_user_key("bob", "BASE64-B").await.expect("replace");
        assert_eq!(
            s.user_key("bob").await.expect("key").as_deref(),
            Some("BASE64-B"),
            "{b}"
        );
    }
}
