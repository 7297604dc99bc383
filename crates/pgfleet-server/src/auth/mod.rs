//! Authentication and authorization: who is calling, and may they call this.
//!
//! - [`access`]: the one table of required roles per RPC (fail closed).
//! - [`gate`]: the tower layer that applies it to every call.
//! - [`credentials`]: bearer tokens, session cookies and API keys.
//! - [`sessions`]: sessions and login-attempt counters in Redis or in memory.
//! - [`users`], [`api_keys`]: the accounts in the history store.
//! - [`passwords`]: policy and bcrypt hashing off the async runtime.

pub mod access;
pub mod api_keys;
pub mod credentials;
mod error;
pub mod fields;
pub mod gate;
pub mod passwords;
pub mod sessions;
pub mod users;

use std::sync::Arc;

use http::HeaderMap;
use pgfleet_config::AuthConfig;
use sqlx::PgPool;

pub use error::{AuthError, SessionStoreError};
pub use sessions::{Session, SessionStore};

use self::access::Access;
use self::api_keys::ApiKeyStore;
use self::credentials::Credential;
use self::passwords::PasswordHasher;
use self::users::{NewUser, UserRecord, UserStore};
use crate::identity::{Identity, Principal, Role};

/// A user to create, as requested (unchecked).
pub struct UserSpec<'a> {
    pub username: &'a str,
    pub email: &'a str,
    pub name: &'a str,
    pub password: &'a str,
    pub role: Role,
}

/// Everything authentication needs, shared by the gate and `AuthService`.
pub struct Authenticator {
    pub users: UserStore,
    pub api_keys: ApiKeyStore,
    pub sessions: SessionStore,
    pub passwords: PasswordHasher,
    pub settings: AuthConfig,
}

impl Authenticator {
    /// Builds the authenticator over the history store `pool`.
    pub async fn new(
        pool: PgPool,
        sessions: SessionStore,
        settings: AuthConfig,
    ) -> Result<Arc<Self>, AuthError> {
        let passwords = PasswordHasher::new(settings.bcrypt_cost, settings.min_password_length).await?;
        Ok(Arc::new(Self {
            users: UserStore::new(pool.clone()),
            api_keys: ApiKeyStore::new(pool),
            sessions,
            passwords,
            settings,
        }))
    }

    /// Checks every field of `spec`, hashes the password and stores the user.
    pub async fn create_user(&self, spec: &UserSpec<'_>) -> Result<UserRecord, AuthError> {
        let username = fields::normalize_username("username", spec.username)?;
        let email = fields::check_email(spec.email)?;
        let name = fields::check_display_name("name", spec.name, 200)?;
        self.passwords
            .check_policy("password", &username, spec.password)?;
        let password_hash = self.passwords.hash(spec.password).await?;
        self.users
            .create(&NewUser {
                username: &username,
                email: &email,
                name: &name,
                password_hash: &password_hash,
                role: spec.role,
            })
            .await
    }

    /// Decides a call to `path`: `Ok(None)` for public methods, the caller's
    /// identity when its role suffices, an error otherwise.
    pub async fn authorize(&self, path: &str, headers: &HeaderMap) -> Result<Option<Identity>, AuthError> {
        let Some(access) = access::access_for(path) else {
            return Err(AuthError::PermissionDenied(format!(
                "{path} is not a method pgfleet grants access to"
            )));
        };
        let required = match access {
            Access::Public => return Ok(None),
            Access::AtLeast(role) => role,
        };
        let credential = credentials::from_headers(headers)?.ok_or(AuthError::Unauthenticated(
            "authentication required: send `authorization: Bearer <token>` from Login, or `x-api-key`",
        ))?;
        let identity = self.identify(credential).await?;
        if identity.role < required {
            let method = path.rsplit('/').next().unwrap_or(path);
            return Err(AuthError::PermissionDenied(format!(
                "{method} requires role {required}; {} has role {}",
                identity.label(),
                identity.role
            )));
        }
        Ok(Some(identity))
    }

    /// The identity behind a credential, with the role as stored right now.
    pub async fn identify(&self, credential: Credential) -> Result<Identity, AuthError> {
        match credential {
            Credential::Session(token) => {
                let renew = self
                    .settings
                    .sliding_sessions
                    .then_some(self.settings.session_ttl);
                let session = self.sessions.get(&token.session_id(), renew).await?.ok_or(
                    AuthError::Unauthenticated("session expired or unknown; log in again"),
                )?;
                let user = self.users.by_id(session.user_id).await?;
                let Some(user) = user.filter(|user| user.active) else {
                    // Deactivated (or deleted) since login: end the session
                    // here too, in case the bulk deletion missed it.
                    self.sessions.delete(&session).await?;
                    return Err(AuthError::Unauthenticated("account is deactivated"));
                };
                Ok(Identity {
                    role: user.role(),
                    principal: Principal::User {
                        id: user.id,
                        username: user.username,
                    },
                    session: Some(session),
                })
            }
            Credential::ApiKey(presented) => {
                let key = self
                    .api_keys
                    .authenticate(&presented)
                    .await?
                    .ok_or(AuthError::Unauthenticated("API key unknown, revoked or expired"))?;
                Ok(Identity {
                    role: key.role(),
                    principal: Principal::ApiKey {
                        id: key.id,
                        name: key.name,
                        allowed_targets: key.allowed_targets.0,
                    },
                    session: None,
                })
            }
        }
    }
}
