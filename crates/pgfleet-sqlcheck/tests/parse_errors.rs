//! Parse errors carry PostgreSQL's message and where it pointed.

mod support;

use pgfleet_sqlcheck::{ParseError, parse};

/// (case, sql, message, line, column, byte offset)
const SYNTAX: &[(&str, &str, &str, usize, usize, usize)] = &[
    (
        "misspelt keyword",
        "SELEC 1",
        "syntax error at or near \"SELEC\"",
        1,
        1,
        0,
    ),
    (
        "end of input",
        "SELECT 1 FROM",
        "syntax error at end of input",
        1,
        14,
        13,
    ),
    (
        "end of input after newline",
        "SELECT *\nFROM\n",
        "syntax error at end of input",
        3,
        1,
        14,
    ),
    (
        "second line",
        "SELECT a,\n       b\nFROM t WHERE WHERE",
        "syntax error at or near \"WHERE\"",
        3,
        14,
        32,
    ),
    (
        "second statement",
        "SELECT 1;\nSELECT FROM FROM x",
        "syntax error at or near \"FROM\"",
        2,
        13,
        22,
    ),
    (
        "token repeated before the error",
        "SELECT a FROM t, u FROM v",
        "syntax error at or near \"FROM\"",
        1,
        20,
        19,
    ),
    (
        "comma repeated",
        "SELECT a, b, c,, d",
        "syntax error at or near \",\"",
        1,
        16,
        15,
    ),
    (
        "repeated in a string first",
        "SELECT 'FROM' FROM FROM",
        "syntax error at or near \"FROM\"",
        1,
        20,
        19,
    ),
    (
        "string token",
        "SELECT 'a' 'b'",
        "syntax error at or near \"'b'\"",
        1,
        12,
        11,
    ),
    (
        "non-ASCII before the error",
        "SELECT 'héllo wörld' FRM t",
        "syntax error at or near \"t\"",
        1,
        26,
        27,
    ),
    (
        "non-ASCII lines",
        "SELECT 'ü'\n, 'ß' ,,",
        "syntax error at or near \",\"",
        2,
        8,
        20,
    ),
    (
        "emoji identifier",
        "SELECT \"🐘\" FROM t t2 t3",
        "syntax error at or near \"t3\"",
        1,
        22,
        24,
    ),
    (
        "crlf lines",
        "SELECT 1\r\nFROM\r\nWHERE",
        "syntax error at or near \"WHERE\"",
        3,
        1,
        16,
    ),
    (
        "tab counts as one column",
        "SELECT\t1\tFROM\tFROM",
        "syntax error at or near \"FROM\"",
        1,
        15,
        14,
    ),
    (
        "unterminated string",
        "SELECT 1;\nSELECT 'abc",
        "unterminated quoted string at or near \"'abc\"",
        2,
        8,
        17,
    ),
    (
        "unterminated comment",
        "SELECT 1 /* abc",
        "unterminated /* comment at or near \"/* abc\"",
        1,
        10,
        9,
    ),
    (
        "unterminated dollar quote",
        "SELECT $x$ abc",
        "unterminated dollar-quoted string at or near \"$x$ abc\"",
        1,
        8,
        7,
    ),
    (
        "zero-length identifier",
        "SELECT \"\" FROM t",
        "zero-length delimited identifier at or near \"\"\"\"",
        1,
        8,
        7,
    ),
    (
        "quoted identifier token",
        "SELECT 1 \"x\"\"y\" z",
        "syntax error at or near \"z\"",
        1,
        17,
        16,
    ),
];

#[test]
fn syntax_errors_point_at_the_token() {
    for (name, sql, message, line, column, offset) in SYNTAX {
        match parse(sql) {
            Err(ParseError::Syntax { message: got, cursor }) => {
                assert_eq!(got, *message, "case {name}");
                assert_eq!(
                    (cursor.line, cursor.column, cursor.offset),
                    (*line, *column, *offset),
                    "case {name}"
                );
            }
            other => panic!("case {name}: expected a syntax error, got {other:?}"),
        }
    }
}

#[test]
fn grammar_errors_without_a_token_point_at_their_statement() {
    let sql = "SELECT 1;\n  SELECT 1 LIMIT 1, 2";
    match parse(sql) {
        Err(ParseError::Rejected { message, statement }) => {
            assert_eq!(message, "LIMIT #,# syntax is not supported");
            assert_eq!((statement.line, statement.column, statement.offset), (2, 3, 12));
        }
        other => panic!("expected a rejected statement, got {other:?}"),
    }
}

#[test]
fn nul_bytes_are_located() {
    match parse("SELECT 'é\0'") {
        Err(ParseError::NulByte { cursor }) => {
            assert_eq!((cursor.line, cursor.column, cursor.offset), (1, 10, 10))
        }
        other => panic!("expected a NUL byte error, got {other:?}"),
    }
}

/// The message leaves the position to `position()`: callers that show both
/// (the server appends "(line L, column C)") showed it twice.
#[test]
fn messages_leave_the_position_to_the_position_field() {
    let nul = parse("SELECT 1\0").expect_err("a NUL byte does not parse");
    assert_eq!(nul.message(), "the SQL text contains a NUL byte");
    let at = nul.position().expect("a NUL byte is located");
    assert_eq!((at.line, at.column, at.offset), (1, 9, 8));
    assert_eq!(
        nul.to_string(),
        "the SQL text contains a NUL byte (line 1, column 9)"
    );

    let deep = format!("SELECT 1;\nSELECT {}", vec!["a"; 200].join(" || "));
    let deep = parse(&deep).expect_err("too deep");
    assert!(
        !deep.message().contains("line") && !deep.message().contains("column"),
        "{}",
        deep.message()
    );
    let at = deep.position().expect("the statement is located");
    assert_eq!((at.line, at.column, at.offset), (2, 1, 10));
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!("SELECT 1;\nSELECT {}", vec!["a"; 200].join(" || "));
    match parse(&deep) {
        Err(ParseError::TooDeep { statement }) => assert_eq!(statement.line, 2),
        other => panic!("expected TooDeep, got {other:?}"),
    }
    let very_deep = format!("SELECT {}1{}", "(SELECT ".repeat(5000), ")".repeat(5000));
    assert!(parse(&very_deep).is_err());
    // Moderately deep statements still parse.
    assert!(parse(&format!("SELECT {}", vec!["a"; 40].join(" || "))).is_ok());
}

#[test]
fn error_display_carries_line_and_column() {
    let err = parse("SELECT 1\nFROM FROM").expect_err("does not parse");
    assert_eq!(
        err.to_string(),
        "syntax error at or near \"FROM\" (line 2, column 6)"
    );
    assert_eq!(err.message(), "syntax error at or near \"FROM\"");
    assert_eq!(err.position().map(|p| p.offset), Some(14));
}

#[test]
fn empty_text_parses_to_nothing() {
    for sql in ["", "   ", ";;", "-- only a comment\n", "/* c */ ; ;"] {
        let parsed = parse(sql).expect(sql);
        assert!(parsed.is_empty(), "case {sql:?}");
    }
}

/// The error-position search is not quadratic: a 400,000-token text whose
/// offending token occurs everywhere is answered in well under a second per
/// hundred thousand tokens (a loose bound; debug build, shared machine).
#[test]
fn a_huge_erroneous_text_is_located_quickly() {
    let cases = [
        (
            "repeated token",
            format!("{}SELECT 1 1", "SELECT 1;".repeat(100_000)),
        ),
        (
            "grammar error",
            format!("{}SELECT 1 LIMIT 1,2", "SELECT 1;".repeat(100_000)),
        ),
        ("long statement", format!("SELECT {} 1 1", "1 +".repeat(200_000))),
    ];
    for (name, sql) in cases {
        let started = std::time::Instant::now();
        let error = pgfleet_sqlcheck::analyze(&sql).expect_err(name);
        let elapsed = started.elapsed();
        assert!(error.position().is_some(), "{name}: {error}");
        assert!(
            elapsed < std::time::Duration::from_secs(10),
            "{name}: took {elapsed:?}"
        );
        eprintln!("{name}: {elapsed:?} -> {:?}", error.position());
    }
}

/// Errors, their kinds and positions, deep texts included, are the same
/// whichever thread ran libpg_query (it sizes its own depth limit from the
/// stack it runs on).
#[test]
fn errors_are_the_same_on_the_calling_and_the_parser_thread() {
    let mut texts: Vec<String> = SYNTAX.iter().map(|case| case.1.to_owned()).collect();
    texts.extend(
        [
            "SELECT 1;\n  SELECT 1 LIMIT 1, 2",
            "SELECT 'é\0'",
            "SELECT 1\nFROM FROM",
            "",
            " ;; -- only a comment\n",
        ]
        .map(str::to_owned),
    );
    for depth in [40, 46, 47, 48, 60, 100, 200, 1000, 5000] {
        texts.push(format!("SELECT 1;\nSELECT {}", vec!["a"; depth].join(" || ")));
        texts.push(format!(
            "SELECT {}1{}",
            "(SELECT ".repeat(depth),
            ")".repeat(depth)
        ));
        texts.push(format!("SELECT 1 WHERE {}true", "NOT ".repeat(depth)));
        texts.push(format!("SELECT {}1{}", "ARRAY[".repeat(depth), "]".repeat(depth)));
    }
    let differing = support::differing(&texts);
    assert!(differing.is_empty(), "{}", differing.join("\n"));
}
