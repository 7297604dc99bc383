//! The SQL check, off the async runtime.
//!
//! `pgfleet-sqlcheck` runs libpg_query on one thread of its own and its
//! callers block until it answers: called from an async handler, that
//! blocks a tokio worker, and a few long texts would stall every call on
//! the worker (Login, health). Every server call goes through [`analyze`]:
//! the wait happens on tokio's blocking pool, at most [`PARSES_AT_ONCE`]
//! at a time (the parser is one thread, so more would only queue there),
//! with at most [`WAITING_BYTES`] of text in line; beyond that a call is
//! refused with RESOURCE_EXHAUSTED instead of queueing without bound. The
//! line is bounded by bytes, not calls: a burst of hundreds of short
//! statements from many callers is normal and must wait its turn (each
//! takes microseconds), while a few huge texts are what ties the parser up.
//!
//! `spawn_blocking` rather than an async entry in sqlcheck: the error
//! position search makes several trips to the parser thread per text, and
//! keeping sqlcheck synchronous keeps it free of any runtime.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use pgfleet_sqlcheck::{Analysis, ParseError};
use tokio::sync::Semaphore;

use crate::error::RequestError;

/// Texts analysed at the same time.
pub const PARSES_AT_ONCE: usize = 2;
/// Bytes of text in line (being analysed or waiting) before more are refused.
pub const WAITING_BYTES: usize = 64 * 1024 * 1024;
/// What a text counts for in the line at least, so the number of callers
/// waiting is bounded too (65,536 at most).
const MIN_TEXT_WEIGHT: usize = 1024;

static PERMITS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(PARSES_AT_ONCE));
static IN_LINE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A text's place in the line; leaves it when dropped (also when the call
/// is cancelled).
struct InLine(usize);

impl Drop for InLine {
    fn drop(&mut self) {
        IN_LINE_BYTES.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// [`pgfleet_sqlcheck::analyze`] without blocking the async runtime. The
/// outer error is the call being refused (too many texts in line) or the
/// blocking task failing; the inner one is the text's own.
pub async fn analyze(query: &str) -> Result<Result<Analysis, ParseError>, RequestError> {
    let weight = query.len().max(MIN_TEXT_WEIGHT);
    let before = IN_LINE_BYTES.fetch_add(weight, Ordering::Relaxed);
    let _in_line = InLine(weight);
    // A text alone in line always gets its turn, whatever its size.
    if before > 0 && before.saturating_add(weight) > WAITING_BYTES {
        return Err(RequestError::ResourceExhausted(format!(
            "the SQL check is busy (more than {} MiB of SQL text in line); nothing was run; retry shortly",
            WAITING_BYTES / (1024 * 1024)
        )));
    }
    let _permit = PERMITS
        .acquire()
        .await
        .map_err(|_| RequestError::Internal("the SQL check's semaphore is closed".to_owned()))?;
    let query = query.to_owned();
    tokio::task::spawn_blocking(move || pgfleet_sqlcheck::analyze(&query))
        .await
        .map_err(|error| RequestError::Internal(format!("the SQL check task failed: {error}")))
}
