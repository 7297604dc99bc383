//! The tower layer every gRPC call passes through: it authenticates the
//! caller, checks the method's required role in [`super::access`], and hands
//! the [`Identity`] to the service in the request extensions.
//!
//! It also reports refusals: its own (bad credentials, roles) and the
//! PERMISSION_DENIED answers of the services behind it (an execution above
//! the caller's role, a target outside a key's allow-list), each as a
//! warning with the identity and client address and in
//! `pgfleet_refused_calls_total`. `Login` reports its own failures.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::{Authenticator, Refusal};
use crate::edge::ClientAddress;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::RefusalReason;
use crate::telemetry::rpc::{code_name, status_in};
use pgfleet_engine::identity::Identity;

/// Wraps the whole router (see `app.rs`).
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
    metrics: Metrics,
}

impl AuthLayer {
    pub fn new(authenticator: Arc<Authenticator>, metrics: Metrics) -> Self {
        Self {
            authenticator,
            metrics,
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthGate {
            inner,
            authenticator: Arc::clone(&self.authenticator),
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`AuthLayer`] produces.
#[derive(Clone)]
pub struct AuthGate<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
    metrics: Metrics,
}

impl<S, B> Service<http::Request<B>> for AuthGate<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is not ready; swap it in so the instance `poll_ready`
        // prepared is the one that serves this request (tower's contract).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let authenticator = Arc::clone(&self.authenticator);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            // Whatever a client sends, only this layer sets the identity.
            request.extensions_mut().remove::<Identity>();
            let path = request.uri().path().to_owned();
            let client = request.extensions().get::<ClientAddress>().copied();
            match authenticator.authorize(&path, request.headers()).await {
                Ok(Some(identity)) => {
                    let label = identity.label();
                    // On the call's `rpc` span (telemetry::rpc), so logs and
                    // traces say who called.
                    tracing::Span::current().record("identity", label.as_str());
                    request.extensions_mut().insert(identity);
                    let response = inner.call(request).await?;
                    // A refusal is a trailers-only answer: its status is in
                    // the headers.
                    if status_in(response.headers()) == Some(tonic::Code::PermissionDenied) {
                        let refused = Refused {
                            path: &path,
                            code: tonic::Code::PermissionDenied,
                            reason: RefusalReason::Denied,
                            who: Some(&label),
                            client,
                        };
                        refused.report(&metrics);
                    }
                    Ok(response)
                }
                Ok(None) => inner.call(request).await,
                Err(Refusal { error, reason, who }) => {
                    let status = tonic::Status::from(error);
                    match reason {
                        Some(reason) => Refused {
                            path: &path,
                            code: status.code(),
                            reason,
                            who: who.as_deref(),
                            client,
                        }
                        .report(&metrics),
                        // The store's own failure, logged by `status.rs`.
                        None => tracing::debug!(%path, code = ?status.code(), "call not authenticated"),
                    }
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// One refused call, as logged and counted.
pub(crate) struct Refused<'a> {
    pub path: &'a str,
    pub code: tonic::Code,
    pub reason: RefusalReason,
    /// A label such as `user:alice` (never a secret); none when unknown.
    pub who: Option<&'a str>,
    pub client: Option<ClientAddress>,
}

impl Refused<'_> {
    /// A warning (inside the call's span, so with its request id) and one
    /// increment of `pgfleet_refused_calls_total`.
    pub fn report(&self, metrics: &Metrics) {
        let client = self
            .client
            .map_or_else(|| "unknown".to_owned(), |client| client.to_string());
        tracing::warn!(
            path = self.path,
            code = code_name(self.code),
            reason = self.reason.as_str(),
            identity = self.who.unwrap_or("unknown"),
            %client,
            "call refused"
        );
        metrics.call_refused(self.path, self.code, self.reason);
    }
}
