//! Rows of `credentials`: the latest sealed credential per (user, provider), ciphertext only,
//! with what may be known without opening it (expiry, scopes, the CLI VM holding its token chain);
//! and `user_keys`, each user's public key.

use std::str::FromStr;

use protocol::creds::CredentialMeta;

use super::{now_ms, with_pool, Store, StoreError};
use crate::vault::{Envelope, KeyId, Scheme};

/// A stored credential record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredential {
    /// Owner.
    pub user_id: String,
    /// Provider name.
    pub provider: String,
    /// Record version (bound into the envelope's authentication tag).
    pub version: i64,
    /// The sealed bytes.
    pub envelope: Envelope,
    /// When it was captured, Unix ms.
    pub captured_at_ms: i64,
    /// The last version successfully pushed into the user's CLI VM.
    pub pushed_version: Option<i64>,
    /// Expiry and scopes, as the credential stated them when it was captured.
    pub meta: CredentialMeta,
    /// The CLI VM holding this token chain (it refreshes it), once pushed there.
    pub holder_vm: Option<String>,
}

/// A new version of a stored credential.
#[derive(Debug, Clone, Copy)]
pub struct NewVersion<'a> {
    /// Must follow the stored version by one (1 for a new record).
    pub version: i64,
    /// The sealed bytes.
    pub envelope: &'a Envelope,
    /// What may be known without opening it.
    pub meta: &'a CredentialMeta,
    /// The CLI VM it came from (a refresh): it is then that VM's version already.
    pub from_vm: Option<&'a str>,
}

impl StoredCredential {
    /// Whether the latest version still has to be pushed into the CLI VM.
    pub fn push_pending(&self) -> bool {
        self.pushed_version != Some(self.version)
    }
}

type Row = (
    String,
    String,
    i64,
    String,
    String,
    Vec<u8>,
    Vec<u8>,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// `SELECT` of every column a [`Row`] holds, then the rest of the query.
macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT user_id, provider, version, scheme, key_id, nonce, ciphertext, captured_at_ms, \
             pushed_version, expires_at_ms, scopes, holder_vm FROM credentials ",
            $rest
        )
    };
}

impl Store {
    /// The current record of `user` for `provider`.
    pub async fn credential(
        &self,
        user: &str,
        provider: &str,
    ) -> Result<Option<StoredCredential>, StoreError> {
        let row: Option<Row> = with_pool!(self, |pool| {
            sqlx::query_as(select!("WHERE user_id = $1 AND provider = $2"))
                .bind(user)
                .bind(provider)
                .fetch_optional(pool)
                .await?
        });
        row.map(decode).transpose()
    }

    /// Writes the next version of the record, which must follow the stored one by one (or be 1
    /// for a new record): versions only go up. Returns `false`, writing nothing, when it does not
    /// (another writer got there first, or a stale version was offered).
    pub async fn put_credential(
        &self,
        user: &str,
        provider: &str,
        new: NewVersion<'_>,
    ) -> Result<bool, StoreError> {
        let scopes = serde_json::to_string(&new.meta.scopes)
            .map_err(|e| StoreError::Corrupt(format!("scopes: {e}")))?;
        let pushed = new.from_vm.map(|_| new.version);
        let done = with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO credentials
                    (user_id, provider, version, scheme, key_id, nonce, ciphertext, captured_at_ms,
                     expires_at_ms, scopes, pushed_version, holder_vm)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12
                 WHERE $3 = 1 OR EXISTS
                    (SELECT 1 FROM credentials WHERE user_id = $1 AND provider = $2)
                 ON CONFLICT (user_id, provider) DO UPDATE SET
                    version = excluded.version, scheme = excluded.scheme, key_id = excluded.key_id,
                    nonce = excluded.nonce, ciphertext = excluded.ciphertext,
                    captured_at_ms = excluded.captured_at_ms,
                    expires_at_ms = excluded.expires_at_ms, scopes = excluded.scopes,
                    pushed_version = COALESCE(excluded.pushed_version, credentials.pushed_version),
                    holder_vm = COALESCE(excluded.holder_vm, credentials.holder_vm)
                 WHERE credentials.version = excluded.version - 1",
            )
            .bind(user)
            .bind(provider)
            .bind(new.version)
            .bind(new.envelope.scheme.as_str())
            .bind(new.envelope.key_id.as_str())
            .bind(new.envelope.nonce.as_slice())
            .bind(new.envelope.ciphertext.as_slice())
            .bind(now_ms())
            .bind(new.meta.expires_at_ms)
            .bind(&scopes)
            .bind(pushed)
            .bind(new.from_vm)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(done == 1)
    }

    /// Replaces the envelope of `version` in place (key rotation: same version, same context).
    pub async fn reseal_credential(
        &self,
        user: &str,
        provider: &str,
        version: i64,
        envelope: &Envelope,
    ) -> Result<bool, StoreError> {
        let done = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE credentials SET scheme = $4, key_id = $5, nonce = $6, ciphertext = $7
                 WHERE user_id = $1 AND provider = $2 AND version = $3",
            )
            .bind(user)
            .bind(provider)
            .bind(version)
            .bind(envelope.scheme.as_str())
            .bind(envelope.key_id.as_str())
            .bind(envelope.nonce.as_slice())
            .bind(envelope.ciphertext.as_slice())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(done == 1)
    }

    /// Records that `version` reached the user's CLI VM `vm_id`, which now holds the token chain.
    pub async fn mark_credential_pushed(
        &self,
        user: &str,
        provider: &str,
        version: i64,
        vm_id: &str,
    ) -> Result<(), StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE credentials SET pushed_version = $3, pushed_at_ms = $4, holder_vm = $5
                 WHERE user_id = $1 AND provider = $2 AND version >= $3",
            )
            .bind(user)
            .bind(provider)
            .bind(version)
            .bind(now_ms())
            .bind(vm_id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Records whose latest version has not reached the CLI VM yet (to retry the push).
    pub async fn credentials_pending_push(&self) -> Result<Vec<StoredCredential>, StoreError> {
        let rows: Vec<Row> = with_pool!(self, |pool| {
            sqlx::query_as(select!(
                "WHERE pushed_version IS NULL OR pushed_version <> version ORDER BY captured_at_ms"
            ))
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(decode).collect()
    }

    /// Host-sealed records under a key other than `active` (for the re-seal job).
    pub async fn credentials_not_under(
        &self,
        active: &KeyId,
    ) -> Result<Vec<StoredCredential>, StoreError> {
        let rows: Vec<Row> = with_pool!(self, |pool| {
            sqlx::query_as(select!(
                "WHERE scheme = $1 AND key_id <> $2 ORDER BY captured_at_ms"
            ))
            .bind(Scheme::HostAes256Gcm.as_str())
            .bind(active.as_str())
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(decode).collect()
    }

    /// Stores `user`'s public key (base64), replacing any earlier one.
    pub async fn set_user_key(&self, user: &str, public_key: &str) -> Result<(), StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO user_keys (user_id, public_key, created_at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id) DO UPDATE SET
                    public_key = excluded.public_key, created_at_ms = excluded.created_at_ms",
            )
            .bind(user)
            .bind(public_key)
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// `user`'s public key (base64), if they registered one.
    pub async fn user_key(&self, user: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = with_pool!(self, |pool| {
            sqlx::query_as("SELECT public_key FROM user_keys WHERE user_id = $1")
                .bind(user)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|(k,)| k))
    }

    /// Deletes the record (the user unlinked the provider).
    pub async fn delete_credential(&self, user: &str, provider: &str) -> Result<bool, StoreError> {
        let done = with_pool!(self, |pool| {
            sqlx::query("DELETE FROM credentials WHERE user_id = $1 AND provider = $2")
                .bind(user)
                .bind(provider)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }
}

fn decode(row: Row) -> Result<StoredCredential, StoreError> {
    let (
        user_id,
        provider,
        version,
        scheme,
        key_id,
        nonce,
        ciphertext,
        captured_at_ms,
        pushed_version,
        expires_at_ms,
        scopes,
        holder_vm,
    ) = row;
    let scopes = match scopes {
        Some(text) => serde_json::from_str(&text)
            .map_err(|_| StoreError::Corrupt("scopes are not a JSON list".into()))?,
        None => Vec::new(),
    };
    let scheme = Scheme::from_str(&scheme)
        .map_err(|_| StoreError::Corrupt(format!("unknown scheme {scheme:?}")))?;
    let key_id = KeyId::new(&key_id).map_err(|_| StoreError::Corrupt("invalid key id".into()))?;
    Ok(StoredCredential {
        user_id,
        provider,
        version,
        envelope: Envelope {
            scheme,
            key_id,
            nonce,
            ciphertext,
        },
        captured_at_ms,
        pushed_version,
        meta: CredentialMeta {
            expires_at_ms,
            scopes,
        },
        holder_vm,
    })
}
