//! Property tests for split and classification.

mod support;

use pgfleet_sqlcheck::{NameMatch, SIDE_EFFECT_FUNCTIONS, StatementClass, analyze, parse, split};
use proptest::prelude::*;

/// Text safe inside a single-quoted literal once quotes are doubled (no NUL).
fn literal_text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}".prop_map(|s| s.replace('\'', "''"))
}

fn string_literal() -> impl Strategy<Value = String> {
    literal_text().prop_map(|s| format!("'{s}'"))
}

fn quoted_identifier() -> impl Strategy<Value = String> {
    "[^\u{0}\"]{1,8}".prop_map(|s| format!("\"{s}\""))
}

fn dollar_quoted() -> impl Strategy<Value = String> {
    "[^\u{0}$]{0,12}".prop_map(|s| format!("$q${s}$q$"))
}

/// A literal expression: number, string, dollar quote, boolean or NULL.
fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i32>().prop_map(|n| n.to_string()),
        string_literal(),
        dollar_quoted(),
        Just("true".to_owned()),
        Just("NULL".to_owned()),
    ]
}

/// A SELECT of literals, read-only by construction.
fn select_of_literals() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((literal(), quoted_identifier()), 1..4),
        any::<bool>(),
    )
        .prop_map(|(items, values)| {
            if values {
                let row: Vec<String> = items.into_iter().map(|(l, _)| l).collect();
                format!("VALUES ({})", row.join(", "))
            } else {
                let cols: Vec<String> = items.into_iter().map(|(l, a)| format!("{l} AS {a}")).collect();
                format!("SELECT {}", cols.join(", "))
            }
        })
}

/// Valid statements of many shapes, with no leading or trailing comments.
fn statement() -> impl Strategy<Value = String> {
    prop_oneof![
        select_of_literals(),
        (quoted_identifier(), string_literal()).prop_map(|(t, s)| format!("INSERT INTO {t} VALUES ({s})")),
        (quoted_identifier(), literal()).prop_map(|(t, l)| format!("UPDATE {t} SET a = {l} WHERE b = 1")),
        (quoted_identifier(), literal_text()).prop_map(|(t, c)| format!("DELETE FROM {t} /* {} */ WHERE a", c.replace("*/", "").replace("/*", ""))),
        dollar_quoted().prop_map(|body| format!("DO {body}")),
        (string_literal(), literal()).prop_map(|(s, l)| format!(
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT {s}; SELECT CASE WHEN true THEN {l} END; SELECT 1; END"
        )),
        Just("BEGIN".to_owned()),
        Just("COMMIT".to_owned()),
        string_literal().prop_map(|s| format!("SET application_name = {s}")),
    ]
}

/// Whitespace and comments between statements.
fn filler() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just(" ".to_owned()),
            Just("\n".to_owned()),
            Just("\t".to_owned()),
            "[^\u{0}\n\r]{0,10}".prop_map(|c| format!("-- {c}\n")),
            "[^\u{0}]{0,10}".prop_map(|c| format!("/* {} */", c.replace("*/", "").replace("/*", ""))),
        ],
        0..3,
    )
    .prop_map(|parts| parts.concat())
}

fn joined() -> impl Strategy<Value = (Vec<String>, String)> {
    (
        prop::collection::vec((statement(), filler(), filler(), any::<bool>()), 0..6),
        filler(),
    )
        .prop_map(|(parts, lead)| {
            let mut text = lead;
            let mut statements = Vec::new();
            for (stmt, before, after, extra_semicolon) in parts {
                text.push_str(&stmt);
                text.push_str(&before);
                text.push(';');
                if extra_semicolon {
                    text.push(';');
                }
                text.push_str(&after);
                statements.push(stmt);
            }
            (statements, text)
        })
}

fn sqlish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9 ;,'\"$()/*\\-\n\u{e9}\u{1f418}]{0,80}",
        prop::collection::vec(
            prop_oneof![
                Just("SELECT "),
                Just("FROM "),
                Just("WITH "),
                Just("BEGIN "),
                Just("ATOMIC "),
                Just("END"),
                Just("CREATE FUNCTION "),
                Just("CASE "),
                Just(";"),
                Just("("),
                Just(")"),
                Just("'"),
                Just("$$"),
                Just("/*"),
                Just("*/"),
                Just("--"),
                Just("\n"),
                Just("\""),
                Just("x "),
                Just("1 "),
                Just("é"),
            ],
            0..30,
        )
        .prop_map(|parts| parts.concat()),
    ]
}

proptest! {
    #[test]
    fn split_gives_back_the_joined_statements((statements, text) in joined()) {
        let texts: Vec<String> = split(&text).into_iter().map(|s| s.text).collect();
        prop_assert_eq!(texts, statements);
    }

    #[test]
    fn scanner_split_agrees_when_a_statement_is_invalid((mut statements, mut text) in joined()) {
        text.push_str("SELEC oops");
        statements.push("SELEC oops".to_owned());
        prop_assert!(parse(&text).is_err());
        let texts: Vec<String> = split(&text).into_iter().map(|s| s.text).collect();
        prop_assert_eq!(texts, statements);
    }

    #[test]
    fn split_never_panics_and_spans_are_sound(sql in sqlish()) {
        let spans = split(&sql);
        let mut previous_end = 0;
        for span in spans {
            prop_assert!(span.range.start < span.range.end);
            prop_assert!(span.range.start >= previous_end, "spans overlap or go backwards");
            prop_assert!(sql.is_char_boundary(span.range.start) && sql.is_char_boundary(span.range.end));
            prop_assert_eq!(sql.get(span.range.clone()), Some(span.text.as_str()));
            previous_end = span.range.end;
        }
    }

    #[test]
    fn analysis_never_panics(sql in sqlish()) {
        match analyze(&sql) {
            Ok(analysis) => {
                for s in &analysis.statements {
                    prop_assert!(!(s.is_read() && s.can_write));
                }
            }
            Err(error) => {
                if let Some(position) = error.position() {
                    prop_assert!(position.offset <= sql.len() && sql.is_char_boundary(position.offset));
                    prop_assert!(position.line >= 1 && position.column >= 1);
                }
            }
        }
    }

    #[test]
    fn the_calling_and_the_parser_thread_answer_alike(sql in sqlish(), (_, joined) in joined()) {
        let differing = support::differing(&[sql, joined]);
        prop_assert!(differing.is_empty(), "{}", differing.join("\n"));
    }

    #[test]
    fn selects_of_literals_are_reads(select in select_of_literals()) {
        let analysis = analyze(&select).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(analysis.is_read_only(), "{}", select);
    }

    #[test]
    fn a_writable_cte_is_never_a_read(
        select in select_of_literals(),
        write in prop_oneof![
            Just("DELETE FROM t WHERE a RETURNING 1"),
            Just("UPDATE t SET a = 1 WHERE b RETURNING a"),
            Just("INSERT INTO t VALUES (1) RETURNING *"),
            Just("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE RETURNING 1"),
        ],
    ) {
        let sql = format!("WITH w AS ({write}) {select}");
        let analysis = analyze(&sql).map_err(|e| TestCaseError::fail(format!("{sql}: {e}")))?;
        prop_assert_eq!(analysis.statements[0].class, StatementClass::Write, "{}", sql);
        let explained = analyze(&format!("EXPLAIN ANALYZE {sql}")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(!explained.is_read_only());
    }

    #[test]
    fn a_locking_clause_is_never_a_read(
        items in prop::collection::vec(literal(), 1..3),
        strength in prop_oneof![Just("UPDATE"), Just("NO KEY UPDATE"), Just("SHARE"), Just("KEY SHARE")],
    ) {
        let sql = format!("SELECT {} FROM t FOR {strength}", items.join(", "));
        let analysis = analyze(&sql).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(!analysis.is_read_only(), "{}", sql);
    }

    #[test]
    fn a_side_effect_call_anywhere_is_never_a_read(
        entry in prop::sample::select(SIDE_EFFECT_FUNCTIONS),
        place in 0usize..5,
        schema in prop_oneof![Just(""), Just("pg_catalog."), Just("public.")],
    ) {
        let name = match entry.matching {
            NameMatch::Exact => entry.name.to_owned(),
            NameMatch::Prefix => format!("{}x", entry.name),
        };
        let call = format!("{schema}{name}(1)");
        let sql = match place {
            0 => format!("SELECT {call}"),
            1 => format!("SELECT 1 FROM t WHERE a = {call}"),
            2 => format!("SELECT * FROM (SELECT ARRAY[{call}]) s"),
            3 => format!("VALUES (1), (coalesce({call}, 2))"),
            _ => format!("SELECT 1 LIMIT {call}"),
        };
        let analysis = analyze(&sql).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(!analysis.is_read_only(), "{}", sql);
    }
}
