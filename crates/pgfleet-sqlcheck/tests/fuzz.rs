//! Fuzzing the validator: any text, deep nesting and huge literals through
//! `split`, `parse`, `analyze`, `fingerprint` and `replace_literals`. Nothing
//! may panic or take the parser thread down; every error points inside the
//! text; split spans stay in order, in bounds and on character boundaries.
//! Budget: `pgfleet_testkit::fuzz` (`PGFLEET_FUZZ_CASES`, `PGFLEET_FUZZ_SECONDS`).

use std::time::{Duration, Instant};

use pgfleet_sqlcheck::{ParseError, analyze, fingerprint, parse, replace_literals, split};
use pgfleet_testkit::fuzz;

mod support;
use proptest::prelude::*;
use proptest::test_runner::TestCaseResult;

/// One case may not take longer than this (a quadratic path on a huge text
/// would): generous, as CI machines are shared.
const SLOW_CASE: Duration = Duration::from_secs(30);

/// Fragments that open or close the scanner's states, unbalanced on purpose.
const FRAGMENTS: &[&str] = &[
    "SELECT ",
    "FROM t ",
    "WHERE ",
    "WITH w AS (",
    "BEGIN ATOMIC ",
    "END",
    "CREATE FUNCTION f() ",
    "DO ",
    "CASE WHEN ",
    "COPY t FROM STDIN",
    ";",
    "(",
    ")",
    "[",
    "]",
    "'",
    "''",
    "E'\\",
    "U&'",
    "U&\"",
    "B'",
    "X'",
    "\"",
    "$$",
    "$a$",
    "$1",
    "/*",
    "*/",
    "--",
    "\n",
    "\r",
    "\\",
    "\u{0}",
    "1e999",
    "x ",
    "1 ",
    "é",
    "\u{1f418}",
    "::",
    "||",
    "ARRAY[",
    "EXPLAIN ANALYZE ",
    "SET ",
    "=",
];

fn fragment_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..40).prop_map(|parts| parts.concat())
}

/// Bytes of any kind made into a string the way a client library would
/// (invalid UTF-8 replaced), NUL bytes included.
fn lossy_bytes() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Expressions and queries nested `depth` times, in the shapes that recurse
/// in the parser and in the tree decoding.
fn deep() -> impl Strategy<Value = String> {
    (0usize..6, 1usize..1500).prop_map(|(shape, depth)| match shape {
        0 => format!("SELECT {}1{}", "(".repeat(depth), ")".repeat(depth)),
        1 => format!("SELECT a{}", " || a".repeat(depth)),
        2 => format!("SELECT {}1{}", "(SELECT ".repeat(depth), ")".repeat(depth)),
        3 => format!("SELECT {}1{}", "ARRAY[".repeat(depth), "]".repeat(depth)),
        4 => format!(
            "SELECT {}1{}",
            "CASE WHEN true THEN ".repeat(depth),
            " END".repeat(depth)
        ),
        _ => format!("SELECT 1 WHERE {}", "NOT ".repeat(depth)),
    })
}

/// Literals and identifiers of up to 2 MiB, complete or left open.
fn huge() -> impl Strategy<Value = String> {
    (0usize..6, 1usize..(2 << 20), any::<bool>()).prop_map(|(shape, len, open)| {
        let body = "x".repeat(len);
        let close = |c: &str| if open { String::new() } else { c.to_owned() };
        match shape {
            0 => format!("SELECT '{body}{}", close("'")),
            1 => format!("SELECT $q${body}{}", close("$q$")),
            2 => format!("SELECT \"{body}{}", close("\"")),
            3 => format!("SELECT 1{}", "1".repeat(len)),
            4 => format!("SELECT 1 /*{body}{}", close("*/")),
            _ => format!("SELEC '{body}' oops"),
        }
    })
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        3 => lossy_bytes(),
        4 => fragment_soup(),
        2 => deep(),
        1 => huge(),
    ]
}

fn check_error(sql: &str, error: &ParseError) -> TestCaseResult {
    prop_assert!(
        !matches!(error, ParseError::Internal(_)),
        "internal parser error: {error}"
    );
    prop_assert!(!error.to_string().is_empty());
    if let Some(p) = error.position() {
        prop_assert!(
            p.offset <= sql.len() && sql.is_char_boundary(p.offset),
            "{error}: offset {}",
            p.offset
        );
        prop_assert!(p.line >= 1 && p.column >= 1, "{error}");
    }
    Ok(())
}

fn check_text(sql: String) -> TestCaseResult {
    let started = Instant::now();
    let mut previous_end = 0;
    for span in split(&sql) {
        prop_assert!(span.range.start < span.range.end, "empty span {:?}", span.range);
        prop_assert!(span.range.start >= previous_end, "spans overlap or go backwards");
        prop_assert_eq!(sql.get(span.range.clone()), Some(span.text.as_str()));
        previous_end = span.range.end;
    }
    prop_assert!(previous_end <= sql.len());
    if let Err(e) = parse(&sql) {
        check_error(&sql, &e)?;
    }
    match analyze(&sql) {
        Ok(analysis) => {
            for s in &analysis.statements {
                prop_assert!(!(s.is_read() && s.can_write));
            }
        }
        Err(e) => check_error(&sql, &e)?,
    }
    if let Err(e) = fingerprint(&sql) {
        check_error(&sql, &e)?;
    }
    if let Err(e) = replace_literals(&sql) {
        check_error(&sql, &e)?;
    }
    prop_assert!(
        started.elapsed() < SLOW_CASE,
        "took {:?} for {} bytes",
        started.elapsed(),
        sql.len()
    );
    let differing = support::differing(&[sql]);
    prop_assert!(differing.is_empty(), "{}", differing.join("\n"));
    Ok(())
}

#[test]
fn fuzz_validator_on_any_text() {
    fuzz::run("sqlcheck", file!(), 256, any_text(), check_text);
}

/// Nesting far past what the tree decoder takes, in every shape the fuzzer
/// nests: a located error (`TooDeep`, or PostgreSQL's own "memory
/// exhausted"), never a crash or an internal error. Found by the fuzzer:
/// `NOT NOT … true` and nested subqueries hit libpg_query's own depth limit,
/// whose message ("nested too deeply to serialize to protobuf") reached users
/// as a parse error; it is `TooDeep` now.
#[test]
fn fuzz_regression_very_deep_nesting_is_a_located_error() {
    for sql in [
        format!("SELECT a{}", " || a".repeat(5000)),
        format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000)),
        format!("SELECT {}1{}", "(SELECT ".repeat(3000), ")".repeat(3000)),
        format!("SELECT {}1{}", "ARRAY[".repeat(3000), "]".repeat(3000)),
        format!(
            "SELECT {}1{}",
            "CASE WHEN true THEN ".repeat(3000),
            " END".repeat(3000)
        ),
        format!("SELECT 1 WHERE {}true", "NOT ".repeat(5000)),
    ] {
        if let Err(e) = analyze(&sql) {
            check_error(&sql, &e).unwrap_or_else(|failure| panic!("{}…: {failure}", &sql[..20]));
            assert!(
                !e.to_string().contains("protobuf"),
                "{}…: the library's wording leaks: {e}",
                &sql[..20]
            );
        }
    }
}
