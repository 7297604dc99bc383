//! The one Redis connection pool of a server (`[redis]`), shared by
//! everything that keeps state across replicas: sessions and login counters
//! (`auth::sessions`), the shared rate limits on expensive calls
//! (`edge::expensive_limit`) and the dependency watcher's `PING`
//! (`readiness`). Every command goes through [`RedisPool::run`], bounded in
//! time, so a Redis that accepts connections but stops answering fails the
//! call instead of holding it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use bb8_redis::bb8;
use bb8_redis::redis::{self, aio::MultiplexedConnection};
use pgfleet_config::RedisConfig;

/// Why a Redis command did not answer. Messages never carry the URL (it may
/// hold a password).
#[derive(Debug, thiserror::Error)]
pub enum RedisPoolError {
    /// No pooled connection within the configured wait.
    #[error("no Redis connection: {0}")]
    Pool(String),
    /// A command failed or its reply was malformed.
    #[error("Redis command failed: {0}")]
    Command(#[from] redis::RedisError),
    /// A command did not answer in time.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Not asked: Redis failed its last health check (`readiness`), and
    /// waiting for each call to time out would only slow the callers.
    #[error("Redis did not answer its last health check")]
    Down,
}

/// A pool of multiplexed connections. Cheap to clone (the pool is shared).
///
/// A multiplexed connection carries any number of concurrent commands, so a
/// call holds its pool slot only to pick a connection: it runs its commands
/// on a clone and hands the slot straight back. Holding the slot for the
/// commands (and `PING`ing on every checkout, bb8's default) made 700
/// simultaneous calls queue for 16 connections past the wait and fail while
/// Redis was idle (the load test, `tests/faults/load.rs`). A connection whose
/// command broke it (I/O error, dropped, unanswered) is flagged and discarded
/// at its next checkout instead.
#[derive(Clone)]
pub struct RedisPool {
    pool: bb8::Pool<SharedConnectionManager>,
    command_timeout: Duration,
}

/// One multiplexed connection and whether a command found it broken.
#[derive(Clone)]
struct SharedConnection {
    connection: MultiplexedConnection,
    broken: Arc<AtomicBool>,
}

/// bb8-redis's manager, with the broken flag as `has_broken`.
struct SharedConnectionManager(RedisConnectionManager);

impl bb8::ManageConnection for SharedConnectionManager {
    type Connection = SharedConnection;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        Ok(SharedConnection {
            connection: self.0.connect().await?,
            broken: Arc::default(),
        })
    }

    async fn is_valid(&self, shared: &mut Self::Connection) -> Result<(), Self::Error> {
        self.0.is_valid(&mut shared.connection).await
    }

    fn has_broken(&self, shared: &mut Self::Connection) -> bool {
        shared.broken.load(Ordering::Relaxed)
    }
}

impl RedisPool {
    /// Connects lazily, so a Redis that is down at start only fails the
    /// calls that need it until it is back.
    pub fn new(config: &RedisConfig) -> Result<Self, RedisPoolError> {
        let manager = SharedConnectionManager(RedisConnectionManager::new(config.url.expose())?);
        let pool = bb8::Pool::builder()
            .max_size(config.max_connections)
            .connection_timeout(config.connect_timeout)
            .test_on_check_out(false)
            .build_unchecked(manager);
        Ok(Self {
            pool,
            command_timeout: config.connect_timeout,
        })
    }

    /// Runs `work` on a pooled connection, the wait for the connection and
    /// the work together bounded by twice the connect timeout.
    pub async fn run<T, F>(&self, work: F) -> Result<T, RedisPoolError>
    where
        F: AsyncFnOnce(&mut MultiplexedConnection) -> Result<T, redis::RedisError>,
    {
        let limit = self.command_timeout.saturating_mul(2);
        self.run_within(limit, work).await
    }

    /// [`RedisPool::run`] bounded by `limit` instead.
    pub async fn run_within<T, F>(&self, limit: Duration, work: F) -> Result<T, RedisPoolError>
    where
        F: AsyncFnOnce(&mut MultiplexedConnection) -> Result<T, redis::RedisError>,
    {
        // The pool wait is bounded by bb8; the deadline also bounds a Redis
        // that accepts connections but stops answering.
        let deadline = tokio::time::Instant::now() + limit;
        let mut shared = tokio::time::timeout_at(deadline, self.checkout())
            .await
            .map_err(|_| RedisPoolError::Timeout(limit))??;
        match tokio::time::timeout_at(deadline, work(&mut shared.connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error() {
                    shared.broken.store(true, Ordering::Relaxed);
                }
                Err(RedisPoolError::Command(error))
            }
            Err(_) => {
                // Unanswered: the connection may be dead without having
                // said so; a fresh one costs one connect.
                shared.broken.store(true, Ordering::Relaxed);
                Err(RedisPoolError::Timeout(limit))
            }
        }
    }

    /// A clone of a pooled connection that no command found broken; the
    /// slot is back in the pool when this returns.
    async fn checkout(&self) -> Result<SharedConnection, RedisPoolError> {
        loop {
            let pooled = self.pool.get().await.map_err(|error| match error {
                bb8::RunError::User(error) => RedisPoolError::Command(error),
                bb8::RunError::TimedOut => {
                    RedisPoolError::Pool("timed out waiting for a connection".to_owned())
                }
            })?;
            // A flagged connection is dropped from the pool as its guard
            // goes (`has_broken`); the next `get` connects anew.
            if !pooled.broken.load(Ordering::Relaxed) {
                return Ok(SharedConnection::clone(&pooled));
            }
        }
    }

    /// Runs `pipeline` ([`RedisPool::run`]).
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        pipeline: &redis::Pipeline,
    ) -> Result<T, RedisPoolError> {
        self.run(async |connection| pipeline.query_async(connection).await)
            .await
    }

    /// One `PING` within `limit`: whether Redis answers now.
    pub async fn ping(&self, limit: Duration) -> Result<(), RedisPoolError> {
        self.run_within(limit, async |connection| {
            redis::cmd("PING").query_async::<()>(connection).await
        })
        .await
    }
}
