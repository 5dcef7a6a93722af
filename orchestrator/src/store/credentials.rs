//! Rows of `credentials`: the latest sealed credential per (user, provider), ciphertext only.

use std::str::FromStr;

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
);

impl Store {
    /// The current record of `user` for `provider`.
    pub async fn credential(
        &self,
        user: &str,
        provider: &str,
    ) -> Result<Option<StoredCredential>, StoreError> {
        let row: Option<Row> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT user_id, provider, version, scheme, key_id, nonce, ciphertext, captured_at_ms, pushed_version
                 FROM credentials WHERE user_id = $1 AND provider = $2",
            )
            .bind(user)
            .bind(provider)
            .fetch_optional(pool)
            .await?
        });
        row.map(decode).transpose()
    }

    /// Writes version `version` of the record, which must follow `version - 1` (or be 1 for a new
    /// record). Returns `false`, writing nothing, when another writer got there first.
    pub async fn put_credential(
        &self,
        user: &str,
        provider: &str,
        version: i64,
        envelope: &Envelope,
    ) -> Result<bool, StoreError> {
        let done = with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO credentials
                    (user_id, provider, version, scheme, key_id, nonce, ciphertext, captured_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (user_id, provider) DO UPDATE SET
                    version = excluded.version, scheme = excluded.scheme, key_id = excluded.key_id,
                    nonce = excluded.nonce, ciphertext = excluded.ciphertext,
                    captured_at_ms = excluded.captured_at_ms
                 WHERE credentials.version = excluded.version - 1",
            )
            .bind(user)
            .bind(provider)
            .bind(version)
            .bind(envelope.scheme.as_str())
            .bind(envelope.key_id.as_str())
            .bind(envelope.nonce.as_slice())
            .bind(envelope.ciphertext.as_slice())
            .bind(now_ms())
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

    /// Records that `version` reached the user's CLI VM.
    pub async fn mark_credential_pushed(
        &self,
        user: &str,
        provider: &str,
        version: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE credentials SET pushed_version = $3, pushed_at_ms = $4
                 WHERE user_id = $1 AND provider = $2 AND version >= $3",
            )
            .bind(user)
            .bind(provider)
            .bind(version)
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Records whose latest version has not reached the CLI VM yet (to retry the push).
    pub async fn credentials_pending_push(&self) -> Result<Vec<StoredCredential>, StoreError> {
        let rows: Vec<Row> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT user_id, provider, version, scheme, key_id, nonce, ciphertext, captured_at_ms, pushed_version
                 FROM credentials WHERE pushed_version IS NULL OR pushed_version <> version
                 ORDER BY captured_at_ms",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter().map(decode).collect()
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
    ) = row;
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
    })
}
