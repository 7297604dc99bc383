//! Splitting a multi-statement text into statements.
//!
//! A text that parses is split where PostgreSQL's parser says its statements
//! are (`RawStmt.stmt_location` / `stmt_len`), so comments, dollar quotes,
//! quoted semicolons and `BEGIN ATOMIC … END` bodies are right by
//! construction. A text that does not parse is split on the scanner's tokens:
//! semicolons outside parentheses, and outside `BEGIN … END` / `CASE … END` in
//! `CREATE [OR REPLACE] FUNCTION|PROCEDURE` (the rule psql uses). If the
//! scanner itself fails (an unterminated quote or comment), the statement it
//! failed in runs to the end of the text.
//!
//! Every span runs from the statement's first token to its last one: leading
//! and trailing whitespace and comments and the terminating semicolon are not
//! part of it, and empty statements (`;;`) yield nothing.

use std::ops::Range;

use pg_query::protobuf::Token as Kind;

use serde::Serialize;

use crate::cursor::cursor_offset;
use crate::engine::{self, RawStatement, Token};
use crate::position::{LineIndex, SourcePosition, ceil_char_boundary, floor_char_boundary};
use crate::scan::{significant, split_tokens};

/// One statement of a text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct StatementSpan {
    /// Byte range in the whole text, from the first to the end of the last token.
    pub range: Range<usize>,
    /// Line and column where the statement starts.
    pub start: SourcePosition,
    /// The statement's text, exactly as written (without the semicolon).
    pub text: String,
}

/// Splits `sql` into its statements; never fails (see the module docs for
/// how a text that does not parse is split).
pub fn split(sql: &str) -> Vec<StatementSpan> {
    let ranges = match engine::parse(sql, false) {
        Ok(parsed) => parsed_ranges(sql, &parsed.statements, &parsed.tokens),
        Err(_) => token_ranges(sql),
    };
    spans(sql, ranges)
}

pub(crate) fn spans(sql: &str, ranges: Vec<Range<usize>>) -> Vec<StatementSpan> {
    let lines = LineIndex::new(sql);
    ranges
        .into_iter()
        .filter_map(|range| {
            let text = sql.get(range.clone())?;
            Some(StatementSpan {
                start: lines.position(range.start),
                text: text.to_owned(),
                range,
            })
        })
        .collect()
}

/// Statement ranges of a text that parsed, tightened to their tokens; one per
/// statement, in order.
pub(crate) fn parsed_ranges(sql: &str, statements: &[RawStatement], tokens: &[Token]) -> Vec<Range<usize>> {
    let tokens = significant(tokens.to_vec());
    statements
        .iter()
        .map(|stmt| {
            let start = floor_char_boundary(sql, stmt.location);
            let end = stmt.len.map_or(sql.len(), |len| {
                ceil_char_boundary(sql, start.saturating_add(len))
            });
            tighten(&tokens, start..end)
                .or_else(|| trim_whitespace(sql, start..end))
                .unwrap_or(start..end)
        })
        .collect()
}

/// From the first token starting in `range` to the last non-`;` token ending in it.
fn tighten(tokens: &[Token], range: Range<usize>) -> Option<Range<usize>> {
    let first = tokens.partition_point(|t| t.start < range.start);
    let after_last = tokens.partition_point(|t| t.end <= range.end);
    let inside = tokens.get(first..after_last)?;
    let start = inside.first()?.start;
    let end = inside.iter().rev().find(|t| t.kind != Kind::Ascii59)?.end;
    (start < end).then_some(start..end)
}

fn trim_whitespace(sql: &str, range: Range<usize>) -> Option<Range<usize>> {
    let text = sql.get(range.clone())?;
    let start = range.start + (text.len() - text.trim_start().len());
    let end = range.start + text.trim_end().len();
    (start < end).then_some(start..end)
}

/// Statement ranges from the scanner alone (for texts that do not parse).
pub(crate) fn token_ranges(sql: &str) -> Vec<Range<usize>> {
    match engine::scan(sql) {
        Ok(tokens) => split_tokens(&significant(tokens)).0,
        Err(engine::EngineError::Pg(pg_query::Error::Scan(message))) => {
            // Split what scans; the statement the scanner failed in runs to the end.
            let Some(failure) = cursor_offset(sql, &message).map(|o| floor_char_boundary(sql, o)) else {
                return trim_whitespace(sql, 0..sql.len()).into_iter().collect();
            };
            let tokens = engine::scan(sql.get(..failure).unwrap_or(""))
                .map(significant)
                .unwrap_or_default();
            let (mut ranges, last_open) = split_tokens(&tokens);
            let rest_end = ceil_char_boundary(sql, sql.trim_end().len());
            match ranges.last_mut() {
                Some(last) if last_open => last.end = last.end.max(rest_end),
                _ => ranges.extend(trim_whitespace(sql, failure..sql.len())),
            }
            ranges
        }
        Err(_) => trim_whitespace(sql, 0..sql.len()).into_iter().collect(),
    }
}
