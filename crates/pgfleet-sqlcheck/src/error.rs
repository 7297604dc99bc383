//! Parse errors, with the place PostgreSQL complained about.
//!
//! pg_query 18 keeps only the message of libpg_query's error and drops its
//! `cursorpos`. The cursor is recovered from the message itself, which
//! PostgreSQL's scanner writes as `… at end of input` (cursor at the end of the
//! text) or `… at or near "TOKEN"` (cursor at TOKEN, the text from the start of
//! the offending token). When TOKEN occurs more than once, the first occurrence
//! `o` at a token boundary for which the prefix `text[..o + len(TOKEN)]` fails
//! with the same message is the cursor: a Bison parser stops at the first
//! token it cannot shift, so prefixes ending at earlier occurrences parse or
//! fail only "at end of input". Grammar errors that name no token (e.g.
//! `LIMIT #,# syntax is not supported`) are reported at the start of the
//! statement that fails on its own.

use thiserror::Error;

use crate::cursor::cursor_offset;
use crate::engine::{self, EngineError};
use crate::position::{LineIndex, SourcePosition};
use crate::split;

/// Why a text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// PostgreSQL's parser rejected the text at `cursor`.
    #[error("{message} (line {}, column {})", cursor.line, cursor.column)]
    Syntax { message: String, cursor: SourcePosition },
    /// PostgreSQL's parser rejected the statement starting at `statement`
    /// without naming a token (a grammar rule raised the error).
    #[error("{message} (in the statement at line {}, column {})", statement.line, statement.column)]
    Rejected {
        message: String,
        statement: SourcePosition,
    },
    /// PostgreSQL would take the text, but pgfleet will not guess what it
    /// does: a repeated or unknown option (`EXPLAIN (ANALYZE false, ANALYZE)`),
    /// an option value PostgreSQL would refuse, a setting outside the SET
    /// allow-list. `cursor` is the option, or the statement's start.
    #[error("{message} (line {}, column {})", cursor.line, cursor.column)]
    Refused { message: String, cursor: SourcePosition },
    /// The text holds a NUL byte, which PostgreSQL never accepts in a query.
    #[error("{} (line {}, column {})", NUL_BYTE, cursor.line, cursor.column)]
    NulByte { cursor: SourcePosition },
    /// The statement nests expressions or subqueries deeper than the parser
    /// library can decode (about 47 chained operators such as `a || b || …`).
    #[error(
        "{} (in the statement at line {}, column {})",
        TOO_DEEP,
        statement.line,
        statement.column
    )]
    TooDeep { statement: SourcePosition },
    /// libpg_query failed in a way that says nothing about the text.
    #[error("the SQL parser failed: {0}")]
    Internal(String),
}

/// [`ParseError::NulByte`]'s message.
const NUL_BYTE: &str = "the SQL text contains a NUL byte";
/// [`ParseError::TooDeep`]'s message.
const TOO_DEEP: &str = "the statement nests expressions or subqueries too deeply to be analysed; \
                        split it or use fewer chained operators";

impl ParseError {
    /// PostgreSQL's message, or this crate's description for the other
    /// cases, without the position: callers that show one take it from
    /// [`ParseError::position`] (`Display` appends it).
    pub fn message(&self) -> String {
        match self {
            ParseError::Syntax { message, .. }
            | ParseError::Rejected { message, .. }
            | ParseError::Refused { message, .. } => message.clone(),
            ParseError::NulByte { .. } => NUL_BYTE.to_owned(),
            ParseError::TooDeep { .. } => TOO_DEEP.to_owned(),
            ParseError::Internal(_) => self.to_string(),
        }
    }

    /// Where the error is: the cursor for [`ParseError::Syntax`] and
    /// [`ParseError::NulByte`], the statement's start for `Rejected` and `TooDeep`.
    pub fn position(&self) -> Option<SourcePosition> {
        match self {
            ParseError::Syntax { cursor, .. }
            | ParseError::Refused { cursor, .. }
            | ParseError::NulByte { cursor } => Some(*cursor),
            ParseError::Rejected { statement, .. } | ParseError::TooDeep { statement } => Some(*statement),
            ParseError::Internal(_) => None,
        }
    }
}

/// Turns an engine failure on `sql` into a [`ParseError`] with its position.
pub(crate) fn locate(sql: &str, error: EngineError) -> ParseError {
    let lines = LineIndex::new(sql);
    match error {
        EngineError::Pg(pg_query::Error::Conversion(nul)) => ParseError::NulByte {
            cursor: lines.position(nul.nul_position()),
        },
        EngineError::Pg(
            pg_query::Error::Parse(message)
            | pg_query::Error::Scan(message)
            | pg_query::Error::Split(message),
        ) => match cursor_offset(sql, &message) {
            Some(offset) => ParseError::Syntax {
                message,
                cursor: lines.position(offset),
            },
            None => ParseError::Rejected {
                statement: lines.position(failing_statement_start(sql)),
                message,
            },
        },
        EngineError::TooDeep => ParseError::TooDeep {
            statement: lines.position(failing_statement_start(sql)),
        },
        EngineError::Pg(other) => {
            let mut message = other.to_string();
            message.truncate(crate::position::floor_char_boundary(&message, 300));
            ParseError::Internal(message)
        }
        EngineError::Unavailable(message) => ParseError::Internal(message),
    }
}

/// Start of the first statement that fails to parse on its own (the scanner
/// splits the text), or of the text's first token.
fn failing_statement_start(sql: &str) -> usize {
    let ranges = split::token_ranges(sql);
    engine::first_failing(sql, &ranges)
        .and_then(|i| ranges.get(i))
        .or(ranges.first())
        .map_or(0, |r| r.start)
}
