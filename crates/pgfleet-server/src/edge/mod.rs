//! The network edge: how connections are accepted and what every call must
//! pass before a service sees it, apart from authentication.
//!
//! - [`tls`]: TLS (and mTLS) on the gRPC port, with certificate files read
//!   again on an interval so a rotated certificate needs no restart.
//! - [`transport`]: HTTP/2 and TCP limits, and message size limits.
//! - [`client_address`]: who the client is (the TCP peer, or behind a
//!   trusted proxy the address it forwarded), for audit, throttling and logs.
//! - [`rate_limit`]: the per-identity rate limit on `Execute`/`ExecuteStream`.
//! - [`expensive_limit`]: the rate limits on expensive calls (replication
//!   runs, exports, catalog introspection), per identity and per address,
//!   shared by every replica through Redis.

pub mod client_address;
pub mod expensive_limit;
pub mod rate_limit;
pub mod tls;
pub mod transport;

pub use client_address::{ClientAddress, ClientAddressLayer};
pub use expensive_limit::{ExpensiveCallLimitLayer, ExpensiveCallLimiter};
pub use rate_limit::{QueryRateLimitLayer, RateLimitError};
pub use tls::{ServerTls, TlsError};
