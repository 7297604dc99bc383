//! Sessions and login-attempt counters: short-lived state kept in Redis
//! (bb8-redis), or in this process when no Redis is configured.
//!
//! Sessions are stored under the SHA-256 of their token with a TTL, plus a
//! per-user set of session ids so deactivation and password resets can end
//! all of a user's sessions at once. Nothing here decides who a user is or
//! which role they hold: that is in PostgreSQL. The store keeps the users
//! version beside the sessions, read with each session and replaced after
//! every change of a role or standing, which tells each replica when the
//! users it read before are out of date (see [`super::user_cache`]).
//!
//! Login counters ([`SessionStore::admit_login`]) are checked and updated
//! in one step (a Lua script in Redis, one mutex in memory), so concurrent
//! attempts on any replica cannot all slip under a limit. Both stores follow
//! the same rules, written once in [`LoginLimits::backoff_after`] and tested
//! against each other.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bb8_redis::redis;
use chrono::{DateTime, Utc};
use pgfleet_config::RedisConfig;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::SessionStoreError;
use super::credentials::SessionToken;
use super::user_cache::UsersVersion;
use crate::redis_pool::RedisPool;

/// A live session (the engine's type: an [`Identity`](pgfleet_engine::identity::Identity) carries it).
pub use pgfleet_engine::identity::Session;

/// The counters one login attempt touches, by name (see `auth::throttle`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginKeys {
    /// One (username, address): its failures and its current wait.
    pub pair: String,
    /// One client address: failures for any username.
    pub address: String,
    /// One username: failures from any address.
    pub username: String,
}

/// The rules [`SessionStore::admit_login`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// The window of the address and username counts; a pair forgets its
    /// failures this long after its last wait ended.
    pub window: Duration,
    /// Failures one address may have in a window.
    pub per_address: u32,
    /// Failures of a pair before it must wait; each further failure
    /// doubles the wait.
    pub failures_before_backoff: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl LoginLimits {
    /// The wait a pair's `failures`-th failure imposes on its next attempt:
    /// none before `failures_before_backoff`, `backoff_initial` at it, then
    /// doubling with each failure, capped at `backoff_max`. The Redis
    /// script computes the same (a test runs both through one sequence).
    pub fn backoff_after(&self, failures: u64) -> Duration {
        let Some(over) = failures.checked_sub(u64::from(self.failures_before_backoff)) else {
            return Duration::ZERO;
        };
        let doublings = u32::try_from(over).unwrap_or(u32::MAX).min(63);
        let initial = millis(self.backoff_initial);
        let wait = initial.saturating_mul(1 << doublings);
        Duration::from_millis(wait.min(millis(self.backoff_max)))
    }
}

/// What the counters say about one login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginAdmission {
    /// Counted as a failure until [`SessionStore::login_succeeded`] says
    /// otherwise.
    Admitted {
        /// Failures of the username in the window, this attempt included.
        username_failures: u64,
        /// The wait this attempt imposes on the pair's next one (zero while
        /// failures are free).
        backoff: Duration,
    },
    /// The pair must wait this long (its earlier failures).
    Backoff { retry_after: Duration },
    /// The address has used up its failures until the window ends.
    AddressLimited { retry_after: Duration },
}

/// Where sessions and attempt counters live.
pub enum SessionStore {
    /// Shared by every replica.
    Redis(RedisSessions),
    /// This process only; sessions end when it stops.
    Memory(MemorySessions),
}

impl SessionStore {
    /// A Redis-backed store on a pool of its own. Connects lazily, so a
    /// Redis that is down at start only fails the calls that need it until
    /// it is back.
    pub fn redis(config: &RedisConfig) -> Result<Self, SessionStoreError> {
        Ok(Self::on_redis(RedisPool::new(config)?, config))
    }

    /// A Redis-backed store on `pool` (the server's one pool), with the
    /// key prefix of `config`.
    pub fn on_redis(pool: RedisPool, config: &RedisConfig) -> Self {
        SessionStore::Redis(RedisSessions {
            pool,
            prefix: config.key_prefix.clone(),
        })
    }

    /// An in-process store.
    pub fn memory() -> Self {
        SessionStore::Memory(MemorySessions::default())
    }

    /// True for the Redis store.
    pub fn is_shared(&self) -> bool {
        matches!(self, SessionStore::Redis(_))
    }

    /// Starts a session for `user_id` lasting `ttl`.
    pub async fn create(
        &self,
        user_id: Uuid,
        ttl: Duration,
    ) -> Result<(SessionToken, Session), SessionStoreError> {
        let token = SessionToken::generate();
        let now = Utc::now();
        let session = Session {
            id: token.session_id(),
            user_id,
            created_at: now,
            expires_at: now + ttl,
        };
        match self {
            SessionStore::Redis(redis) => redis.create(&session, ttl).await?,
            SessionStore::Memory(memory) => memory.create(&session, ttl),
        }
        Ok((token, session))
    }

    /// The live session stored under `session_id`, with the users version
    /// read in the same round trip; with `renew`, its lifetime starts over
    /// (sliding sessions).
    pub async fn get(
        &self,
        session_id: &str,
        renew: Option<Duration>,
    ) -> Result<Option<(Session, UsersVersion)>, SessionStoreError> {
        match self {
            SessionStore::Redis(redis) => redis.get(session_id, renew).await,
            SessionStore::Memory(memory) => Ok(memory.get(session_id, renew)),
        }
    }

    /// Marks the users version as changing, before a user's role or
    /// standing changes: until [`SessionStore::end_user_change`] (or
    /// [`USERS_CHANGE_MARKER_TTL`]), no replica trusts a user it read
    /// before. An error means no change may be made.
    pub async fn begin_user_change(&self) -> Result<(), SessionStoreError> {
        match self {
            SessionStore::Redis(redis) => redis.set_users_version(true).await,
            SessionStore::Memory(memory) => {
                memory.change_users(true);
                Ok(())
            }
        }
    }

    /// Replaces the users version once the change committed (or failed).
    pub async fn end_user_change(&self) -> Result<(), SessionStoreError> {
        match self {
            SessionStore::Redis(redis) => redis.set_users_version(false).await,
            SessionStore::Memory(memory) => {
                memory.change_users(false);
                Ok(())
            }
        }
    }

    /// Ends one session.
    pub async fn delete(&self, session: &Session) -> Result<(), SessionStoreError> {
        match self {
            SessionStore::Redis(redis) => redis.delete(session).await,
            SessionStore::Memory(memory) => {
                memory.delete(&session.id);
                Ok(())
            }
        }
    }

    /// Ends every session of `user_id` except `keep`; returns how many ended.
    pub async fn delete_user_sessions(
        &self,
        user_id: Uuid,
        keep: Option<&str>,
    ) -> Result<usize, SessionStoreError> {
        match self {
            SessionStore::Redis(redis) => redis.delete_user_sessions(user_id, keep).await,
            SessionStore::Memory(memory) => Ok(memory.delete_user_sessions(user_id, keep)),
        }
    }

    /// Decides one login attempt and, when admitted, counts it as a failure
    /// of its pair, address and username at once (the password is checked
    /// after: counting first is what keeps parallel guesses under the
    /// limits).
    pub async fn admit_login(
        &self,
        keys: &LoginKeys,
        limits: &LoginLimits,
    ) -> Result<LoginAdmission, SessionStoreError> {
        match self {
            SessionStore::Redis(redis) => redis.admit_login(keys, limits).await,
            SessionStore::Memory(memory) => Ok(memory.admit_login(keys, limits, Instant::now())),
        }
    }

    /// The admitted attempt had the right password: the pair starts over,
    /// and the attempt no longer counts against the address and username.
    pub async fn login_succeeded(&self, keys: &LoginKeys) -> Result<(), SessionStoreError> {
        match self {
            SessionStore::Redis(redis) => redis.login_succeeded(keys).await,
            SessionStore::Memory(memory) => {
                memory.login_succeeded(keys, Instant::now());
                Ok(())
            }
        }
    }
}

/// [`SessionStore::admit_login`] in Redis. KEYS: pair failures, pair wait,
/// address count, username count. ARGV: window, per-address limit, free
/// failures, first wait, longest wait (milliseconds). Returns {0, wait this
/// attempt imposes, username failures} when admitted, {1, retry after} for
/// a pair that must wait, {2, retry after} for an address over its limit.
/// Waits are keys with a TTL, so Redis' clock alone decides them.
const ADMIT_LOGIN_SCRIPT: &str = r"
local wait = redis.call('PTTL', KEYS[2])
if wait > 0 then return {1, wait, 0} end
local window = tonumber(ARGV[1])
local address = tonumber(redis.call('GET', KEYS[3]) or '0')
if address >= tonumber(ARGV[2]) then
  return {2, math.max(redis.call('PTTL', KEYS[3]), 1), 0}
end
redis.call('SET', KEYS[3], 0, 'PX', window, 'NX')
redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[4], 0, 'PX', window, 'NX')
local username = redis.call('INCR', KEYS[4])
local failures = redis.call('INCR', KEYS[1])
local over = failures - tonumber(ARGV[3])
local backoff = 0
if over >= 0 then
  backoff = math.min(tonumber(ARGV[4]) * 2 ^ math.min(over, 63), tonumber(ARGV[5]))
  backoff = math.floor(backoff)
  redis.call('SET', KEYS[2], 1, 'PX', backoff)
end
redis.call('PEXPIRE', KEYS[1], backoff + window)
return {0, backoff, username}
";

/// [`SessionStore::login_succeeded`] in Redis. KEYS as above.
const LOGIN_SUCCEEDED_SCRIPT: &str = r"
redis.call('DEL', KEYS[1], KEYS[2])
for i = 3, 4 do
  local count = tonumber(redis.call('GET', KEYS[i]) or '0')
  if count > 0 then redis.call('DECR', KEYS[i]) end
end
return 0
";

/// How long the "changing" users version lasts when the replica making a
/// change never replaces it (it died, or Redis was cut): the longest a
/// change can take, after which replicas cache users again.
pub const USERS_CHANGE_MARKER_TTL: Duration = Duration::from_secs(60);

/// The prefix of a users version that marks a change under way.
const CHANGING: &str = "changing:";

/// What is stored under a session key (the id is the key itself).
#[derive(Serialize, Deserialize)]
struct StoredSession {
    user_id: Uuid,
    created_at: DateTime<Utc>,
}

/// The Redis store.
pub struct RedisSessions {
    pool: RedisPool,
    prefix: String,
}

impl RedisSessions {
    fn session_key(&self, session_id: &str) -> String {
        format!("{}session:{session_id}", self.prefix)
    }

    fn user_sessions_key(&self, user_id: Uuid) -> String {
        format!("{}user-sessions:{user_id}", self.prefix)
    }

    fn users_version_key(&self) -> String {
        format!("{}users-version", self.prefix)
    }

    /// A fresh users version (random, so a Redis restored from an older
    /// snapshot can never bring back a value a cache holds), or the marker
    /// of a change under way, which expires.
    async fn set_users_version(&self, changing: bool) -> Result<(), SessionStoreError> {
        let fresh = Uuid::new_v4();
        let mut pipeline = redis::pipe();
        if changing {
            pipeline
                .cmd("SET")
                .arg(self.users_version_key())
                .arg(format!("{CHANGING}{fresh}"))
                .arg("PX")
                .arg(millis(USERS_CHANGE_MARKER_TTL))
                .ignore();
        } else {
            pipeline
                .cmd("SET")
                .arg(self.users_version_key())
                .arg(fresh.to_string())
                .ignore();
        }
        self.run::<()>(&pipeline).await
    }

    /// The four keys of the login scripts, in their order.
    fn login_keys(&self, keys: &LoginKeys) -> [String; 4] {
        let prefix = &self.prefix;
        [
            format!("{prefix}login:pair:{}", keys.pair),
            format!("{prefix}login:wait:{}", keys.pair),
            format!("{prefix}login:address:{}", keys.address),
            format!("{prefix}login:username:{}", keys.username),
        ]
    }

    /// Runs `pipeline` on a pooled connection within the command timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        pipeline: &redis::Pipeline,
    ) -> Result<T, SessionStoreError> {
        Ok(self.pool.query(pipeline).await?)
    }

    async fn create(&self, session: &Session, ttl: Duration) -> Result<(), SessionStoreError> {
        let value = serde_json::to_string(&StoredSession {
            user_id: session.user_id,
            created_at: session.created_at,
        })?;
        let ttl_ms = millis(ttl);
        let user_key = self.user_sessions_key(session.user_id);
        let mut pipeline = redis::pipe();
        pipeline
            .atomic()
            .cmd("SET")
            .arg(self.session_key(&session.id))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("SADD")
            .arg(&user_key)
            .arg(&session.id)
            .ignore()
            // The index lives as long as the newest session.
            .cmd("PEXPIRE")
            .arg(&user_key)
            .arg(ttl_ms)
            .ignore();
        self.run::<()>(&pipeline).await
    }

    async fn get(
        &self,
        session_id: &str,
        renew: Option<Duration>,
    ) -> Result<Option<(Session, UsersVersion)>, SessionStoreError> {
        let key = self.session_key(session_id);
        let mut pipeline = redis::pipe();
        if let Some(ttl) = renew {
            // PEXPIRE XX-like: on a missing key it is a no-op.
            pipeline.cmd("PEXPIRE").arg(&key).arg(millis(ttl)).ignore();
        }
        pipeline
            .cmd("GET")
            .arg(&key)
            .cmd("PTTL")
            .arg(&key)
            .cmd("GET")
            .arg(self.users_version_key());
        let (value, ttl_ms, version): (Option<String>, i64, Option<String>) = self.run(&pipeline).await?;
        let Some(value) = value else {
            return Ok(None);
        };
        let version = match version {
            Some(version) if version.starts_with(CHANGING) => UsersVersion::Changing,
            // Never set (or lost with Redis' data): a version like any other.
            version => UsersVersion::Current(version.unwrap_or_default()),
        };
        let stored: StoredSession = serde_json::from_str(&value)?;
        if let Some(ttl) = renew {
            let mut extend = redis::pipe();
            extend
                .cmd("PEXPIRE")
                .arg(self.user_sessions_key(stored.user_id))
                .arg(millis(ttl))
                .arg("GT")
                .ignore();
            // Best effort: the index only serves bulk deletion, and a
            // shorter-lived index entry is re-created by the next login.
            if let Err(error) = self.run::<()>(&extend).await {
                tracing::debug!(%error, "could not extend the user's session index");
            }
        }
        let remaining = Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0));
        let session = Session {
            id: session_id.to_owned(),
            user_id: stored.user_id,
            created_at: stored.created_at,
            expires_at: Utc::now() + remaining,
        };
        Ok(Some((session, version)))
    }

    async fn delete(&self, session: &Session) -> Result<(), SessionStoreError> {
        let mut pipeline = redis::pipe();
        pipeline
            .atomic()
            .cmd("DEL")
            .arg(self.session_key(&session.id))
            .ignore()
            .cmd("SREM")
            .arg(self.user_sessions_key(session.user_id))
            .arg(&session.id)
            .ignore();
        self.run::<()>(&pipeline).await
    }

    async fn delete_user_sessions(
        &self,
        user_id: Uuid,
        keep: Option<&str>,
    ) -> Result<usize, SessionStoreError> {
        let user_key = self.user_sessions_key(user_id);
        let mut members = redis::pipe();
        members.cmd("SMEMBERS").arg(&user_key);
        let (ids,): (Vec<String>,) = self.run(&members).await?;
        let doomed: Vec<&String> = ids.iter().filter(|id| Some(id.as_str()) != keep).collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut pipeline = redis::pipe();
        pipeline.atomic();
        for id in &doomed {
            pipeline.cmd("DEL").arg(self.session_key(id)).ignore();
            pipeline.cmd("SREM").arg(&user_key).arg(id.as_str()).ignore();
        }
        self.run::<()>(&pipeline).await?;
        Ok(doomed.len())
    }

    async fn admit_login(
        &self,
        keys: &LoginKeys,
        limits: &LoginLimits,
    ) -> Result<LoginAdmission, SessionStoreError> {
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("EVAL")
            .arg(ADMIT_LOGIN_SCRIPT)
            .arg(4)
            .arg(&self.login_keys(keys))
            .arg(millis(limits.window))
            .arg(limits.per_address)
            .arg(limits.failures_before_backoff)
            .arg(millis(limits.backoff_initial))
            .arg(millis(limits.backoff_max));
        let (reply,): (Vec<i64>,) = self.run(&pipeline).await?;
        let field = |index: usize| u64::try_from(reply.get(index).copied().unwrap_or(0)).unwrap_or(0);
        let duration = |index: usize| Duration::from_millis(field(index));
        match reply.first() {
            Some(0) => Ok(LoginAdmission::Admitted {
                username_failures: field(2),
                backoff: duration(1),
            }),
            Some(1) => Ok(LoginAdmission::Backoff {
                retry_after: duration(1),
            }),
            Some(2) => Ok(LoginAdmission::AddressLimited {
                retry_after: duration(1),
            }),
            _ => Err(SessionStoreError::UnexpectedReply(format!(
                "the login script answered {reply:?}"
            ))),
        }
    }

    async fn login_succeeded(&self, keys: &LoginKeys) -> Result<(), SessionStoreError> {
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("EVAL")
            .arg(LOGIN_SUCCEEDED_SCRIPT)
            .arg(4)
            .arg(&self.login_keys(keys))
            .ignore();
        self.run::<()>(&pipeline).await
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The in-process store.
#[derive(Default)]
pub struct MemorySessions {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    sessions: HashMap<String, (Session, Instant)>,
    by_user: HashMap<Uuid, HashSet<String>>,
    /// Boxed: it is only used by Login, and keeps the store enum small.
    login: Box<LoginCounters>,
    /// The users version: bumped at the start and the end of each change.
    users_version: u64,
    /// Changes under way.
    users_changing: u32,
}

/// The in-memory twin of the Redis login keys.
#[derive(Default)]
struct LoginCounters {
    pairs: HashMap<String, PairState>,
    addresses: HashMap<String, WindowCount>,
    usernames: HashMap<String, WindowCount>,
    last_sweep: Option<Instant>,
}

/// A (username, address) pair: Redis' `login:pair:` (failures, expiring at
/// `forget_at`) and `login:wait:` (expiring at `wait_until`).
struct PairState {
    failures: u64,
    forget_at: Instant,
    wait_until: Instant,
}

/// A count in a fixed window (Redis: a counter whose TTL is the window).
struct WindowCount {
    count: u64,
    ends_at: Instant,
}

impl LoginCounters {
    /// Drops expired entries, at most once a second: a guessing run from
    /// many addresses grows these maps only for one window.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|last| now.saturating_duration_since(last) < Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        self.pairs.retain(|_, pair| pair.forget_at > now);
        self.addresses.retain(|_, count| count.ends_at > now);
        self.usernames.retain(|_, count| count.ends_at > now);
    }

    fn live_count(counts: &HashMap<String, WindowCount>, key: &str, now: Instant) -> Option<(u64, Instant)> {
        counts
            .get(key)
            .filter(|count| count.ends_at > now)
            .map(|count| (count.count, count.ends_at))
    }

    /// INCR with the window started when none runs; returns the new count.
    fn bump(counts: &mut HashMap<String, WindowCount>, key: &str, window: Duration, now: Instant) -> u64 {
        let count = counts.entry(key.to_owned()).or_insert(WindowCount {
            count: 0,
            ends_at: now + window,
        });
        if count.ends_at <= now {
            *count = WindowCount {
                count: 0,
                ends_at: now + window,
            };
        }
        count.count += 1;
        count.count
    }

    /// DECR of a live, positive count.
    fn unbump(counts: &mut HashMap<String, WindowCount>, key: &str, now: Instant) {
        if let Some(count) = counts.get_mut(key)
            && count.ends_at > now
        {
            count.count = count.count.saturating_sub(1);
        }
    }
}

impl MemoryState {
    fn sweep(&mut self, now: Instant) {
        self.sessions.retain(|_, (_, deadline)| *deadline > now);
        let live = &self.sessions;
        self.by_user.retain(|_, ids| {
            ids.retain(|id| live.contains_key(id));
            !ids.is_empty()
        });
    }
}

impl MemorySessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that grants access, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn create(&self, session: &Session, ttl: Duration) {
        let now = Instant::now();
        let mut state = self.lock();
        state.sweep(now);
        state
            .by_user
            .entry(session.user_id)
            .or_default()
            .insert(session.id.clone());
        state
            .sessions
            .insert(session.id.clone(), (session.clone(), now + ttl));
    }

    fn get(&self, session_id: &str, renew: Option<Duration>) -> Option<(Session, UsersVersion)> {
        let now = Instant::now();
        let mut state = self.lock();
        let version = if state.users_changing > 0 {
            UsersVersion::Changing
        } else {
            UsersVersion::Current(state.users_version.to_string())
        };
        let (session, deadline) = state.sessions.get_mut(session_id)?;
        if *deadline <= now {
            state.sessions.remove(session_id);
            return None;
        }
        if let Some(ttl) = renew {
            *deadline = now + ttl;
            session.expires_at = Utc::now() + ttl;
        }
        Some((session.clone(), version))
    }

    fn change_users(&self, begins: bool) {
        let mut state = self.lock();
        state.users_version += 1;
        if begins {
            state.users_changing += 1;
        } else {
            state.users_changing = state.users_changing.saturating_sub(1);
        }
    }

    fn delete(&self, session_id: &str) {
        let mut state = self.lock();
        if let Some((session, _)) = state.sessions.remove(session_id)
            && let Some(ids) = state.by_user.get_mut(&session.user_id)
        {
            ids.remove(session_id);
        }
    }

    fn delete_user_sessions(&self, user_id: Uuid, keep: Option<&str>) -> usize {
        let mut state = self.lock();
        let ids = state.by_user.remove(&user_id).unwrap_or_default();
        let mut ended = 0;
        let mut kept = HashSet::new();
        for id in ids {
            if Some(id.as_str()) == keep {
                kept.insert(id);
            } else if state.sessions.remove(&id).is_some() {
                ended += 1;
            }
        }
        if !kept.is_empty() {
            state.by_user.insert(user_id, kept);
        }
        ended
    }

    /// The same steps as [`ADMIT_LOGIN_SCRIPT`], under the one lock.
    fn admit_login(&self, keys: &LoginKeys, limits: &LoginLimits, now: Instant) -> LoginAdmission {
        let mut state = self.lock();
        let login = &mut state.login;
        login.sweep(now);
        let pair = login.pairs.get(&keys.pair).filter(|pair| pair.forget_at > now);
        if let Some(pair) = pair
            && pair.wait_until > now
        {
            return LoginAdmission::Backoff {
                retry_after: pair.wait_until - now,
            };
        }
        if let Some((count, ends_at)) = LoginCounters::live_count(&login.addresses, &keys.address, now)
            && count >= u64::from(limits.per_address)
        {
            return LoginAdmission::AddressLimited {
                retry_after: (ends_at - now).max(Duration::from_millis(1)),
            };
        }
        LoginCounters::bump(&mut login.addresses, &keys.address, limits.window, now);
        let username_failures = LoginCounters::bump(&mut login.usernames, &keys.username, limits.window, now);
        let failures = pair.map_or(0, |pair| pair.failures) + 1;
        let backoff = limits.backoff_after(failures);
        login.pairs.insert(
            keys.pair.clone(),
            PairState {
                failures,
                forget_at: now + backoff + limits.window,
                wait_until: now + backoff,
            },
        );
        LoginAdmission::Admitted {
            username_failures,
            backoff,
        }
    }

    fn login_succeeded(&self, keys: &LoginKeys, now: Instant) {
        let mut state = self.lock();
        let login = &mut state.login;
        login.pairs.remove(&keys.pair);
        LoginCounters::unbump(&mut login.addresses, &keys.address, now);
        LoginCounters::unbump(&mut login.usernames, &keys.username, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_sessions_expire_renew_and_end_per_user() {
        let store = SessionStore::memory();
        let alice = Uuid::new_v4();
        let (token, session) = store
            .create(alice, Duration::from_secs(60))
            .await
            .expect("create");
        let (_, other) = store
            .create(alice, Duration::from_secs(60))
            .await
            .expect("create");
        assert_eq!(
            store
                .get(&token.session_id(), None)
                .await
                .expect("get")
                .map(|(session, _)| session.user_id),
            Some(alice)
        );
        assert_eq!(
            store
                .delete_user_sessions(alice, Some(&session.id))
                .await
                .expect("delete"),
            1
        );
        assert!(store.get(&other.id, None).await.expect("get").is_none());
        assert!(store.get(&session.id, None).await.expect("get").is_some());
        store.delete(&session).await.expect("delete");
        assert!(store.get(&session.id, None).await.expect("get").is_none());

        let (_, short) = store
            .create(alice, Duration::from_millis(30))
            .await
            .expect("create");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            store
                .get(&short.id, Some(Duration::from_millis(200)))
                .await
                .expect("renew")
                .is_some()
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(
            store.get(&short.id, None).await.expect("get").is_some(),
            "renewed"
        );
    }

    fn limits() -> LoginLimits {
        LoginLimits {
            window: Duration::from_secs(60),
            per_address: 5,
            failures_before_backoff: 2,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
        }
    }

    fn keys(username: &str, address: &str) -> LoginKeys {
        LoginKeys {
            pair: format!("{username}|{address}"),
            address: address.to_owned(),
            username: username.to_owned(),
        }
    }

    #[test]
    fn backoff_is_free_then_doubles_up_to_the_cap() {
        let limits = limits();
        let expected = [0, 0, 100, 200, 400, 800, 1000, 1000];
        for (failures, millis) in expected.into_iter().enumerate() {
            assert_eq!(
                limits.backoff_after(failures as u64),
                Duration::from_millis(millis),
                "failure {failures}"
            );
        }
        assert_eq!(
            limits.backoff_after(u64::MAX),
            Duration::from_millis(1000),
            "no overflow"
        );
    }

    fn admitted(admission: LoginAdmission) -> (u64, Duration) {
        match admission {
            LoginAdmission::Admitted {
                username_failures,
                backoff,
            } => (username_failures, backoff),
            other => panic!("admitted expected: {other:?}"),
        }
    }

    /// Memory and Redis apply the same rules: one scripted sequence, the same
    /// answers (waits compared loosely: Redis' clock runs meanwhile).
    async fn login_counters_follow_the_rules(store: &SessionStore) {
        let limits = limits();
        let admin_here = keys("admin", "198.51.100.7");
        let admin_elsewhere = keys("admin", "203.0.113.9");
        let admit = async |keys: &LoginKeys| store.admit_login(keys, &limits).await.expect("admit");
        assert_eq!(admitted(admit(&admin_here).await), (1, Duration::ZERO));
        assert_eq!(
            admitted(admit(&admin_here).await),
            (2, Duration::from_millis(100))
        );
        // The pair waits; the same username elsewhere does not.
        match admit(&admin_here).await {
            LoginAdmission::Backoff { retry_after } => {
                assert!(retry_after <= Duration::from_millis(100) && retry_after > Duration::ZERO)
            }
            other => panic!("backoff expected: {other:?}"),
        }
        assert_eq!(
            admitted(admit(&admin_elsewhere).await),
            (3, Duration::ZERO),
            "failures of the username from all addresses; no wait elsewhere"
        );
        // A success from elsewhere gives back its own count only.
        store.login_succeeded(&admin_elsewhere).await.expect("success");
        tokio::time::sleep(Duration::from_millis(110)).await;
        assert_eq!(
            admitted(admit(&admin_here).await),
            (3, Duration::from_millis(200)),
            "the wait doubled"
        );
        // The address has 3 failures (the refused attempt did not count):
        // two more for other usernames, then it is over its 5.
        admitted(admit(&keys("someone", "198.51.100.7")).await);
        let last = keys("another", "198.51.100.7");
        admitted(admit(&last).await);
        match admit(&keys("third", "198.51.100.7")).await {
            LoginAdmission::AddressLimited { retry_after } => {
                assert!(retry_after > Duration::from_secs(50) && retry_after <= limits.window)
            }
            other => panic!("address limit expected: {other:?}"),
        }
        // Successes give their counts back and clear their pair's wait.
        store.login_succeeded(&last).await.expect("success");
        store.login_succeeded(&admin_here).await.expect("success");
        assert_eq!(admitted(admit(&admin_here).await), (3, Duration::ZERO));
    }

    #[tokio::test]
    async fn memory_login_counters_follow_the_rules() {
        login_counters_follow_the_rules(&SessionStore::memory()).await;
    }

    fn redis_store() -> SessionStore {
        let config = RedisConfig {
            url: pgfleet_config::Secret::new(pgfleet_testkit::redis_url()),
            key_prefix: format!("unit-{}:", Uuid::new_v4().simple()),
            max_connections: 2,
            connect_timeout: Duration::from_secs(2),
        };
        SessionStore::redis(&config).expect("redis store")
    }

    #[tokio::test]
    async fn redis_login_counters_follow_the_same_rules() {
        login_counters_follow_the_rules(&redis_store()).await;
    }

    /// The users version a session is read with: the same until a change
    /// begins, "changing" while it runs, a value never seen before once it
    /// ended; both stores.
    async fn users_version_follows_changes(store: &SessionStore) {
        let (_, session) = store
            .create(Uuid::new_v4(), Duration::from_secs(60))
            .await
            .expect("create");
        let version = async || {
            store
                .get(&session.id, None)
                .await
                .expect("get")
                .expect("live session")
                .1
        };
        let first = version().await;
        assert!(matches!(first, UsersVersion::Current(_)));
        assert_eq!(version().await, first, "unchanged between calls");
        store.begin_user_change().await.expect("begin");
        assert_eq!(version().await, UsersVersion::Changing);
        store.end_user_change().await.expect("end");
        let second = version().await;
        assert!(matches!(second, UsersVersion::Current(_)));
        assert_ne!(second, first);
    }

    #[tokio::test]
    async fn memory_users_version_follows_changes() {
        users_version_follows_changes(&SessionStore::memory()).await;
    }

    #[tokio::test]
    async fn redis_users_version_follows_changes() {
        users_version_follows_changes(&redis_store()).await;
    }
}
