//! What every login-flow test sets up the same way: a SQLite store in the test's directory and a
//! vault with an obviously fake key.

use std::path::Path;
use std::sync::Arc;

use orchestrator::store::{Store, StoreConfig};
use orchestrator::vault::{Keyring, Vault};

/// A 256-bit key of zeros under the id `test-key`: a test key, never a real one.
const FAKE_KEY: &str = "test-key:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// A store in `dir/store.db` (migrations run), recording `host` as the orchestrator host.
pub async fn sqlite_store(dir: &Path, host: &str) -> Store {
    Store::open(
        &StoreConfig::Sqlite {
            path: dir.join("store.db"),
        },
        host,
    )
    .await
    .expect("open the SQLite store")
}

/// A vault sealing with [`FAKE_KEY`].
pub fn fake_vault() -> Arc<Vault> {
    Arc::new(Vault::new(
        Keyring::from_spec(FAKE_KEY, "test-key").expect("keyring"),
    ))
}

/// The states a login that succeeds goes through, in order.
pub const HAPPY_PATH: [orchestrator::login::SessionState; 6] = {
    use orchestrator::login::SessionState::*;
    [
        Pending,
        VmCreated,
        Ready,
        AwaitingUserAuth,
        Authenticating,
        Completed,
    ]
};
