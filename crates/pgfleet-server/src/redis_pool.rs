//! The one Redis connection pool of a server (`[redis]`), shared by
//! everything that keeps state across replicas: sessions and login counters
//! (`auth::sessions`), the shared rate limits on expensive calls
//! (`edge::expensive_limit`) and the dependency watcher's `PING`
//! (`readiness`). Every command goes through [`RedisPool::run`], bounded in
//! time, so a Redis that accepts connections but stops answering fails the
//! call instead of holding it.

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
#[derive(Clone)]
pub struct RedisPool {
    pool: bb8::Pool<RedisConnectionManager>,
    command_timeout: Duration,
}

impl RedisPool {
    /// Connects lazily, so a Redis that is down at start only fails the
    /// calls that need it until it is back.
    pub fn new(config: &RedisConfig) -> Result<Self, RedisPoolError> {
        let manager = RedisConnectionManager::new(config.url.expose())?;
        let pool = bb8::Pool::builder()
            .max_size(config.max_connections)
            .connection_timeout(config.connect_timeout)
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
        let bounded = async {
            let mut connection = self.pool.get().await.map_err(|error| match error {
                bb8::RunError::User(error) => RedisPoolError::Command(error),
                bb8::RunError::TimedOut => {
                    RedisPoolError::Pool("timed out waiting for a connection".to_owned())
                }
            })?;
            let connection: &mut MultiplexedConnection = &mut connection;
            Ok::<T, RedisPoolError>(work(connection).await?)
        };
        // The pool wait is bounded by bb8; this also bounds a Redis that
        // accepts connections but stops answering.
        tokio::time::timeout(limit, bounded)
            .await
            .map_err(|_| RedisPoolError::Timeout(limit))?
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
