//! `pgfleet.v1.QueryService`: fan-out SQL execution and validation.

use std::sync::Arc;
use std::time::Instant;

use crate::status::request_status;
use pgfleet_config::FleetConfig;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::query_service_server;
use pgfleet_registry::{Registry, Target};
use pgfleet_sqlcheck::StatementClass;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::ResponseStream;
use super::convert::{self, FromWire, WireRows, role_to_wire};
use super::row_comparison::{ComparisonSpec, RowComparison};
use crate::telemetry::Metrics;
use pgfleet_engine::RequestError;
use pgfleet_engine::audit::{AuditLog, OpenExecution};
use pgfleet_engine::compare;
use pgfleet_engine::identity::{Identity, Role};
use pgfleet_engine::insights::slow_log::SlowQueryLog;
use pgfleet_engine::query::atomic;
use pgfleet_engine::query::audited::{self, Origin};
use pgfleet_engine::query::plan::{check_query_size, findings, required_role};
use pgfleet_engine::query::{self, ExecuteSpec, Plan, Scope, StatementSpec, TargetEvent, TargetOutcome};
use tracing::Instrument as _;

/// Serves `pgfleet.v1.QueryService`.
#[derive(Clone)]
pub struct QueryService {
    registry: Arc<Registry>,
    config: Arc<FleetConfig>,
    audit: Arc<AuditLog>,
    metrics: Metrics,
    /// Targets past `insights.slow_query_threshold` are recorded here.
    slow_log: Arc<SlowQueryLog>,
}

impl QueryService {
    pub fn new(
        registry: Arc<Registry>,
        config: Arc<FleetConfig>,
        audit: Arc<AuditLog>,
        metrics: Metrics,
        slow_log: Arc<SlowQueryLog>,
    ) -> Self {
        Self {
            registry,
            config,
            audit,
            metrics,
            slow_log,
        }
    }

    async fn plan(&self, fields: &ExecuteSpec, identity: &Identity) -> Result<Arc<Plan>, RequestError> {
        // The size limit first: an oversized text never reaches the parser.
        let text = fields.text();
        check_query_size(&text, fields.text_field(), &self.config.query)?;
        let analysis = query::parser::analyze(&text).await?;
        Plan::new(fields, identity, &self.config, &self.registry, analysis).map(Arc::new)
    }

    /// Puts the execution on record (committed) if it must be, before
    /// anything runs; if the audit trail cannot be written in time the
    /// execution is refused.
    async fn open_record(
        &self,
        fields: &ExecuteSpec,
        plan: &Plan,
        identity: &Identity,
        origin: Origin,
    ) -> Result<Option<OpenExecution>, RequestError> {
        if !audited::must_record(plan, self.audit.settings().reads) {
            return Ok(None);
        }
        let new = audited::new_execution(fields, plan, identity, origin);
        match self.audit.open(new).await {
            Ok(open) => Ok(Some(open)),
            Err(error) => Err(match RequestError::from(error) {
                RequestError::Unavailable(message) => RequestError::Unavailable(format!(
                    "{message}: the execution was refused and no target saw it"
                )),
                other => other,
            }),
        }
    }

    /// Starts every target; with `record` the execution may write and its
    /// events pass through the recorder, without one it runs READ ONLY.
    fn start(
        &self,
        plan: &Arc<Plan>,
        cancel: CancellationToken,
        record: Option<OpenExecution>,
        (identity, request_id): (&Identity, &str),
    ) -> tokio::sync::mpsc::Receiver<(usize, TargetEvent<pb::Row>)> {
        let observer = self
            .slow_log
            .observer(plan, identity, request_id, Arc::new(self.metrics.clone()));
        query::dispatch::<WireRows>(
            Arc::clone(&self.registry),
            Arc::clone(plan),
            cancel,
            observer,
            record,
        )
    }

    /// Starts an atomic (two-phase) execution: always on record.
    fn start_atomic(
        &self,
        plan: &Arc<Plan>,
        cancel: CancellationToken,
        record: OpenExecution,
        (identity, request_id): (&Identity, &str),
    ) -> tokio::sync::mpsc::Receiver<(usize, TargetEvent<pb::Row>)> {
        let observer = self
            .slow_log
            .observer(plan, identity, request_id, Arc::new(self.metrics.clone()));
        atomic::dispatch::<WireRows>(
            Arc::clone(&self.registry),
            Arc::clone(plan),
            cancel,
            observer,
            record,
            self.audit.pool().clone(),
        )
    }
}

impl QueryService {
    /// The request's `compare`, checked before anything is on record or
    /// runs; what it holds is bounded like a response.
    fn comparison(
        &self,
        spec: Option<pb::RowComparisonSpec>,
        plan: &Plan,
    ) -> Result<Option<RowComparison>, RequestError> {
        Ok(ComparisonSpec::from_wire(spec, plan.targets.len())?.map(|spec| {
            RowComparison::new(
                spec,
                plan.targets.len(),
                self.config.query.max_rows_per_statement,
                self.config.response_budget_bytes(),
            )
        }))
    }
}

/// True for `COMMIT_MODE_ATOMIC`; unset and `COMMIT_MODE_PER_TARGET` are
/// today's per-target commits.
fn commit_mode_from_wire(mode: i32) -> Result<bool, RequestError> {
    match pb::CommitMode::try_from(mode) {
        Ok(pb::CommitMode::Atomic) => Ok(true),
        Ok(pb::CommitMode::Unspecified | pb::CommitMode::PerTarget) => Ok(false),
        Err(_) => Err(RequestError::invalid(
            "commit_mode",
            format!("unknown commit mode {mode}"),
        )),
    }
}

/// `response` with the request id echoed, so callers can quote it.
fn with_request_id<T>(mut response: Response<T>, origin_request_id: &str) -> Response<T> {
    if let Ok(value) = tonic::metadata::MetadataValue::try_from(origin_request_id) {
        response.metadata_mut().insert("x-request-id", value);
    }
    response
}

impl FromWire<pb::ExecuteRequest> for ExecuteSpec {
    fn from_wire(request: pb::ExecuteRequest) -> Result<Self, RequestError> {
        use pb::execute_request::Scope as Wire;
        let scope = match request.scope {
            Some(Wire::Cloud(cloud)) => Scope::Cloud(cloud),
            Some(Wire::Targets(list)) => Scope::Targets(convert::targets_from_wire(list.targets)),
            Some(Wire::AllClouds(_)) | None => Scope::AllClouds,
        };
        execute_spec(WireExecute {
            query: request.query,
            database: request.database,
            scope,
            pg_schema: request.pg_schema,
            timeout: request.timeout,
            params: request.params,
            confirm_dangerous: request.confirm_dangerous,
            read_only: request.read_only,
            batch_size: 0,
            statements: request.statements,
        })
    }
}

impl FromWire<pb::ExecuteStreamRequest> for ExecuteSpec {
    fn from_wire(request: pb::ExecuteStreamRequest) -> Result<Self, RequestError> {
        use pb::execute_stream_request::Scope as Wire;
        let scope = match request.scope {
            Some(Wire::Cloud(cloud)) => Scope::Cloud(cloud),
            Some(Wire::Targets(list)) => Scope::Targets(convert::targets_from_wire(list.targets)),
            Some(Wire::AllClouds(_)) | None => Scope::AllClouds,
        };
        execute_spec(WireExecute {
            query: request.query,
            database: request.database,
            scope,
            pg_schema: request.pg_schema,
            timeout: request.timeout,
            params: request.params,
            confirm_dangerous: request.confirm_dangerous,
            read_only: request.read_only,
            batch_size: request.batch_size,
            statements: request.statements,
        })
    }
}

/// The fields `ExecuteRequest` and `ExecuteStreamRequest` share, moved out
/// of either (their scope oneofs are distinct generated types, converted
/// first).
struct WireExecute {
    query: String,
    database: String,
    scope: Scope,
    pg_schema: String,
    timeout: Option<prost_types::Duration>,
    params: Vec<pb::QueryParam>,
    confirm_dangerous: bool,
    read_only: bool,
    batch_size: u32,
    statements: Vec<pb::ParameterizedStatement>,
}

fn execute_spec(wire: WireExecute) -> Result<ExecuteSpec, RequestError> {
    Ok(ExecuteSpec {
        query: wire.query,
        database: wire.database,
        scope: wire.scope,
        pg_schema: wire.pg_schema,
        timeout: wire
            .timeout
            .map(|timeout| convert::duration_from_wire(&timeout, "timeout"))
            .transpose()?,
        params: convert::params_from_wire(wire.params, "params")?,
        statements: wire
            .statements
            .into_iter()
            .enumerate()
            .map(|(index, statement)| {
                Ok(StatementSpec {
                    query: statement.query,
                    params: convert::params_from_wire(
                        statement.params,
                        &format!("statements[{index}].params"),
                    )?,
                })
            })
            .collect::<Result<_, RequestError>>()?,
        confirm_dangerous: wire.confirm_dangerous,
        read_only: wire.read_only,
        batch_size: wire.batch_size,
        ..ExecuteSpec::default()
    })
}

fn outcome_into_result(
    target: &Target,
    outcome: TargetOutcome,
    statements: Vec<pb::StatementResult>,
) -> pb::TargetResult {
    pb::TargetResult {
        target: Some(convert::target(target)),
        success: outcome.success,
        error: outcome.error.map(convert::target_error),
        duration: Some(convert::duration(outcome.duration)),
        statements,
        failed_statement_index: outcome.failed_statement_index,
        outcome_unknown: outcome.outcome_unknown,
        replica: outcome.replica,
        skipped_replicas: convert::skipped_replicas(outcome.skipped_replicas),
    }
}

#[tonic::async_trait]
impl query_service_server::QueryService for QueryService {
    type ExecuteStreamStream = ResponseStream<pb::ExecuteStreamResponse>;
    type CompareTablesStream = ResponseStream<pb::CompareTablesResponse>;

    async fn compare_tables(
        &self,
        request: Request<pb::CompareTablesRequest>,
    ) -> Result<Response<Self::CompareTablesStream>, Status> {
        let identity = super::identity(&request)?.clone();
        let request = request.into_inner();
        let spec = compare::CompareSpec {
            timeout: request
                .timeout
                .map(|timeout| convert::duration_from_wire(&timeout, "timeout"))
                .transpose()
                .map_err(request_status)?,
            database: request.database,
            table: request.table,
            clouds: request.clouds,
            columns: request.columns,
            filter: request.filter,
            segments: request.segments,
            leaf_rows: request.leaf_rows,
        };
        let prepared = compare::prepare(spec, &identity, &self.config, &self.registry)
            .await
            .map_err(request_status)?;
        // A few events ahead: the comparison pauses while the client reads.
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        let registry = Arc::clone(&self.registry);
        tokio::spawn(async move { compare::run(&registry, prepared, sender).await }.in_current_span());
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver)
            .map(|event| event.map(wire_compare_event).map_err(request_status));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let identity = super::identity(&request)?.clone();
        let origin = super::origin(&request);
        let request_id = origin.request_id.clone();
        let request = request.into_inner();
        let atomic = commit_mode_from_wire(request.commit_mode).map_err(request_status)?;
        let mut request = request;
        let compare = request.compare.take();
        let fields = ExecuteSpec {
            row_limit: Some(self.config.query.max_rows_per_statement),
            response_bytes: Some(self.config.response_budget_bytes()),
            ..ExecuteSpec::from_wire(request).map_err(request_status)?
        };
        let plan = self.plan(&fields, &identity).await.map_err(request_status)?;
        let mut comparison = self.comparison(compare, &plan).map_err(request_status)?;
        if atomic {
            // Before anything is on record or runs.
            let on_record = audited::must_record(&plan, self.audit.settings().reads);
            atomic::check_plan(&plan, on_record).map_err(request_status)?;
            atomic::check_targets(&self.registry, &plan)
                .await
                .map_err(request_status)?;
        }
        let record = self
            .open_record(&fields, &plan, &identity, origin)
            .await
            .map_err(request_status)?;
        let execution_id = record.as_ref().map_or_else(uuid::Uuid::now_v7, OpenExecution::id);
        let cancel = CancellationToken::new();
        // Dropped when tonic drops this call (client cancel, deadline):
        // every target then cancels its statement on the server.
        let _cancel_on_drop = cancel.clone().drop_guard();
        let mut events = match record {
            Some(record) if atomic => self.start_atomic(&plan, cancel, record, (&identity, &request_id)),
            record => self.start(&plan, cancel, record, (&identity, &request_id)),
        };

        let mut statements: Vec<Vec<pb::StatementResult>> = vec![Vec::new(); plan.targets.len()];
        let mut results: Vec<Option<pb::TargetResult>> = vec![None; plan.targets.len()];
        while let Some((index, event)) = events.recv().await {
            if let Some(comparison) = comparison.as_mut() {
                comparison.see(index, &event);
            }
            let target_statements = &mut statements[index];
            match event {
                TargetEvent::Started { .. } => {}
                TargetEvent::Header { statement, columns } => target_statements.push(pb::StatementResult {
                    index: statement,
                    columns: convert::columns(columns),
                    ..Default::default()
                }),
                TargetEvent::Rows { statement, rows } => {
                    if let Some(current) = target_statements.iter_mut().rev().find(|s| s.index == statement) {
                        current.rows.extend(rows);
                    }
                }
                TargetEvent::StatementDone(done) => {
                    let position = target_statements.iter().rposition(|s| s.index == done.index);
                    let current = match position {
                        Some(position) => &mut target_statements[position],
                        None => {
                            target_statements.push(pb::StatementResult {
                                index: done.index,
                                ..Default::default()
                            });
                            let last = target_statements.len() - 1;
                            &mut target_statements[last]
                        }
                    };
                    current.command_tag = done.command_tag;
                    current.rows_affected = done.rows_affected;
                    current.truncated = done.truncated;
                    current.duration = Some(convert::duration(done.duration));
                }
                TargetEvent::Finished(outcome) => {
                    let done = std::mem::take(target_statements);
                    results[index] = Some(outcome_into_result(&plan.targets[index], *outcome, done));
                }
            }
        }
        let results: Vec<pb::TargetResult> = results
            .into_iter()
            .enumerate()
            .map(|(index, result)| {
                result.unwrap_or_else(|| pb::TargetResult {
                    target: Some(convert::target(&plan.targets[index])),
                    error: Some(pb::TargetError {
                        code: pb::ErrorCode::Internal.into(),
                        message: "the target's task ended without a result".to_owned(),
                        postgres: None,
                    }),
                    ..Default::default()
                })
            })
            .collect();
        let response = Response::new(pb::ExecuteResponse {
            execution_id: execution_id.to_string(),
            success: results.iter().all(|r| r.success),
            results,
            confirmed_findings: plan.confirmed_findings.iter().map(convert::finding).collect(),
            comparisons: comparison.map(|c| c.finish(&plan.targets)).unwrap_or_default(),
        });
        Ok(with_request_id(response, &request_id))
    }

    async fn execute_stream(
        &self,
        request: Request<pb::ExecuteStreamRequest>,
    ) -> Result<Response<Self::ExecuteStreamStream>, Status> {
        let identity = super::identity(&request)?.clone();
        let origin = super::origin(&request);
        let request_id = origin.request_id.clone();
        let mut request = request.into_inner();
        let compare = request.compare.take();
        let fields = ExecuteSpec::from_wire(request).map_err(request_status)?;
        let plan = self.plan(&fields, &identity).await.map_err(request_status)?;
        let comparison = self.comparison(compare, &plan).map_err(request_status)?;
        let record = self
            .open_record(&fields, &plan, &identity, origin)
            .await
            .map_err(request_status)?;
        let execution_id = record.as_ref().map_or_else(uuid::Uuid::now_v7, OpenExecution::id);
        let cancel = CancellationToken::new();
        let events = self.start(&plan, cancel.clone(), record, (&identity, &request_id));
        let started = pb::ExecuteStreamResponse {
            event: Some(pb::execute_stream_response::Event::ExecutionStarted(
                pb::ExecutionStarted {
                    execution_id: execution_id.to_string(),
                    targets: plan.targets.iter().map(convert::target).collect(),
                    confirmed_findings: plan.confirmed_findings.iter().map(convert::finding).collect(),
                },
            )),
        };
        let state = StreamState {
            events,
            plan,
            statements: Vec::new(),
            all_succeeded: true,
            comparison,
            comparisons: std::collections::VecDeque::new(),
            started: Instant::now(),
            finished: false,
            _cancel_on_drop: cancel.drop_guard(),
        };
        let stream = futures::stream::once(async move { Ok(started) })
            .chain(futures::stream::unfold(state, next_stream_event));
        Ok(with_request_id(Response::new(Box::pin(stream)), &request_id))
    }

    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        let query = request.into_inner().query;
        check_query_size(&query, "query", &self.config.query).map_err(request_status)?;
        let analysis = query::parser::analyze(&query).await.map_err(request_status)?;
        Ok(Response::new(validate(analysis)))
    }
}

use futures::StreamExt as _;

struct StreamState {
    events: tokio::sync::mpsc::Receiver<(usize, TargetEvent<pb::Row>)>,
    plan: Arc<Plan>,
    /// Per target, the statement summaries so far.
    statements: Vec<(usize, pb::StatementSummary)>,
    all_succeeded: bool,
    /// With `compare`: the rows seen so far.
    comparison: Option<RowComparison>,
    /// Its results, sent once every target finished.
    comparisons: std::collections::VecDeque<pb::ResultComparison>,
    started: Instant,
    finished: bool,
    /// Dropped with the stream (client gone): targets cancel their statements.
    _cancel_on_drop: tokio_util::sync::DropGuard,
}

async fn next_stream_event(
    mut state: StreamState,
) -> Option<(Result<pb::ExecuteStreamResponse, Status>, StreamState)> {
    use pb::execute_stream_response::Event;
    if let Some(comparison) = state.comparisons.pop_front() {
        let event = Event::ResultComparison(comparison);
        return Some((Ok(pb::ExecuteStreamResponse { event: Some(event) }), state));
    }
    if state.finished {
        return None;
    }
    let Some((index, event)) = state.events.recv().await else {
        // Every target finished: the comparisons (if asked) go first, one
        // per call of this function, then the last event.
        if let Some(comparison) = state.comparison.take() {
            state.comparisons = comparison.finish(&state.plan.targets).into();
            return Box::pin(next_stream_event(state)).await;
        }
        state.finished = true;
        let done = Event::ExecutionFinished(pb::ExecutionFinished {
            success: state.all_succeeded,
            duration: Some(convert::duration(state.started.elapsed())),
        });
        return Some((Ok(pb::ExecuteStreamResponse { event: Some(done) }), state));
    };
    if let Some(comparison) = state.comparison.as_mut() {
        comparison.see(index, &event);
    }
    let target = convert::target(&state.plan.targets[index]);
    let event = match event {
        TargetEvent::Started {
            replica,
            skipped_replicas,
        } => Event::TargetStarted(pb::TargetStarted {
            target: Some(target),
            replica,
            skipped_replicas: convert::skipped_replicas(skipped_replicas),
        }),
        TargetEvent::Header { statement, columns } => Event::ResultHeader(pb::ResultHeader {
            target: Some(target),
            statement_index: statement,
            columns: convert::columns(columns),
        }),
        TargetEvent::Rows { statement, rows } => Event::RowBatch(pb::RowBatch {
            target: Some(target),
            statement_index: statement,
            rows,
        }),
        TargetEvent::StatementDone(done) => {
            let summary = pb::StatementSummary {
                target: Some(target),
                statement_index: done.index,
                command_tag: done.command_tag,
                rows_affected: done.rows_affected,
                duration: Some(convert::duration(done.duration)),
            };
            state.statements.push((index, summary.clone()));
            Event::StatementSummary(summary)
        }
        TargetEvent::Finished(outcome) => {
            state.all_succeeded &= outcome.success;
            let statements = state
                .statements
                .iter()
                .filter(|(i, _)| *i == index)
                .map(|(_, s)| s.clone())
                .collect();
            Event::TargetSummary(pb::TargetSummary {
                target: Some(target),
                success: outcome.success,
                error: outcome.error.map(convert::target_error),
                duration: Some(convert::duration(outcome.duration)),
                statements,
                failed_statement_index: outcome.failed_statement_index,
                outcome_unknown: outcome.outcome_unknown,
                replica: outcome.replica,
                skipped_replicas: convert::skipped_replicas(outcome.skipped_replicas),
            })
        }
    };
    Some((Ok(pb::ExecuteStreamResponse { event: Some(event) }), state))
}

fn wire_compare_event(event: compare::CompareEvent) -> pb::CompareTablesResponse {
    use pb::compare_tables_response::Event;
    let event = match event {
        compare::CompareEvent::Started {
            reference,
            targets,
            key_column,
            columns,
        } => Event::Started(pb::CompareStarted {
            reference: Some(convert::target(&reference)),
            targets: targets.iter().map(convert::target).collect(),
            key_column,
            columns,
        }),
        compare::CompareEvent::Difference { target, key, kind } => Event::Difference(pb::RowDifference {
            target: Some(convert::target(&target)),
            key,
            kind: match kind {
                compare::DifferenceKind::Missing => pb::DifferenceKind::Missing,
                compare::DifferenceKind::Extra => pb::DifferenceKind::Extra,
                compare::DifferenceKind::Changed => pb::DifferenceKind::Changed,
            }
            .into(),
        }),
        compare::CompareEvent::Finished(summary) => Event::Finished(pb::CompareFinished {
            identical: summary.identical,
            differences: summary.differences,
            rows_transferred: summary.rows_transferred,
            rows_in_tables: summary.rows_in_tables,
            queries: summary.queries,
            duration: Some(convert::duration(summary.duration)),
        }),
    };
    pb::CompareTablesResponse { event: Some(event) }
}

fn wire_class(class: StatementClass) -> pb::StatementClass {
    match class {
        StatementClass::Read => pb::StatementClass::Read,
        StatementClass::Write => pb::StatementClass::Write,
        StatementClass::Ddl => pb::StatementClass::Ddl,
        StatementClass::TransactionControl => pb::StatementClass::TransactionControl,
        StatementClass::Session => pb::StatementClass::Session,
        StatementClass::Utility => pb::StatementClass::Utility,
    }
}

/// What the parser made of a text, as Validate answers it.
fn validate(
    analysis: Result<pgfleet_sqlcheck::Analysis, pgfleet_sqlcheck::ParseError>,
) -> pb::ValidateResponse {
    let as_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    match analysis {
        Err(error) => {
            let position = error.position();
            pb::ValidateResponse {
                valid: false,
                parse_error: Some(pb::ParseError {
                    message: error.message(),
                    line: position.map_or(0, |p| as_u32(p.line)),
                    column: position.map_or(0, |p| as_u32(p.column)),
                    byte_offset: position.map_or(0, |p| as_u32(p.offset)),
                }),
                ..Default::default()
            }
        }
        Ok(analysis) => {
            let statements: Vec<pb::ValidatedStatement> = analysis
                .statements
                .iter()
                .enumerate()
                .map(|(index, statement)| pb::ValidatedStatement {
                    index: as_u32(index),
                    text: statement.span.text.clone(),
                    statement_class: wire_class(statement.class).into(),
                    command: statement.command.clone(),
                    findings: findings(index, statement).iter().map(convert::finding).collect(),
                    byte_offset: as_u32(statement.span.range.start),
                    byte_length: as_u32(statement.span.range.len()),
                    line: as_u32(statement.span.start.line),
                    column: as_u32(statement.span.start.column),
                    required_role: role_to_wire(if statement.findings.is_empty() {
                        required_role(statement.class)
                    } else {
                        Role::Master
                    })
                    .into(),
                    cannot_run_in_transaction: statement.requires_no_transaction_block,
                })
                .collect();
            let required = statements.iter().map(|s| s.required_role).max().unwrap_or(0);
            pb::ValidateResponse {
                valid: !statements.is_empty(),
                parse_error: None,
                requires_confirmation: statements.iter().any(|s| !s.findings.is_empty()),
                statements,
                fingerprint: format!("{:016x}", analysis.fingerprint.0),
                required_role: required,
            }
        }
    }
}
