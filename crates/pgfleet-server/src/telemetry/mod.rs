//! Observability: log lines, trace export and Prometheus metrics.
//!
//! - [`init`] installs the process's `tracing` subscriber once: log lines
//!   (human or JSON, to stderr or rotating files) and, when
//!   `telemetry.otlp_endpoint` is set, a `tracing-opentelemetry` layer that
//!   exports pgfleet's spans over OTLP/gRPC with a batch exporter. The
//!   subscriber is process-wide, so the binary installs it (tests install
//!   their own); [`crate::app::RunningServer`] never does.
//! - [`rpc`]: the tower layer giving every call its span, request id and
//!   measurements.
//! - [`metrics`]: the Prometheus series of one server; [`exposition`]
//!   serves them on `server.metrics_addr`.
//!
//! What spans carry is chosen field by field: methods, request ids,
//! identity labels, targets, statement fingerprints, status codes and
//! SQLSTATEs, never SQL text, parameters or credentials. Only spans reach
//! the exporter (log events stay in the logs), so a message that quotes a
//! value cannot leak into traces.

pub mod exposition;
pub mod metrics;
pub mod rpc;

use std::io::IsTerminal as _;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use pgfleet_config::{LogConfig, LogRotation, TelemetryConfig};
use tracing::subscriber::Interest;
use tracing::{Level, Metadata, Subscriber, span};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

pub use metrics::Metrics;

/// How log lines are written (`--log-format`, `log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines for a terminal.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

impl From<pgfleet_config::LogFormat> for LogFormat {
    fn from(format: pgfleet_config::LogFormat) -> Self {
        match format {
            pgfleet_config::LogFormat::Human => LogFormat::Human,
            pgfleet_config::LogFormat::Json => LogFormat::Json,
        }
    }
}

/// Environment variables whose filter wins over `log.level`, in order.
const LEVEL_ENV: [&str; 2] = ["PGFLEET_LOG", "RUST_LOG"];

/// Name of the OpenTelemetry instrumentation scope of pgfleet's spans.
const TRACER_NAME: &str = "pgfleet";

/// Everything [`init`] needs.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// `[log]`.
    pub log: &'a LogConfig,
    /// `--log-format` / `PGFLEET_LOG_FORMAT`, winning over `log.format`.
    pub format: Option<LogFormat>,
    /// `[telemetry]` when this process exports traces (`serve` only).
    pub traces: Option<&'a TelemetryConfig>,
}

/// Why the subscriber could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{source_name}: not a tracing filter: {error}")]
    Filter {
        source_name: String,
        error: tracing_subscriber::filter::ParseError,
    },
    #[error("log.file: cannot open log files in {directory}: {error}")]
    LogFile {
        directory: String,
        error: tracing_appender::rolling::InitError,
    },
    #[error("telemetry.otlp_endpoint: cannot set up the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("a tracing subscriber is already installed in this process")]
    AlreadyInstalled,
}

/// What must outlive the server and be flushed at exit: the log file
/// writer's worker and the span exporter's batch.
#[must_use = "dropping it stops the log file writer; call shutdown() at exit"]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    _log_writer: Option<WorkerGuard>,
}

impl Telemetry {
    /// Sends every span ended so far to the collector and waits for it
    /// (bounded by `telemetry.export_timeout`).
    pub async fn flush(&self) {
        let Some(provider) = self.tracer.clone() else {
            return;
        };
        // The batch exporter blocks on its own thread; keep the runtime's
        // workers free while it does.
        match tokio::task::spawn_blocking(move || provider.force_flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "could not flush spans"),
            Err(error) => tracing::warn!(%error, "span flush task failed"),
        }
    }

    /// Flushes and stops the span exporter, then the log writer (whose
    /// guard writes out what is buffered when dropped).
    pub async fn shutdown(self) {
        if let Some(provider) = self.tracer.clone() {
            match tokio::task::spawn_blocking(move || provider.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "could not flush spans at exit"),
                Err(error) => tracing::warn!(%error, "span exporter shutdown failed"),
            }
        }
        drop(self);
    }
}

/// Installs the process's subscriber: log lines as `settings.log` says and,
/// with `settings.traces` naming an endpoint, span export over OTLP. Must
/// run inside a tokio runtime when traces are exported (the gRPC channel
/// lives on it).
pub fn init(settings: Settings<'_>) -> Result<Telemetry, TelemetryError> {
    let log = settings.log;
    let format = settings.format.unwrap_or_else(|| log.format.into());
    let filter = level_filter(&log.level)?;
    let (writer, log_writer, ansi) = match &log.file {
        None => (
            BoxMakeWriter::new(std::io::stderr),
            None,
            std::io::stderr().is_terminal(),
        ),
        Some(directory) => {
            let rotation = match log.rotation {
                LogRotation::Daily => Rotation::DAILY,
                LogRotation::Hourly => Rotation::HOURLY,
                LogRotation::Never => Rotation::NEVER,
            };
            let mut builder = RollingFileAppender::builder()
                .rotation(rotation)
                .filename_prefix("pgfleet")
                .filename_suffix("log");
            if let Some(keep) = log.max_files {
                builder = builder.max_log_files(usize::try_from(keep).unwrap_or(usize::MAX));
            }
            let appender = builder
                .build(directory)
                .map_err(|error| TelemetryError::LogFile {
                    directory: directory.display().to_string(),
                    error,
                })?;
            // Not lossy: under a burst the callers wait for the disk rather
            // than lines silently vanishing.
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(false)
                .finish(appender);
            (BoxMakeWriter::new(writer), Some(guard), false)
        }
    };
    let log_layer = match format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .boxed(),
        // The span list puts the `rpc` span's request id (and the target's
        // names) on every line logged inside a call.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(writer)
            .boxed(),
    };

    let tracer = match settings.traces {
        Some(traces) => match &traces.otlp_endpoint {
            Some(endpoint) => Some(tracer_provider(traces, endpoint)?),
            None => None,
        },
        None => None,
    };
    let trace_layer = tracer.as_ref().map(|provider| SpansOnly {
        inner: tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(TRACER_NAME))
            .with_threads(false),
    });
    let levels = Levels {
        log: filter,
        traced_spans: trace_layer.is_some(),
    };

    let installed = tracing_subscriber::registry()
        .with(levels)
        .with(log_layer)
        .with(trace_layer)
        .try_init();
    if installed.is_err() {
        if let Some(provider) = tracer {
            let _ = provider.shutdown();
        }
        return Err(TelemetryError::AlreadyInstalled);
    }
    Ok(Telemetry {
        tracer,
        _log_writer: log_writer,
    })
}

/// Human lines on stderr with the default level, for commands that run
/// before (or without) a configuration (`check-config`).
pub fn init_stderr(format: Option<LogFormat>) {
    let log = LogConfig::default();
    let settings = Settings {
        log: &log,
        format,
        traces: None,
    };
    if let Err(error) = init(settings) {
        eprintln!("pgfleet: {error}");
    }
}

/// True for pgfleet's own spans at INFO or above: the ones exported.
fn is_traced_span(metadata: &Metadata<'_>) -> bool {
    metadata.is_span() && metadata.target().starts_with("pgfleet_") && *metadata.level() <= Level::INFO
}

/// The subscriber's one, global filter: `log.level` for everything, plus
/// pgfleet's spans when traces are exported (so `log.level = "warn"` still
/// exports call and target spans).
///
/// Global rather than one filter per layer: tracing-subscriber's per-layer
/// filters keep a thread-local verdict between `enabled` and the span it
/// was asked for, and a library that only asks (sqlx checks whether to log
/// a statement) leaves a stale verdict that disables the next span on that
/// thread; call and target spans went missing that way.
struct Levels {
    log: EnvFilter,
    traced_spans: bool,
}

impl<S> tracing_subscriber::Layer<S> for Levels
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.traced_spans && is_traced_span(metadata) {
            return Interest::always();
        }
        <EnvFilter as tracing_subscriber::Layer<S>>::register_callsite(&self.log, metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        (self.traced_spans && is_traced_span(metadata))
            || <EnvFilter as tracing_subscriber::Layer<S>>::enabled(&self.log, metadata, ctx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let log = <EnvFilter as tracing_subscriber::Layer<S>>::max_level_hint(&self.log);
        if self.traced_spans {
            log.map(|hint| hint.max(LevelFilter::INFO))
        } else {
            log
        }
    }

    // EnvFilter follows spans for directives on span fields.
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        self.log.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        self.log.on_record(id, values, ctx);
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.log.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.log.on_exit(id, ctx);
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.log.on_close(id, ctx);
    }
}

/// The OpenTelemetry layer, shown pgfleet's own spans only and no events:
/// log lines may quote values (an error message, a username), and other
/// crates' spans are not chosen field by field. It hides the layer from
/// `OpenTelemetrySpanExt` (that needs `downcast_raw`, an `unsafe fn`, which
/// the workspace forbids), so parents come from the OpenTelemetry context
/// current when a span is created (see `rpc.rs`).
struct SpansOnly<L> {
    inner: L,
}

impl<S, L> tracing_subscriber::Layer<S> for SpansOnly<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: tracing_subscriber::Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    // Spans it never saw are skipped by the layer's other callbacks.
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if is_traced_span(attrs.metadata()) {
            self.inner.on_new_span(attrs, id, ctx);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        self.inner.on_record(id, values, ctx);
    }

    fn on_follows_from(&self, id: &span::Id, follows: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_follows_from(id, follows, ctx);
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_exit(id, ctx);
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.inner.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &span::Id, new: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_id_change(old, new, ctx);
    }
}

/// `PGFLEET_LOG`, then `RUST_LOG`, then `log.level`.
fn level_filter(configured: &str) -> Result<EnvFilter, TelemetryError> {
    let (source_name, spec) = LEVEL_ENV
        .iter()
        .find_map(|name| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
                .map(|value| ((*name).to_owned(), value))
        })
        .unwrap_or_else(|| ("log.level".to_owned(), configured.to_owned()));
    EnvFilter::builder()
        .parse(&spec)
        .map_err(|error| TelemetryError::Filter { source_name, error })
}

/// The OpenTelemetry SDK with a batch OTLP/gRPC exporter to `endpoint`.
fn tracer_provider(traces: &TelemetryConfig, endpoint: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(traces.export_timeout)
        .build()?;
    // The caller's sampling decision wins (one trace is never half kept);
    // new traces are sampled at the configured ratio.
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(traces.sampling_ratio)));
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(
            Resource::builder()
                .with_service_name(traces.service_name.clone())
                .build(),
        )
        .build())
}
