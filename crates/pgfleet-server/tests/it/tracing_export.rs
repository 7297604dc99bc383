//! Spans reach an OTLP collector: a real tonic server implementing
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export` receives
//! what pgfleet's exporter sends for calls made with a W3C `traceparent`.
//!
//! Its one test installs the process-wide subscriber: nextest runs every
//! test in a process of its own, so no other test's spans reach it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use pgfleet_config::{LogConfig, TelemetryConfig};
use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_server::telemetry::{self, Settings};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::support::{Fleet, bearer, channel, login, target};

/// Keeps every export request it is sent.
#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.received
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Every span received so far, with its resource's service name.
    fn spans(&self) -> Vec<(String, Span)> {
        let received = self.received.lock().map(|r| r.clone()).unwrap_or_default();
        received
            .into_iter()
            .flat_map(|request| request.resource_spans)
            .flat_map(|resource_spans| {
                let service = resource_spans
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .map(|v| format!("{:?}", v.value))
                    .unwrap_or_default();
                resource_spans
                    .scope_spans
                    .into_iter()
                    .flat_map(|scope| scope.spans)
                    .map(move |span| (service.clone(), span))
            })
            .collect()
    }
}

async fn start_collector() -> anyhow::Result<(SocketAddr, Collector)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let collector = Collector::default();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok((addr, collector))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A string attribute of `span`.
fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .map(|value| match value {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            AnyValue::BoolValue(b) => b.to_string(),
            AnyValue::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
}

fn execute(query: &str, targets: &[(&str, &str)], param: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        query: query.to_owned(),
        scope: Some(pb::execute_request::Scope::Targets(pb::TargetList {
            targets: targets.iter().map(|(c, d)| target(c, d)).collect(),
        })),
        params: if param.is_empty() {
            Vec::new()
        } else {
            vec![pb::QueryParam {
                value: Some(pb::query_param::Value::TextValue(param.to_owned())),
                type_name: String::new(),
            }]
        },
        ..Default::default()
    }
}

fn traced<T>(message: T, token: &str, traceparent: &str, request_id: &str) -> anyhow::Result<Request<T>> {
    let mut request = bearer(message, token);
    request
        .metadata_mut()
        .insert("traceparent", MetadataValue::try_from(traceparent)?);
    request
        .metadata_mut()
        .insert("x-request-id", MetadataValue::try_from(request_id)?);
    Ok(request)
}

#[tokio::test(flavor = "multi_thread")]
async fn execute_spans_reach_an_otlp_receiver_in_the_callers_trace() -> anyhow::Result<()> {
    let (collector_addr, collector) = start_collector().await?;
    let traces = TelemetryConfig {
        otlp_endpoint: Some(format!("http://{collector_addr}")),
        service_name: "pgfleet-trace-test".to_owned(),
        ..TelemetryConfig::default()
    };
    let telemetry = telemetry::init(Settings {
        log: &LogConfig::default(),
        format: None,
        traces: Some(&traces),
    })?;

    let fleet = Fleet::create().await?;
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    let password = fleet.create_user("trace-admin", Role::Master).await?;
    let token = login(&channel, "trace-admin", &password).await?;

    // The caller's trace: its id and the caller's span id.
    let trace_id = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let param = format!("trace-param-{}", uuid::Uuid::new_v4().simple());
    let mut query = QueryServiceClient::new(channel.clone());
    // A write on record (audit spans), then a read with a parameter on two
    // targets, gcp failing (no such table there).
    let created = query
        .execute(traced(
            execute("CREATE TABLE public.traced (v text)", &[("aws", "app")], ""),
            &token,
            &traceparent,
            "trace-ddl",
        )?)
        .await?
        .into_inner();
    assert!(created.success, "{created:?}");
    let read = query
        .execute(traced(
            execute(
                "SELECT count(*) FROM public.traced WHERE v <> $1",
                &[("aws", "app"), ("gcp", "app")],
                &param,
            ),
            &token,
            &traceparent,
            "trace-read",
        )?)
        .await?
        .into_inner();
    assert!(!read.success, "gcp has no such table: {read:?}");
    drop(query);
    drop(channel);
    server.shutdown().await?;

    // Spans are exported in batches: flush until the read's target spans
    // (the last to end) have arrived.
    let mut spans = Vec::new();
    for _ in 0..100 {
        telemetry.flush().await;
        spans = collector.spans();
        let targets = spans
            .iter()
            .filter(|(_, s)| s.name == "query.target" && hex(&s.trace_id) == trace_id)
            .count();
        if targets >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();

    // The read's RPC span continues the caller's trace, under its span.
    let rpc = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| {
            s.name == "pgfleet.v1.QueryService/Execute"
                && attribute(s, "request_id").as_deref() == Some("trace-read")
        })
        .unwrap_or_else(|| panic!("no Execute span among {names:?}"));
    assert_eq!(hex(&rpc.trace_id), trace_id, "the caller's trace id");
    assert_eq!(
        hex(&rpc.parent_span_id),
        caller_span,
        "a child of the caller's span"
    );
    assert_eq!(attribute(rpc, "rpc.method").as_deref(), Some("Execute"));
    assert_eq!(attribute(rpc, "rpc.grpc.status_code").as_deref(), Some("0"));
    assert_eq!(attribute(rpc, "identity").as_deref(), Some("user:trace-admin"));

    // One child per target, with its names and the statement fingerprint.
    let mut targets: Vec<(String, String, Option<String>)> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == "query.target" && s.parent_span_id == rpc.span_id)
        .map(|s| {
            assert_eq!(s.trace_id, rpc.trace_id);
            let fingerprint = attribute(s, "query.fingerprint").unwrap_or_default();
            assert!(
                fingerprint.len() == 16 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()),
                "{fingerprint:?}"
            );
            (
                attribute(s, "cloud").unwrap_or_default(),
                attribute(s, "database").unwrap_or_default(),
                attribute(s, "sqlstate"),
            )
        })
        .collect();
    targets.sort();
    let all_targets: Vec<(Option<String>, String, String, Option<String>)> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == "query.target")
        .map(|s| {
            (
                attribute(s, "cloud"),
                hex(&s.trace_id),
                hex(&s.parent_span_id),
                attribute(s, "sqlstate"),
            )
        })
        .collect();
    assert_eq!(
        targets,
        [
            ("aws".to_owned(), "app".to_owned(), None),
            ("gcp".to_owned(), "app".to_owned(), Some("42P01".to_owned())),
        ],
        "read span {}, every target span: {all_targets:?}; names {names:?}",
        hex(&rpc.span_id)
    );

    // The DDL's audit writes are children of its call, in the same trace.
    let ddl = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| attribute(s, "request_id").as_deref() == Some("trace-ddl"))
        .unwrap_or_else(|| panic!("no span of the DDL among {names:?}"));
    for operation in ["audit.open", "audit.close"] {
        assert!(
            spans.iter().any(|(_, s)| s.name == operation
                && s.parent_span_id == ddl.span_id
                && s.trace_id == ddl.trace_id),
            "no {operation} span under the DDL's call among {names:?}"
        );
    }
    assert!(
        spans
            .iter()
            .all(|(service, _)| service.contains("pgfleet-trace-test"))
    );

    // Neither the parameter nor the password (nor the token) is anywhere
    // in what was exported, Login's span included.
    assert!(names.contains(&"pgfleet.v1.AuthService/Login"), "{names:?}");
    let exported = format!(
        "{:?}",
        collector.received.lock().map(|r| r.clone()).unwrap_or_default()
    );
    for secret in [param.as_str(), password.as_str(), token.as_str(), "v <> $1"] {
        assert!(!exported.contains(secret), "{secret:?} was exported");
    }

    telemetry.shutdown().await;
    Ok(())
}
