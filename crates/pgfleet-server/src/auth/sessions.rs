//! Sessions and login-attempt counters: short-lived state kept in Redis
//! (bb8-redis), or in this process when no Redis is configured.
//!
//! Sessions are stored under the SHA-256 of their token with a TTL, plus a
//! per-user set of session ids so deactivation and password resets can end
//! all of a user's sessions at once. Nothing here decides who a user is or
//! which role they hold: that is read fresh from PostgreSQL on every call.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bb8_redis::RedisConnectionManager;
use bb8_redis::bb8;
use bb8_redis::redis::{self, aio::MultiplexedConnection};
use chrono::{DateTime, Utc};
use pgfleet_config::RedisConfig;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::SessionStoreError;
use super::credentials::SessionToken;

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Hex SHA-256 of the token.
    pub id: String,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The outcome of counting one login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptCount {
    /// Attempts in the current window, this one included.
    pub attempts: u64,
    /// Time until the window ends.
    pub resets_in: Duration,
}

/// Where sessions and attempt counters live.
pub enum SessionStore {
    /// Shared by every replica.
    Redis(RedisSessions),
    /// This process only; sessions end when it stops.
    Memory(MemorySessions),
}

impl SessionStore {
    /// A Redis-backed store. Connects lazily, so a Redis that is down at
    /// start only fails the calls that need it until it is back.
    pub fn redis(config: &RedisConfig) -> Result<Self, SessionStoreError> {
        let manager = RedisConnectionManager::new(config.url.expose())?;
        let pool = bb8::Pool::builder()
            .max_size(config.max_connections)
            .connection_timeout(config.connect_timeout)
            .build_unchecked(manager);
        Ok(SessionStore::Redis(RedisSessions {
            pool,
            prefix: config.key_prefix.clone(),
            command_timeout: config.connect_timeout,
        }))
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

    /// The live session stored under `session_id`; with `renew`, its
    /// lifetime starts over (sliding sessions).
    pub async fn get(
        &self,
        session_id: &str,
        renew: Option<Duration>,
    ) -> Result<Option<Session>, SessionStoreError> {
        match self {
            SessionStore::Redis(redis) => redis.get(session_id, renew).await,
            SessionStore::Memory(memory) => Ok(memory.get(session_id, renew)),
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

    /// Counts one attempt against `key` in a fixed window of `window`.
    pub async fn count_attempt(
        &self,
        key: &str,
        window: Duration,
    ) -> Result<AttemptCount, SessionStoreError> {
        match self {
            SessionStore::Redis(redis) => redis.count_attempt(key, window).await,
            SessionStore::Memory(memory) => Ok(memory.count_attempt(key, window)),
        }
    }

    /// Forgets the attempts counted against `key`.
    pub async fn clear_attempts(&self, key: &str) -> Result<(), SessionStoreError> {
        match self {
            SessionStore::Redis(redis) => redis.clear_attempts(key).await,
            SessionStore::Memory(memory) => {
                memory.clear_attempts(key);
                Ok(())
            }
        }
    }
}

/// What is stored under a session key (the id is the key itself).
#[derive(Serialize, Deserialize)]
struct StoredSession {
    user_id: Uuid,
    created_at: DateTime<Utc>,
}

/// The Redis store.
pub struct RedisSessions {
    pool: bb8::Pool<RedisConnectionManager>,
    prefix: String,
    command_timeout: Duration,
}

impl RedisSessions {
    fn session_key(&self, session_id: &str) -> String {
        format!("{}session:{session_id}", self.prefix)
    }

    fn user_sessions_key(&self, user_id: Uuid) -> String {
        format!("{}user-sessions:{user_id}", self.prefix)
    }

    fn attempts_key(&self, key: &str) -> String {
        format!("{}login-attempts:{key}", self.prefix)
    }

    /// Runs `pipeline` on a pooled connection within the command timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        pipeline: &redis::Pipeline,
    ) -> Result<T, SessionStoreError> {
        let work = async {
            let mut connection: bb8::PooledConnection<'_, RedisConnectionManager> =
                self.pool.get().await.map_err(|error| match error {
                    bb8::RunError::User(error) => SessionStoreError::Command(error),
                    bb8::RunError::TimedOut => {
                        SessionStoreError::Pool("timed out waiting for a connection".to_owned())
                    }
                })?;
            let connection: &mut MultiplexedConnection = &mut connection;
            Ok::<T, SessionStoreError>(pipeline.query_async(connection).await?)
        };
        // The pool wait is bounded by bb8; this also bounds a Redis that
        // accepts connections but stops answering.
        let limit = self.command_timeout.saturating_mul(2);
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| SessionStoreError::Timeout(limit))?
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
    ) -> Result<Option<Session>, SessionStoreError> {
        let key = self.session_key(session_id);
        let mut pipeline = redis::pipe();
        if let Some(ttl) = renew {
            // PEXPIRE XX-like: on a missing key it is a no-op.
            pipeline.cmd("PEXPIRE").arg(&key).arg(millis(ttl)).ignore();
        }
        pipeline.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
        let (value, ttl_ms): (Option<String>, i64) = self.run(&pipeline).await?;
        let Some(value) = value else {
            return Ok(None);
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
        Ok(Some(Session {
            id: session_id.to_owned(),
            user_id: stored.user_id,
            created_at: stored.created_at,
            expires_at: Utc::now() + remaining,
        }))
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

    async fn count_attempt(&self, key: &str, window: Duration) -> Result<AttemptCount, SessionStoreError> {
        let key = self.attempts_key(key);
        let mut pipeline = redis::pipe();
        pipeline
            .atomic()
            // Starts the window only if none is running.
            .cmd("SET")
            .arg(&key)
            .arg(0)
            .arg("PX")
            .arg(millis(window))
            .arg("NX")
            .ignore()
            .cmd("INCR")
            .arg(&key)
            .cmd("PTTL")
            .arg(&key);
        let (attempts, ttl_ms): (u64, i64) = self.run(&pipeline).await?;
        Ok(AttemptCount {
            attempts,
            resets_in: Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0)),
        })
    }

    async fn clear_attempts(&self, key: &str) -> Result<(), SessionStoreError> {
        let mut pipeline = redis::pipe();
        pipeline.cmd("DEL").arg(self.attempts_key(key)).ignore();
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
    attempts: HashMap<String, (u64, Instant)>,
}

impl MemoryState {
    fn sweep(&mut self, now: Instant) {
        self.sessions.retain(|_, (_, deadline)| *deadline > now);
        let live = &self.sessions;
        self.by_user.retain(|_, ids| {
            ids.retain(|id| live.contains_key(id));
            !ids.is_empty()
        });
        self.attempts.retain(|_, (_, window_end)| *window_end > now);
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

    fn get(&self, session_id: &str, renew: Option<Duration>) -> Option<Session> {
        let now = Instant::now();
        let mut state = self.lock();
        let (session, deadline) = state.sessions.get_mut(session_id)?;
        if *deadline <= now {
            state.sessions.remove(session_id);
            return None;
        }
        if let Some(ttl) = renew {
            *deadline = now + ttl;
            session.expires_at = Utc::now() + ttl;
        }
        Some(session.clone())
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

    fn count_attempt(&self, key: &str, window: Duration) -> AttemptCount {
        let now = Instant::now();
        let mut state = self.lock();
        let entry = state.attempts.entry(key.to_owned()).or_insert((0, now + window));
        if entry.1 <= now {
            *entry = (0, now + window);
        }
        entry.0 += 1;
        AttemptCount {
            attempts: entry.0,
            resets_in: entry.1.saturating_duration_since(now),
        }
    }

    fn clear_attempts(&self, key: &str) {
        self.lock().attempts.remove(key);
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
                .map(|s| s.user_id),
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

    #[tokio::test]
    async fn memory_attempts_count_within_a_window() {
        let store = SessionStore::memory();
        let window = Duration::from_millis(50);
        for expected in 1..=3 {
            let count = store.count_attempt("user:alice", window).await.expect("count");
            assert_eq!(count.attempts, expected);
            assert!(count.resets_in <= window);
        }
        tokio::time::sleep(window).await;
        assert_eq!(
            store
                .count_attempt("user:alice", window)
                .await
                .expect("count")
                .attempts,
            1
        );
        store.clear_attempts("user:alice").await.expect("clear");
        assert_eq!(
            store
                .count_attempt("user:alice", window)
                .await
                .expect("count")
                .attempts,
            1
        );
    }
}
