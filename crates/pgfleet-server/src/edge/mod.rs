//! The network edge: how connections are accepted and what every call must
//! pass before a service sees it, apart from authentication.
//!
//! - [`tls`]: TLS (and mTLS) on the gRPC port, with certificate files read
//!   again on an interval so a rotated certificate needs no restart.
//! - [`transport`]: HTTP/2 and TCP limits, and message size limits.
//! - [`client_address`]: who the client is (the TCP peer, or behind a
//!   trusted proxy the address it forwarded), for audit, throttling and logs.
//! - [`rate_limit`]: the per-identity rate limit on `Execute`/`ExecuteStream`.

pub mod client_address;
pub mod rate_limit;
pub mod tls;
pub mod transport;

pub use client_address::{ClientAddress, ClientAddressLayer};
pub use rate_limit::{QueryRateLimitLayer, RateLimitError};
pub use tls::{ServerTls, TlsError};
