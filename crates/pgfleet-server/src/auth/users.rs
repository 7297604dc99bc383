//! Users in the history store (`pgfleet.users`).
//!
//! Role and active flag are read from here by the auth gate whenever its
//! per-replica cache may be out of date (`super::user_cache`), so a change
//! made through any replica applies to the very next call everywhere. Change
//! them through `Authenticator::set_role`/`set_active`, which tell the other
//! replicas.
//! Changes that could remove the last active MASTER take a transaction-level
//! advisory lock first, so two concurrent demotions cannot both succeed.
//! A change that ends a user's standing as an active MASTER revokes the API
//! keys they created, in the same transaction.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::{Connection as _, PgConnection, PgPool};
use uuid::Uuid;

use super::AuthError;
use super::api_keys::ApiKeyStore;
use pgfleet_engine::advisory_locks::HistoryLock;
use pgfleet_engine::identity::{Role, StoredRole};

/// A stored user. `password_hash` never leaves the server.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRecord {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    #[sqlx(try_from = "String")]
    pub role: StoredRole,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    pub password_changed_at: DateTime<Utc>,
}

impl UserRecord {
    pub fn role(&self) -> Role {
        self.role.0
    }
}

/// A user to create; fields already validated.
pub struct NewUser<'a> {
    pub username: &'a str,
    pub email: &'a str,
    pub name: &'a str,
    pub password_hash: &'a str,
    pub role: Role,
}

/// A user moved in from another system (`pgfleet import-legacy`), fields
/// checked, its bcrypt hash kept as it was so the password keeps working.
pub struct ImportedUser<'a> {
    /// `password_hash` as the other system stored it.
    pub user: NewUser<'a>,
    pub active: bool,
    /// When the old system created it; now when it did not say.
    pub created_at: Option<DateTime<Utc>>,
    pub last_login_at: Option<DateTime<Utc>>,
}

/// Filters and keyset position of one page of users.
#[derive(Debug, Default)]
pub struct UserFilter {
    pub role: Option<Role>,
    pub active: Option<bool>,
    /// Case-insensitive substring of username, email or name.
    pub search: Option<String>,
}

/// The outcome of a role or activation change.
#[derive(Debug)]
pub enum StandingChange {
    /// Applied; the user as now stored, and how many of the API keys they
    /// created were revoked with their MASTER standing.
    Done {
        user: Box<UserRecord>,
        revoked_keys: u64,
    },
    NotFound,
    /// Refused: it would leave no active MASTER.
    LastMaster,
}

macro_rules! user_columns {
    () => {
        "id, username, email, name, password_hash, role, active, created_at, \
                            last_login_at, password_changed_at"
    };
}

/// The ListUsers filter: $1 role, $2 active, $3 LIKE pattern.
macro_rules! user_filter {
    () => {
        "($1::text IS NULL OR role = $1) AND ($2::boolean IS NULL OR active = $2) \
         AND ($3::text IS NULL OR username ILIKE $3 OR email ILIKE $3 OR name ILIKE $3)"
    };
}

/// Users in the history store.
#[derive(Clone)]
pub struct UserStore {
    pool: PgPool,
}

impl UserStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub async fn by_id(&self, id: Uuid) -> Result<Option<UserRecord>, AuthError> {
        Ok(sqlx::query_as::<_, UserRecord>(concat!(
            "SELECT ",
            user_columns!(),
            " FROM pgfleet.users WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn by_username(&self, username: &str) -> Result<Option<UserRecord>, AuthError> {
        Ok(sqlx::query_as::<_, UserRecord>(concat!(
            "SELECT ",
            user_columns!(),
            " FROM pgfleet.users WHERE username = $1"
        ))
        .bind(username)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Inserts a user; a taken username or e-mail is ALREADY_EXISTS.
    pub async fn create(&self, user: &NewUser<'_>) -> Result<UserRecord, AuthError> {
        insert(&self.pool, user, true, None, None).await
    }

    /// Of `usernames` and `emails`, those already taken (e-mails
    /// lower-cased, as they are compared), in the caller's transaction.
    pub async fn taken(
        connection: &mut PgConnection,
        usernames: &[String],
        emails: &[String],
    ) -> Result<(HashSet<String>, HashSet<String>), AuthError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT username, lower(email) FROM pgfleet.users \
             WHERE username = ANY($1) OR lower(email) = ANY($2)",
        )
        .bind(usernames)
        .bind(
            emails
                .iter()
                .map(|email| email.to_lowercase())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *connection)
        .await?;
        Ok(rows.into_iter().unzip())
    }

    /// Inserts an imported user in the caller's transaction; `Ok(None)`
    /// when its username or e-mail is taken: an existing user is never
    /// overwritten. A savepoint keeps the caller's transaction usable.
    pub async fn insert_imported(
        connection: &mut PgConnection,
        user: &ImportedUser<'_>,
    ) -> Result<Option<UserRecord>, AuthError> {
        let mut savepoint = connection.begin().await?;
        match insert(
            &mut *savepoint,
            &user.user,
            user.active,
            user.created_at,
            user.last_login_at,
        )
        .await
        {
            Ok(record) => {
                savepoint.commit().await?;
                Ok(Some(record))
            }
            Err(AuthError::AlreadyExists { .. }) => {
                savepoint.rollback().await?;
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Records a successful login (and a re-hashed password, if any).
    pub async fn record_login(&self, id: Uuid, rehashed: Option<&str>) -> Result<(), AuthError> {
        sqlx::query(
            "UPDATE pgfleet.users SET last_login_at = now(), \
             password_hash = coalesce($2, password_hash) WHERE id = $1",
        )
        .bind(id)
        .bind(rehashed)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Replaces a password hash; false when the user does not exist.
    pub async fn set_password(&self, id: Uuid, password_hash: &str) -> Result<bool, AuthError> {
        let result = sqlx::query(
            "UPDATE pgfleet.users SET password_hash = $2, password_changed_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(password_hash)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// One page of users ordered by username, after `after` (exclusive),
    /// plus the total count matching the filter.
    pub async fn list(
        &self,
        filter: &UserFilter,
        after: Option<&str>,
        limit: i64,
    ) -> Result<(Vec<UserRecord>, i64), AuthError> {
        let pattern = filter.search.as_deref().map(like_pattern);
        let role = filter.role.map(Role::as_str);
        let users = sqlx::query_as::<_, UserRecord>(concat!(
            "SELECT ",
            user_columns!(),
            " FROM pgfleet.users WHERE ",
            user_filter!(),
            " \
             AND ($4::text IS NULL OR username > $4) ORDER BY username LIMIT $5"
        ))
        .bind(role)
        .bind(filter.active)
        .bind(&pattern)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let total: i64 = sqlx::query_scalar(concat!(
            "SELECT count(*) FROM pgfleet.users WHERE ",
            user_filter!()
        ))
        .bind(role)
        .bind(filter.active)
        .bind(&pattern)
        .fetch_one(&self.pool)
        .await?;
        Ok((users, total))
    }

    /// Sets `active` on one user, refusing to deactivate the last active
    /// MASTER.
    pub async fn set_active(&self, username: &str, active: bool) -> Result<StandingChange, AuthError> {
        self.change_standing(username, |user| (user.role(), active)).await
    }

    /// Changes one user's role, refusing to demote the last active MASTER.
    pub async fn set_role(&self, username: &str, role: Role) -> Result<StandingChange, AuthError> {
        self.change_standing(username, |user| (role, user.active)).await
    }

    async fn change_standing(
        &self,
        username: &str,
        next: impl FnOnce(&UserRecord) -> (Role, bool),
    ) -> Result<StandingChange, AuthError> {
        let mut transaction = self.pool.begin().await?;
        HistoryLock::LastMaster.lock_xact(&mut transaction).await?;
        let Some(user) = sqlx::query_as::<_, UserRecord>(concat!(
            "SELECT ",
            user_columns!(),
            " FROM pgfleet.users WHERE username = $1 FOR UPDATE"
        ))
        .bind(username)
        .fetch_optional(&mut *transaction)
        .await?
        else {
            return Ok(StandingChange::NotFound);
        };
        let (role, active) = next(&user);
        let was_active_master = user.active && user.role() == Role::Master;
        let stays_active_master = active && role == Role::Master;
        let loses_master = was_active_master && !stays_active_master;
        if loses_master {
            let masters: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pgfleet.users WHERE role = 'MASTER' AND active")
                    .fetch_one(&mut *transaction)
                    .await?;
            if masters <= 1 {
                return Ok(StandingChange::LastMaster);
            }
        }
        let updated = sqlx::query_as::<_, UserRecord>(concat!(
            "UPDATE pgfleet.users SET role = $2, active = $3 WHERE id = $1 RETURNING ",
            user_columns!()
        ))
        .bind(user.id)
        .bind(role.as_str())
        .bind(active)
        .fetch_one(&mut *transaction)
        .await?;
        // Keys act with their creator's authority; they end with it and stay
        // ended if the user is reactivated or promoted again.
        let revoked_keys = if loses_master {
            ApiKeyStore::revoke_created_by(&mut transaction, user.id).await?
        } else {
            0
        };
        transaction.commit().await?;
        Ok(StandingChange::Done {
            user: Box::new(updated),
            revoked_keys,
        })
    }
}

/// Inserts a user; a taken username or e-mail is ALREADY_EXISTS. Creation
/// time defaults to now.
async fn insert<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    user: &NewUser<'_>,
    active: bool,
    created_at: Option<DateTime<Utc>>,
    last_login_at: Option<DateTime<Utc>>,
) -> Result<UserRecord, AuthError> {
    let inserted = sqlx::query_as::<_, UserRecord>(concat!(
        "INSERT INTO pgfleet.users (id, username, email, name, password_hash, role, active, created_at, \
         last_login_at) VALUES ($1, $2, $3, $4, $5, $6, $7, coalesce($8, now()), $9) RETURNING ",
        user_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(user.username)
    .bind(user.email)
    .bind(user.name)
    .bind(user.password_hash)
    .bind(user.role.as_str())
    .bind(active)
    .bind(created_at)
    .bind(last_login_at)
    .fetch_one(executor)
    .await;
    match inserted {
        Ok(record) => Ok(record),
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => Err(match error.constraint() {
            Some("users_email_key") => AuthError::AlreadyExists {
                field: "email",
                value: user.email.to_owned(),
            },
            _ => AuthError::AlreadyExists {
                field: "username",
                value: user.username.to_owned(),
            },
        }),
        Err(error) => Err(error.into()),
    }
}

/// `%text%` with LIKE's wildcards in `text` escaped.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("a_b%c\\"), "%a\\_b\\%c\\\\%");
    }
}
