//! The only door to libpg_query: one dedicated parser thread with a large stack.
//!
//! Two facts about pg_query 18 shape this module:
//! - libpg_query redirects the process's stderr (file descriptor 2) into a pipe
//!   around every parse, scan, normalize and fingerprint, and restores it
//!   afterwards. Two threads doing that at once can leave fd 2 pointing at a
//!   closed pipe, and the server's own logs are lost. One thread makes every
//!   call sequential.
//! - Decoding the protobuf tree takes about 20 KiB of stack per nesting level;
//!   about 47 chained operators (`a || b || …`) overflow a default 2 MiB thread
//!   stack and abort the process. prost stops decoding at 100 levels, which the
//!   parser thread's stack covers many times over, so a deep statement becomes
//!   [`EngineError::TooDeep`] instead of a crash.
//!
//! The thread also builds the [`Tree`]s and drops the protobuf, so no deep
//! recursion runs on the caller's stack, and a panic inside pg_query becomes an
//! error instead of killing the caller.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;

use pg_query::protobuf;

use crate::tree::{self, Tree};

/// Stack of the parser thread; pages are only committed when touched.
const PARSER_STACK_BYTES: usize = 64 * 1024 * 1024;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug)]
pub(crate) enum EngineError {
    /// libpg_query rejected the text (or, for `Conversion`, could not take it).
    Pg(pg_query::Error),
    /// The tree nests deeper than pg_query can decode.
    TooDeep,
    /// The parser thread could not run the call.
    Unavailable(String),
}

/// One statement of a parsed text, as the parser reports it.
#[derive(Debug, Clone)]
pub(crate) struct RawStatement {
    /// Byte offset of the statement's first token.
    pub(crate) location: usize,
    /// Length in bytes up to (not including) its semicolon; `None` runs to the end.
    pub(crate) len: Option<usize>,
    pub(crate) tree: Tree,
}

fn parser_thread() -> Option<&'static mpsc::Sender<Job>> {
    static PARSER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    PARSER
        .get_or_init(|| {
            let (jobs, inbox) = mpsc::channel::<Job>();
            thread::Builder::new()
                .name("pgfleet-sqlcheck-parser".into())
                .stack_size(PARSER_STACK_BYTES)
                .spawn(move || {
                    for job in inbox {
                        // A panic inside pg_query drops the job's reply sender,
                        // which the caller sees as an error; the thread lives on.
                        let _ = catch_unwind(AssertUnwindSafe(job));
                    }
                })
                .ok()
                .map(|_| jobs)
        })
        .as_ref()
}

/// Runs `work` on the parser thread and waits for its result.
fn run<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    let jobs = parser_thread()
        .ok_or_else(|| EngineError::Unavailable("the SQL parser thread could not start".into()))?;
    let (reply, answer) = mpsc::sync_channel(1);
    jobs.send(Box::new(move || {
        let _ = reply.send(work());
    }))
    .map_err(|_| EngineError::Unavailable("the SQL parser thread has stopped".into()))?;
    answer
        .recv()
        .map_err(|_| EngineError::Unavailable("libpg_query panicked while handling this text".into()))?
}

/// libpg_query's own message when its protobuf encoder refuses a deep tree
/// (`PG_QUERY_PROTOBUF_MAX_DEPTH`), before prost's decoder ever sees it.
const LIBPG_QUERY_TOO_DEEP: &str = "nested too deeply to serialize";

fn pg_error(error: pg_query::Error) -> EngineError {
    match error {
        pg_query::Error::Decode(decode) if decode.to_string().contains("recursion limit") => {
            EngineError::TooDeep
        }
        // Same limit, hit on the C side: one message for both, not the
        // library's wording about protobuf.
        pg_query::Error::Parse(message) if message.contains(LIBPG_QUERY_TOO_DEEP) => EngineError::TooDeep,
        other => EngineError::Pg(other),
    }
}

/// Everything one parser-thread round trip learns about a text that parses.
#[derive(Debug, Clone)]
pub(crate) struct ParsedText {
    pub(crate) statements: Vec<RawStatement>,
    /// The scanner's tokens (empty if the scanner failed, which it should not).
    pub(crate) tokens: Vec<Token>,
    /// Fingerprint and normalized text, when asked for.
    pub(crate) summary: Option<Summary>,
}

#[derive(Debug, Clone)]
pub(crate) struct Summary {
    pub(crate) fingerprint: u64,
    pub(crate) normalized: String,
}

/// Parses, scans and (if `summarize`) fingerprints and normalizes `sql` in one
/// round trip: the hand-off to the parser thread costs about as much as a parse.
pub(crate) fn parse(sql: &str, summarize: bool) -> Result<ParsedText, EngineError> {
    let sql = sql.to_owned();
    run(move || {
        let parsed = pg_query::parse(&sql, 0).map_err(pg_error)?;
        let statements = parsed
            .protobuf
            .stmts
            .iter()
            .map(raw_statement)
            .collect::<Result<_, _>>()?;
        drop(parsed);
        let tokens = scan_here(&sql).unwrap_or_default();
        let summary = if summarize {
            Some(summarize_here(&sql)?)
        } else {
            None
        };
        Ok(ParsedText {
            statements,
            tokens,
            summary,
        })
    })
}

/// Fingerprint and normalized text of a text known to parse.
pub(crate) fn summarize(sql: &str) -> Result<Summary, EngineError> {
    let sql = sql.to_owned();
    run(move || summarize_here(&sql))
}

fn summarize_here(sql: &str) -> Result<Summary, EngineError> {
    let fingerprint = pg_query::fingerprint(sql, 0, 0).map_err(pg_error)?.value;
    let normalized = pg_query::normalize(sql).map_err(pg_error)?;
    Ok(Summary {
        fingerprint,
        normalized,
    })
}

fn raw_statement(stmt: &protobuf::RawStmt) -> Result<RawStatement, EngineError> {
    let tree = match stmt.stmt.as_deref() {
        Some(node) => {
            tree::build(node).map_err(|e| EngineError::Unavailable(format!("parse tree walk failed: {e}")))?
        }
        None => Tree::Absent,
    };
    Ok(RawStatement {
        location: usize::try_from(stmt.stmt_location).unwrap_or(0),
        len: usize::try_from(stmt.stmt_len).ok().filter(|&len| len > 0),
        tree,
    })
}

/// The PostgreSQL error message for `sql`, or `None` if it parses.
pub(crate) fn parse_error_message(sql: &str) -> Option<String> {
    let sql = sql.to_owned();
    let outcome = run(move || {
        Ok(match pg_query::parse(&sql, 0) {
            Ok(_) => None,
            Err(pg_query::Error::Parse(message)) => Some(message),
            Err(other) => Some(other.to_string()),
        })
    });
    outcome.unwrap_or(None)
}

/// The first of `ranges` (statements of `sql`) that fails to parse on its
/// own, in one trip to the parser thread (one trip per statement cost more
/// than the parses).
pub(crate) fn first_failing(sql: &str, ranges: &[std::ops::Range<usize>]) -> Option<usize> {
    let sql = sql.to_owned();
    let ranges = ranges.to_vec();
    run(move || {
        Ok(ranges.iter().position(|range| {
            sql.get(range.clone())
                .is_some_and(|text| pg_query::parse(text, 0).is_err())
        }))
    })
    .unwrap_or(None)
}

/// A lexical token: byte range and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) kind: protobuf::Token,
}

pub(crate) fn scan(sql: &str) -> Result<Vec<Token>, EngineError> {
    let sql = sql.to_owned();
    run(move || scan_here(&sql))
}

/// Runs on the parser thread.
fn scan_here(sql: &str) -> Result<Vec<Token>, EngineError> {
    // pg_query 18.1's `scan_tokens` builds a slice from a null pointer when there
    // are no tokens (undefined behaviour, an abort in debug builds); `scan`
    // decodes a protobuf instead, and a blank text has no tokens anyway.
    if sql.trim().is_empty() {
        return Ok(Vec::new());
    }
    let scanned = pg_query::scan(sql).map_err(pg_error)?;
    Ok(scanned
        .tokens
        .into_iter()
        .map(|t| Token {
            start: usize::try_from(t.start).unwrap_or(0),
            end: usize::try_from(t.end).unwrap_or(0),
            kind: protobuf::Token::try_from(t.token).unwrap_or(protobuf::Token::Nul),
        })
        .collect())
}

pub(crate) fn fingerprint(sql: &str) -> Result<u64, EngineError> {
    let sql = sql.to_owned();
    run(move || {
        pg_query::fingerprint(&sql, 0, 0)
            .map(|f| f.value)
            .map_err(pg_error)
    })
}
