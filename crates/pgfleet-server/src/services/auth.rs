//! `pgfleet.v1.AuthService`: users, roles, sessions and API keys.
//!
//! The gate (`auth::gate`) has already authenticated the caller and checked
//! the method's role before any handler here runs; handlers only validate
//! fields and apply the change.

use std::collections::HashSet;
use std::sync::Arc;

use pgfleet_registry::Registry;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::auth_service_server;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{role_from_wire, role_to_wire, timestamp, timestamp_to_chrono};
use crate::auth::api_keys::{ApiKeyRecord, NewApiKey};
use crate::auth::credentials::{clear_session_cookie_header, session_cookie_header};
use crate::auth::fields::{check_display_name, normalize_username};
use crate::auth::gate::Refused;
use crate::auth::throttle::AdmittedAttempt;
use crate::auth::users::{StandingChange, UserFilter, UserRecord};
use crate::auth::{AuthError, Authenticator, UserSpec};
use crate::edge::ClientAddress;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::{LoginFailure, RefusalReason};
use pgfleet_engine::identity::{Identity, Principal, Role, TargetPattern};

const LOGIN_PATH: &str = "/pgfleet.v1.AuthService/Login";
const CHANGE_PASSWORD_PATH: &str = "/pgfleet.v1.AuthService/ChangePassword";

const DEFAULT_PAGE_SIZE: i32 = 50;
const MAX_PAGE_SIZE: i32 = 500;
const MAX_BATCH: usize = 1000;

/// Serves `pgfleet.v1.AuthService`.
#[derive(Clone)]
pub struct AuthService {
    auth: Arc<Authenticator>,
    /// The configured targets (live: SIGHUP may change them), to check API
    /// key allow-lists.
    registry: Arc<Registry>,
    metrics: Metrics,
}

impl AuthService {
    pub fn new(auth: Arc<Authenticator>, registry: Arc<Registry>, metrics: Metrics) -> Self {
        Self {
            auth,
            registry,
            metrics,
        }
    }

    fn user_message(user: &UserRecord) -> pb::User {
        pb::User {
            id: user.id.to_string(),
            username: user.username.clone(),
            email: user.email.clone(),
            name: user.name.clone(),
            role: role_to_wire(user.role()).into(),
            active: user.active,
            created_at: Some(timestamp(user.created_at)),
            last_login_at: user.last_login_at.map(timestamp),
            password_changed_at: Some(timestamp(user.password_changed_at)),
        }
    }

    fn api_key_message(key: &ApiKeyRecord) -> pb::ApiKey {
        pb::ApiKey {
            id: key.id.to_string(),
            name: key.name.clone(),
            role: role_to_wire(key.role()).into(),
            allowed_targets: key
                .allowed_targets
                .0
                .iter()
                .map(|pattern| pb::TargetPattern {
                    cloud: pattern.cloud.clone(),
                    database: pattern.database.clone(),
                })
                .collect(),
            created_at: Some(timestamp(key.created_at)),
            expires_at: key.expires_at.map(timestamp),
            last_used_at: key.last_used_at.map(timestamp),
            revoked_at: key.revoked_at.map(timestamp),
            created_by: key.created_by.clone(),
            key_prefix: key.key_prefix.clone(),
        }
    }

    /// Lets a password attempt for `username` from `client` through the
    /// login throttle (waiting out a slow-down), or refuses it with
    /// RESOURCE_EXHAUSTED and reports the refusal.
    async fn admit_password_attempt(
        &self,
        path: &str,
        username: &str,
        client: Option<ClientAddress>,
    ) -> Result<AdmittedAttempt, AuthError> {
        let throttle = &self.auth.throttle;
        let attempt = match throttle
            .admit(&self.auth.sessions, username, client.map(|client| client.ip))
            .await
        {
            Ok(attempt) => attempt,
            Err(error) => {
                if matches!(error, AuthError::RateLimited { .. }) {
                    // Not looked up: a refused attempt must stay cheap. The
                    // account shows in the failures that led here.
                    self.report(
                        path,
                        tonic::Code::ResourceExhausted,
                        RefusalReason::Throttled,
                        None,
                        client,
                    );
                }
                return Err(error);
            }
        };
        if attempt.guessing_detected {
            self.metrics.login_guessing_detected();
            let identity = known_label(&self.auth, username).await;
            tracing::warn!(
                %identity,
                failures = attempt.username_failures,
                slowdown_ms = attempt.slowdown.as_millis(),
                "password guessing against one username from many addresses: its logins are slowed down, not refused"
            );
        }
        if !attempt.slowdown.is_zero() {
            tokio::time::sleep(attempt.slowdown).await;
        }
        Ok(attempt)
    }

    /// The password of an admitted attempt was right.
    async fn password_accepted(&self, attempt: AdmittedAttempt) {
        // Failing only leaves the attempt counted as a failure.
        if let Err(error) = self.auth.throttle.succeeded(&self.auth.sessions, attempt).await {
            tracing::debug!(%error, "could not give a successful login back to the throttle");
        }
    }

    /// Logs and counts one refused attempt.
    fn report(
        &self,
        path: &str,
        code: tonic::Code,
        reason: RefusalReason,
        who: Option<&str>,
        client: Option<ClientAddress>,
    ) {
        Refused {
            path,
            code,
            reason,
            who,
            client,
        }
        .report(&self.metrics);
    }

    /// Ends all sessions of a user after a change that must lock them out.
    /// The change itself is already effective (every replica re-reads the
    /// user once the users version moved), so a session store outage here
    /// is logged, not fatal.
    async fn end_sessions(&self, user_id: Uuid, keep: Option<&str>) {
        if let Err(error) = self.auth.sessions.delete_user_sessions(user_id, keep).await {
            tracing::warn!(%error, %user_id, "could not delete the user's sessions");
        }
    }

    async fn change_activation(
        &self,
        usernames: Vec<String>,
        active: bool,
    ) -> Result<Vec<pb::UserActivationResult>, AuthError> {
        if usernames.is_empty() {
            return Err(AuthError::invalid("usernames", "name at least one user"));
        }
        if usernames.len() > MAX_BATCH {
            return Err(AuthError::invalid(
                "usernames",
                format!("at most {MAX_BATCH} per call"),
            ));
        }
        let mut results = Vec::with_capacity(usernames.len());
        for (index, requested) in usernames.into_iter().enumerate() {
            let username = normalize_username(&format!("usernames[{index}]"), &requested)?;
            let mut result = pb::UserActivationResult {
                username: requested,
                ..Default::default()
            };
            match self.auth.set_active(&username, active).await? {
                StandingChange::Done { user, revoked_keys } => {
                    if !active {
                        self.end_sessions(user.id, None).await;
                    }
                    if revoked_keys > 0 {
                        tracing::info!(%username, revoked_keys, "API keys revoked with their creator's deactivation");
                    }
                    result.success = true;
                    result.user = Some(Self::user_message(&user));
                }
                StandingChange::NotFound => {
                    result.error_code = pb::ErrorCode::NotFound.into();
                    result.error_message = format!("no user {username:?}");
                }
                StandingChange::LastMaster => {
                    result.error_code = pb::ErrorCode::FailedPrecondition.into();
                    result.error_message = format!("{username:?} is the last active MASTER");
                }
            }
            results.push(result);
        }
        Ok(results)
    }

    fn check_allowed_targets(&self, patterns: &[pb::TargetPattern]) -> Result<Vec<TargetPattern>, AuthError> {
        if patterns.is_empty() {
            return Err(AuthError::invalid(
                "allowed_targets",
                "name at least one (cloud, database) pattern; use \"*\" for any",
            ));
        }
        let targets = self.registry.targets();
        let clouds: HashSet<&str> = targets.iter().map(|target| target.cloud.as_str()).collect();
        let databases: HashSet<&str> = targets.iter().map(|target| target.database.as_str()).collect();
        patterns
            .iter()
            .enumerate()
            .map(|(index, pattern)| {
                if pattern.cloud != "*" && !clouds.contains(pattern.cloud.as_str()) {
                    return Err(AuthError::invalid(
                        format!("allowed_targets[{index}].cloud"),
                        format!("no configured cloud {:?} (or \"*\")", pattern.cloud),
                    ));
                }
                if pattern.database != "*" && !databases.contains(pattern.database.as_str()) {
                    return Err(AuthError::invalid(
                        format!("allowed_targets[{index}].database"),
                        format!("no configured database {:?} (or \"*\")", pattern.database),
                    ));
                }
                Ok(TargetPattern {
                    cloud: pattern.cloud.clone(),
                    database: pattern.database.clone(),
                })
            })
            .collect()
    }
}

/// `user:<name>` when `username` is an account, else `unknown user`: what a
/// caller typed as a username may be a password, so only real usernames
/// reach the log.
async fn known_label(auth: &Authenticator, username: &str) -> String {
    if username.is_empty() {
        return "unknown user".to_owned();
    }
    match auth.users.by_username(username).await {
        Ok(Some(user)) => format!("user:{}", user.username),
        _ => "unknown user".to_owned(),
    }
}

/// The signed-in user behind `identity`, or FAILED_PRECONDITION for keys.
fn user_of<'a>(identity: &'a Identity, what: &str) -> Result<(Uuid, &'a str), AuthError> {
    match &identity.principal {
        Principal::User { id, username } => Ok((*id, username)),
        Principal::ApiKey { .. } => Err(AuthError::FailedPrecondition(format!(
            "{what} applies to users; API keys are revoked with RevokeApiKey"
        ))),
    }
}

fn required_role(field: &str, wire: i32) -> Result<Role, AuthError> {
    role_from_wire(wire)
        .ok_or_else(|| AuthError::invalid(field, "must be ROLE_READER, ROLE_USER or ROLE_MASTER"))
}

fn page_size(requested: i32) -> Result<i64, AuthError> {
    match requested {
        ..0 => Err(AuthError::invalid("page_size", "must not be negative")),
        0 => Ok(i64::from(DEFAULT_PAGE_SIZE)),
        // Refused like every other list call's oversized page.
        n if n > MAX_PAGE_SIZE => Err(AuthError::invalid(
            "page_size",
            format!("{n} is above the maximum of {MAX_PAGE_SIZE}"),
        )),
        n => Ok(i64::from(n)),
    }
}

fn encode_token(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

fn decode_token(token: &str) -> Result<Option<String>, AuthError> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(Some)
        .ok_or_else(|| AuthError::invalid("page_token", "not a token this server issued"))
}

fn identity_of<T>(request: &Request<T>) -> Result<Identity, Status> {
    super::identity(request).cloned()
}

impl AuthService {
    /// `Login`, without the counting of failures.
    async fn log_in(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let client = ClientAddress::of(&request);
        let address = client.map(|client| client.ip);
        let pb::LoginRequest { username, password } = request.into_inner();
        if username.is_empty() {
            return Err(AuthError::invalid("username", "must not be empty").into());
        }
        if password.is_empty() {
            return Err(AuthError::invalid("password", "must not be empty").into());
        }
        // Malformed names cannot exist; they still pay for a bcrypt check so
        // the answer time does not tell them apart.
        let username = normalize_username("username", &username).unwrap_or_default();
        let attempt = self.admit_password_attempt(LOGIN_PATH, &username, client).await?;

        let user = if username.is_empty() {
            None
        } else {
            self.auth.users.by_username(&username).await?
        };
        let stored_hash = user.as_ref().map(|user| user.password_hash.as_str());
        let password_matches = self.auth.passwords.verify(&password, stored_hash).await?;
        let user = match user {
            Some(user) if password_matches => user,
            unknown_or_wrong => {
                let label = unknown_or_wrong.map(|user| format!("user:{}", user.username));
                self.report(
                    LOGIN_PATH,
                    tonic::Code::Unauthenticated,
                    RefusalReason::InvalidPassword,
                    Some(label.as_deref().unwrap_or("unknown user")),
                    client,
                );
                return Err(AuthError::Unauthenticated("invalid username or password").into());
            }
        };
        self.password_accepted(attempt).await;
        let label = format!("user:{}", user.username);
        if !user.active {
            self.report(
                LOGIN_PATH,
                tonic::Code::PermissionDenied,
                RefusalReason::Deactivated,
                Some(&label),
                client,
            );
            // Only said to someone who knows the password.
            return Err(AuthError::PermissionDenied("account is deactivated".to_owned()).into());
        }
        let rehashed = if self.auth.passwords.needs_rehash(&user.password_hash) {
            Some(self.auth.passwords.hash(&password).await?)
        } else {
            None
        };
        let ttl = self.auth.settings.session_ttl;
        let (token, session) = self
            .auth
            .sessions
            .create(user.id, ttl)
            .await
            .map_err(AuthError::from)?;
        self.auth.users.record_login(user.id, rehashed.as_deref()).await?;
        let user = self.auth.users.by_id(user.id).await?.unwrap_or(user);
        let client = address.map(|ip| ip.to_string()).unwrap_or_default();
        tracing::info!(username = %user.username, %client, "login");

        let cookie = session_cookie_header(&token, ttl.as_secs(), self.auth.settings.cookie_secure);
        let mut response = Response::new(pb::LoginResponse {
            token: token.expose().to_owned(),
            expires_at: Some(timestamp(session.expires_at)),
            user: Some(Self::user_message(&user)),
        });
        let cookie = MetadataValue::try_from(cookie)
            .map_err(|_| AuthError::Internal("session cookie is not a valid header".to_owned()))?;
        response.metadata_mut().insert("set-cookie", cookie);
        Ok(response)
    }
}

#[tonic::async_trait]
impl auth_service_server::AuthService for AuthService {
    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let answer = self.log_in(request).await;
        if let Err(status) = &answer {
            // The reason only: who tried stays out of the metrics.
            self.metrics.login_failed(LoginFailure::of(status));
        }
        answer
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let identity = identity_of(&request)?;
        user_of(&identity, "Logout")?;
        if let Some(session) = &identity.session {
            self.auth
                .sessions
                .delete(session)
                .await
                .map_err(AuthError::from)?;
        }
        let mut response = Response::new(pb::LogoutResponse {});
        let cookie = MetadataValue::try_from(clear_session_cookie_header(self.auth.settings.cookie_secure))
            .map_err(|_| AuthError::Internal("cookie header".to_owned()))?;
        response.metadata_mut().insert("set-cookie", cookie);
        Ok(response)
    }

    async fn me(&self, request: Request<pb::MeRequest>) -> Result<Response<pb::MeResponse>, Status> {
        let identity = identity_of(&request)?;
        let principal = match &identity.principal {
            Principal::User { id, .. } => {
                let user = self
                    .auth
                    .users
                    .by_id(*id)
                    .await?
                    .ok_or(AuthError::Unauthenticated("account no longer exists"))?;
                pb::me_response::Principal::User(Self::user_message(&user))
            }
            Principal::ApiKey { id, .. } => {
                let key = self
                    .auth
                    .api_keys
                    .by_id(*id)
                    .await?
                    .ok_or(AuthError::Unauthenticated("API key no longer exists"))?;
                pb::me_response::Principal::ApiKey(Self::api_key_message(&key))
            }
        };
        Ok(Response::new(pb::MeResponse {
            principal: Some(principal),
            role: role_to_wire(identity.role).into(),
            session_expires_at: identity.session.as_ref().map(|s| timestamp(s.expires_at)),
        }))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let identity = identity_of(&request)?;
        let client = ClientAddress::of(&request);
        let (user_id, username) = user_of(&identity, "ChangePassword")?;
        let pb::ChangePasswordRequest {
            old_password,
            new_password,
        } = request.into_inner();
        if old_password.is_empty() {
            return Err(AuthError::invalid("old_password", "must not be empty").into());
        }
        self.auth
            .passwords
            .check_policy("new_password", username, &new_password)?;
        if new_password == old_password {
            return Err(AuthError::invalid("new_password", "must differ from the current password").into());
        }
        // A stolen session must not become an oracle for the password.
        let attempt = self
            .admit_password_attempt(CHANGE_PASSWORD_PATH, username, client)
            .await?;
        let user = self
            .auth
            .users
            .by_id(user_id)
            .await?
            .ok_or(AuthError::Unauthenticated("account no longer exists"))?;
        if !self
            .auth
            .passwords
            .verify(&old_password, Some(&user.password_hash))
            .await?
        {
            self.report(
                CHANGE_PASSWORD_PATH,
                tonic::Code::InvalidArgument,
                RefusalReason::InvalidPassword,
                Some(&identity.label()),
                client,
            );
            return Err(AuthError::invalid("old_password", "is not the current password").into());
        }
        self.password_accepted(attempt).await;
        let hash = self.auth.passwords.hash(&new_password).await?;
        self.auth.users.set_password(user_id, &hash).await?;
        // Other devices must log in with the new password; this one stays.
        let keep = identity.session.as_ref().map(|s| s.id.as_str());
        self.end_sessions(user_id, keep).await;
        tracing::info!(%username, "password changed");
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }

    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let identity = identity_of(&request)?;
        let pb::CreateUserRequest {
            username,
            email,
            name,
            password,
            role,
        } = request.into_inner();
        let role = required_role("role", role)?;
        let user = self
            .auth
            .create_user(&UserSpec {
                username: &username,
                email: &email,
                name: &name,
                password: &password,
                role,
            })
            .await?;
        tracing::info!(username = %user.username, %role, by = %identity.label(), "user created");
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(Self::user_message(&user)),
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let request = request.into_inner();
        let limit = page_size(request.page_size)?;
        let after = decode_token(&request.page_token)?;
        let role = match request.role {
            0 => None,
            wire => Some(required_role("role", wire)?),
        };
        let search = check_display_name("search", &request.search, 200)?;
        let filter = UserFilter {
            role,
            active: request.active,
            search: (!search.is_empty()).then_some(search),
        };
        // One extra row says whether another page exists.
        let (mut users, total) = self.auth.users.list(&filter, after.as_deref(), limit + 1).await?;
        let more = users.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        users.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next_page_token = match users.last() {
            Some(last) if more => encode_token(&last.username),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(Self::user_message).collect(),
            next_page_token,
            total_count: total,
        }))
    }

    async fn activate_users(
        &self,
        request: Request<pb::ActivateUsersRequest>,
    ) -> Result<Response<pb::ActivateUsersResponse>, Status> {
        let results = self
            .change_activation(request.into_inner().usernames, true)
            .await?;
        Ok(Response::new(pb::ActivateUsersResponse { results }))
    }

    async fn deactivate_users(
        &self,
        request: Request<pb::DeactivateUsersRequest>,
    ) -> Result<Response<pb::DeactivateUsersResponse>, Status> {
        let results = self
            .change_activation(request.into_inner().usernames, false)
            .await?;
        Ok(Response::new(pb::DeactivateUsersResponse { results }))
    }

    async fn change_role(
        &self,
        request: Request<pb::ChangeRoleRequest>,
    ) -> Result<Response<pb::ChangeRoleResponse>, Status> {
        let identity = identity_of(&request)?;
        let request = request.into_inner();
        let username = normalize_username("username", &request.username)?;
        let role = required_role("role", request.role)?;
        match self.auth.set_role(&username, role).await? {
            StandingChange::Done { user, revoked_keys } => {
                tracing::info!(%username, %role, by = %identity.label(), revoked_keys, "role changed");
                Ok(Response::new(pb::ChangeRoleResponse {
                    user: Some(Self::user_message(&user)),
                }))
            }
            StandingChange::NotFound => Err(AuthError::NotFound(format!("no user {username:?}")).into()),
            StandingChange::LastMaster => Err(AuthError::FailedPrecondition(format!(
                "{username:?} is the last active MASTER; promote another user first"
            ))
            .into()),
        }
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        let identity = identity_of(&request)?;
        let request = request.into_inner();
        let username = normalize_username("username", &request.username)?;
        self.auth
            .passwords
            .check_policy("new_password", &username, &request.new_password)?;
        let user = self
            .auth
            .users
            .by_username(&username)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("no user {username:?}")))?;
        let hash = self.auth.passwords.hash(&request.new_password).await?;
        self.auth.users.set_password(user.id, &hash).await?;
        self.end_sessions(user.id, None).await;
        tracing::info!(%username, by = %identity.label(), "password reset");
        Ok(Response::new(pb::ResetPasswordResponse {}))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let identity = identity_of(&request)?;
        let request = request.into_inner();
        let name = request.name.trim();
        let name_ok = (1..=63).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            return Err(AuthError::invalid(
                "name",
                "must be 1 to 63 characters of A-Z, a-z, 0-9, '.', '_' or '-'",
            )
            .into());
        }
        let role = match role_from_wire(request.role) {
            Some(role @ (Role::User | Role::Reader)) => role,
            Some(Role::Master) => {
                return Err(AuthError::invalid("role", "API keys cannot hold MASTER").into());
            }
            None => return Err(AuthError::invalid("role", "must be ROLE_USER or ROLE_READER").into()),
        };
        let expires_at = match request.expires_at {
            None => None,
            Some(wire) => {
                let expires = timestamp_to_chrono(&wire)
                    .ok_or_else(|| AuthError::invalid("expires_at", "not a valid timestamp"))?;
                if expires <= Utc::now() {
                    return Err(AuthError::invalid("expires_at", "must be in the future").into());
                }
                Some(expires)
            }
        };
        let allowed_targets = self.check_allowed_targets(&request.allowed_targets)?;
        let (creator, _) = user_of(&identity, "CreateApiKey")?;
        let created_by = identity.label();
        let (key, secret) = self
            .auth
            .api_keys
            .create(&NewApiKey {
                name,
                role,
                allowed_targets: &allowed_targets,
                expires_at,
                created_by: &created_by,
                created_by_user_id: creator,
            })
            .await?;
        tracing::info!(name = %key.name, prefix = %key.key_prefix, %role, by = %created_by, "API key created");
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(Self::api_key_message(&key)),
            secret: secret.expose(),
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let request = request.into_inner();
        let limit = page_size(request.page_size)?;
        let after = match decode_token(&request.page_token)? {
            None => None,
            Some(text) => Some(
                parse_key_position(&text)
                    .ok_or_else(|| AuthError::invalid("page_token", "not a token this server issued"))?,
            ),
        };
        let mut keys = self
            .auth
            .api_keys
            .list(request.include_inactive, after, limit + 1)
            .await?;
        let more = keys.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        keys.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next_page_token = match keys.last() {
            Some(last) if more => {
                encode_token(&format!("{}|{}", last.created_at.timestamp_micros(), last.id))
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: keys.iter().map(Self::api_key_message).collect(),
            next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let identity = identity_of(&request)?;
        let id = request.into_inner().id;
        let id =
            Uuid::parse_str(&id).map_err(|_| AuthError::invalid("id", "must be an API key id (UUID)"))?;
        let key = self
            .auth
            .api_keys
            .revoke(id)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("no API key {id}")))?;
        tracing::info!(name = %key.name, by = %identity.label(), "API key revoked");
        Ok(Response::new(pb::RevokeApiKeyResponse {
            api_key: Some(Self::api_key_message(&key)),
        }))
    }
}

fn parse_key_position(text: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let (micros, id) = text.split_once('|')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        Uuid::parse_str(id).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let now = DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("time");
        let id = Uuid::now_v7();
        let token = encode_token(&format!("{}|{id}", now.timestamp_micros()));
        let decoded = decode_token(&token).expect("decode").expect("some");
        assert_eq!(parse_key_position(&decoded), Some((now, id)));
        assert!(decode_token("!!!").is_err());
        assert_eq!(parse_key_position("nonsense"), None);
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0).ok(), Some(50));
        assert_eq!(page_size(500).ok(), Some(500));
        assert!(page_size(501).is_err());
        assert!(page_size(-1).is_err());
    }
}
