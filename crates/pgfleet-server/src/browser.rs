//! Browsers on the gRPC port: grpc-web (`application/grpc-web[+proto]` and
//! `application/grpc-web-text`, over HTTP/1.1 or HTTP/2) translated by
//! tonic-web, and CORS for the configured origins by tower-http.
//!
//! `app.rs` stacks both outside the auth gate: CORS answers preflights
//! itself (browsers send them without credentials, so the gate would refuse
//! them), and grpc-web calls reach the gate already turned into the plain
//! gRPC calls they stand for, so every call is authorized the same way.

use http::{HeaderName, HeaderValue, Method};
use pgfleet_config::{CorsConfig, ServerConfig};
use tonic_web::GrpcWebLayer;
use tower::layer::util::Identity;
use tower::util::{Either, option_layer};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Request headers a page may send (the answer to a preflight's
/// `Access-Control-Request-Headers`): credentials, the grpc-web framing
/// headers, the call deadline, and the ids pgfleet echoes or traces by.
/// `x-api-key` is left out on purpose: API keys are for services, and one
/// held by a page is readable by every script on it.
/// deploy/envoy/envoy.yaml allows the same list (a unit test compares them).
pub const ALLOWED_HEADERS: [&str; 7] = [
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "x-request-id",
    "traceparent",
];

/// Response headers a page's script may read. Errors come back as
/// trailers-only responses, whose status travels in these headers rather
/// than in the body's trailer frame. Same list in deploy/envoy/envoy.yaml.
pub const EXPOSED_HEADERS: [&str; 4] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-request-id",
];

/// A `[server]` section the browser layers cannot be built from. Loading
/// validates all of this with the config path; these guard configurations
/// built in code.
#[derive(Debug, thiserror::Error)]
pub enum BrowserConfigError {
    #[error("server.cors.allowed_origins[{index}]: {origin:?} is not a valid header value")]
    Origin { index: usize, origin: String },
    #[error("server.cors.allowed_origins: \"*\" cannot be combined with allow_credentials = true")]
    AnyOriginWithCredentials,
}

/// The browser-facing layers of one server, from `server.grpc_web` and
/// `server.cors`.
#[derive(Clone, Debug)]
pub struct BrowserAccess {
    grpc_web: bool,
    cors: Option<CorsLayer>,
}

impl BrowserAccess {
    pub fn new(server: &ServerConfig) -> Result<Self, BrowserConfigError> {
        Ok(Self {
            grpc_web: server.grpc_web,
            cors: cors_layer(&server.cors)?,
        })
    }

    /// Whether the listener also speaks HTTP/1.1: browsers use it for
    /// grpc-web on plain HTTP, and nothing else on this port needs it
    /// (gRPC itself is HTTP/2 only).
    pub fn accept_http1(&self) -> bool {
        self.grpc_web
    }

    /// CORS for the allowed origins; nothing at all when none are
    /// configured, so browsers refuse cross-origin calls.
    pub fn cors(&self) -> Either<CorsLayer, Identity> {
        option_layer(self.cors.clone())
    }

    /// grpc-web to gRPC and back, when `server.grpc_web` is on.
    pub fn grpc_web(&self) -> Either<GrpcWebLayer, Identity> {
        option_layer(self.grpc_web.then(GrpcWebLayer::new))
    }
}

fn cors_layer(cors: &CorsConfig) -> Result<Option<CorsLayer>, BrowserConfigError> {
    if cors.allowed_origins.is_empty() {
        return Ok(None);
    }
    let allow_origin = if cors.allowed_origins.iter().any(|origin| origin == "*") {
        // tower-http would panic on the first call with this combination.
        if cors.allow_credentials {
            return Err(BrowserConfigError::AnyOriginWithCredentials);
        }
        AllowOrigin::any()
    } else {
        let origins = cors
            .allowed_origins
            .iter()
            .enumerate()
            .map(|(index, origin)| {
                HeaderValue::from_str(origin).map_err(|_| BrowserConfigError::Origin {
                    index,
                    origin: origin.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(origins)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            // Every grpc-web call is a POST.
            .allow_methods([Method::POST])
            .allow_headers(ALLOWED_HEADERS.map(HeaderName::from_static))
            .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
            .allow_credentials(cors.allow_credentials)
            .max_age(cors.max_age),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quoted list after `key:` in deploy/envoy/envoy.yaml.
    fn envoy_list(envoy: &str, key: &str) -> Vec<String> {
        let line = envoy
            .lines()
            .map(str::trim)
            .find(|line| line.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in deploy/envoy/envoy.yaml"));
        let value = line[key.len()..].trim().trim_matches('"');
        value.split(',').map(|name| name.trim().to_owned()).collect()
    }

    #[test]
    fn envoy_gateway_allows_and_exposes_the_same_headers() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/envoy/envoy.yaml");
        let envoy = std::fs::read_to_string(path).unwrap();
        let mut envoy_allowed = envoy_list(&envoy, "allow_headers:");
        let mut ours: Vec<String> = ALLOWED_HEADERS.iter().map(|h| (*h).to_owned()).collect();
        envoy_allowed.sort();
        ours.sort();
        assert_eq!(envoy_allowed, ours, "allow_headers differ");
        let mut envoy_exposed = envoy_list(&envoy, "expose_headers:");
        let mut ours: Vec<String> = EXPOSED_HEADERS.iter().map(|h| (*h).to_owned()).collect();
        envoy_exposed.sort();
        ours.sort();
        assert_eq!(envoy_exposed, ours, "expose_headers differ");
    }

    #[test]
    fn header_names_are_valid_lower_case_names() {
        for name in ALLOWED_HEADERS.iter().chain(EXPOSED_HEADERS.iter()) {
            assert!(
                HeaderName::from_bytes(name.as_bytes()).is_ok_and(|h| h.as_str() == *name),
                "{name}"
            );
        }
    }

    #[test]
    fn no_origins_means_no_cors_layer_and_any_origin_refuses_credentials() {
        let mut server = ServerConfig::default();
        assert!(BrowserAccess::new(&server).unwrap().cors.is_none());
        server.cors.allowed_origins = vec!["*".to_owned()];
        assert!(BrowserAccess::new(&server).unwrap().cors.is_some());
        server.cors.allow_credentials = true;
        assert!(matches!(
            BrowserAccess::new(&server),
            Err(BrowserConfigError::AnyOriginWithCredentials)
        ));
        server.cors.allowed_origins = vec!["https://ok.example".to_owned(), "bad\norigin".to_owned()];
        assert!(matches!(
            BrowserAccess::new(&server),
            Err(BrowserConfigError::Origin { index: 1, .. })
        ));
    }
}
