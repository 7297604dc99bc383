//! The only door to libpg_query: every call runs under one lock, on a
//! thread with a large stack.
//!
//! Two facts about pg_query 18 shape this module:
//! - libpg_query's sources redirect the process's stderr (file descriptor 2)
//!   into a pipe around every parse, scan and fingerprint. Two threads doing
//!   that at once can leave fd 2 pointing at a closed pipe, and the server's
//!   own logs are lost. pg_query 18.1 builds it with that code compiled out
//!   (`#define DEBUG` in `pg_query_internal.h`: strace of the bench shows no
//!   `dup2`), but nothing pins that down, so [`LIBPG_QUERY`] still makes
//!   every call sequential, whichever thread makes it. Single-threaded the
//!   lock costs nothing; it does keep two large-stack callers from parsing
//!   at once.
//! - Decoding the protobuf tree takes about 20 KiB of stack per nesting level;
//!   about 47 chained operators (`a || b || …`) overflow a default 2 MiB thread
//!   stack and abort the process. prost stops decoding at 100 levels, so a
//!   deep statement becomes [`EngineError::TooDeep`] instead of a crash on a
//!   thread with [`INLINE_STACK_BYTES`] left. libpg_query also sizes its own
//!   depth limit (at most 2 MiB) from the stack the calling thread has left,
//!   so where a deep text fails, and with which message, depends on it.
//!
//! A caller with at least [`INLINE_STACK_BYTES`] of stack left (a main
//! thread, a thread spawned with a large stack) runs libpg_query itself: a
//! trip to another thread cost about as much as the parse. Any other caller
//! (tokio's 2 MiB threads) hands the work to one parser thread with a 64 MiB
//! stack. Both see libpg_query's full 2 MiB depth limit, so the results are
//! the same either way. A new stack segment (`stacker::maybe_grow`) would not
//! do: libpg_query measures the stack left against the thread's own stack,
//! not the segment, and would pick another depth limit.
//!
//! The work also builds the [`Tree`]s and drops the protobuf, so no deep
//! recursion runs on a small stack, and a panic inside pg_query becomes an
//! error instead of killing the caller.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread;

use pg_query::protobuf;

use crate::tree::{self, Tree};

/// Stack of the parser thread; pages are only committed when touched.
const PARSER_STACK_BYTES: usize = 64 * 1024 * 1024;

/// Stack a calling thread must have left to run libpg_query itself: the
/// 2 MiB depth limit libpg_query gives itself on the parser thread plus
/// PostgreSQL's 512 KiB of slop beyond it, and room for prost's 100 levels
/// of decoding afterwards (a test below runs the deepest texts on a thread
/// with just this much left).
const INLINE_STACK_BYTES: usize = 4 * 1024 * 1024;

/// Held around every libpg_query call (see the module docs: fd 2).
static LIBPG_QUERY: Mutex<()> = Mutex::new(());

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
                        // `run_here` catches pg_query's panics; this one is
                        // for the job's own code, so the thread lives on.
                        let _ = catch_unwind(AssertUnwindSafe(job));
                    }
                })
                .ok()
                .map(|_| jobs)
        })
        .as_ref()
}

/// How deep libpg_query may recurse on a piece of work, which decides
/// where it may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Depth {
    /// Bounded: libpg_query's parser, scanner and normalizer check their
    /// depth against its limit, prost stops decoding at 100 levels, and a
    /// fingerprint taken after the same text parsed walks a tree prost took.
    Checked,
    /// libpg_query's fingerprint of any text: its walk has no depth check
    /// and recurses once per level of a tree bison built without limit
    /// (`a || a || …`), so only the parser thread's stack will do.
    Unchecked,
}

/// Runs `work` on this thread if it has the stack for it, else on the
/// parser thread, and waits for its result.
fn run<T: Send + 'static>(
    depth: Depth,
    work: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    if depth == Depth::Checked && stacker::remaining_stack().is_some_and(|left| left >= INLINE_STACK_BYTES) {
        return run_here(work);
    }
    let jobs = parser_thread()
        .ok_or_else(|| EngineError::Unavailable("the SQL parser thread could not start".into()))?;
    let (reply, answer) = mpsc::sync_channel(1);
    jobs.send(Box::new(move || {
        let _ = reply.send(run_here(work));
    }))
    .map_err(|_| EngineError::Unavailable("the SQL parser thread has stopped".into()))?;
    answer
        .recv()
        .map_err(|_| EngineError::Unavailable("the SQL parser thread dropped this text".into()))?
}

/// Runs `work` under [`LIBPG_QUERY`] on this thread; a panic becomes an error.
fn run_here<T>(work: impl FnOnce() -> Result<T, EngineError>) -> Result<T, EngineError> {
    // The lock guards no data: a panic while it was held (caught below
    // anyway) leaves nothing half-done.
    let _one_at_a_time = LIBPG_QUERY.lock().unwrap_or_else(PoisonError::into_inner);
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|_| {
        Err(EngineError::Unavailable(
            "libpg_query panicked while handling this text".into(),
        ))
    })
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
/// [`run`]: a hand-off to the parser thread costs about as much as a parse.
pub(crate) fn parse(sql: &str, summarize: bool) -> Result<ParsedText, EngineError> {
    let sql = sql.to_owned();
    run(Depth::Checked, move || {
        let parsed = pg_query::parse(&sql, 0).map_err(pg_error)?;
        let statements = parsed
            .protobuf
            .stmts
            .iter()
            .map(raw_statement)
            .collect::<Result<_, _>>()?;
        drop(parsed);
        let tokens = scan_here(&sql).unwrap_or_default();
        // Only now that the text parsed (so prost took its tree) is the
        // fingerprint's unchecked walk known to be shallow.
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
    run(Depth::Checked, move || summarize_here(&sql))
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
    let outcome = run(Depth::Checked, move || {
        Ok(match pg_query::parse(&sql, 0) {
            Ok(_) => None,
            Err(pg_query::Error::Parse(message)) => Some(message),
            Err(other) => Some(other.to_string()),
        })
    });
    outcome.unwrap_or(None)
}

/// The first of `ranges` (statements of `sql`) that fails to parse on its
/// own, in one [`run`] (one trip to the parser thread per statement cost
/// more than the parses).
pub(crate) fn first_failing(sql: &str, ranges: &[std::ops::Range<usize>]) -> Option<usize> {
    let sql = sql.to_owned();
    let ranges = ranges.to_vec();
    run(Depth::Checked, move || {
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
    run(Depth::Checked, move || scan_here(&sql))
}

/// Runs under [`LIBPG_QUERY`], from [`run`].
fn scan_here(sql: &str) -> Result<Vec<Token>, EngineError> {
    // pg_query 18.1's `scan_tokens` builds a slice from a null pointer when
    // there are no tokens (undefined behaviour, an abort in debug builds).
    // Only a text of PostgreSQL's whitespace (` \t\n\r\f\v`) has none:
    // every other byte starts a token (comments included) or fails the
    // scan, and `trim` takes all of those. `scan_tokens` runs the same lexer
    // as `scan` and hands back its array instead of a protobuf, in a quarter
    // of `scan`'s time; `tests` compare the two.
    if sql.trim().is_empty() {
        return Ok(Vec::new());
    }
    let scanned = pg_query::scan_tokens(sql).map_err(pg_error)?;
    Ok(scanned.into_iter().map(token).collect())
}

fn token(scanned: protobuf::ScanToken) -> Token {
    Token {
        start: usize::try_from(scanned.start).unwrap_or(0),
        end: usize::try_from(scanned.end).unwrap_or(0),
        kind: protobuf::Token::try_from(scanned.token).unwrap_or(protobuf::Token::Nul),
    }
}

/// pg_query's fingerprint of any text (see [`Depth::Unchecked`]).
pub(crate) fn fingerprint(sql: &str) -> Result<u64, EngineError> {
    let sql = sql.to_owned();
    run(Depth::Unchecked, move || {
        pg_query::fingerprint(&sql, 0, 0)
            .map(|f| f.value)
            .map_err(pg_error)
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Texts nested as deep as the fuzzer nests them, in its shapes.
    fn deep_texts() -> Vec<String> {
        let mut texts = Vec::new();
        for depth in [30, 47, 100, 1000, 5000] {
            texts.push(format!("SELECT a{}", " || a".repeat(depth)));
            texts.push(format!("SELECT {}1{}", "(".repeat(depth), ")".repeat(depth)));
            texts.push(format!(
                "SELECT {}1{}",
                "(SELECT ".repeat(depth),
                ")".repeat(depth)
            ));
            texts.push(format!("SELECT {}1{}", "ARRAY[".repeat(depth), "]".repeat(depth)));
            texts.push(format!(
                "SELECT {}1{}",
                "CASE WHEN true THEN ".repeat(depth),
                " END".repeat(depth)
            ));
            texts.push(format!("SELECT 1 WHERE {}true", "NOT ".repeat(depth)));
        }
        texts
    }

    fn analyse_all(texts: &[String]) -> Vec<String> {
        texts
            .iter()
            .map(|sql| format!("{:?}", crate::analyze(sql)))
            .collect()
    }

    /// A thread with just [`INLINE_STACK_BYTES`] left runs the deepest texts
    /// itself without overflowing, and answers as the parser thread does.
    #[test]
    fn just_enough_stack_runs_the_deepest_texts_like_the_parser_thread() {
        let texts = deep_texts();
        let on = |stack: usize, texts: Vec<String>| {
            thread::Builder::new()
                .stack_size(stack)
                .spawn(move || {
                    let inline = stacker::remaining_stack().is_some_and(|left| left >= INLINE_STACK_BYTES);
                    (inline, analyse_all(&texts))
                })
                .expect("test thread starts")
                .join()
                .expect("test thread finishes")
        };
        // The thread's own frames above the check take a few KiB.
        let (inline, here) = on(INLINE_STACK_BYTES + 64 * 1024, texts.clone());
        assert!(inline, "the thread must be just above the threshold");
        // 1 MiB, not tokio's 2 MiB: glibc hands a new thread a cached stack
        // up to four times the size asked for, such as the one just above.
        let (inline, there) = on(1024 * 1024, texts.clone());
        assert!(!inline, "the thread must be below the threshold");
        for ((sql, here), there) in texts.iter().zip(&here).zip(&there) {
            assert_eq!(here, there, "{}…", &sql[..30.min(sql.len())]);
        }
    }

    /// What `scan_here` gave before it called `scan_tokens`.
    fn scanned(sql: &str) -> Result<Vec<Token>, EngineError> {
        if sql.trim().is_empty() {
            return Ok(Vec::new());
        }
        let tokens = pg_query::scan(sql).map_err(pg_error)?.tokens;
        Ok(tokens.into_iter().map(token).collect())
    }

    /// Every kind of whitespace (PostgreSQL's and Unicode's), and openers
    /// of the scanner's states left unclosed.
    const PIECES: &[&str] = &[
        " ", "\n", "\r", "\t", "\u{b}", "\u{c}", "\u{a0}", "\u{85}", "\u{2028}", "\u{feff}", "SELECT", "x",
        "1.5e3", "'", "E'\\", "U&'", "\"", "$a$", "$1", "/*", "*/", "--", ";",
    ];

    proptest! {
        /// `scan_tokens` (no protobuf) gives what `scan` gives, errors
        /// included, so the switch changed no token.
        #[test]
        fn scan_tokens_is_scan_without_the_protobuf(
            sql in prop_oneof![
                any::<String>(),
                prop::collection::vec(prop::sample::select(PIECES), 0..30).prop_map(|p| p.concat()),
            ]
        ) {
            let sql = sql.replace('\0', "");
            let now = scan_here(&sql).map_err(|e| format!("{e:?}"));
            let before = scanned(&sql).map_err(|e| format!("{e:?}"));
            prop_assert_eq!(now, before, "{:?}", sql);
        }
    }
}
