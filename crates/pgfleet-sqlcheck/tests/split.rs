//! Splitting multi-statement texts, valid and not.

mod support;

use pgfleet_sqlcheck::{analyze, split};

const CASES: &[(&str, &str, &[&str])] = &[
    ("one statement", "SELECT 1", &["SELECT 1"]),
    ("trailing semicolon", "SELECT 1;", &["SELECT 1"]),
    ("two statements", "SELECT 1; SELECT 2", &["SELECT 1", "SELECT 2"]),
    (
        "empty statements",
        ";; SELECT 1;;; SELECT 2;;",
        &["SELECT 1", "SELECT 2"],
    ),
    ("only empties", " ; ;\n;", &[]),
    (
        "comments around",
        "-- lead\nSELECT 1 /* in */ + 2 -- tail\n; /* x */ SELECT 2",
        &["SELECT 1 /* in */ + 2", "SELECT 2"],
    ),
    (
        "semicolon in line comment",
        "SELECT 1 -- ; not a split\n; SELECT 2",
        &["SELECT 1", "SELECT 2"],
    ),
    (
        "semicolon in block comment",
        "SELECT /* ; */ 1; SELECT 2",
        &["SELECT /* ; */ 1", "SELECT 2"],
    ),
    (
        "nested block comment",
        "SELECT /* a /* ; */ b */ 1; SELECT 2",
        &["SELECT /* a /* ; */ b */ 1", "SELECT 2"],
    ),
    (
        "quoted semicolon",
        "SELECT ';'; SELECT 'it''s;'",
        &["SELECT ';'", "SELECT 'it''s;'"],
    ),
    (
        "escape string",
        "SELECT E'\\';'; SELECT 2",
        &["SELECT E'\\';'", "SELECT 2"],
    ),
    (
        "quoted identifier",
        "SELECT 1 AS \"a;b\"; SELECT 2",
        &["SELECT 1 AS \"a;b\"", "SELECT 2"],
    ),
    (
        "dollar quote",
        "SELECT $$a;b$$; SELECT 2",
        &["SELECT $$a;b$$", "SELECT 2"],
    ),
    (
        "tagged dollar quote",
        "SELECT $x$ $$; $x$; SELECT 2",
        &["SELECT $x$ $$; $x$", "SELECT 2"],
    ),
    (
        "function body in dollar quotes",
        "CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$ LANGUAGE plpgsql; SELECT f()",
        &[
            "CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$ LANGUAGE plpgsql",
            "SELECT f()",
        ],
    ),
    (
        "begin atomic",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END; SELECT 3",
        &[
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END",
            "SELECT 3",
        ],
    ),
    (
        "begin atomic with case",
        "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; END;\nCALL p()",
        &[
            "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; END",
            "CALL p()",
        ],
    ),
    (
        "transaction block",
        "BEGIN; UPDATE t SET a = 1 WHERE b; COMMIT;",
        &["BEGIN", "UPDATE t SET a = 1 WHERE b", "COMMIT"],
    ),
    (
        "non-ASCII",
        "SELECT 'ü;é'; SELECT '🐘'",
        &["SELECT 'ü;é'", "SELECT '🐘'"],
    ),
    ("crlf", "SELECT 1;\r\nSELECT 2;\r\n", &["SELECT 1", "SELECT 2"]),
];

#[test]
fn valid_texts_split_where_the_parser_says() {
    for (name, sql, expected) in CASES {
        let texts: Vec<String> = split(sql).into_iter().map(|s| s.text).collect();
        assert_eq!(texts, *expected, "case {name}");
    }
}

#[test]
fn spans_point_into_the_text() {
    for (name, sql, _) in CASES {
        for span in split(sql) {
            assert_eq!(&sql[span.range.clone()], span.text, "case {name}");
            assert_eq!(span.start.offset, span.range.start, "case {name}");
        }
    }
}

#[test]
fn start_positions_have_lines_and_columns() {
    let spans = split("SELECT 1;\n  SELECT 'é'; SELECT 3");
    let starts: Vec<(usize, usize)> = spans.iter().map(|s| (s.start.line, s.start.column)).collect();
    assert_eq!(starts, [(1, 1), (2, 3), (2, 15)]);
}

#[test]
fn invalid_texts_split_on_the_scanner() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "bad second statement",
            "SELECT 1; SELEC 2; SELECT 3",
            &["SELECT 1", "SELEC 2", "SELECT 3"],
        ),
        ("no keywords", "foo bar; baz", &["foo bar", "baz"]),
        (
            "quoted semicolon",
            "SELEC ';'; SELECT 2",
            &["SELEC ';'", "SELECT 2"],
        ),
        (
            "begin atomic with an error",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELEC 1; END; SELECT 2",
            &[
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELEC 1; END",
                "SELECT 2",
            ],
        ),
        (
            "unterminated string",
            "SELECT 1; SELECT 'abc; SELECT 2",
            &["SELECT 1", "SELECT 'abc; SELECT 2"],
        ),
        (
            "unterminated comment",
            "SELECT 1; /* abc; SELECT 2",
            &["SELECT 1", "/* abc; SELECT 2"],
        ),
        (
            "unterminated string in open statement",
            "SELECT 1, 'abc",
            &["SELECT 1, 'abc"],
        ),
    ];
    for (name, sql, expected) in cases {
        let texts: Vec<String> = split(sql).into_iter().map(|s| s.text).collect();
        assert_eq!(texts, *expected, "case {name}");
    }
}

#[test]
fn analysis_spans_match_split() {
    let sql = "SELECT 1; -- c\nDELETE FROM t WHERE a; ;\nCOMMIT";
    let from_split: Vec<String> = split(sql).into_iter().map(|s| s.text).collect();
    let from_analysis: Vec<String> = analyze(sql)
        .expect("parses")
        .statements
        .into_iter()
        .map(|s| s.span.text)
        .collect();
    assert_eq!(from_split, from_analysis);
}

#[test]
fn every_case_is_answered_alike_on_the_calling_and_the_parser_thread() {
    let texts: Vec<String> = CASES.iter().map(|(_, sql, _)| (*sql).to_owned()).collect();
    let differing = support::differing(&texts);
    assert!(differing.is_empty(), "{}", differing.join("\n"));
}
