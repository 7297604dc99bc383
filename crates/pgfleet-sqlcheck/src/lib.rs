//! Decides what a PostgreSQL text does before it runs: parse, split, classify, fingerprint.
//!
//! Everything here comes from PostgreSQL's own parser (libpg_query via the
//! `pg_query` crate), never from keywords: a statement is a
//! [`StatementClass::Read`] only if nothing anywhere in its parse tree can
//! write. The crate does no I/O; it runs libpg_query one call at a time, on
//! the calling thread when it has a large enough stack and on a parser
//! thread of its own otherwise (see `engine.rs` for why).
//!
//! - [`parse`] checks a text, with PostgreSQL's message and line/column on error.
//! - [`split`] cuts a multi-statement text into statements.
//! - [`analyze`] classifies each statement, lists its dangerous findings and the
//!   functions it calls, and fingerprints the text.
//! - [`fingerprint`] groups similar queries.
//! - [`replace_literals`] hides every literal of a text that need not parse.
//! - [`SIDE_EFFECT_FUNCTIONS`] is the one table of functions that do more than
//!   compute a value; [`lookup_side_effect_function`] refuses them by name.

mod analysis;
mod classify;
mod cursor;
mod engine;
mod error;
mod functions;
mod options;
mod position;
mod scan;
mod split;
mod tree;

pub use analysis::{Analysis, Fingerprint, Parsed, StatementAnalysis};
pub use classify::{DangerCode, DangerFinding, StatementClass};
pub use error::ParseError;
pub use functions::{
    FunctionEffect, NameMatch, QualifiedName, SIDE_EFFECT_FUNCTIONS, SideEffectFunction,
    lookup_side_effect_function,
};
pub use position::SourcePosition;
pub use split::{StatementSpan, split};

/// Parses `sql` (any number of statements) with PostgreSQL's grammar.
pub fn parse(sql: &str) -> Result<Parsed, ParseError> {
    Parsed::new(sql, false)
}

/// Parses `sql` and says what each statement does.
pub fn analyze(sql: &str) -> Result<Analysis, ParseError> {
    Parsed::new(sql, true)?.analyze()
}

/// pg_query's fingerprint of `sql`; the text must parse.
pub fn fingerprint(sql: &str) -> Result<Fingerprint, ParseError> {
    engine::fingerprint(sql)
        .map(Fingerprint)
        .map_err(|e| error::locate(sql, e))
}

/// `sql` with every literal replaced by `$n`, from the scanner alone, so it
/// works on texts that do not parse (unlike [`Analysis::normalized`]); for
/// storing a text that may carry credentials and cannot be analysed.
pub fn replace_literals(sql: &str) -> Result<String, ParseError> {
    analysis::replace_literals(sql).map_err(|e| error::locate(sql, e))
}
