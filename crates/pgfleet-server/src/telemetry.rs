//! Logging setup: `tracing` with a human or JSON format.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines for a terminal.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global subscriber. The filter comes from `PGFLEET_LOG`
/// (then `RUST_LOG`), default `info`. Calling it twice is harmless.
pub fn init(format: LogFormat) {
    let filter = std::env::var("PGFLEET_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new("info,sqlx=warn"));
    // Colour codes only for a terminal: in files and log collectors they
    // are noise that breaks searching.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
    // An already-installed subscriber (tests) is fine.
    drop(result);
}
