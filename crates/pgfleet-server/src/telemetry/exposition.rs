//! The metrics listener on `server.metrics_addr`: plain HTTP/1.1, no
//! credentials, three routes:
//!
//! - `GET /metrics`: every series in Prometheus' text format;
//! - `GET /healthz`: liveness, 200 while the process serves (the same as
//!   the overall `grpc.health.v1` status);
//! - `GET /readyz`: readiness, 200 while every dependency answered its
//!   last check (`crate::readiness`), else 503; the plain-text body names
//!   each dependency and whether it is up, never an address or a secret.
//!
//! For load balancers and orchestrators that do not speak gRPC health.
//! A listener of its own rather than a route on the gRPC port: scrapers
//! speak HTTP/1.1 without credentials, while every call on the gRPC port
//! passes the auth gate; and the port can be kept inside the cluster.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use crate::readiness::Readiness;

/// The content type of the text exposition format, version 0.0.4.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `/healthz` and `/readyz`.
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// What the routes read.
#[derive(Clone)]
struct Exposed {
    metrics: Metrics,
    readiness: Readiness,
}

/// A running metrics listener.
pub struct MetricsListener {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl MetricsListener {
    /// Binds `addr` (port 0 picks a free one) and serves until stopped.
    pub async fn start(addr: SocketAddr, metrics: Metrics, readiness: Readiness) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let app = Router::new()
            .route("/metrics", get(scrape))
            .route("/healthz", get(alive))
            .route("/readyz", get(ready))
            .with_state(Exposed { metrics, readiness });
        let stopped = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
                tracing::warn!(%error, "metrics listener failed");
            }
        });
        tracing::info!(%addr, "metrics on http://{addr}/metrics");
        Ok(Self { addr, stop, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits for scrapes in flight.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "metrics listener task failed");
        }
    }
}

async fn scrape(State(exposed): State<Exposed>) -> Response {
    match exposed.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response(),
        Err(error) => {
            tracing::warn!(%error, "cannot render metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n").into_response()
        }
    }
}

/// Answering at all is the proof of life.
async fn alive() -> Response {
    ([(header::CONTENT_TYPE, PLAIN_TEXT)], "ok\n").into_response()
}

async fn ready(State(exposed): State<Exposed>) -> Response {
    let state = exposed.readiness.current();
    let code = if state.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, PLAIN_TEXT)], state.report()).into_response()
}
