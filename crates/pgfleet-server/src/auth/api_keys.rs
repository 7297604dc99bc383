//! API keys for internal services (`pgfleet.api_keys`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::types::Json;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::AuthError;
use super::credentials::ApiKeySecret;
use super::users::StoredRole;
use crate::identity::{Role, TargetPattern};

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
    pub created_by: &'a str,
}

macro_rules! key_columns {
    () => {
        "id, name, key_prefix, role, allowed_targets, created_by, created_at, \
                           expires_at, last_used_at, revoked_at"
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
    pub async fn create(&self, key: &NewApiKey<'_>) -> Result<(ApiKeyRecord, ApiKeySecret), AuthError> {
        let secret = ApiKeySecret::generate();
        let inserted = sqlx::query_as::<_, ApiKeyRecord>(concat!(
            "INSERT INTO pgfleet.api_keys \
             (id, name, key_prefix, secret_sha256, role, allowed_targets, created_by, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
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
        .fetch_one(&self.pool)
        .await;
        match inserted {
            Ok(record) => Ok((record, secret)),
            Err(sqlx::Error::Database(error)) if error.constraint() == Some("api_keys_live_name") => {
                Err(AuthError::AlreadyExists {
                    field: "name",
                    value: key.name.to_owned(),
                })
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The live key matching `presented`, if any; records its use.
    pub async fn authenticate(&self, presented: &ApiKeySecret) -> Result<Option<ApiKeyRecord>, AuthError> {
        let row: Option<(Vec<u8>, ApiKeyRecord)> = sqlx::query_as::<_, ApiKeyRow>(concat!(
            "SELECT secret_sha256, ",
            key_columns!(),
            " FROM pgfleet.api_keys WHERE key_prefix = $1"
        ))
        .bind(&presented.prefix)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| (row.secret_sha256, row.key));
        let Some((stored_digest, key)) = row else {
            return Ok(None);
        };
        let digest_matches: bool = presented.secret_digest().ct_eq(stored_digest.as_slice()).into();
        if !digest_matches || !key.is_live(Utc::now()) {
            return Ok(None);
        }
        sqlx::query(
            "UPDATE pgfleet.api_keys SET last_used_at = now() WHERE id = $1 \
             AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2))",
        )
        .bind(key.id)
        .bind(LAST_USED_RESOLUTION_SECS as f64)
        .execute(&self.pool)
        .await?;
        Ok(Some(key))
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

    /// One page of keys ordered by creation, after `after` (exclusive).
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
             WHERE ($1 OR (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()))) \
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
    #[sqlx(flatten)]
    key: ApiKeyRecord,
}
