//! Authentication and authorization: who is calling, and may they call this.
//!
//! - [`access`]: the one table of required roles per RPC (fail closed).
//! - [`gate`]: the tower layer that applies it to every call.
//! - [`credentials`]: bearer tokens, session cookies and API keys.
//! - [`sessions`]: sessions and login-attempt counters in Redis or in memory.
//! - [`throttle`]: login throttling (backoff per username and address,
//!   limit per address, slow-down and alert per username; no lockout).
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
pub mod throttle;
pub mod users;

use std::sync::Arc;

use http::HeaderMap;
use pgfleet_config::AuthConfig;
use sqlx::PgPool;

pub use error::{AuthError, Refusal, SessionStoreError};
pub use sessions::{Session, SessionStore};

use self::access::Access;
use self::api_keys::{ApiKeyStore, KeyCheck};
use self::credentials::Credential;
use self::passwords::PasswordHasher;
use self::throttle::LoginThrottle;
use self::users::{NewUser, UserRecord, UserStore};
use crate::telemetry::metrics::RefusalReason;
use pgfleet_engine::identity::{Identity, Principal, Role};

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
    pub throttle: LoginThrottle,
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
            throttle: LoginThrottle::new(&settings),
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
    /// identity when its role suffices, a [`Refusal`] otherwise.
    pub async fn authorize(&self, path: &str, headers: &HeaderMap) -> Result<Option<Identity>, Refusal> {
        let Some(access) = access::access_for(path) else {
            return Err(Refusal::new(
                AuthError::PermissionDenied(format!("{path} is not a method pgfleet grants access to")),
                RefusalReason::UnknownMethod,
            ));
        };
        let required = match access {
            Access::Public => return Ok(None),
            Access::AtLeast(role) => role,
        };
        let credential = credentials::from_headers(headers)
            .map_err(|error| Refusal::new(error, RefusalReason::MalformedCredentials))?
            .ok_or(Refusal::new(
                AuthError::Unauthenticated(
                    "authentication required: send `authorization: Bearer <token>` from Login, or `x-api-key`",
                ),
                RefusalReason::NoCredentials,
            ))?;
        let identity = self.identify(credential).await?;
        if identity.role < required {
            let method = path.rsplit('/').next().unwrap_or(path);
            return Err(Refusal::new(
                AuthError::PermissionDenied(format!(
                    "{method} requires role {required}; {} has role {}",
                    identity.label(),
                    identity.role
                )),
                RefusalReason::Role,
            )
            .by(identity.label()));
        }
        Ok(Some(identity))
    }

    /// The identity behind a credential, with the role as stored right now.
    pub async fn identify(&self, credential: Credential) -> Result<Identity, Refusal> {
        match credential {
            Credential::Session(token) => {
                let renew = self
                    .settings
                    .sliding_sessions
                    .then_some(self.settings.session_ttl);
                let session = self
                    .sessions
                    .get(&token.session_id(), renew)
                    .await
                    .map_err(AuthError::from)?
                    .ok_or(Refusal::new(
                        AuthError::Unauthenticated("session expired or unknown; log in again"),
                        RefusalReason::InvalidSession,
                    ))?;
                let user = match self.users.by_id(session.user_id).await? {
                    Some(user) if user.active => user,
                    gone_or_inactive => {
                        // Deactivated (or deleted) since login: end the
                        // session here too, in case the bulk deletion missed it.
                        self.sessions.delete(&session).await.map_err(AuthError::from)?;
                        let refusal = Refusal::new(
                            AuthError::Unauthenticated("account is deactivated"),
                            RefusalReason::Deactivated,
                        );
                        return Err(match gone_or_inactive {
                            Some(user) => refusal.by(format!("user:{}", user.username)),
                            None => refusal,
                        });
                    }
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
                // One answer for every unusable key: its holder learns
                // nothing about the key's creator; the log says why.
                let unusable = |reason| {
                    Refusal::new(
                        AuthError::Unauthenticated("API key unknown, revoked or expired"),
                        reason,
                    )
                };
                let label = |name: &str| format!("api_key:{name}");
                let key = match self.api_keys.authenticate(&presented).await? {
                    KeyCheck::Valid(key) => key,
                    KeyCheck::Unknown => {
                        // The prefix is the key's public part.
                        return Err(unusable(RefusalReason::InvalidApiKey)
                            .by(format!("api_key_prefix:{}", presented.prefix)));
                    }
                    KeyCheck::WrongSecret(key) | KeyCheck::NotLive(key) => {
                        return Err(unusable(RefusalReason::InvalidApiKey).by(label(&key.name)));
                    }
                    KeyCheck::CreatorLacksRights(key) => {
                        return Err(unusable(RefusalReason::ApiKeyCreator).by(label(&key.name)));
                    }
                };
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
