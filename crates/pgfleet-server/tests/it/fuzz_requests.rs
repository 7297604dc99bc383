//! Fuzzing every RPC of every pgfleet service with random requests, against
//! an in-process server on a throwaway fleet. The methods and their request
//! types come from the API's own descriptor set, so a new RPC is fuzzed
//! without touching this file. Each case calls one method as one caller
//! (MASTER, USER, READER, no token, a forged token) with either a request
//! built field by field from its descriptor (random values of each field's
//! type, real target names among them, nested messages, repeated fields, an
//! unknown field) or random bytes that need not decode. The server must
//! answer every one with a precise status: never INTERNAL or UNKNOWN, the
//! codes of a server fault, for what is only bad input.
//!
//! Safe by construction: every `confirm…` field is left false, so no
//! dangerous statement runs; the only SQL is random text or a few read-only
//! statements; Logout is called without a real session, so the callers stay
//! logged in. Budget: `pgfleet_testkit::fuzz` (`PGFLEET_FUZZ_CASES`,
//! `PGFLEET_FUZZ_SECONDS`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut};
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_testkit::fuzz;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestCaseResult};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::support::{self, session};

/// Cases a `scripts/test` run makes (each is one call, some run SQL).
const DEFAULT_CASES: u32 = 160;
/// How deep request messages nest (the API's deepest is about 3).
const MAX_DEPTH: usize = 4;
/// The grpc-timeout of each call; a call may take its time, not hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Strings a request may carry: real target names reach further into the
/// server; no real username, so the callers' accounts are never deactivated,
/// demoted or reset.
const STRINGS: &[&str] = &[
    "",
    "aws",
    "gcp",
    "app",
    "analytics",
    "public",
    "aws/app",
    "gcp/analytics",
    "*",
    "%",
    "fuzz-nobody",
    "SELECT 1",
    "SELECT 1/0",
    "SELECT * FROM pg_class LIMIT 3",
    "VALUES (1), (2)",
    "SHOW TimeZone",
    "SELEC oops",
    "BEGIN",
    "select pg_sleep(0.01)",
    "00000000-0000-0000-0000-000000000000",
    "-1",
    "99999999999999999999",
    "next-page-token",
    "\u{0}",
    "é\u{1f418}",
    "2026-01-01T00:00:00Z",
];

/// Varints worth trying: limits, sign flips, enum values past the last.
const VARINTS: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    100,
    1000,
    65_536,
    i32::MAX as u64,
    u32::MAX as u64,
    u64::MAX,
    1 << 63,
];

/// A raw codec: requests and responses stay bytes, so any body can be sent.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut message = vec![0; buf.remaining()];
        buf.copy_to_slice(&mut message);
        Ok(Some(message))
    }
}

/// Random choices read from a tape of bytes, so proptest shrinks a case by
/// shortening its tape (an exhausted tape reads zeros: empty messages).
struct Tape<'a>(&'a [u8]);

impl Tape<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((first, rest)) => {
                self.0 = rest;
                *first
            }
            None => 0,
        }
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.byte()).collect()
    }
}

/// One RPC of the API.
struct Method {
    /// `/pgfleet.v1.QueryService/Execute`
    path: String,
    /// `.pgfleet.v1.ExecuteRequest`
    input: String,
}

/// The API as its descriptor set describes it.
struct Api {
    methods: Vec<Method>,
    /// Every message type by full name (`.package.Outer.Inner`).
    messages: HashMap<String, DescriptorProto>,
}

impl Api {
    fn load() -> anyhow::Result<Self> {
        let set = FileDescriptorSet::decode(pgfleet_proto::FILE_DESCRIPTOR_SET)?;
        let mut methods = Vec::new();
        let mut messages = HashMap::new();
        for file in &set.file {
            let package = file.package();
            for message in &file.message_type {
                collect(&format!(".{package}"), message, &mut messages);
            }
            if package != "pgfleet.v1" {
                continue;
            }
            for service in &file.service {
                for method in &service.method {
                    methods.push(Method {
                        path: format!("/{package}.{}/{}", service.name(), method.name()),
                        input: method.input_type().to_owned(),
                    });
                }
            }
        }
        anyhow::ensure!(
            methods.len() > 30,
            "only {} methods in the descriptor set",
            methods.len()
        );
        Ok(Self { methods, messages })
    }

    /// A request of type `name`, every field's value drawn from the tape.
    fn message(&self, name: &str, tape: &mut Tape<'_>, depth: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let Some(message) = self.messages.get(name) else {
            return out;
        };
        if depth > MAX_DEPTH {
            return out;
        }
        for field in &message.field {
            // Never confirm: a confirmed dangerous statement is not for a fuzzer.
            if field.name().starts_with("confirm") || tape.below(4) == 0 {
                continue;
            }
            let count = if field.label() == Label::Repeated {
                tape.below(4)
            } else {
                1
            };
            for _ in 0..count {
                self.field(
                    field.number() as u32,
                    field.r#type(),
                    field.type_name(),
                    tape,
                    depth,
                    &mut out,
                );
            }
        }
        // Now and then an unknown field, which must be ignored.
        if tape.below(16) == 0 {
            encode_key(1000 + tape.below(50) as u32, WireType::Varint, &mut out);
            encode_varint(u64::from(tape.byte()), &mut out);
        }
        out
    }

    fn field(
        &self,
        tag: u32,
        kind: Type,
        type_name: &str,
        tape: &mut Tape<'_>,
        depth: usize,
        out: &mut Vec<u8>,
    ) {
        match kind {
            Type::Bool => {
                encode_key(tag, WireType::Varint, out);
                encode_varint(u64::from(tape.byte() & 1), out);
            }
            Type::Int32
            | Type::Int64
            | Type::Uint32
            | Type::Uint64
            | Type::Sint32
            | Type::Sint64
            | Type::Enum => {
                encode_key(tag, WireType::Varint, out);
                let value = match tape.below(3) {
                    0 => VARINTS[tape.below(VARINTS.len())],
                    1 => u64::from(tape.byte()),
                    _ => u64::from_le_bytes(std::array::from_fn(|_| tape.byte())),
                };
                encode_varint(value, out);
            }
            Type::Fixed32 | Type::Sfixed32 | Type::Float => {
                encode_key(tag, WireType::ThirtyTwoBit, out);
                out.extend((0..4).map(|_| tape.byte()));
            }
            Type::Fixed64 | Type::Sfixed64 | Type::Double => {
                encode_key(tag, WireType::SixtyFourBit, out);
                out.extend((0..8).map(|_| tape.byte()));
            }
            Type::String | Type::Bytes => {
                let value = match tape.below(6) {
                    0..=2 => STRINGS[tape.below(STRINGS.len())].as_bytes().to_vec(),
                    3 => tape.bytes(24),
                    4 => String::from_utf8_lossy(&tape.bytes(24)).into_owned().into_bytes(),
                    _ => "x".repeat(1 << tape.below(18)).into_bytes(),
                };
                encode_key(tag, WireType::LengthDelimited, out);
                encode_varint(value.len() as u64, out);
                out.extend(value);
            }
            Type::Message => {
                let inner = self.message(type_name, tape, depth + 1);
                encode_key(tag, WireType::LengthDelimited, out);
                encode_varint(inner.len() as u64, out);
                out.extend(inner);
            }
            Type::Group => {}
        }
    }
}

fn collect(prefix: &str, message: &DescriptorProto, into: &mut HashMap<String, DescriptorProto>) {
    let name = format!("{prefix}.{}", message.name());
    for nested in &message.nested_type {
        collect(&name, nested, into);
    }
    into.insert(name, message.clone());
}

/// Who calls.
#[derive(Debug, Clone, Copy)]
enum Caller {
    Master,
    User,
    Reader,
    Anonymous,
    Forged,
}

#[derive(Debug, Clone)]
struct Case {
    method: usize,
    caller: Caller,
    /// Random bytes as the body, instead of a message built from the tape.
    raw: bool,
    tape: Vec<u8>,
}

fn case(methods: usize) -> impl Strategy<Value = Case> {
    (
        0..methods,
        prop_oneof![
            3 => Just(Caller::Master),
            2 => Just(Caller::User),
            2 => Just(Caller::Reader),
            1 => Just(Caller::Anonymous),
            1 => Just(Caller::Forged),
        ],
        prop::bool::weighted(0.2),
        prop::collection::vec(any::<u8>(), 0..256),
    )
        .prop_map(|(method, caller, raw, tape)| Case {
            method,
            caller,
            raw,
            tape,
        })
}

struct Target {
    api: Api,
    /// How many answers had each code (an OK stream counts as OK).
    codes: Mutex<BTreeMap<String, u64>>,
    channel: Channel,
    master: String,
    user: String,
    reader: String,
}

impl Target {
    /// Makes the case's call; every status it yields, first or mid-stream.
    async fn call(&self, case: &Case) -> Result<Vec<Status>, String> {
        let method = &self.api.methods[case.method];
        let body = if case.raw {
            case.tape.clone()
        } else {
            self.api.message(&method.input, &mut Tape(&case.tape), 0)
        };
        let logout = method.path.ends_with("/Logout");
        let token = match case.caller {
            // Logging out a real caller would end the session the other cases use.
            _ if logout => None,
            Caller::Master => Some(self.master.as_str()),
            Caller::User => Some(self.user.as_str()),
            Caller::Reader => Some(self.reader.as_str()),
            Caller::Anonymous => None,
            Caller::Forged => Some("pgf_forged_0000000000000000"),
        };
        let mut request = Request::new(body);
        request.set_timeout(CALL_TIMEOUT);
        if let Some(token) = token {
            let value: MetadataValue<_> = format!("Bearer {token}").parse().map_err(|e| format!("{e}"))?;
            request.metadata_mut().insert("authorization", value);
        }
        let path = http::uri::PathAndQuery::try_from(method.path.as_str()).map_err(|e| e.to_string())?;
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| format!("channel not ready: {e}"))?;
        // A unary answer is a stream of one message on the wire.
        let mut statuses = Vec::new();
        match grpc.server_streaming(request, path, RawCodec).await {
            Err(status) => statuses.push(status),
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(status) => {
                            statuses.push(status);
                            break;
                        }
                    }
                }
            }
        }
        Ok(statuses)
    }

    async fn check(&self, case: Case) -> TestCaseResult {
        let path = &self.api.methods[case.method].path;
        let panics_before = support::panics();
        let statuses = self.call(&case).await.map_err(TestCaseError::fail)?;
        // A handler's panic reaches the client as some status (CANCELLED,
        // or a reset stream), so it is counted where it happens.
        prop_assert_eq!(
            support::panics(),
            panics_before,
            "{} as {:?}: the server panicked (see the panic message above)",
            path,
            case.caller
        );
        if let Ok(mut codes) = self.codes.lock() {
            let code = statuses.first().map_or(Code::Ok, Status::code);
            *codes.entry(format!("{code:?}")).or_default() += 1;
        }
        for status in statuses {
            prop_assert!(
                !matches!(status.code(), Code::Internal | Code::Unknown),
                "{path} as {:?} answered {:?}: {}",
                case.caller,
                status.code(),
                status.message()
            );
        }
        Ok(())
    }
}

/// Cases the fuzzer found, replayed with the precise code expected.
fn regressions(api: &Api) -> anyhow::Result<Vec<(Case, Code)>> {
    let method = |path: &str| {
        api.methods
            .iter()
            .position(|m| m.path == path)
            .ok_or_else(|| anyhow::anyhow!("no method {path}"))
    };
    // GetMigrationSetRequest.database (field 1) of 64 KiB.
    let mut long_name = vec![0x0a, 0x80, 0x80, 0x04];
    long_name.extend(std::iter::repeat_n(b'x', 64 * 1024));
    Ok(vec![
        // A body that is no protobuf message: tonic-prost says INTERNAL.
        (
            Case {
                method: method("/pgfleet.v1.AuthService/Me")?,
                caller: Caller::Master,
                raw: true,
                tape: vec![0],
            },
            Code::InvalidArgument,
        ),
        // A NUL byte in a filter reached the history store, which refused it.
        (
            Case {
                method: method("/pgfleet.v1.HistoryService/ListExecutions")?,
                caller: Caller::Master,
                raw: true,
                tape: pb::ListExecutionsRequest {
                    filter: Some(pb::ExecutionFilter {
                        database: "\0".to_owned(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .encode_to_vec(),
            },
            Code::InvalidArgument,
        ),
        // A name quoted back whole made the headers too large for the client.
        (
            Case {
                method: method("/pgfleet.v1.MigrationService/GetMigrationSet")?,
                caller: Caller::Master,
                raw: true,
                tape: long_name,
            },
            Code::NotFound,
        ),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn fuzz_every_rpc_with_random_requests() -> anyhow::Result<()> {
    support::count_panics();
    let s = session("").await?;
    let target = Arc::new(Target {
        api: Api::load()?,
        codes: Mutex::default(),
        channel: s.channel.clone(),
        master: s.master.clone(),
        user: s.user.clone(),
        reader: s.reader.clone(),
    });
    for (case, expected) in regressions(&target.api)? {
        let path = &target.api.methods[case.method].path;
        let statuses = target.call(&case).await.map_err(anyhow::Error::msg)?;
        let codes: Vec<Code> = statuses.iter().map(Status::code).collect();
        anyhow::ensure!(codes == [expected], "{path}: {statuses:?}, expected {expected:?}");
    }
    let runtime = tokio::runtime::Handle::current();
    let methods = target.api.methods.len();
    // proptest's runner is synchronous: it runs on a blocking thread and
    // drives each call on this test's runtime.
    let fuzzed = Arc::clone(&target);
    tokio::task::spawn_blocking(move || {
        fuzz::run("grpc requests", file!(), DEFAULT_CASES, case(methods), |case| {
            runtime.block_on(fuzzed.check(case))
        })
    })
    .await?;
    if let Ok(codes) = target.codes.lock() {
        eprintln!("fuzz grpc requests: answers by code {codes:?}");
    }
    Ok(())
}
