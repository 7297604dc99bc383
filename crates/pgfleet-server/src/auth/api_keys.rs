//! API keys for internal services (`pgfleet.api_keys`).
//!
//! A key acts with its creator's authority: it is refused on use unless the
//! MASTER who created it still exists, is active and holds MASTER (read on
//! every call, like a session's user), and deactivating or demoting that
//! user revokes their keys in the same transaction (`users.rs`), so they do
//! not come back with a reactivation.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::types::Json;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::AuthError;
use super::credentials::ApiKeySecret;
use pgfleet_engine::identity::StoredRole;
use pgfleet_engine::identity::{Role, TargetPattern};

/// `last_used_at` is written at most this often per key, so a busy service
/// does not turn every call into a write on the history store.
const LAST_USED_RESOLUTION_SECS: i64 = 60;

/// A stored key, without its secret digest.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub name: String,
    pub key_prefix: String,
    #[sqlx(try_from = "String")]
    pub role: StoredRole,
    pub allowed_targets: Json<Vec<TargetPattern>>,
    pub created_by: String,
    /// The creating user; `None` when no longer on record (such a key is
    /// refused).
    pub created_by_user_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyRecord {
    pub fn role(&self) -> Role {
        self.role.0
    }

    /// Neither revoked nor expired at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expires| expires > now)
    }
}

/// A key to create; fields already validated.
pub struct NewApiKey<'a> {
    pub name: &'a str,
    pub role: Role,
    pub allowed_targets: &'a [TargetPattern],
    pub expires_at: Option<DateTime<Utc>>,
    /// The creator's label, as shown in ListApiKeys.
    pub created_by: &'a str,
    /// The creator, who must be an active MASTER when the key is stored.
    pub created_by_user_id: Uuid,
}

/// What a presented key turned out to be.
#[derive(Debug)]
pub enum KeyCheck {
    /// Usable: live, and its creator is an active MASTER.
    Valid(ApiKeyRecord),
    /// No key has this prefix.
    Unknown,
    /// The prefix is a key's, the secret is not.
    WrongSecret(ApiKeyRecord),
    /// Revoked or expired.
    NotLive(ApiKeyRecord),
    /// Live, but its creator is deleted, deactivated or no longer MASTER.
    CreatorLacksRights(ApiKeyRecord),
}

macro_rules! key_columns {
    () => {
        "id, name, key_prefix, role, allowed_targets, created_by, created_by_user_id, created_at, \
                           expires_at, last_used_at, revoked_at"
    };
}

/// True when the key row's creator is an active MASTER (NULL when there is
/// no such user, which callers read as false).
macro_rules! creator_holds_rights {
    () => {
        "(SELECT u.active AND u.role = 'MASTER' FROM pgfleet.users u WHERE u.id = created_by_user_id)"
    };
}

/// API keys in the history store.
#[derive(Clone)]
pub struct ApiKeyStore {
    pool: PgPool,
}

impl ApiKeyStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Stores a new key and returns it with its secret (shown once).
    ///
    /// The creator's row is share-locked by the insert: a concurrent
    /// deactivation or demotion either commits first (then nothing is
    /// stored) or waits for this key and revokes it with the others.
    pub async fn create(&self, key: &NewApiKey<'_>) -> Result<(ApiKeyRecord, ApiKeySecret), AuthError> {
        let secret = ApiKeySecret::generate();
        let inserted = sqlx::query_as::<_, ApiKeyRecord>(concat!(
            "WITH creator AS (SELECT id FROM pgfleet.users \
                 WHERE id = $9 AND active AND role = 'MASTER' FOR SHARE) \
             INSERT INTO pgfleet.api_keys \
             (id, name, key_prefix, secret_sha256, role, allowed_targets, created_by, expires_at, \
              created_by_user_id) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, creator.id FROM creator RETURNING ",
            key_columns!()
        ))
        .bind(Uuid::now_v7())
        .bind(key.name)
        .bind(&secret.prefix)
        .bind(secret.secret_digest().as_slice())
        .bind(key.role.as_str())
        .bind(Json(key.allowed_targets))
        .bind(key.created_by)
        .bind(key.expires_at)
        .bind(key.created_by_user_id)
        .fetch_optional(&self.pool)
        .await;
        match inserted {
            Ok(Some(record)) => Ok((record, secret)),
            // The caller passed the gate as a MASTER and lost it since.
            Ok(None) => Err(AuthError::PermissionDenied(
                "CreateApiKey requires an active MASTER".to_owned(),
            )),
            Err(sqlx::Error::Database(error)) if error.constraint() == Some("api_keys_live_name") => {
                Err(AuthError::AlreadyExists {
                    field: "name",
                    value: key.name.to_owned(),
                })
            }
            Err(error) => Err(error.into()),
        }
    }

    /// What `presented` is, with its creator's standing as of now; records
    /// the use of a valid key.
    pub async fn authenticate(&self, presented: &ApiKeySecret) -> Result<KeyCheck, AuthError> {
        let row = sqlx::query_as::<_, ApiKeyRow>(concat!(
            "SELECT secret_sha256, coalesce(",
            creator_holds_rights!(),
            ", false) AS creator_holds_rights, ",
            key_columns!(),
            " FROM pgfleet.api_keys WHERE key_prefix = $1"
        ))
        .bind(&presented.prefix)
        .fetch_optional(&self.pool)
        .await?;
        let Some(ApiKeyRow {
            secret_sha256,
            creator_holds_rights,
            key,
        }) = row
        else {
            return Ok(KeyCheck::Unknown);
        };
        let digest_matches: bool = presented.secret_digest().ct_eq(secret_sha256.as_slice()).into();
        // In this order: only the holder of the secret learns more.
        if !digest_matches {
            return Ok(KeyCheck::WrongSecret(key));
        }
        if !key.is_live(Utc::now()) {
            return Ok(KeyCheck::NotLive(key));
        }
        if !creator_holds_rights {
            return Ok(KeyCheck::CreatorLacksRights(key));
        }
        sqlx::query(
            "UPDATE pgfleet.api_keys SET last_used_at = now() WHERE id = $1 \
             AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2))",
        )
        .bind(key.id)
        .bind(LAST_USED_RESOLUTION_SECS as f64)
        .execute(&self.pool)
        .await?;
        Ok(KeyCheck::Valid(key))
    }

    /// Revokes every live key `creator` made, inside the caller's
    /// transaction (deactivation, demotion); returns how many.
    pub async fn revoke_created_by(
        transaction: &mut sqlx::PgConnection,
        creator: Uuid,
    ) -> Result<u64, AuthError> {
        let result = sqlx::query(
            "UPDATE pgfleet.api_keys SET revoked_at = now() \
             WHERE created_by_user_id = $1 AND revoked_at IS NULL",
        )
        .bind(creator)
        .execute(transaction)
        .await?;
        Ok(result.rows_affected())
    }

    pub async fn by_id(&self, id: Uuid) -> Result<Option<ApiKeyRecord>, AuthError> {
        Ok(sqlx::query_as::<_, ApiKeyRecord>(concat!(
            "SELECT ",
            key_columns!(),
            " FROM pgfleet.api_keys WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// One page of keys ordered by creation, after `after` (exclusive);
    /// without `include_inactive`, only keys that would be accepted now
    /// (live, and their creator an active MASTER).
    pub async fn list(
        &self,
        include_inactive: bool,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<ApiKeyRecord>, AuthError> {
        let (after_time, after_id) = after.unzip();
        Ok(sqlx::query_as::<_, ApiKeyRecord>(concat!(
            "SELECT ",
            key_columns!(),
            " FROM pgfleet.api_keys \
             WHERE ($1 OR (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()) \
                 AND coalesce(",
            creator_holds_rights!(),
            ", false))) \
             AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3)) \
             ORDER BY created_at, id LIMIT $4"
        ))
        .bind(include_inactive)
        .bind(after_time)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revokes a key (idempotent); `None` when no key has this id.
    pub async fn revoke(&self, id: Uuid) -> Result<Option<ApiKeyRecord>, AuthError> {
        Ok(sqlx::query_as::<_, ApiKeyRecord>(concat!(
            "UPDATE pgfleet.api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 \
             RETURNING ",
            key_columns!()
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }
}

#[derive(sqlx::FromRow)]
struct ApiKeyRow {
    secret_sha256: Vec<u8>,
    creator_holds_rights: bool,
    #[sqlx(flatten)]
    key: ApiKeyRecord,
}
