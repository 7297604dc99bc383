//! Fuzzing grpc-web framing over HTTP/1.1 (and now and then HTTP/2): random
//! frames (flags, declared lengths that lie, payloads that are or are not
//! messages), random bodies, content types, base64 for
//! `application/grpc-web-text` (per frame, whole, broken), `grpc-timeout`
//! and `grpc-encoding` values, for real methods and made-up paths. Every
//! answer is a status below 500; a 200 carries a grpc-status that is a
//! number and is never INTERNAL or UNKNOWN; the server never panics.
//! Budget: `pgfleet_testkit::fuzz` (`PGFLEET_FUZZ_CASES`, `PGFLEET_FUZZ_SECONDS`).

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_testkit::fuzz;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use prost::Message;

use crate::grpc_web::{PAGE, Wire, client, cors_toml, frames};
use crate::support::{self, session};

/// Cases a `scripts/test` run makes.
const DEFAULT_CASES: u32 = 200;

const PATHS: &[&str] = &[
    "/pgfleet.v1.QueryService/Execute",
    "/pgfleet.v1.QueryService/ExecuteStream",
    "/pgfleet.v1.QueryService/Validate",
    "/pgfleet.v1.AuthService/Login",
    "/pgfleet.v1.AuthService/Me",
    "/pgfleet.v1.FleetService/GetConfiguration",
    "/grpc.health.v1.Health/Check",
    "/pgfleet.v1.NoSuchService/Call",
    "/pgfleet.v1.QueryService/NoSuchMethod",
    "/",
    "/%ff%00",
];

const CONTENT_TYPES: &[&str] = &[
    "application/grpc-web",
    "application/grpc-web+proto",
    "application/grpc-web-text",
    "application/grpc-web-text+proto",
    "application/grpc-web+json",
    "application/grpc",
    "application/grpc-web; charset=utf-8",
    "text/plain",
    "",
];

/// Real messages, so some frames decode and the call goes on.
fn messages() -> Vec<Vec<u8>> {
    vec![
        pb::ExecuteRequest {
            query: "SELECT 1".to_owned(),
            database: "app".to_owned(),
            scope: Some(pb::execute_request::Scope::AllClouds(pb::AllClouds {})),
            ..Default::default()
        }
        .encode_to_vec(),
        pb::ValidateRequest {
            query: "SELECT 1; SELEC".to_owned(),
        }
        .encode_to_vec(),
        pb::LoginRequest {
            username: "nobody".to_owned(),
            password: "wrong".to_owned(),
        }
        .encode_to_vec(),
        Vec::new(),
    ]
}

#[derive(Debug, Clone)]
struct Frame {
    flag: u8,
    /// Added to the true length (wrapping): 0 most of the time.
    length_error: i32,
    payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum Base64 {
    Whole,
    PerFrame,
    Unpadded,
    /// Characters outside the alphabet.
    Broken,
}

#[derive(Debug, Clone)]
struct Case {
    path: &'static str,
    content_type: &'static str,
    accept: Option<&'static str>,
    wire: Wire,
    /// Frames, or raw bytes as the whole body.
    body: Result<Vec<Frame>, Vec<u8>>,
    base64: Base64,
    authorized: bool,
    timeout: Option<&'static str>,
    encoding: Option<&'static str>,
}

fn frame() -> impl Strategy<Value = Frame> {
    let messages = messages();
    (
        prop_oneof![6 => Just(0u8), 1 => Just(0x80), 1 => Just(1), 1 => any::<u8>()],
        prop_oneof![8 => Just(0i32), 1 => -8i32..8, 1 => any::<i32>()],
        prop_oneof![
            3 => prop::sample::select(messages),
            1 => prop::collection::vec(any::<u8>(), 0..64),
        ],
    )
        .prop_map(|(flag, length_error, payload)| Frame {
            flag,
            length_error,
            payload,
        })
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(PATHS),
        (
            prop::sample::select(CONTENT_TYPES),
            prop::option::of(prop::sample::select(CONTENT_TYPES)),
            prop_oneof![5 => Just(Wire::Http1), 1 => Just(Wire::Http2)],
            prop_oneof![
                4 => prop::collection::vec(frame(), 0..4).prop_map(Ok),
                1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Err),
            ],
        ),
        prop_oneof![
            Just(Base64::Whole),
            Just(Base64::PerFrame),
            Just(Base64::Unpadded),
            Just(Base64::Broken)
        ],
        any::<bool>(),
        prop::option::of(prop::sample::select(
            &["1S", "10m", "0n", "99999999H", "x", "-1S", ""][..],
        )),
        prop::option::of(prop::sample::select(
            &["identity", "gzip", "zstd", "deflate", "??"][..],
        )),
    )
        .prop_map(
            |(path, (content_type, accept, wire, body), base64, authorized, timeout, encoding)| Case {
                path,
                content_type,
                accept,
                wire,
                body,
                base64,
                authorized,
                timeout,
                encoding,
            },
        )
}

fn framed(frame: &Frame) -> Vec<u8> {
    let length = u32::try_from(frame.payload.len())
        .unwrap_or(u32::MAX)
        .wrapping_add_signed(frame.length_error);
    let mut out = vec![frame.flag];
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&frame.payload);
    out
}

fn body(case: &Case) -> Vec<u8> {
    let text = case.content_type.starts_with("application/grpc-web-text");
    match &case.body {
        Err(raw) => raw.clone(),
        Ok(frames) if !text => frames.iter().flat_map(framed).collect(),
        Ok(frames) => {
            let whole: Vec<u8> = frames.iter().flat_map(framed).collect();
            match case.base64 {
                Base64::Whole => STANDARD.encode(&whole).into_bytes(),
                Base64::PerFrame => frames
                    .iter()
                    .flat_map(|f| STANDARD.encode(framed(f)).into_bytes())
                    .collect(),
                Base64::Unpadded => STANDARD_NO_PAD.encode(&whole).into_bytes(),
                Base64::Broken => format!("{}*!%", STANDARD.encode(&whole)).into_bytes(),
            }
        }
    }
}

struct Server {
    addr: SocketAddr,
    token: String,
}

impl Server {
    /// Makes the case's call and checks the answer; the grpc-status of a
    /// 200, `None` for another HTTP status.
    async fn answer(&self, case: &Case) -> Result<Option<i32>, TestCaseError> {
        let panics_before = support::panics();
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}{}", self.addr, case.path))
            .header("origin", PAGE)
            .header("x-grpc-web", "1");
        if !case.content_type.is_empty() {
            request = request.header("content-type", case.content_type);
        }
        if let Some(accept) = case.accept {
            request = request.header("accept", accept);
        }
        if case.authorized {
            request = request.header("authorization", format!("Bearer {}", self.token));
        }
        if let Some(timeout) = case.timeout {
            request = request.header("grpc-timeout", timeout);
        }
        if let Some(encoding) = case.encoding {
            request = request.header("grpc-encoding", encoding);
        }
        let request = request
            .body(Full::new(Bytes::from(body(case))))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let response = client(case.wire)
            .request(request)
            .await
            .map_err(|e| TestCaseError::fail(format!("no HTTP answer: {e}")))?;
        let (parts, body) = response.into_parts();
        let collected = body
            .collect()
            .await
            .map_err(|e| TestCaseError::fail(format!("body cut: {e}")))?;
        // A content type tonic-web does not take, over HTTP/2, is answered
        // as plain gRPC: the status is in the HTTP trailers.
        let http_trailers = collected.trailers().cloned();
        let bytes = collected.to_bytes();
        prop_assert_eq!(
            support::panics(),
            panics_before,
            "the server panicked (see above)"
        );
        prop_assert!(
            parts.status.as_u16() < 500,
            "HTTP {}: {:?}",
            parts.status,
            parts.headers
        );
        if !parts.status.is_success() {
            return Ok(None);
        }
        {
            // The answer's encoding follows the request's Accept, not its
            // content type; base64 comes in 4-character quanta that decode
            // on their own (each frame may be padded).
            let text = parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("application/grpc-web-text"));
            let decoded = if text {
                bytes
                    .chunks(4)
                    .map(|quantum| STANDARD.decode(quantum))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|parts| parts.concat())
                    .map_err(|e| TestCaseError::fail(format!("answer not base64: {e}")))?
            } else {
                bytes.to_vec()
            };
            let grpc_web = parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("application/grpc-web"));
            let trailers = if grpc_web {
                frames(&decoded)
                    .map_err(|e| TestCaseError::fail(format!("answer not framed: {e}")))?
                    .1
            } else {
                None
            };
            let status = [trailers.as_ref(), http_trailers.as_ref(), Some(&parts.headers)]
                .into_iter()
                .flatten()
                .find_map(|t| t.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok());
            let message = [trailers.as_ref(), http_trailers.as_ref(), Some(&parts.headers)]
                .into_iter()
                .flatten()
                .find_map(|t| t.get("grpc-message"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let status = status
                .ok_or_else(|| TestCaseError::fail(format!("HTTP 200 without a grpc-status: {parts:?}")))?;
            prop_assert!(
                status != tonic::Code::Internal as i32 && status != tonic::Code::Unknown as i32,
                "grpc-status {status}: {message}"
            );
            Ok(Some(status))
        }
    }
}

/// Cases the fuzzer found, each once answered INTERNAL; INVALID_ARGUMENT now.
fn regressions() -> Vec<Case> {
    let frame = |payload: Vec<u8>| Frame {
        flag: 0,
        length_error: 0,
        payload,
    };
    let base = Case {
        path: "/pgfleet.v1.AuthService/Login",
        content_type: "application/grpc-web",
        accept: None,
        wire: Wire::Http1,
        body: Ok(Vec::new()),
        base64: Base64::Whole,
        authorized: false,
        timeout: None,
        encoding: None,
    };
    vec![
        // No message at all ("Missing request message.").
        base.clone(),
        // A frame cut short ("Unexpected EOF decoding stream.").
        Case {
            body: Ok(vec![Frame {
                length_error: 5,
                ..frame(vec![0x0a, 0x01, b'x'])
            }]),
            ..base.clone()
        },
        // A message that is not a HealthCheckRequest (tonic-prost's codec).
        Case {
            path: "/grpc.health.v1.Health/Check",
            body: Ok(vec![frame(vec![0])]),
            ..base.clone()
        },
        // Base64 with characters outside the alphabet (tonic-web).
        Case {
            content_type: "application/grpc-web-text",
            body: Ok(vec![frame(Vec::new())]),
            base64: Base64::Broken,
            ..base.clone()
        },
        // A compressed frame without grpc-encoding.
        Case {
            body: Ok(vec![Frame {
                flag: 1,
                ..frame(vec![0])
            }]),
            ..base
        },
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn fuzz_grpc_web_framing() -> anyhow::Result<()> {
    support::count_panics();
    let s = session(&cors_toml()).await?;
    let server = Arc::new(Server {
        addr: s.server.local_addr(),
        token: s.reader.clone(),
    });
    for case in regressions() {
        let status = server
            .answer(&case)
            .await
            .map_err(|e| anyhow::anyhow!("{case:?}: {e}"))?;
        anyhow::ensure!(
            status == Some(tonic::Code::InvalidArgument as i32),
            "{case:?}: grpc-status {status:?}"
        );
    }
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        fuzz::run("grpc-web framing", file!(), DEFAULT_CASES, case(), |case| {
            runtime.block_on(server.answer(&case)).map(|_| ())
        })
    })
    .await?;
    Ok(())
}
