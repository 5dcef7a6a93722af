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

/// What the user's page does with a pending user-sealed credential: opens the stored envelope
/// with the user's key and re-seals it to the CLI VM's key (the page does it with WebCrypto;
/// `tests/page/hpke.cjs` checks that code against this crate's).
pub fn reseal_as_the_page(
    user_key: &protocol::sealed::KeyPair,
    pending: &orchestrator::login::PendingDelivery,
) -> Result<orchestrator::login::Delivery, protocol::sealed::SealError> {
    let ctx = protocol::sealed::SealContext {
        user: &pending.user,
        provider: &pending.provider,
        version: pending.version,
    };
    let plain = user_key.open(&ctx, &pending.sealed)?;
    Ok(orchestrator::login::Delivery {
        version: pending.version,
        vm_id: pending.vm_id.clone(),
        sealed: protocol::sealed::seal(&pending.vm_key, &ctx, &plain)?,
    })
}
