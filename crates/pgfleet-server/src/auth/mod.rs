//! Authentication and authorization: who is calling, and may they call this.
//!
//! - [`access`]: the one table of required roles per RPC (fail closed).
//! - [`gate`]: the tower layer that applies it to every call.
//! - [`credentials`]: bearer tokens, session cookies and API keys.
//! - [`sessions`]: sessions and login-attempt counters in Redis or in memory.
//! - [`throttle`]: login throttling (backoff per username and address,
//!   limit per address, slow-down and alert per username; no lockout).
//! - [`users`], [`api_keys`]: the accounts in the history store.
//! - [`user_cache`]: users as last read, per replica, valid while the
//!   session store's users version is unchanged.
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
pub mod user_cache;
pub mod users;

use std::sync::Arc;
use std::time::Instant;

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
use self::user_cache::{CachedUser, UserCache};
use self::users::{NewUser, StandingChange, UserRecord, UserStore};
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

/// The user behind a session, as [`Authenticator::identify`] needs it.
enum SessionUser {
    Active(CachedUser),
    /// Deleted (`None`) or deactivated since the session began.
    GoneOrInactive(Option<UserRecord>),
}

/// Everything authentication needs, shared by the gate and `AuthService`.
pub struct Authenticator {
    pub users: UserStore,
    pub api_keys: ApiKeyStore,
    pub sessions: SessionStore,
    pub passwords: PasswordHasher,
    pub throttle: LoginThrottle,
    pub settings: AuthConfig,
    /// Users as the gate last read them (see [`user_cache`]).
    user_cache: UserCache,
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
            user_cache: UserCache::new(settings.user_cache_ttl),
            settings,
        }))
    }

    /// Sets `active` on one user ([`UserStore::set_active`]), so that every
    /// replica sees it on its next call.
    pub async fn set_active(&self, username: &str, active: bool) -> Result<StandingChange, AuthError> {
        self.change_user(self.users.set_active(username, active)).await
    }

    /// Changes one user's role ([`UserStore::set_role`]), so that every
    /// replica sees it on its next call.
    pub async fn set_role(&self, username: &str, role: Role) -> Result<StandingChange, AuthError> {
        self.change_user(self.users.set_role(username, role)).await
    }

    /// Runs `change` between marking the users version as changing and
    /// replacing it ([`user_cache`] says why both). No marker, no change:
    /// a replica could otherwise keep serving what it cached.
    async fn change_user(
        &self,
        change: impl Future<Output = Result<StandingChange, AuthError>>,
    ) -> Result<StandingChange, AuthError> {
        self.sessions.begin_user_change().await?;
        let changed = change.await;
        self.user_cache.clear();
        if let Err(error) = self.sessions.end_user_change().await {
            // Committed, and the marker stays until it expires: every
            // replica reads users from the store until then.
            tracing::warn!(%error, "could not record the end of a user change; replicas read users from the store until its marker expires");
        }
        changed
    }

    /// The user behind a session: from this replica's cache when `version`
    /// allows, otherwise from the store (and cached when active).
    async fn session_user(
        &self,
        user_id: uuid::Uuid,
        version: &user_cache::UsersVersion,
    ) -> Result<SessionUser, AuthError> {
        if let Some(user) = self.user_cache.get(user_id, version) {
            return Ok(SessionUser::Active(user));
        }
        let read_at = Instant::now();
        match self.users.by_id(user_id).await? {
            Some(user) if user.active => {
                let cached = CachedUser {
                    id: user.id,
                    role: user.role(),
                    username: user.username,
                };
                self.user_cache.put(version, cached.clone(), read_at);
                Ok(SessionUser::Active(cached))
            }
            gone_or_inactive => Ok(SessionUser::GoneOrInactive(gone_or_inactive)),
        }
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
                let (session, users_version) = self
                    .sessions
                    .get(&token.session_id(), renew)
                    .await
                    .map_err(AuthError::from)?
                    .ok_or(Refusal::new(
                        AuthError::Unauthenticated("session expired or unknown; log in again"),
                        RefusalReason::InvalidSession,
                    ))?;
                let user = match self.session_user(session.user_id, &users_version).await? {
                    SessionUser::Active(user) => user,
                    SessionUser::GoneOrInactive(gone_or_inactive) => {
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
                    role: user.role,
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
