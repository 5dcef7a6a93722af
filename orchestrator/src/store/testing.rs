//! Stores for tests: a fresh SQLite file and a fresh PostgreSQL database per call.

use std::sync::atomic::{AtomicU32, Ordering};

use protocol::secret::Secret;
use sqlx::postgres::PgPool;

use super::{Store, StoreConfig};

/// A store plus what keeps it alive (the SQLite file's directory).
pub(crate) struct TestStore {
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
}

/// An SQLite store in a new temporary directory.
pub(crate) async fn sqlite(host: &str) -> TestStore {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig::Sqlite {
        path: dir.path().join("store.db"),
    };
    let store = Store::open(&config, host).await.expect("open sqlite store");
    TestStore {
        store,
        _dir: Some(dir),
    }
}

/// A new, empty PostgreSQL database on the test server; returns its config so several "hosts" can
/// open it. Panics with instructions when no server can be had.
pub(crate) async fn postgres_config() -> StoreConfig {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let admin_url = test_kit::postgres::shared_url().unwrap_or_else(|e| panic!("{e}"));
    let name = format!(
        "orch_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let admin = PgPool::connect(&admin_url)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(&admin_url);
    StoreConfig::Postgres {
        url: Secret::new(format!("{base}/{name}")),
        max_connections: 8,
    }
}

/// A PostgreSQL store on a new database.
pub(crate) async fn postgres(host: &str) -> TestStore {
    let config = postgres_config().await;
    let store = Store::open(&config, host)
        .await
        .expect("open postgres store");
    TestStore { store, _dir: None }
}

/// One store of each backend.
pub(crate) async fn both(host: &str) -> Vec<TestStore> {
    vec![sqlite(host).await, postgres(host).await]
}
