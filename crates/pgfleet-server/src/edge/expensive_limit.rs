//! Rate limits on the expensive RPCs (`[rate_limits]`), shared by every
//! replica through Redis: a tower layer inside the authentication gate, so
//! it knows who is calling, and inside the client-address layer, so it
//! knows from where.
//!
//! The calls, by group ([`LIMITED_PATHS`]): `replication` (RunJob,
//! ReplicateTable: whole-table copies), `export` (ExportExecutions: the
//! audit trail streamed out) and `introspection` (ListSchemas, ListTables:
//! live catalog reads in a READ ONLY transaction on every target;
//! CompareTables: checksums over a whole table on every copy).
//! GetConfiguration and GetHealth answer from memory and are not limited;
//! neither are Execute and friends, which have `[query.rate_limit]`
//! (in-process on purpose: a Redis round trip on every query would cost
//! more than pgfleet's own share of it).
//!
//! Each group has a bucket per caller identity and one per client address;
//! a call takes a token from both, atomically, or from neither (one GCRA
//! Lua script, [`GCRA_SCRIPT`], over both keys; Redis' clock decides, so
//! replicas with skewed clocks agree). Keys are
//! `<redis.key_prefix>ratelimit:<group>:<identity|address>:<who>` and
//! expire when their bucket is full again.
//!
//! Without `[redis]` the same buckets live in this process (governor, like
//! the query limit), each replica allowing the rate. While Redis does not
//! answer (a failed command, or a failed check of the dependency watcher,
//! after which Redis is not asked until a check succeeds, so callers do not
//! wait for a timeout each), `on_redis_error` decides: `open` checks the
//! in-process buckets instead (still limited, no longer shared), `closed`
//! refuses with UNAVAILABLE. A refused call never reaches its service:
//! nothing runs, nothing goes on record.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bb8_redis::redis;
use futures::future::{BoxFuture, Either};
use governor::DefaultKeyedRateLimiter;
use governor::clock::{Clock as _, DefaultClock};
use pgfleet_config::{CallerLimits, ExpensiveCallLimits, OnRedisError, RateLimitConfig, RedisConfig};
use tower::{Layer, Service};
use uuid::Uuid;

use super::client_address::ClientAddress;
use super::rate_limit::{RateLimitError, quota};
use crate::readiness::{Dependency, Readiness};
use crate::redis_pool::{RedisPool, RedisPoolError};
use crate::telemetry::Metrics;
use pgfleet_engine::identity::{Identity, Principal};

/// The limited methods and the group each draws on.
pub const LIMITED_PATHS: [(&str, Group); 6] = [
    ("/pgfleet.v1.ReplicationService/RunJob", Group::Replication),
    (
        "/pgfleet.v1.ReplicationService/ReplicateTable",
        Group::Replication,
    ),
    ("/pgfleet.v1.HistoryService/ExportExecutions", Group::Export),
    ("/pgfleet.v1.FleetService/ListSchemas", Group::Introspection),
    ("/pgfleet.v1.FleetService/ListTables", Group::Introspection),
    ("/pgfleet.v1.QueryService/CompareTables", Group::Introspection),
];

/// A group of calls sharing buckets (a table of `[rate_limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    Replication,
    Export,
    Introspection,
}

impl Group {
    /// The name in the configuration, messages and keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Replication => "replication",
            Group::Export => "export",
            Group::Introspection => "introspection",
        }
    }

    fn limits(self, config: &ExpensiveCallLimits) -> Option<&CallerLimits> {
        match self {
            Group::Replication => config.replication.as_ref(),
            Group::Export => config.export.as_ref(),
            Group::Introspection => config.introspection.as_ref(),
        }
    }
}

/// Which bucket of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scope {
    Identity,
    Address,
}

impl Scope {
    /// The name in keys and the `bucket` label.
    fn as_str(self) -> &'static str {
        match self {
            Scope::Identity => "identity",
            Scope::Address => "address",
        }
    }
}

/// Whose bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    User(Uuid),
    ApiKey(Uuid),
    Address(IpAddr),
}

impl Subject {
    /// The last part of the Redis key (ids and addresses, never a name that
    /// could be renamed into someone else's bucket).
    fn key_part(&self) -> String {
        match self {
            Subject::User(id) => format!("user:{id}"),
            Subject::ApiKey(id) => format!("api_key:{id}"),
            Subject::Address(ip) => format!("address:{ip}"),
        }
    }
}

/// One bucket a call must take a token from.
struct Draw<'a> {
    scope: Scope,
    subject: Subject,
    /// Who, for the message: `user:alice`, `address 203.0.113.7`.
    who: String,
    settings: &'a RateLimitConfig,
}

impl Draw<'_> {
    fn exceeded(&self, group: Group, retry_after: Duration) -> RateLimitError {
        RateLimitError::Exceeded {
            limit: group.as_str(),
            who: self.who.clone(),
            per_second: self.settings.per_second,
            burst: self.settings.effective_burst(),
            retry_after,
        }
    }
}

/// GCRA over every bucket in KEYS at once: a token from each, or from none.
/// ARGV holds, per key, its emission interval (microseconds per token) and
/// its burst. A key stores its bucket's theoretical arrival time (TAT,
/// microseconds of Redis' clock) and expires when the bucket is full.
/// Returns {0, 0} when the tokens were taken, else {i, wait}: key i has no
/// token for `wait` more microseconds (and nothing was taken).
const GCRA_SCRIPT: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = math.max(tonumber(redis.call('GET', key) or '0'), now)
  local wait = tat + interval - interval * burst - now
  if wait > 0 then return {i, math.ceil(wait)} end
  tats[i] = tat + interval
end
for i, key in ipairs(KEYS) do
  local ttl = math.ceil((tats[i] - now) / 1000) + 1
  redis.call('SET', key, string.format('%.0f', tats[i]), 'PX', string.format('%.0f', ttl))
end
return {0, 0}
";

/// The shared buckets in Redis.
struct SharedBuckets {
    pool: RedisPool,
    prefix: String,
    script: redis::Script,
}

/// Buckets idle long enough to be full again are dropped every this many
/// in-process checks.
const SWEEP_EVERY: u64 = 1024;

/// The buckets of every limited group, and where they are kept.
pub struct ExpensiveCallLimiter {
    limits: ExpensiveCallLimits,
    shared: Option<SharedBuckets>,
    /// Without Redis, or in its place while it is down (`open`).
    local: HashMap<(Group, Scope), DefaultKeyedRateLimiter<Subject>>,
    local_checks: AtomicU64,
    /// Set while Redis fails, so the outage is logged once, not per call.
    store_failing: AtomicBool,
    /// The dependency watcher's view: Redis is not asked while it is down.
    readiness: Readiness,
    metrics: Metrics,
}

impl ExpensiveCallLimiter {
    /// `None` when `[rate_limits]` limits nothing. With `redis` (the
    /// server's pool and its settings) the buckets are shared.
    pub fn new(
        limits: &ExpensiveCallLimits,
        redis: Option<(RedisPool, &RedisConfig)>,
        readiness: Readiness,
        metrics: Metrics,
    ) -> Option<Self> {
        if !limits.any() {
            return None;
        }
        let mut local = HashMap::new();
        for group in [Group::Replication, Group::Export, Group::Introspection] {
            let Some(caller) = group.limits(limits) else {
                continue;
            };
            for (scope, settings) in [
                (Scope::Identity, &caller.per_identity),
                (Scope::Address, &caller.per_address),
            ] {
                if let Some(quota) = settings.as_ref().and_then(quota) {
                    local.insert((group, scope), DefaultKeyedRateLimiter::keyed(quota));
                }
            }
        }
        let shared = redis.map(|(pool, config)| SharedBuckets {
            pool,
            prefix: format!("{}ratelimit:", config.key_prefix),
            script: redis::Script::new(GCRA_SCRIPT),
        });
        match &shared {
            Some(_) => tracing::info!(
                on_redis_error = ?limits.on_redis_error,
                "rate limits on expensive calls are shared by every replica through Redis"
            ),
            None => tracing::warn!(
                "no [redis] configured: the rate limits on expensive calls are kept in this process; \
                 each replica allows the whole rate"
            ),
        }
        Some(Self {
            limits: limits.clone(),
            shared,
            local,
            local_checks: AtomicU64::new(0),
            store_failing: AtomicBool::new(false),
            readiness,
            metrics,
        })
    }

    /// Takes a token from each of the caller's buckets of `group`, or says
    /// why not. `path` is for the log and the metrics.
    async fn check(
        &self,
        path: &str,
        group: Group,
        identity: Option<&Identity>,
        client: Option<ClientAddress>,
    ) -> Result<(), RateLimitError> {
        let Some(limits) = group.limits(&self.limits) else {
            return Ok(());
        };
        let draws = draws(limits, identity, client);
        if draws.is_empty() {
            return Ok(());
        }
        let refused = match &self.shared {
            Some(shared) => match self.check_shared(shared, group, &draws).await {
                Ok(refused) => {
                    if self.store_failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(
                            "Redis answers again: rate limits on expensive calls are shared again"
                        );
                    }
                    refused
                }
                Err(error) => {
                    if !self.store_failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            %error,
                            on_redis_error = ?self.limits.on_redis_error,
                            "Redis does not answer: rate limits on expensive calls {}",
                            match self.limits.on_redis_error {
                                OnRedisError::Open => "fall back to this replica's own buckets",
                                OnRedisError::Closed => "refuse every limited call",
                            }
                        );
                    }
                    match self.limits.on_redis_error {
                        OnRedisError::Open => self.check_local(group, &draws),
                        OnRedisError::Closed => {
                            self.metrics.rate_limited(path, "store_unavailable");
                            return Err(RateLimitError::StoreUnavailable(error));
                        }
                    }
                }
            },
            None => self.check_local(group, &draws),
        };
        match refused {
            None => Ok(()),
            Some((draw, retry_after)) => {
                let draw = &draws[draw];
                self.metrics.rate_limited(path, draw.scope.as_str());
                tracing::info!(
                    who = %draw.who,
                    path,
                    bucket = draw.scope.as_str(),
                    "rate limit on expensive calls exceeded"
                );
                Err(draw.exceeded(group, retry_after))
            }
        }
    }

    /// The shared check: `None` when every token was taken, else which
    /// draw was refused and for how long.
    async fn check_shared(
        &self,
        shared: &SharedBuckets,
        group: Group,
        draws: &[Draw<'_>],
    ) -> Result<Option<(usize, Duration)>, RedisPoolError> {
        if !self.readiness.current().is_up(Dependency::Redis) {
            return Err(RedisPoolError::Down);
        }
        let mut invocation = shared.script.prepare_invoke();
        for draw in draws {
            invocation.key(format!(
                "{}{}:{}:{}",
                shared.prefix,
                group.as_str(),
                draw.scope.as_str(),
                draw.subject.key_part()
            ));
            // Validation keeps per_second in (0, 1e6]: at least 1 µs.
            let interval = (1_000_000.0 / draw.settings.per_second).ceil() as u64;
            invocation
                .arg(interval.max(1))
                .arg(draw.settings.effective_burst());
        }
        let (refused, wait): (usize, u64) = shared
            .pool
            .run(async |connection| invocation.invoke_async(connection).await)
            .await?;
        Ok(refused
            .checked_sub(1)
            .map(|index| (index.min(draws.len() - 1), Duration::from_micros(wait))))
    }

    /// The in-process check. Unlike the script, a refusal by the address
    /// bucket has already taken the identity's token (governor cannot look
    /// without taking); this only serves while Redis is absent or down.
    fn check_local(&self, group: Group, draws: &[Draw<'_>]) -> Option<(usize, Duration)> {
        let sweep = self.local_checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1;
        for (index, draw) in draws.iter().enumerate() {
            let Some(limiter) = self.local.get(&(group, draw.scope)) else {
                continue;
            };
            if sweep {
                limiter.retain_recent();
            }
            if let Err(not_until) = limiter.check_key(&draw.subject) {
                let now = DefaultClock::default().now();
                return Some((index, not_until.wait_time_from(now)));
            }
        }
        None
    }
}

/// The buckets of `limits` this caller draws on: the identity's (none for
/// a call without one) and the client address's (none without a TCP peer).
fn draws<'a>(
    limits: &'a CallerLimits,
    identity: Option<&Identity>,
    client: Option<ClientAddress>,
) -> Vec<Draw<'a>> {
    let mut draws = Vec::with_capacity(2);
    if let (Some(settings), Some(identity)) = (&limits.per_identity, identity) {
        let subject = match &identity.principal {
            Principal::User { id, .. } => Subject::User(*id),
            Principal::ApiKey { id, .. } => Subject::ApiKey(*id),
        };
        draws.push(Draw {
            scope: Scope::Identity,
            subject,
            who: identity.label(),
            settings,
        });
    }
    if let (Some(settings), Some(client)) = (&limits.per_address, client) {
        draws.push(Draw {
            scope: Scope::Address,
            subject: Subject::Address(client.ip),
            who: format!("address {}", client.ip),
            settings,
        });
    }
    draws
}

/// Applies an [`ExpensiveCallLimiter`] (see `app.rs`); must sit inside the
/// client-address and authentication layers.
#[derive(Clone)]
pub struct ExpensiveCallLimitLayer {
    limiter: Option<Arc<ExpensiveCallLimiter>>,
}

impl ExpensiveCallLimitLayer {
    /// Lets everything by when `limiter` is `None`.
    pub fn new(limiter: Option<ExpensiveCallLimiter>) -> Self {
        Self {
            limiter: limiter.map(Arc::new),
        }
    }
}

impl<S> Layer<S> for ExpensiveCallLimitLayer {
    type Service = ExpensiveCallLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ExpensiveCallLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// The service [`ExpensiveCallLimitLayer`] produces.
#[derive(Clone)]
pub struct ExpensiveCallLimit<S> {
    inner: S,
    limiter: Option<Arc<ExpensiveCallLimiter>>,
}

impl<S, B> Service<http::Request<B>> for ExpensiveCallLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Every other call (queries above all) passes without an await.
        let (Some(limiter), Some(group)) = (
            &self.limiter,
            LIMITED_PATHS
                .iter()
                .find(|(path, _)| *path == request.uri().path())
                .map(|(_, group)| *group),
        ) else {
            return Either::Left(self.inner.call(request));
        };
        let limiter = Arc::clone(limiter);
        // The clone is not ready; swap it in so the instance `poll_ready`
        // prepared is the one that serves this request (tower's contract).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Either::Right(Box::pin(async move {
            let identity = request.extensions().get::<Identity>();
            let client = request.extensions().get::<ClientAddress>().copied();
            let verdict = limiter.check(request.uri().path(), group, identity, client).await;
            match verdict {
                Ok(()) => inner.call(request).await,
                Err(error) => Ok(tonic::Status::from(error).into_http()),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs [`GCRA_SCRIPT`] over `buckets` (key, microseconds per token,
    /// burst): (refused bucket, 1-based, or 0; its wait in microseconds).
    async fn draw(pool: &RedisPool, buckets: &[(&str, u64, u32)]) -> (usize, u64) {
        let script = redis::Script::new(GCRA_SCRIPT);
        let mut invocation = script.prepare_invoke();
        for (key, interval, burst) in buckets {
            invocation.key(*key).arg(*interval).arg(*burst);
        }
        pool.run(async |connection| invocation.invoke_async(connection).await)
            .await
            .expect("script answers")
    }

    #[tokio::test]
    async fn the_script_takes_a_token_from_every_bucket_or_from_none() {
        let config = RedisConfig {
            url: pgfleet_config::Secret::new(pgfleet_testkit::redis_url()),
            key_prefix: format!("unit-{}:", Uuid::new_v4().simple()),
            max_connections: 2,
            connect_timeout: Duration::from_secs(2),
        };
        let pool = RedisPool::new(&config).expect("pool");
        let (wide, narrow) = (
            format!("{}wide", config.key_prefix),
            format!("{}narrow", config.key_prefix),
        );
        // One token per 100 s: nothing refills while the test runs.
        const PER_TOKEN: u64 = 100_000_000;
        let both = [(wide.as_str(), PER_TOKEN, 2), (narrow.as_str(), PER_TOKEN, 1)];
        assert_eq!(draw(&pool, &both).await, (0, 0));
        let (refused, wait) = draw(&pool, &both).await;
        assert_eq!(refused, 2, "the narrow bucket is empty");
        assert!(wait > PER_TOKEN - 10_000_000 && wait <= PER_TOKEN, "wait {wait}");
        // The refused call took nothing from the wide bucket: one left.
        let wide_only = [(wide.as_str(), PER_TOKEN, 2)];
        assert_eq!(draw(&pool, &wide_only).await.0, 0);
        assert_eq!(draw(&pool, &wide_only).await.0, 1);
        // Keys go when their bucket would be full again (2 tokens: 200 s).
        let ttl: i64 = pool
            .run(async |connection| redis::cmd("PTTL").arg(&wide).query_async(connection).await)
            .await
            .expect("PTTL");
        assert!(ttl > 0 && ttl <= 200_001, "ttl {ttl} ms");
    }

    #[test]
    fn every_limited_path_is_a_known_rpc() {
        for (path, _) in LIMITED_PATHS {
            assert!(
                crate::auth::access::access_for(path).is_some(),
                "{path} is not in RPC_ACCESS"
            );
        }
    }
}
