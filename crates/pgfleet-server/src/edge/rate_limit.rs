//! The per-identity rate limit on `QueryService/Execute`, `ExecuteStream`
//! and `Validate` (`[query.rate_limit]`), a tower layer inside the
//! authentication gate so it knows who is calling. Validate has a bucket of
//! its own (same rate): it runs nothing, but each call is a trip through
//! the one SQL parser thread, so it is bounded too.
//!
//! One token bucket (GCRA, `governor`) per user or API key, in this
//! process: with several replicas behind a balancer each allows the rate,
//! which bounds a runaway client without a shared store on the hot path.
//! A refused call never reaches the service: nothing runs on any target and
//! nothing goes on record, like every refusal made before a target is chosen.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{Either, Ready};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use pgfleet_config::RateLimitConfig;
use tower::{Layer, Service};
use uuid::Uuid;

use pgfleet_engine::identity::{Identity, Principal};

/// The methods the limit applies to, and the bucket each draws on.
const LIMITED_PATHS: [(&str, Bucket); 3] = [
    ("/pgfleet.v1.QueryService/Execute", Bucket::Execute),
    ("/pgfleet.v1.QueryService/ExecuteStream", Bucket::Execute),
    ("/pgfleet.v1.QueryService/Validate", Bucket::Validate),
];

/// Executions and validations are counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bucket {
    Execute,
    Validate,
}

/// Buckets idle long enough to be full again are dropped every this many
/// checks, so identities that stopped calling do not hold memory.
const SWEEP_EVERY: u64 = 4096;

/// A call refused by a rate limit (this one, or the shared limits of
/// [`super::expensive_limit`]). Mapped in [`crate::status`].
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo`.
    #[error(
        "{limit} rate limit of {who} exceeded ({per_second}/s, burst {burst}); nothing was run; retry in {:.1}s",
        retry_after.as_secs_f64()
    )]
    Exceeded {
        /// Which limit: `query`, or a group of expensive calls.
        limit: &'static str,
        /// `Identity::label()` or `address <ip>`: who, never a credential.
        who: String,
        per_second: f64,
        burst: u32,
        retry_after: Duration,
    },
    /// UNAVAILABLE: the shared limit's store (Redis) did not answer and
    /// `rate_limits.on_redis_error = "closed"`.
    #[error("the rate limit store is unavailable; nothing was run; retry shortly")]
    StoreUnavailable(#[source] crate::redis_pool::RedisPoolError),
}

/// The governor quota of `settings`; `None` when it would not limit
/// anything (validation refuses such values; this keeps callers total).
pub(crate) fn quota(settings: &RateLimitConfig) -> Option<Quota> {
    let burst = NonZeroU32::new(settings.effective_burst())?;
    let period = Duration::try_from_secs_f64(1.0 / settings.per_second).ok()?;
    Some(Quota::with_period(period)?.allow_burst(burst))
}

/// Whose bucket: users and API keys are counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    User(Uuid, Bucket),
    ApiKey(Uuid, Bucket),
}

/// The buckets, shared by every connection.
pub struct QueryRateLimiter {
    limiter: DefaultKeyedRateLimiter<Key>,
    settings: RateLimitConfig,
    checks: AtomicU64,
}

impl QueryRateLimiter {
    /// `None` when `settings` would not limit anything (validation refuses
    /// such values; this keeps the constructor total).
    pub fn new(settings: &RateLimitConfig) -> Option<Self> {
        Some(Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota(settings)?),
            settings: settings.clone(),
            checks: AtomicU64::new(0),
        })
    }

    /// Takes one token from `identity`'s bucket, or says when one is due.
    fn check(&self, identity: &Identity, bucket: Bucket) -> Result<(), RateLimitError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        let key = match &identity.principal {
            Principal::User { id, .. } => Key::User(*id, bucket),
            Principal::ApiKey { id, .. } => Key::ApiKey(*id, bucket),
        };
        self.limiter.check_key(&key).map_err(|not_until| {
            let now = DefaultClock::default().now();
            RateLimitError::Exceeded {
                limit: "query",
                who: identity.label(),
                per_second: self.settings.per_second,
                burst: self.settings.effective_burst(),
                retry_after: not_until.wait_time_from(now),
            }
        })
    }
}

/// Applies a [`QueryRateLimiter`] (see `app.rs`); must sit inside the
/// authentication layer, which attaches the identity.
#[derive(Clone)]
pub struct QueryRateLimitLayer {
    limiter: Option<Arc<QueryRateLimiter>>,
}

impl QueryRateLimitLayer {
    /// A layer for `[query.rate_limit]`; without one it lets everything by.
    pub fn new(settings: Option<&RateLimitConfig>) -> Self {
        Self {
            limiter: settings.and_then(QueryRateLimiter::new).map(Arc::new),
        }
    }
}

impl<S> Layer<S> for QueryRateLimitLayer {
    type Service = QueryRateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        QueryRateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// The service [`QueryRateLimitLayer`] produces.
#[derive(Clone)]
pub struct QueryRateLimit<S> {
    inner: S,
    limiter: Option<Arc<QueryRateLimiter>>,
}

impl<S, B> Service<http::Request<B>> for QueryRateLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(limiter) = &self.limiter
            && let Some((_, bucket)) = LIMITED_PATHS
                .iter()
                .find(|(path, _)| *path == request.uri().path())
            && let Some(identity) = request.extensions().get::<Identity>()
            && let Err(error) = limiter.check(identity, *bucket)
        {
            tracing::info!(who = %identity.label(), path = request.uri().path(), "query rate limit exceeded");
            return Either::Right(futures::future::ready(Ok(tonic::Status::from(error).into_http())));
        }
        Either::Left(self.inner.call(request))
    }
}
