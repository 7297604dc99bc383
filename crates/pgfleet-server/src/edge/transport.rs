//! HTTP/2 and TCP settings of the gRPC listener, from `[server]`.
//!
//! Message sizes are per service in tonic (the generated servers' codecs),
//! so `app.rs` applies [`MessageLimit`] to each one with [`sized!`](crate::sized).

use std::time::Duration;

use pgfleet_config::ServerConfig;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// `server.max_message_bytes` as tonic takes it.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimit(pub usize);

impl MessageLimit {
    pub fn of(server: &ServerConfig) -> Self {
        // Validation caps the value at 4 GiB; saturate on 32-bit targets.
        Self(usize::try_from(server.max_message_bytes).unwrap_or(usize::MAX))
    }
}

/// Applies `limit` to a generated tonic server (decode: requests larger are
/// refused before the service runs; encode: a larger response fails the call).
#[macro_export]
macro_rules! sized {
    ($service:expr, $limit:expr) => {
        $service
            .max_decoding_message_size($limit.0)
            .max_encoding_message_size($limit.0)
    };
}

/// `Some(d)` unless `d` is zero (the config's "off").
fn enabled(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// A tonic server builder with the HTTP/2 limits of `server`.
pub fn builder(server: &ServerConfig) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(server.max_concurrent_streams)
        .http2_keepalive_interval(enabled(server.keepalive_interval))
        .http2_keepalive_timeout(Some(server.keepalive_timeout))
}

/// Accepted sockets of `listener` with TCP_NODELAY (gRPC's small frames
/// must not wait for Nagle) and TCP keepalive set, as tonic's own `serve`
/// would set them.
pub fn tcp_incoming(listener: TcpListener, server: &ServerConfig) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(enabled(server.tcp_keepalive))
}
