//! The tower layer every gRPC call passes through: it authenticates the
//! caller, checks the method's required role in [`super::access`], and hands
//! the [`Identity`] to the service in the request extensions.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::Authenticator;

/// Wraps the whole router (see `app.rs`).
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthGate {
            inner,
            authenticator: Arc::clone(&self.authenticator),
        }
    }
}

/// The service [`AuthLayer`] produces.
#[derive(Clone)]
pub struct AuthGate<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
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
        Box::pin(async move {
            // Whatever a client sends, only this layer sets the identity.
            request.extensions_mut().remove::<crate::identity::Identity>();
            match authenticator
                .authorize(request.uri().path(), request.headers())
                .await
            {
                Ok(Some(identity)) => {
                    // On the call's `rpc` span (telemetry::rpc), so logs and
                    // traces say who called.
                    tracing::Span::current().record("identity", identity.label().as_str());
                    request.extensions_mut().insert(identity);
                    inner.call(request).await
                }
                Ok(None) => inner.call(request).await,
                Err(error) => {
                    let status = tonic::Status::from(error);
                    tracing::debug!(path = request.uri().path(), code = ?status.code(), "call refused");
                    Ok(status.into_http())
                }
            }
        })
    }
}
