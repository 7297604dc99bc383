//! A transaction given statement by statement, each with its own positional
//! parameters (`ExecuteSpec::statements`): a transfer as two UPDATEs with
//! bound amounts, without splicing values into SQL.
//!
//! The entries are joined into one text (one per line block, separated by a
//! line holding `;`) so the checks, the audit record and the fingerprint are
//! those of a single query text; [`TextMap`] maps what the analysis says
//! about the joined text back to the entry and its own line and column, and
//! checks that every entry holds exactly one statement (a `;` inside an
//! entry cannot smuggle a second statement past its parameters).

use std::ops::Range;

use pgfleet_sqlcheck::{Analysis, SourcePosition};

use super::params::Param;
use crate::error::RequestError;

/// What joins two entries: the `;` on a line of its own, so a trailing `--`
/// comment of an entry cannot swallow it.
const SEPARATOR: &str = "\n;\n";

/// One statement of `ExecuteSpec::statements`.
#[derive(Debug, Clone, Default)]
pub struct StatementSpec {
    pub query: String,
    /// Positional parameters of this statement alone ($1 is its first).
    pub params: Vec<Param>,
}

/// The entries joined into the one text that is analyzed.
pub(crate) fn join(statements: &[StatementSpec]) -> String {
    let texts: Vec<&str> = statements.iter().map(|s| s.query.as_str()).collect();
    texts.join(SEPARATOR)
}

/// Where each part of the analyzed text (`ExecuteSpec::text`) came from.
pub(crate) enum TextMap<'a> {
    /// The one `query` field.
    Query,
    /// The entries of `statements`, with their byte ranges in the text.
    Statements(Vec<(Range<usize>, &'a str)>),
}

impl<'a> TextMap<'a> {
    /// The map of a request's `statements` (none: its `query`).
    pub(crate) fn of(statements: &'a [StatementSpec]) -> Self {
        if statements.is_empty() {
            return TextMap::Query;
        }
        let mut start = 0;
        let entries = statements
            .iter()
            .map(|entry| {
                let range = start..start + entry.query.len();
                start = range.end + SEPARATOR.len();
                (range, entry.query.as_str())
            })
            .collect();
        TextMap::Statements(entries)
    }

    /// The request field that holds the text.
    pub(crate) fn field(&self) -> &'static str {
        match self {
            TextMap::Query => "query",
            TextMap::Statements(_) => "statements",
        }
    }

    /// The request field that holds `position` of the text, and the
    /// position within that field.
    pub(crate) fn locate(&self, position: SourcePosition) -> (String, SourcePosition) {
        match self {
            TextMap::Query => ("query".to_owned(), position),
            TextMap::Statements(entries) => {
                // An offset on a separator belongs to the entry before it.
                let index = entries
                    .iter()
                    .rposition(|(range, _)| range.start <= position.offset)
                    .unwrap_or(0);
                let Some((range, text)) = entries.get(index) else {
                    return ("statements".to_owned(), position);
                };
                let within = SourcePosition::locate(text, position.offset.saturating_sub(range.start));
                (format!("statements[{index}].query"), within)
            }
        }
    }

    /// The request field that holds `position`, and the message with the
    /// position within that field appended.
    pub(crate) fn describe(&self, position: SourcePosition, message: &str) -> (String, String) {
        let (field, within) = self.locate(position);
        (
            field,
            format!("{message} (line {}, column {})", within.line, within.column),
        )
    }

    /// Refuses an entry that does not hold exactly one statement.
    pub(crate) fn check_one_statement_each(&self, analysis: &Analysis) -> Result<(), RequestError> {
        let TextMap::Statements(entries) = self else {
            return Ok(());
        };
        for (index, (range, _)) in entries.iter().enumerate() {
            let found = analysis
                .statements
                .iter()
                .filter(|statement| range.contains(&statement.span.range.start))
                .count();
            if found != 1 {
                let field = format!("statements[{index}].query");
                return Err(RequestError::invalid(
                    field,
                    match found {
                        0 => "holds no statement (only comments or whitespace)".to_owned(),
                        n => format!("holds {n} statements; give each its own entry"),
                    },
                ));
            }
        }
        Ok(())
    }

    /// The parameters of the `index`th statement of the text (`params` of
    /// a lone `query`, or its entry's), and the field they came from.
    pub(crate) fn params_of(
        &self,
        params: &[Param],
        statements: &[StatementSpec],
        index: usize,
    ) -> (Vec<Param>, String) {
        match self {
            TextMap::Query => (params.to_vec(), "params".to_owned()),
            TextMap::Statements(_) => (
                statements
                    .get(index)
                    .map(|entry| entry.params.clone())
                    .unwrap_or_default(),
                format!("statements[{index}].params"),
            ),
        }
    }
}
