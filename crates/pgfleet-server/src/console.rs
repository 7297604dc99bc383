//! The web console's files on `server.console_addr`.
//!
//! The console is a single-page TypeScript app (`console/` at the top of the
//! repository, docs/CONSOLE.md) that scripts/bootstrap builds into
//! `console/dist`; its files are embedded here with rust-embed (read from
//! that directory at run time in debug builds). Without a built console the
//! page says how to build one, so `cargo build` never needs npm.
//!
//! The console's listener serves the very services and layers of the gRPC
//! port (auth gate, limits, metrics), with grpc-web always on: the page calls
//! its own origin, so the HttpOnly, SameSite=Strict session cookie that Login
//! sets rides along without CORS. [`ConsoleAssetsLayer`] sits outside all of
//! them: every call is a POST, anything else asks for a file and is answered
//! before the gate (the login page must load without credentials, and the
//! files hold no data).

use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::{Either, Ready, ready};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, Service};

/// The built console (`console/dist`); may be missing, see [`NOT_BUILT`].
#[derive(rust_embed::RustEmbed)]
#[folder = "../../console/dist/"]
#[allow_missing = true]
struct Assets;

/// Served at `/` when the console was not built before the binary.
const NOT_BUILT: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>pgfleet console</title></head><body><h1>pgfleet console</h1>\
<p>This pgfleet binary was built without the console. Build it with \
<code>scripts/bootstrap</code> (or <code>npm ci &amp;&amp; npm run build</code> in \
<code>console/</code>), then build pgfleet again.</p></body></html>";

/// Only the console's own files and calls; no framing, no plugins, no
/// inline scripts. CodeMirror styles its editor through `<style>` elements,
/// hence inline styles.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Answers requests for the console's files in front of the gRPC stack.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConsoleAssetsLayer;

impl<S> Layer<S> for ConsoleAssetsLayer {
    type Service = ConsoleAssets<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConsoleAssets { inner }
    }
}

/// See [`ConsoleAssetsLayer`].
#[derive(Clone, Debug)]
pub struct ConsoleAssets<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ConsoleAssets<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // gRPC and grpc-web calls are POSTs, whatever their path.
        if request.method() == Method::POST {
            return Either::Left(self.inner.call(request));
        }
        Either::Right(ready(Ok(asset(request.method(), request.uri().path()))))
    }
}

/// The response to `method path` for a file of the console.
fn asset(method: &Method, path: &str) -> Response<tonic::body::Body> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD or a grpc-web POST\n");
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
        return response;
    }
    // The app routes with `#/...`, so `/` is the only page.
    let name = match path.strip_prefix('/') {
        Some("") | Some("index.html") => "index.html",
        Some(name) => name,
        None => return not_found(),
    };
    let (bytes, content_type) = match Assets::get(name) {
        Some(file) => (Bytes::from(file.data.into_owned()), content_type(name)),
        None if name == "index.html" => (
            Bytes::from_static(NOT_BUILT.as_bytes()),
            "text/html; charset=utf-8",
        ),
        None => return not_found(),
    };
    // Vite names built files by their content hash: they never change, the
    // page that names them must always be fetched afresh.
    let cache = if name.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        bytes
    };
    let mut response = Response::new(tonic::body::Body::new(Full::new(body)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    secure(headers);
    response
}

/// Headers every console response carries: no sniffing, no framing, no
/// referrer, and the content security policy.
fn secure(headers: &mut http::HeaderMap) {
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(http::header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn not_found() -> Response<tonic::body::Body> {
    plain(StatusCode::NOT_FOUND, "not found\n")
}

fn plain(status: StatusCode, text: &'static str) -> Response<tonic::body::Body> {
    let mut response = Response::new(tonic::body::Body::new(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    secure(response.headers_mut());
    response
}

/// The content type of a built file, by its extension (the few kinds Vite
/// emits; anything else is served as opaque bytes).
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") | Some("map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_have_their_types_and_everything_else_is_refused_or_missing() {
        assert_eq!(
            content_type("assets/index-abc.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("assets/index-abc.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("no-extension"), "application/octet-stream");
        let page = asset(&Method::GET, "/");
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(page.headers()[CACHE_CONTROL], "no-cache");
        assert!(page.headers().contains_key(http::header::CONTENT_SECURITY_POLICY));
        assert_eq!(
            asset(&Method::GET, "/../Cargo.toml").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            asset(&Method::GET, "/assets/missing.js").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            asset(&Method::DELETE, "/").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
