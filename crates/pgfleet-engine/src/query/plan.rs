//! From a request to a checked plan: everything that can be refused is
//! refused here, before any connection is taken.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use pgfleet_config::{FleetConfig, QueryLimits};
use pgfleet_registry::{Registry, Target};
use pgfleet_sqlcheck::{Analysis, ParseError, StatementAnalysis, StatementClass};

use super::budget::{Budgets, ResponseBudget};
use super::params::Param;
use super::statements::{self, StatementSpec, TextMap};
use crate::error::RequestError;
use crate::identity::{Identity, Principal, Role};

/// Rows per batch when the request names none.
pub const DEFAULT_BATCH_SIZE: usize = 500;
const MAX_BATCH_SIZE: usize = 10_000;

/// One execution as requested: the SQL text, where to run it and how.
/// Built by the server from a wire request (its fields already well-formed:
/// each parameter has a value, the timeout is a duration); everything that
/// needs the configuration or the SQL is checked by [`Plan::new`].
#[derive(Debug, Clone, Default)]
pub struct ExecuteSpec {
    pub query: String,
    /// The fleet database (empty with an explicit target list).
    pub database: String,
    pub scope: Scope,
    /// Empty: each database's default schema.
    pub pg_schema: String,
    /// `None` or zero: `query.default_timeout`.
    pub timeout: Option<Duration>,
    pub params: Vec<Param>,
    /// Instead of `query` and `params`: the statements of one transaction,
    /// each with its own parameters ([`ExecuteSpec::text`] joins them).
    pub statements: Vec<StatementSpec>,
    pub confirm_dangerous: bool,
    pub read_only: bool,
    pub batch_size: u32,
    /// Unary calls cap rows per statement; streams do not.
    pub row_limit: Option<u64>,
    /// Unary calls hold their whole response: its byte budget, shared by
    /// every target. Streams send as they read and have none.
    pub response_bytes: Option<u64>,
}

impl ExecuteSpec {
    /// The SQL text that is checked, run and recorded: `query`, or the
    /// entries of `statements` joined.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        if self.statements.is_empty() {
            std::borrow::Cow::Borrowed(&self.query)
        } else {
            std::borrow::Cow::Owned(statements::join(&self.statements))
        }
    }

    /// The request field that holds [`text`](Self::text), for refusals of
    /// the text as a whole (its size).
    pub fn text_field(&self) -> &'static str {
        if self.statements.is_empty() {
            "query"
        } else {
            "statements"
        }
    }
}

/// Which targets a request names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every cloud that has the database (also when the scope is unset).
    #[default]
    AllClouds,
    Cloud(String),
    /// An explicit list; each names its cloud and database.
    Targets(Vec<Target>),
}

/// A dangerous statement the caller confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The finding's code, upper case (`DROP_TABLE`).
    pub code: String,
    pub reason: String,
    pub statement_index: u32,
}

/// One statement, ready to run.
#[derive(Debug, Clone)]
pub struct PlannedStatement {
    pub index: u32,
    pub text: String,
    pub command: String,
    pub class: StatementClass,
    /// A plain read fetched through a cursor in batches (flow control).
    pub cursorable: bool,
    /// Its positional parameters.
    pub params: Vec<Param>,
    /// The request field they came from (`params`, `statements[1].params`).
    pub params_field: String,
}

/// Everything needed to run one request on each of its targets.
#[derive(Debug)]
pub struct Plan {
    pub statements: Vec<PlannedStatement>,
    pub targets: Vec<Target>,
    /// Per target: the schema applied as search_path.
    schemas: Vec<(Target, String)>,
    pub timeout: Duration,
    pub read_only: bool,
    /// False only for a lone statement that cannot run in a transaction block.
    pub transactional: bool,
    /// Some statement may write (routes to the primary).
    pub writes: bool,
    /// A READER's execution: use the database's `reader_user` login.
    pub reader_login: bool,
    pub confirmed_findings: Vec<Finding>,
    pub row_limit: Option<u64>,
    pub batch_size: usize,
    /// Byte limits on results, checked as rows arrive.
    pub budgets: Budgets,
    pub fingerprint: u64,
    /// The text with every literal as `$n`, set when the text may carry
    /// credentials: what the audit trail records instead of the text.
    pub redacted_query: Option<String>,
    /// The text as libpg_query normalizes it (constants `$n`), for the
    /// slow-query log.
    pub normalized_query: String,
}

impl Plan {
    /// Checks a request against the config, the caller's role and the SQL's
    /// `analysis` (made by [`super::parser::analyze`], off the runtime).
    pub fn new(
        fields: &ExecuteSpec,
        identity: &Identity,
        config: &FleetConfig,
        registry: &Registry,
        analysis: Result<Analysis, ParseError>,
    ) -> Result<Self, RequestError> {
        let limits = &config.query;
        let text_map = TextMap::of(&fields.statements);
        if let TextMap::Statements(_) = text_map {
            if !fields.query.is_empty() {
                return Err(RequestError::invalid(
                    "query",
                    "must be empty when statements are given",
                ));
            }
            if !fields.params.is_empty() {
                return Err(RequestError::invalid(
                    "params",
                    "must be empty when statements are given (each statement carries its own)",
                ));
            }
        }
        check_query_text(&fields.text(), text_map.field(), limits)?;
        let timeout = timeout(fields.timeout, limits)?;
        let targets = resolve_targets(fields, registry).map_err(|error| match error {
            // One answer for "does not exist" and "not yours": an API key
            // cannot probe which clouds and databases are configured.
            RequestError::NotFound(_) if matches!(identity.principal, Principal::ApiKey { .. }) => {
                RequestError::PermissionDenied(format!(
                    "{} may not reach the targets of this request (API key allow-list)",
                    identity.label()
                ))
            }
            other => other,
        })?;
        for target in &targets {
            if !identity.may_access(target) {
                return Err(RequestError::PermissionDenied(format!(
                    "{} may not reach the targets of this request (API key allow-list)",
                    identity.label()
                )));
            }
        }
        let schemas = targets
            .iter()
            .map(|target| {
                let database = registry
                    .database_config(target)
                    .ok_or_else(|| RequestError::NotFound(format!("no target {target}")))?;
                if identity.role == Role::Reader && database.reader_user.is_none() {
                    // Without it the READER would run under the main login,
                    // often a superuser: refused before anything runs. A
                    // privileged reader_user is found when connecting
                    // (the target's result says FAILED_PRECONDITION).
                    return Err(RequestError::FailedPrecondition(
                        pgfleet_registry::RegistryError::NoReaderLogin {
                            target: target.clone(),
                        }
                        .to_string(),
                    ));
                }
                if fields.pg_schema.is_empty() {
                    return Ok((
                        target.clone(),
                        database.effective_default_schema().unwrap_or("public").to_owned(),
                    ));
                }
                if !database.schemas.contains(&fields.pg_schema) {
                    return Err(RequestError::invalid(
                        "pg_schema",
                        format!(
                            "{:?} is not a configured schema of {target} (configured: {})",
                            fields.pg_schema,
                            database.schemas.join(", ")
                        ),
                    ));
                }
                Ok((target.clone(), fields.pg_schema.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let analysis = analysis.map_err(|error| match error.position() {
            Some(at) => {
                let (field, message) = text_map.describe(at, &error.message());
                RequestError::invalid(field, message)
            }
            None => RequestError::invalid(text_map.field(), error.message()),
        })?;
        if analysis.statements.is_empty() {
            return Err(RequestError::invalid(
                "query",
                "contains no statement (only comments or whitespace)",
            ));
        }
        text_map.check_one_statement_each(&analysis)?;
        check_structure(&analysis, &text_map)?;
        let read_only = fields.read_only || identity.role == Role::Reader;
        check_roles(&analysis, identity, read_only)?;
        let confirmed_findings = check_danger(&analysis, identity, fields.confirm_dangerous)?;
        if analysis.can_write() {
            check_writable(&targets, registry)?;
        }

        if !fields.params.is_empty() && analysis.statements.len() > 1 {
            return Err(RequestError::invalid(
                "params",
                "parameters need a single-statement query",
            ));
        }
        let transactional = !analysis.requires_no_transaction_block();
        // Fail-closed execution relies on this: a statement outside a
        // transaction block cannot be made READ ONLY, so it must always be
        // on record, which every statement that is not a read is.
        if !transactional && analysis.is_read_only() {
            return Err(RequestError::Internal(
                "a statement classified as a read cannot run in a transaction block".to_owned(),
            ));
        }
        let statements = analysis
            .statements
            .iter()
            .enumerate()
            .map(|(index, statement)| {
                let (params, params_field) = text_map.params_of(&fields.params, &fields.statements, index);
                PlannedStatement {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    text: statement.span.text.clone(),
                    command: statement.command.clone(),
                    class: statement.class,
                    cursorable: transactional
                        && statement.class == StatementClass::Read
                        && statement.command == "SELECT",
                    params,
                    params_field,
                }
            })
            .collect();
        let batch_size = match fields.batch_size {
            0 => DEFAULT_BATCH_SIZE,
            n => usize::try_from(n).unwrap_or(MAX_BATCH_SIZE).min(MAX_BATCH_SIZE),
        };
        Ok(Self {
            statements,
            targets,
            schemas,
            timeout,
            read_only,
            transactional,
            writes: analysis.can_write(),
            reader_login: identity.role == Role::Reader,
            confirmed_findings,
            row_limit: fields.row_limit,
            batch_size,
            budgets: Budgets {
                batch_bytes: config.batch_budget_bytes(),
                // What one FETCH or one server-rendered result may hold
                // before it is sent; never more than a unary response.
                hold_bytes: config.response_budget_bytes(),
                response: fields
                    .response_bytes
                    .map(|limit| Arc::new(ResponseBudget::new(limit))),
            },
            fingerprint: analysis.fingerprint.0,
            redacted_query: analysis
                .may_carry_credentials()
                .then(|| analysis.normalized.clone()),
            normalized_query: analysis.normalized.clone(),
        })
    }

    /// The schema applied on `target`.
    pub fn schema_for(&self, target: &Target) -> String {
        self.schemas
            .iter()
            .find(|(t, _)| t == target)
            .map(|(_, schema)| schema.clone())
            .unwrap_or_else(|| "public".to_owned())
    }
}

fn check_query_text(query: &str, field: &str, limits: &QueryLimits) -> Result<(), RequestError> {
    if query.trim().is_empty() {
        return Err(RequestError::invalid(field, "must not be empty"));
    }
    check_query_size(query, field, limits)
}

/// Refuses a text over `query.max_query_bytes` (also for Validate); `field`
/// names it in the request (`query`, or `statements` for their joined text).
pub fn check_query_size(query: &str, field: &str, limits: &QueryLimits) -> Result<(), RequestError> {
    let size = query.len() as u64;
    if size > limits.max_query_bytes {
        return Err(RequestError::invalid(
            field,
            format!(
                "is {size} bytes; the limit is {} (query.max_query_bytes)",
                limits.max_query_bytes
            ),
        ));
    }
    Ok(())
}

fn timeout(requested: Option<Duration>, limits: &QueryLimits) -> Result<Duration, RequestError> {
    let Some(duration) = requested else {
        return Ok(limits.default_timeout);
    };
    if duration.is_zero() {
        return Ok(limits.default_timeout);
    }
    if duration > limits.max_timeout {
        return Err(RequestError::invalid(
            "timeout",
            format!(
                "{} is above the limit of {} (query.max_timeout)",
                humantime::format_duration(duration),
                humantime::format_duration(limits.max_timeout)
            ),
        ));
    }
    Ok(duration)
}

fn resolve_targets(fields: &ExecuteSpec, registry: &Registry) -> Result<Vec<Target>, RequestError> {
    match &fields.scope {
        Scope::Targets(targets) => {
            if !fields.database.is_empty() {
                return Err(RequestError::invalid(
                    "database",
                    "leave empty with an explicit target list (each target names its database)",
                ));
            }
            if targets.is_empty() {
                return Err(RequestError::invalid(
                    "targets.targets",
                    "name at least one target",
                ));
            }
            let mut seen = BTreeSet::new();
            targets
                .iter()
                .enumerate()
                .map(|(index, target)| {
                    let field = |name: &str| format!("targets.targets[{index}].{name}");
                    if target.cloud.is_empty() {
                        return Err(RequestError::invalid(field("cloud"), "must not be empty"));
                    }
                    if target.database.is_empty() {
                        return Err(RequestError::invalid(field("database"), "must not be empty"));
                    }
                    let resolved = target.clone();
                    if registry.database_config(&resolved).is_none() {
                        return Err(RequestError::NotFound(format!(
                            "targets.targets[{index}]: no database {:?} in cloud {:?}",
                            target.database, target.cloud
                        )));
                    }
                    if !seen.insert(resolved.clone()) {
                        return Err(RequestError::invalid(
                            field("database"),
                            format!("{resolved} is listed twice"),
                        ));
                    }
                    Ok(resolved)
                })
                .collect()
        }
        Scope::AllClouds | Scope::Cloud(_) => {
            if fields.database.is_empty() {
                return Err(RequestError::invalid(
                    "database",
                    "must name a configured database",
                ));
            }
            let all = registry.targets_for_database(&fields.database);
            if all.is_empty() {
                return Err(RequestError::NotFound(format!(
                    "database {:?} is not configured in any cloud",
                    fields.database
                )));
            }
            match &fields.scope {
                Scope::Cloud(cloud) => {
                    let chosen: Vec<Target> = all.into_iter().filter(|t| t.cloud == *cloud).collect();
                    if chosen.is_empty() {
                        let cloud_known = registry.targets().iter().any(|t| t.cloud == *cloud);
                        return Err(RequestError::NotFound(if cloud_known {
                            format!("cloud {cloud:?} has no database {:?}", fields.database)
                        } else {
                            format!("no cloud {cloud:?}")
                        }));
                    }
                    Ok(chosen)
                }
                _ => Ok(all),
            }
        }
    }
}

/// Refuses a write that would reach a copy configured `read_only`.
fn check_writable(targets: &[Target], registry: &Registry) -> Result<(), RequestError> {
    let frozen: Vec<String> = targets
        .iter()
        .filter(|target| {
            registry
                .database_config(target)
                .is_some_and(|database| database.read_only)
        })
        .map(ToString::to_string)
        .collect();
    if frozen.is_empty() {
        return Ok(());
    }
    Err(RequestError::FailedPrecondition(format!(
        "{} configured read_only: writes are refused there; nothing ran",
        frozen.join(", ")
    )))
}

/// Refuses texts whose shape pgfleet cannot run faithfully.
fn check_structure(analysis: &Analysis, text_map: &TextMap<'_>) -> Result<(), RequestError> {
    if let Some(statement) = analysis.statements.iter().find(|s| s.is_transaction_control) {
        let (field, at) = text_map.locate(statement.span.start);
        return Err(RequestError::invalid(
            field,
            format!(
                "{} at line {}: pgfleet runs the whole text in one transaction per target and commits it itself; remove transaction control statements",
                statement.command, at.line
            ),
        ));
    }
    if analysis.requires_no_transaction_block() && analysis.statements.len() > 1 {
        let found = analysis
            .statements
            .iter()
            .find(|s| s.requires_no_transaction_block);
        let (field, statement) = found.map_or_else(
            || (text_map.field().to_owned(), String::new()),
            |s| {
                let (field, at) = text_map.locate(s.span.start);
                (field, format!("{} at line {}", s.command, at.line))
            },
        );
        return Err(RequestError::invalid(
            field,
            format!("{statement} cannot run inside a transaction block; send it alone, as its own request"),
        ));
    }
    Ok(())
}

/// The least role that may run a statement of `class` (dangerous findings
/// additionally need MASTER).
pub fn required_role(class: StatementClass) -> Role {
    match class {
        StatementClass::Read => Role::Reader,
        StatementClass::Write => Role::User,
        _ => Role::Master,
    }
}

fn check_roles(analysis: &Analysis, identity: &Identity, read_only: bool) -> Result<(), RequestError> {
    for (index, statement) in analysis.statements.iter().enumerate() {
        let required = required_role(statement.class);
        if identity.role < required {
            let functions = statement
                .side_effect_functions()
                .map(|(_, function)| function.name)
                .collect::<Vec<_>>();
            let why = if functions.is_empty() {
                String::new()
            } else {
                format!(" (calls {})", functions.join(", "))
            };
            return Err(RequestError::PermissionDenied(format!(
                "statement {index} ({}, class {}){why} requires role {required}; {} has role {}",
                statement.command,
                statement.class,
                identity.label(),
                identity.role
            )));
        }
        if read_only && statement.class != StatementClass::Read {
            return Err(RequestError::invalid(
                "read_only",
                format!("statement {index} ({}) is not a read", statement.command),
            ));
        }
    }
    Ok(())
}

/// The dangerous findings of statement `index`.
pub fn findings(index: usize, statement: &StatementAnalysis) -> Vec<Finding> {
    statement
        .findings
        .iter()
        .map(|finding| Finding {
            code: finding.code.as_str().to_uppercase(),
            reason: finding.reason.clone(),
            statement_index: u32::try_from(index).unwrap_or(u32::MAX),
        })
        .collect()
}

fn check_danger(
    analysis: &Analysis,
    identity: &Identity,
    confirmed: bool,
) -> Result<Vec<Finding>, RequestError> {
    let findings: Vec<Finding> = analysis
        .statements
        .iter()
        .enumerate()
        .flat_map(|(index, statement)| findings(index, statement))
        .collect();
    if findings.is_empty() {
        return Ok(findings);
    }
    let listed = findings
        .iter()
        .map(|f| format!("statement {}: {} ({})", f.statement_index, f.code, f.reason))
        .collect::<Vec<_>>()
        .join("; ");
    if identity.role < Role::Master {
        return Err(RequestError::PermissionDenied(format!(
            "dangerous statements need role MASTER: {listed}"
        )));
    }
    if !confirmed {
        return Err(RequestError::FailedPrecondition(format!(
            "dangerous statements need confirm_dangerous = true; nothing ran: {listed}"
        )));
    }
    Ok(findings)
}
