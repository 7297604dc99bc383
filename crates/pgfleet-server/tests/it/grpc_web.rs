//! grpc-web and CORS on the gRPC port, at the HTTP level: hand-framed
//! grpc-web calls (1 flag byte, 4-byte big-endian length, protobuf) over
//! HTTP/1.1 and HTTP/2, in binary and base64 text, and CORS preflights, all
//! against a real server on real databases.

use std::net::SocketAddr;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pgfleet_config::{FileFormat, Inputs, ProcessEnv};
use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_server::app::RunningServer;
use prost::Message;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::support::{self, Fleet};

/// The origin of the browser page the tests pretend to be.
pub(crate) const PAGE: &str = "http://127.0.0.1:3000";
/// Any other site.
const OTHER: &str = "https://elsewhere.example";
const EXECUTE: &str = "/pgfleet.v1.QueryService/Execute";
const LOGIN: &str = "/pgfleet.v1.AuthService/Login";
const HEALTH: &str = "/grpc.health.v1.Health/Check";

pub(crate) fn cors_toml() -> String {
    format!("[server.cors]\nallowed_origins = ['{PAGE}']\nmax_age = '10m'\n")
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Wire {
    Http1,
    /// Prior-knowledge HTTP/2 (h2c), as browsers speak it over TLS.
    Http2,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Encoding {
    /// `application/grpc-web+proto`
    Binary,
    /// `application/grpc-web-text`: the framed bytes in base64.
    Text,
}

/// One grpc-web response taken apart.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    /// Message frames, in order.
    messages: Vec<Bytes>,
    /// The trailer frame at the end of the body, if any.
    trailers: Option<HeaderMap>,
}

impl Reply {
    /// The call's status where grpc-web puts it: the trailer frame, or the
    /// headers of a trailers-only response (errors).
    fn grpc_status(&self) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The single message of a unary call, decoded.
    fn message<M: Message + Default>(&self) -> M {
        assert_eq!(self.messages.len(), 1, "one message expected: {self:?}");
        M::decode(self.messages[0].clone()).unwrap_or_else(|e| panic!("undecodable message: {e}"))
    }
}

pub(crate) fn client(wire: Wire) -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(wire == Wire::Http2)
        .build_http()
}

/// A grpc-web unary call of `path` with `message`; `headers` are added
/// (authorization, origin…).
async fn call(
    addr: SocketAddr,
    path: &str,
    message: &impl Message,
    wire: Wire,
    encoding: Encoding,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    let payload = message.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(payload.len())?.to_be_bytes());
    framed.extend_from_slice(&payload);
    let (content_type, body) = match encoding {
        Encoding::Binary => ("application/grpc-web+proto", framed),
        Encoding::Text => ("application/grpc-web-text", STANDARD.encode(framed).into_bytes()),
    };
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .header("accept", content_type)
        .header("x-grpc-web", "1");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client(wire)
        .request(request.body(Full::new(Bytes::from(body)))?)
        .await?;
    let (parts, body) = response.into_parts();
    let mut bytes = body.collect().await?.to_bytes().to_vec();
    if encoding == Encoding::Text && parts.status.is_success() {
        // Each frame may be encoded on its own, with padding between them:
        // 4-character quanta decode independently.
        let text = String::from_utf8(bytes)?;
        bytes = Vec::new();
        for quantum in text.as_bytes().chunks(4) {
            bytes.extend(STANDARD.decode(quantum)?);
        }
    }
    let (messages, trailers) = frames(&bytes)?;
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        messages,
        trailers,
    })
}

/// Splits a grpc-web body into message frames and the trailer frame.
pub(crate) fn frames(mut body: &[u8]) -> anyhow::Result<(Vec<Bytes>, Option<HeaderMap>)> {
    let mut messages = Vec::new();
    let mut trailers = None;
    while !body.is_empty() {
        anyhow::ensure!(body.len() >= 5, "truncated frame header: {body:?}");
        let flag = body[0];
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        anyhow::ensure!(body.len() >= 5 + length, "truncated frame");
        let payload = &body[5..5 + length];
        if flag & 0x80 != 0 {
            let mut map = HeaderMap::new();
            for line in std::str::from_utf8(payload)?
                .split("\r\n")
                .filter(|l| !l.is_empty())
            {
                let (name, value) = line
                    .split_once(':')
                    .ok_or_else(|| anyhow::anyhow!("bad trailer line {line:?}"))?;
                map.insert(
                    http::HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())?,
                    value.trim().parse()?,
                );
            }
            trailers = Some(map);
        } else {
            messages.push(Bytes::copy_from_slice(payload));
        }
        body = &body[5 + length..];
    }
    Ok((messages, trailers))
}

/// A CORS preflight for a grpc-web call of `path` from `origin`.
async fn preflight(
    addr: SocketAddr,
    path: &str,
    origin: &str,
    wire: Wire,
) -> anyhow::Result<(StatusCode, HeaderMap)> {
    let request = Request::builder()
        .method(Method::OPTIONS)
        .uri(format!("http://{addr}{path}"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,grpc-timeout,traceparent,x-grpc-web,x-request-id,x-user-agent",
        )
        .body(Full::new(Bytes::new()))?;
    let response = client(wire).request(request).await?;
    Ok((response.status(), response.headers().clone()))
}

fn header_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .collect()
}

fn execute_sum() -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        query: "SELECT 1+1".to_owned(),
        database: "app".to_owned(),
        scope: Some(pb::execute_request::Scope::Cloud("aws".to_owned())),
        ..Default::default()
    }
}

/// The first cell of the first row of the first target's first statement.
fn first_cell(response: &pb::ExecuteResponse) -> Option<pb::cell::Kind> {
    response
        .results
        .first()?
        .statements
        .first()?
        .rows
        .first()?
        .cells
        .first()?
        .kind
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn preflight_from_an_allowed_origin_gets_cors_headers_and_other_origins_do_not() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet.start(&cors_toml()).await?;
    let addr = server.local_addr();

    for wire in [Wire::Http1, Wire::Http2] {
        let (status, headers) = preflight(addr, EXECUTE, PAGE, wire).await?;
        assert!(status.is_success(), "{wire:?}: preflight answered {status}");
        // Answered before the auth gate: a gate refusal would carry a
        // grpc-status (the preflight holds no credentials).
        assert!(headers.get("grpc-status").is_none(), "{wire:?}: {headers:?}");
        assert_eq!(
            headers.get("access-control-allow-origin").map(|v| v.as_bytes()),
            Some(PAGE.as_bytes()),
            "{wire:?}: {headers:?}"
        );
        assert!(
            header_list(&headers, "access-control-allow-methods").contains(&"post".to_owned()),
            "{wire:?}: {headers:?}"
        );
        let allowed = header_list(&headers, "access-control-allow-headers");
        for needed in pgfleet_server::browser::ALLOWED_HEADERS {
            assert!(
                allowed.contains(&needed.to_owned()),
                "{wire:?}: {needed} not allowed: {allowed:?}"
            );
        }
        assert_eq!(
            headers.get("access-control-max-age").map(|v| v.as_bytes()),
            Some(&b"600"[..]),
            "{wire:?}"
        );
        // Credentials are off unless configured.
        assert!(
            headers.get("access-control-allow-credentials").is_none(),
            "{wire:?}"
        );

        let (_, headers) = preflight(addr, EXECUTE, OTHER, wire).await?;
        assert!(
            headers.get("access-control-allow-origin").is_none(),
            "{wire:?}: another origin was allowed: {headers:?}"
        );
    }

    // An allowed page's actual call: allowed, and the status headers of
    // errors are readable by its script.
    let reply = call(
        addr,
        HEALTH,
        &HealthCheckRequest::default(),
        Wire::Http1,
        Encoding::Binary,
        &[("origin", PAGE)],
    )
    .await?;
    assert_eq!(reply.header("access-control-allow-origin"), Some(PAGE));
    let exposed = header_list(&reply.headers, "access-control-expose-headers");
    for needed in pgfleet_server::browser::EXPOSED_HEADERS {
        assert!(
            exposed.contains(&needed.to_owned()),
            "{needed} not exposed: {exposed:?}"
        );
    }
    let reply = call(
        addr,
        HEALTH,
        &HealthCheckRequest::default(),
        Wire::Http1,
        Encoding::Binary,
        &[("origin", OTHER)],
    )
    .await?;
    assert!(reply.header("access-control-allow-origin").is_none(), "{reply:?}");

    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_allowed_only_when_configured() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let toml = format!("{}allow_credentials = true\n", cors_toml());
    let server = fleet.start(&toml).await?;
    let (_, headers) = preflight(server.local_addr(), LOGIN, PAGE, Wire::Http1).await?;
    assert_eq!(
        headers
            .get("access-control-allow-credentials")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..]),
        "{headers:?}"
    );
    assert_eq!(
        headers.get("access-control-allow-origin").map(|v| v.as_bytes()),
        Some(PAGE.as_bytes())
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_web_unary_and_streaming_calls_answer_over_http1_and_http2_in_binary_and_text()
-> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet.start(&cors_toml()).await?;
    let addr = server.local_addr();
    let password = fleet.create_user("web-reader", Role::Reader).await?;

    for wire in [Wire::Http1, Wire::Http2] {
        for encoding in [Encoding::Binary, Encoding::Text] {
            let case = format!("{wire:?} {encoding:?}");
            let reply = call(addr, HEALTH, &HealthCheckRequest::default(), wire, encoding, &[]).await?;
            assert_eq!(reply.status, StatusCode::OK, "{case}: {reply:?}");
            let content_type = reply.header("content-type").unwrap_or_default();
            let expected = match encoding {
                Encoding::Binary => "application/grpc-web",
                Encoding::Text => "application/grpc-web-text",
            };
            assert!(
                content_type.starts_with(expected),
                "{case}: content-type {content_type}"
            );
            // A successful call ends with a trailer frame in the body.
            let trailers = reply
                .trailers
                .as_ref()
                .unwrap_or_else(|| panic!("{case}: no trailer frame"));
            assert_eq!(
                trailers.get("grpc-status").map(|v| v.as_bytes()),
                Some(&b"0"[..]),
                "{case}"
            );
            let health: HealthCheckResponse = reply.message();
            assert_eq!(health.status(), ServingStatus::Serving, "{case}");

            // Login and an authorized call, the bearer token as metadata.
            let login = pb::LoginRequest {
                username: "web-reader".to_owned(),
                password: password.clone(),
            };
            let reply = call(addr, LOGIN, &login, wire, encoding, &[("origin", PAGE)]).await?;
            assert_eq!(reply.grpc_status(), Some("0"), "{case}: {reply:?}");
            assert!(reply.trailers.is_some(), "{case}: no trailer frame");
            let login: pb::LoginResponse = reply.message();
            assert!(!login.token.is_empty(), "{case}");
            assert_eq!(
                login.user.map(|u| u.username).as_deref(),
                Some("web-reader"),
                "{case}"
            );

            let bearer = format!("Bearer {}", login.token);
            let reply = call(
                addr,
                EXECUTE,
                &execute_sum(),
                wire,
                encoding,
                &[("authorization", &bearer)],
            )
            .await?;
            assert_eq!(reply.grpc_status(), Some("0"), "{case}: {reply:?}");
            let response: pb::ExecuteResponse = reply.message();
            assert!(response.success, "{case}: {response:?}");
            assert_eq!(first_cell(&response), Some(pb::cell::Kind::IntValue(2)), "{case}");

            // Server streaming: one frame per event, then the trailer frame.
            let stream = pb::ExecuteStreamRequest {
                query: "SELECT g FROM generate_series(1, 5) g".to_owned(),
                database: "app".to_owned(),
                scope: Some(pb::execute_stream_request::Scope::Cloud("aws".to_owned())),
                batch_size: 2,
                ..Default::default()
            };
            let reply = call(
                addr,
                "/pgfleet.v1.QueryService/ExecuteStream",
                &stream,
                wire,
                encoding,
                &[("authorization", &bearer)],
            )
            .await?;
            assert_eq!(reply.grpc_status(), Some("0"), "{case}: {reply:?}");
            assert!(reply.trailers.is_some(), "{case}: no trailer frame");
            let mut values = Vec::new();
            let mut finished = false;
            for frame in &reply.messages {
                match pb::ExecuteStreamResponse::decode(frame.clone())?.event {
                    Some(pb::execute_stream_response::Event::RowBatch(batch)) => {
                        values.extend(
                            batch
                                .rows
                                .iter()
                                .filter_map(|row| row.cells.first()?.kind.clone()),
                        );
                    }
                    Some(pb::execute_stream_response::Event::ExecutionFinished(_)) => finished = true,
                    _ => {}
                }
            }
            let expected: Vec<_> = (1..=5).map(pb::cell::Kind::IntValue).collect();
            assert_eq!(values, expected, "{case}");
            assert!(
                finished,
                "{case}: no ExecutionFinished among {} frames",
                reply.messages.len()
            );
        }
    }
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_auth_gate_refuses_grpc_web_calls_without_valid_credentials() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet.start(&cors_toml()).await?;
    let addr = server.local_addr();
    let password = fleet.create_user("web-reader", Role::Reader).await?;

    for wire in [Wire::Http1, Wire::Http2] {
        for (credentials, why) in [
            (None, "no token"),
            (Some("Bearer not-a-session-token"), "unknown token"),
        ] {
            let mut headers = vec![("origin", PAGE)];
            headers.extend(credentials.map(|value| ("authorization", value)));
            let reply = call(addr, EXECUTE, &execute_sum(), wire, Encoding::Binary, &headers).await?;
            // A trailers-only response: the status is in the headers, which
            // CORS exposes to the page's script; nothing ran.
            assert_eq!(reply.status, StatusCode::OK, "{wire:?} {why}: {reply:?}");
            assert_eq!(reply.grpc_status(), Some("16"), "{wire:?} {why}: {reply:?}");
            assert!(reply.messages.is_empty(), "{wire:?} {why}: a message was sent");
            assert!(
                reply
                    .header("content-type")
                    .is_some_and(|t| t.starts_with("application/grpc-web")),
                "{wire:?} {why}: {reply:?}"
            );
            assert_eq!(
                reply.header("access-control-allow-origin"),
                Some(PAGE),
                "{wire:?} {why}"
            );
        }
    }

    // The role table applies too: a READER may not list users.
    let login = pb::LoginRequest {
        username: "web-reader".to_owned(),
        password,
    };
    let reply = call(addr, LOGIN, &login, Wire::Http1, Encoding::Binary, &[]).await?;
    let token: pb::LoginResponse = reply.message();
    let bearer = format!("Bearer {}", token.token);
    let reply = call(
        addr,
        "/pgfleet.v1.AuthService/ListUsers",
        &pb::ListUsersRequest::default(),
        Wire::Http1,
        Encoding::Binary,
        &[("authorization", &bearer)],
    )
    .await?;
    assert_eq!(reply.grpc_status(), Some("7"), "{reply:?}");
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_allowed_origins_browsers_get_no_cors_headers() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet.start("").await?;
    let addr = server.local_addr();

    let (_, headers) = preflight(addr, EXECUTE, PAGE, Wire::Http1).await?;
    let cors: Vec<_> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "CORS headers sent: {headers:?}");

    // grpc-web itself still works for clients that are not browsers (or
    // pages on pgfleet's own origin); only cross-origin reads are refused.
    let reply = call(
        addr,
        HEALTH,
        &HealthCheckRequest::default(),
        Wire::Http1,
        Encoding::Binary,
        &[("origin", PAGE)],
    )
    .await?;
    assert_eq!(reply.grpc_status(), Some("0"), "{reply:?}");
    assert!(
        !reply
            .headers
            .keys()
            .any(|name| name.as_str().starts_with("access-control-")),
        "{reply:?}"
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_web_off_leaves_plain_grpc_only() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let text = fleet
        .config_toml("")
        .replacen("[server]\n", "[server]\ngrpc_web = false\n", 1);
    let loaded = pgfleet_config::load_str(
        &text,
        FileFormat::Toml,
        Path::new("test.toml"),
        &Inputs {
            variables: &ProcessEnv,
            overrides: Vec::new(),
        },
    )?;
    assert!(!loaded.config.server.grpc_web);
    let server = RunningServer::start(loaded).await?;
    let addr = server.local_addr();

    // HTTP/1.1 is not spoken at all.
    let http1 = call(
        addr,
        HEALTH,
        &HealthCheckRequest::default(),
        Wire::Http1,
        Encoding::Binary,
        &[],
    )
    .await;
    assert!(http1.is_err(), "an HTTP/1.1 call was answered: {http1:?}");
    // Over HTTP/2 the call is not translated: no grpc-web answer, no
    // trailer frame a browser could read.
    let reply = call(
        addr,
        HEALTH,
        &HealthCheckRequest::default(),
        Wire::Http2,
        Encoding::Binary,
        &[],
    )
    .await?;
    assert!(
        !reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/grpc-web")),
        "{reply:?}"
    );
    assert!(reply.trailers.is_none(), "{reply:?}");
    // Plain gRPC is unaffected.
    let channel = support::channel(&server).await?;
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await?;
    assert_eq!(health.into_inner().status(), ServingStatus::Serving);
    server.shutdown().await?;
    Ok(())
}
