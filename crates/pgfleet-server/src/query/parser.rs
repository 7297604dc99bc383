//! The SQL check, off the async runtime.
//!
//! `pgfleet-sqlcheck` runs libpg_query on one thread of its own and its
//! callers block until it answers: called from an async handler, that
//! blocks a tokio worker, and a few long texts would stall every call on
//! the worker (Login, health). Every server call goes through [`analyze`]:
//! the wait happens on tokio's blocking pool, at most [`PARSES_AT_ONCE`]
//! at a time (the parser is one thread, so more would only queue there),
//! with at most [`WAITING`] more in line; beyond that a call is refused
//! with RESOURCE_EXHAUSTED instead of queueing without bound.
//!
//! `spawn_blocking` rather than an async entry in sqlcheck: the error
//! position search makes several trips to the parser thread per text, and
//! keeping sqlcheck synchronous keeps it free of any runtime.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use pgfleet_sqlcheck::{Analysis, ParseError};
use tokio::sync::Semaphore;

use crate::request_error::RequestError;

/// Texts analysed at the same time.
pub const PARSES_AT_ONCE: usize = 2;
/// Texts waiting for a turn before more are refused.
pub const WAITING: usize = 64;

static PERMITS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(PARSES_AT_ONCE));
static IN_LINE: AtomicUsize = AtomicUsize::new(0);

/// Leaves the line when dropped (also when the call is cancelled).
struct InLine;

impl Drop for InLine {
    fn drop(&mut self) {
        IN_LINE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// [`pgfleet_sqlcheck::analyze`] without blocking the async runtime. The
/// outer error is the call being refused (too many texts in line) or the
/// blocking task failing; the inner one is the text's own.
pub async fn analyze(query: &str) -> Result<Result<Analysis, ParseError>, RequestError> {
    if IN_LINE.fetch_add(1, Ordering::Relaxed) >= PARSES_AT_ONCE + WAITING {
        IN_LINE.fetch_sub(1, Ordering::Relaxed);
        return Err(RequestError::ResourceExhausted(format!(
            "the SQL check is busy ({PARSES_AT_ONCE} texts being analysed, {WAITING} waiting); nothing was run; retry shortly"
        )));
    }
    let _in_line = InLine;
    let _permit = PERMITS
        .acquire()
        .await
        .map_err(|_| RequestError::Internal("the SQL check's semaphore is closed".to_owned()))?;
    let query = query.to_owned();
    tokio::task::spawn_blocking(move || pgfleet_sqlcheck::analyze(&query))
        .await
        .map_err(|error| RequestError::Internal(format!("the SQL check task failed: {error}")))
}
