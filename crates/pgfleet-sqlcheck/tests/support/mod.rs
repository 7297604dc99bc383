//! Both ways a text reaches libpg_query give the same answers.
//!
//! The crate runs libpg_query on the calling thread when it has 4 MiB of
//! stack left, and on its parser thread otherwise (`src/engine.rs`). Tests
//! run on 2 MiB threads, so without this every test would see only the
//! parser thread.

use std::thread;

use pgfleet_sqlcheck::{
    Analysis, Fingerprint, ParseError, StatementSpan, analyze, fingerprint, parse, replace_literals, split,
};

/// Less than the crate asks for: the parser thread's path. 1 MiB rather
/// than tokio's 2: glibc hands a new thread a cached stack up to four times
/// the size asked for, and 4 MiB is still below the crate's threshold.
pub const SMALL_STACK: usize = 1024 * 1024;
/// Far more than the crate asks for to run libpg_query on the caller.
pub const LARGE_STACK: usize = 16 * 1024 * 1024;

/// Everything the crate answers about one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Answers {
    pub split: Vec<StatementSpan>,
    pub parse: Result<Vec<StatementSpan>, ParseError>,
    pub analyze: Result<Analysis, ParseError>,
    pub fingerprint: Result<Fingerprint, ParseError>,
    pub replace_literals: Result<String, ParseError>,
}

pub fn answers(sql: &str) -> Answers {
    Answers {
        split: split(sql),
        parse: parse(sql).map(|parsed| parsed.statements().cloned().collect()),
        analyze: analyze(sql),
        fingerprint: fingerprint(sql),
        replace_literals: replace_literals(sql),
    }
}

/// Runs `work` on a new thread with `stack` bytes of stack.
pub fn on_stack<T: Send + 'static>(stack: usize, work: impl FnOnce() -> T + Send + 'static) -> T {
    thread::Builder::new()
        .stack_size(stack)
        .spawn(work)
        .expect("a test thread starts")
        .join()
        .expect("the test thread finishes")
}

/// [`answers`] for every text from a small stack (the parser thread) and
/// from a large one (the calling thread); the texts whose answers differ.
pub fn differing(texts: &[String]) -> Vec<String> {
    let answer_all = |texts: Vec<String>| move || texts.iter().map(|t| answers(t)).collect::<Vec<_>>();
    let small = on_stack(SMALL_STACK, answer_all(texts.to_vec()));
    let large = on_stack(LARGE_STACK, answer_all(texts.to_vec()));
    texts
        .iter()
        .zip(small.iter().zip(&large))
        .filter(|(_, (small, large))| small != large)
        .map(|(text, (small, large))| {
            let head = |s: &str| s.chars().take(400).collect::<String>();
            format!(
                "{:?}: parser thread {}, calling thread {}",
                head(text),
                head(&format!("{small:?}")),
                head(&format!("{large:?}"))
            )
        })
        .collect()
}
