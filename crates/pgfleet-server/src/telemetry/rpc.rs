//! The telemetry tower layer: one span and one set of measurements per
//! gRPC call.
//!
//! For every call it fixes the request id (the caller's `x-request-id` when
//! acceptable, a new UUIDv7 otherwise, written back into the request so the
//! services and the audit trail use the same one), opens the `rpc` span
//! (method, request id; the auth gate adds the identity label) as a child of
//! the caller's W3C `traceparent` when one is sent, and when the call ends —
//! the status in the headers, or in the trailers after the last message of
//! a response stream, or the client gone — records the status on the span,
//! counts the call and observes its duration.
//!
//! It sits outside the auth gate, so refused calls are counted and their
//! log lines carry the request id too, and inside grpc-web, so it sees
//! plain gRPC trailers (the whole order is in `app.rs`).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tower::{Layer, Service};
use tracing::Instrument as _;

use super::metrics::Metrics;
use crate::auth::access::RPC_ACCESS;

/// The header both the caller and pgfleet use for the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Methods outside `pgfleet.v1` that get their own label values.
const OTHER_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// (service, method) of a gRPC path, from a closed list: a client calling
/// made-up paths must not be able to mint new label values (series).
pub fn method_labels(path: &str) -> (&'static str, &'static str) {
    RPC_ACCESS
        .iter()
        .map(|(known, _)| *known)
        .chain(OTHER_METHODS.iter().copied())
        .find(|known| *known == path)
        .and_then(|known| known.strip_prefix('/')?.split_once('/'))
        .unwrap_or(("unknown", "unknown"))
}

/// Wraps the whole router (see `app.rs`), outside the auth gate.
#[derive(Clone)]
pub struct RpcLayer {
    metrics: Metrics,
}

impl RpcLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`RpcLayer`] produces.
#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B> Service<http::Request<B>> for RpcService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let (service, method) = method_labels(request.uri().path());
        let request_id = settle_request_id(request.headers_mut());
        // The caller's trace (or none: a new root, never whatever happened
        // to be current) is the OpenTelemetry context while the span is
        // created, so the span continues it; a no-op without export.
        let caller = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        let attached = caller.attach();
        // ERROR level, although it is no error: a span is kept only when
        // the filter lets its level through, and the request id must be on
        // every line that is logged at all, warnings included.
        let span = tracing::error_span!(
            "rpc",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            request_id = %request_id,
            identity = tracing::field::Empty,
        );
        drop(attached);

        // The clone is not ready; swap it in so the instance `poll_ready`
        // prepared is the one that serves this request (tower's contract).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let metrics = self.metrics.clone();
        let called = span.in_scope(|| inner.call(request));
        Box::pin(async move {
            let ended = CallEnd {
                metrics,
                service,
                method,
                started,
                span: span.clone(),
            };
            let response = match called.instrument(span).await {
                Ok(response) => response,
                Err(error) => {
                    ended.finish(tonic::Code::Unknown);
                    return Err(error);
                }
            };
            let (mut parts, body) = response.into_parts();
            if !parts.headers.contains_key(REQUEST_ID_HEADER)
                && let Ok(value) = HeaderValue::from_str(&request_id)
            {
                parts.headers.insert(REQUEST_ID_HEADER, value);
            }
            // A status in the headers ends the call now (trailers-only
            // response: errors, refusals); otherwise it comes in the
            // trailers after the last message.
            let body = match status_in(&parts.headers) {
                Some(code) => {
                    ended.finish(code);
                    body
                }
                None => tonic::body::Body::new(ObservedBody {
                    inner: body,
                    end: Some(ended),
                }),
            };
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// The caller's request id if it is acceptable (printable ASCII, at most
/// 128 bytes), else a new one, written into `headers` either way.
fn settle_request_id(headers: &mut HeaderMap) -> String {
    let sent = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| crate::services::acceptable_request_id(id))
        .map(str::to_owned);
    match sent {
        Some(id) => id,
        None => {
            let id = uuid::Uuid::now_v7().to_string();
            if let Ok(value) = HeaderValue::from_str(&id) {
                headers.insert(REQUEST_ID_HEADER, value);
            }
            id
        }
    }
}

/// `grpc-status` of a header or trailer block.
pub(crate) fn status_in(headers: &HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(value))
}

/// What is left to do when a call ends.
struct CallEnd {
    metrics: Metrics,
    service: &'static str,
    method: &'static str,
    started: Instant,
    span: tracing::Span,
}

impl CallEnd {
    fn finish(self, code: tonic::Code) {
        let elapsed = self.started.elapsed();
        let name = code_name(code);
        self.metrics
            .rpc_finished(self.service, self.method, name, elapsed);
        self.span.record("rpc.grpc.status_code", code as i32);
        // OpenTelemetry's gRPC server convention: only these are the
        // server's errors; the rest are the caller's.
        if matches!(
            code,
            tonic::Code::Unknown
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unimplemented
                | tonic::Code::Internal
                | tonic::Code::Unavailable
                | tonic::Code::DataLoss
        ) {
            self.span.record("otel.status_code", "ERROR");
        }
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        let _inside = self.span.enter();
        // Probes arrive every few seconds; keep them out of the info log.
        if self.service == "grpc.health.v1.Health" && code == tonic::Code::Ok {
            tracing::debug!(code = name, elapsed_ms, "call finished");
        } else {
            tracing::info!(code = name, elapsed_ms, "call finished");
        }
    }
}

/// The canonical name of a gRPC status code (`INVALID_ARGUMENT`).
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A response body that ends the call when its trailers pass (or when it
/// is dropped early: the client went away, CANCELLED).
struct ObservedBody {
    inner: tonic::body::Body,
    end: Option<CallEnd>,
}

impl http_body::Body for ObservedBody {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame.trailers_ref().map(|trailers| {
                // Trailers without a status break the protocol.
                status_in(trailers).unwrap_or(tonic::Code::Unknown)
            }),
            Poll::Ready(Some(Err(_))) => Some(tonic::Code::Internal),
            // Ended without trailers: not a gRPC response (never from tonic).
            Poll::Ready(None) => Some(tonic::Code::Unknown),
            Poll::Pending => None,
        };
        if let Some(code) = code
            && let Some(end) = self.end.take()
        {
            end.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some(end) = self.end.take() {
            end.finish(tonic::Code::Cancelled);
        }
    }
}

/// Reads W3C trace context from HTTP/2 headers (gRPC metadata).
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_methods_get_their_names() {
        for (path, expected) in [
            (
                "/pgfleet.v1.QueryService/Execute",
                ("pgfleet.v1.QueryService", "Execute"),
            ),
            ("/grpc.health.v1.Health/Check", ("grpc.health.v1.Health", "Check")),
            ("/pgfleet.v1.QueryService/Exfiltrate", ("unknown", "unknown")),
            ("/made.up/x", ("unknown", "unknown")),
            ("", ("unknown", "unknown")),
        ] {
            assert_eq!(method_labels(path), expected, "{path}");
        }
    }

    #[test]
    fn request_ids_are_kept_or_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(settle_request_id(&mut headers), "abc-123");

        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        let replaced = settle_request_id(&mut headers);
        assert!(uuid::Uuid::parse_str(&replaced).is_ok(), "{replaced}");
        assert_eq!(
            headers.get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()),
            Some(replaced.as_str()),
            "the services see the id the span carries"
        );
    }
}
