//! A parsed text, and what it does statement by statement.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::classify::{self, DangerFinding, StatementClass};
use crate::engine;
use crate::error::{ParseError, locate};
use crate::functions::{QualifiedName, SideEffectFunction, lookup_side_effect_function};
use crate::position::LineIndex;
use crate::split::{self, StatementSpan};
use crate::tree::Tree;

/// A text PostgreSQL's parser accepted, split into statements.
#[derive(Debug, Clone)]
pub struct Parsed {
    source: String,
    statements: Vec<(StatementSpan, Tree)>,
    /// Fingerprint and normalized text, if computed along with the parse.
    summary: Option<engine::Summary>,
}

impl Parsed {
    /// Parses `sql`; with `summarize`, also fingerprints and normalizes it in
    /// the same trip to the parser thread.
    pub(crate) fn new(sql: &str, summarize: bool) -> Result<Self, ParseError> {
        let parsed = engine::parse(sql, summarize).map_err(|e| locate(sql, e))?;
        let spans = split::spans(sql, split::parsed_ranges(sql, &parsed.statements, &parsed.tokens));
        let statements = spans
            .into_iter()
            .zip(parsed.statements)
            .map(|(span, stmt)| (span, stmt.tree))
            .collect();
        Ok(Parsed {
            source: sql.to_owned(),
            statements,
            summary: parsed.summary,
        })
    }

    /// The text as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Its statements, in order (empty statements such as `;;` are not included).
    pub fn statements(&self) -> impl ExactSizeIterator<Item = &StatementSpan> {
        self.statements.iter().map(|(span, _)| span)
    }

    pub fn len(&self) -> usize {
        self.statements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// Classifies every statement and fingerprints the text. Fails with
    /// [`ParseError::Refused`] for a statement pgfleet will not guess about
    /// (a repeated or unknown option, a SET outside the allow-list), or if
    /// libpg_query fails internally while fingerprinting or normalising.
    pub fn analyze(&self) -> Result<Analysis, ParseError> {
        let lines = LineIndex::new(&self.source);
        let statements = self
            .statements
            .iter()
            .map(|(span, tree)| {
                let verdict = classify::classify(tree);
                if let Some(refusal) = verdict.refusal {
                    return Err(ParseError::Refused {
                        message: refusal.message,
                        cursor: lines.position(refusal.offset.unwrap_or(span.range.start)),
                    });
                }
                Ok(StatementAnalysis {
                    span: span.clone(),
                    class: verdict.class,
                    command: verdict.command,
                    can_write: verdict.can_write,
                    functions_called: classify::functions_called(tree),
                    findings: verdict.findings,
                    requires_no_transaction_block: verdict.requires_no_transaction_block,
                    is_transaction_control: verdict.is_transaction_control,
                    notes: verdict.notes,
                })
            })
            .collect::<Result<Vec<_>, ParseError>>()?;
        let summary = match &self.summary {
            Some(summary) => summary.clone(),
            None => engine::summarize(&self.source).map_err(|e| locate(&self.source, e))?,
        };
        // pg_query's normalize leaves the values of SET statements alone, and
        // an ALTER SYSTEM value may be a secret (a connection string).
        let normalized = if statements.iter().any(|s| s.command == "ALTER SYSTEM") {
            replace_literals(&summary.normalized).map_err(|e| locate(&summary.normalized, e))?
        } else {
            summary.normalized
        };
        Ok(Analysis {
            statements,
            fingerprint: Fingerprint(summary.fingerprint),
            normalized,
        })
    }
}

/// `text` with every literal left in it replaced by a new `$n`.
pub(crate) fn replace_literals(text: &str) -> Result<String, engine::EngineError> {
    use pg_query::protobuf::Token as Kind;
    let tokens = engine::scan(text)?;
    let mut next = tokens
        .iter()
        .filter(|t| t.kind == Kind::Param)
        .filter_map(|t| text.get(t.start + 1..t.end)?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for token in &tokens {
        let literal = matches!(
            token.kind,
            Kind::Sconst | Kind::Usconst | Kind::Iconst | Kind::Fconst | Kind::Bconst | Kind::Xconst
        );
        if !literal || token.start < copied {
            continue;
        }
        next += 1;
        out.push_str(text.get(copied..token.start).unwrap_or_default());
        out.push_str(&format!("${next}"));
        copied = token.end;
    }
    out.push_str(text.get(copied..).unwrap_or_default());
    Ok(out)
}

/// What one statement does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementAnalysis {
    /// Where it is and its text.
    pub span: StatementSpan,
    pub class: StatementClass,
    /// PostgreSQL's command tag: `SELECT`, `INSERT`, `CREATE TABLE`, `DROP INDEX`…
    pub command: String,
    /// Whether running it may change data, schema, sequences, server state, or
    /// affect other sessions (locks, notifications). False for reads, and for
    /// session and transaction statements except two-phase commit.
    pub can_write: bool,
    /// Every function called anywhere in it, lower-cased, schema if given.
    pub functions_called: Vec<QualifiedName>,
    /// What makes it dangerous; empty if nothing does.
    pub findings: Vec<DangerFinding>,
    /// PostgreSQL refuses to run it inside BEGIN … COMMIT (VACUUM, CREATE
    /// DATABASE, CREATE INDEX CONCURRENTLY, ALTER SYSTEM, DISCARD ALL…).
    pub requires_no_transaction_block: bool,
    /// It begins, ends or changes a transaction (its class is `TransactionControl`).
    pub is_transaction_control: bool,
    /// Why it is classified as it is, and observations that need no confirmation.
    pub notes: Vec<String>,
}

/// Commands whose text may hold a password or a connection string with one.
const CREDENTIAL_COMMANDS: &[&str] = &[
    "CREATE ROLE",
    "ALTER ROLE",
    "CREATE USER MAPPING",
    "ALTER USER MAPPING",
    "CREATE SUBSCRIPTION",
    "ALTER SUBSCRIPTION",
    "CREATE SERVER",
    "ALTER SERVER",
    // A setting's value can be a secret (a key, a connection string).
    "ALTER SYSTEM",
];

/// Functions whose arguments may be connection strings with a password.
const CREDENTIAL_FUNCTIONS: &[&str] = &[
    "dblink",
    "dblink_connect",
    "dblink_connect_u",
    "dblink_exec",
    "dblink_send_query",
];

impl StatementAnalysis {
    pub fn is_read(&self) -> bool {
        self.class == StatementClass::Read
    }

    /// Its text may carry credentials (`PASSWORD '…'`, user mapping options,
    /// subscription or dblink connection strings): store and show
    /// [`Analysis::normalized`] instead, where every literal is `$n`.
    pub fn may_carry_credentials(&self) -> bool {
        CREDENTIAL_COMMANDS.contains(&self.command.as_str())
            || self
                .functions_called
                .iter()
                .any(|f| CREDENTIAL_FUNCTIONS.contains(&f.name.as_str()))
    }

    /// The called functions that are in [`SIDE_EFFECT_FUNCTIONS`](crate::SIDE_EFFECT_FUNCTIONS),
    /// with their entry (for refusing side channels by name).
    pub fn side_effect_functions(
        &self,
    ) -> impl Iterator<Item = (&QualifiedName, &'static SideEffectFunction)> {
        self.functions_called
            .iter()
            .filter_map(|name| lookup_side_effect_function(name).map(|entry| (name, entry)))
    }
}

/// pg_query's fingerprint of a text: equal for texts that differ only in
/// constants, whitespace and comments. Shown and serialised as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub u64);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What a whole text does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Analysis {
    pub statements: Vec<StatementAnalysis>,
    /// Fingerprint of the whole text, for grouping similar queries in history.
    pub fingerprint: Fingerprint,
    /// The text with constants replaced by `$1`, `$2`… (pg_query's normalize).
    pub normalized: String,
}

impl Analysis {
    /// True when some statement [may carry credentials](StatementAnalysis::may_carry_credentials).
    pub fn may_carry_credentials(&self) -> bool {
        self.statements
            .iter()
            .any(StatementAnalysis::may_carry_credentials)
    }

    /// Every statement is a read (true for a text without statements).
    pub fn is_read_only(&self) -> bool {
        self.statements.iter().all(StatementAnalysis::is_read)
    }

    pub fn can_write(&self) -> bool {
        self.statements.iter().any(|s| s.can_write)
    }

    /// Every finding, with the statement it belongs to.
    pub fn findings(&self) -> impl Iterator<Item = (&StatementAnalysis, &DangerFinding)> {
        self.statements
            .iter()
            .flat_map(|s| s.findings.iter().map(move |f| (s, f)))
    }

    pub fn is_dangerous(&self) -> bool {
        self.findings().next().is_some()
    }

    pub fn requires_no_transaction_block(&self) -> bool {
        self.statements.iter().any(|s| s.requires_no_transaction_block)
    }

    pub fn has_transaction_control(&self) -> bool {
        self.statements.iter().any(|s| s.is_transaction_control)
    }
}

#[cfg(test)]
mod credential_tests {
    #[test]
    fn texts_with_credentials_are_recognised_and_normalized_away() {
        for sql in [
            "CREATE ROLE app LOGIN PASSWORD 'hunter2'",
            "ALTER USER app WITH PASSWORD 'hunter2'",
            "CREATE USER MAPPING FOR app SERVER remote OPTIONS (user 'u', password 'hunter2')",
            "CREATE SUBSCRIPTION s CONNECTION 'host=x password=hunter2' PUBLICATION p",
            "SELECT dblink_connect('host=x password=hunter2')",
            "SELECT 1; SELECT * FROM dblink('password=hunter2', 'select 1') AS t(x int)",
        ] {
            let analysis = crate::analyze(sql).expect("parses");
            assert!(analysis.may_carry_credentials(), "{sql}");
            assert!(
                !analysis.normalized.contains("hunter2"),
                "{sql} -> {}",
                analysis.normalized
            );
        }
        let plain = crate::analyze("UPDATE accounts SET note = 'password=x'").expect("parses");
        assert!(!plain.may_carry_credentials());
    }
}
