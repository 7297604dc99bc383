//! `pgfleet.v1.InsightsService`: the slow-query log, activity and backend
//! signals, fleet-wide statement statistics. The work is in
//! `pgfleet_engine::insights`; this module converts wire ⇄ domain.

use std::sync::Arc;

use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::insights_service_server;
use pgfleet_registry::{Registry, Target};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use super::convert;
use crate::status::request_status;
use pgfleet_engine::RequestError;
use pgfleet_engine::audit::AuditLog;
use pgfleet_engine::insights::activity::{self, ActivitySpec, BackendSignal, SignalSpec};
use pgfleet_engine::insights::explain::{self, ExplainSpec};
use pgfleet_engine::insights::recommendations::{self, RecommendationKind};
use pgfleet_engine::insights::slow_log::{SlowQuery, SlowQueryFilter, SlowQueryLog};
use pgfleet_engine::insights::statements::{self, StatementOrder, StatsSpec};
use pgfleet_engine::migrations::Caller;

/// Serves `pgfleet.v1.InsightsService`.
#[derive(Clone)]
pub struct InsightsService {
    registry: Arc<Registry>,
    history: PgPool,
    audit: Arc<AuditLog>,
    slow_log: Arc<SlowQueryLog>,
    /// `query.max_query_bytes`, for ExplainQuery's text.
    max_query_bytes: u64,
}

impl InsightsService {
    pub fn new(
        registry: Arc<Registry>,
        history: PgPool,
        audit: Arc<AuditLog>,
        slow_log: Arc<SlowQueryLog>,
        max_query_bytes: u64,
    ) -> Self {
        Self {
            registry,
            history,
            audit,
            slow_log,
            max_query_bytes,
        }
    }

    async fn signal(
        &self,
        request: &Request<(Option<pb::Target>, i32)>,
        signal: BackendSignal,
    ) -> Result<activity::Signalled, Status> {
        let identity = super::identity(request)?;
        let caller = Caller::of(identity, super::origin(request));
        let (target, pid) = request.get_ref();
        let target = target
            .as_ref()
            .map(|t| Target::new(t.cloud.clone(), t.database.clone()))
            .ok_or_else(|| request_status(RequestError::invalid("target", "required")))?;
        let spec = SignalSpec {
            target,
            pid: *pid,
            signal,
        };
        activity::signal_backend(
            &self.registry,
            &self.history,
            &self.audit,
            &caller,
            identity,
            &spec,
        )
        .await
        .map_err(request_status)
    }
}

/// A request's parts for [`InsightsService::signal`], its metadata and
/// extensions kept (the identity and origin live there).
fn signal_request<T>(
    request: Request<T>,
    parts: impl FnOnce(T) -> (Option<pb::Target>, i32),
) -> Request<(Option<pb::Target>, i32)> {
    let (metadata, extensions, message) = request.into_parts();
    Request::from_parts(metadata, extensions, parts(message))
}

fn slow_query_to_wire(entry: SlowQuery) -> pb::SlowQuery {
    pb::SlowQuery {
        id: entry.id,
        recorded_at: Some(convert::timestamp(entry.recorded_at)),
        target: Some(convert::target(&entry.target)),
        replica: entry.replica,
        fingerprint: entry.fingerprint,
        normalized_query: entry.normalized_query,
        duration: Some(convert::duration(entry.duration)),
        rows: entry.rows,
        actor: entry.actor,
        success: entry.success,
        request_id: entry.request_id,
    }
}

fn kind_to_wire(kind: RecommendationKind) -> pb::RecommendationKind {
    use pb::RecommendationKind as Wire;
    match kind {
        RecommendationKind::IndexCandidate => Wire::IndexCandidate,
        RecommendationKind::UnusedIndex => Wire::UnusedIndex,
        RecommendationKind::DuplicateIndex => Wire::DuplicateIndex,
        RecommendationKind::StaleStatistics => Wire::StaleStatistics,
        RecommendationKind::DeadTuples => Wire::DeadTuples,
        RecommendationKind::SequenceNearMaximum => Wire::SequenceNearMaximum,
        RecommendationKind::IndexMissingOnCopy => Wire::IndexMissingOnCopy,
    }
}

fn non_empty(value: String) -> Option<String> {
    Some(value).filter(|v| !v.is_empty())
}

fn order_from_wire(wire: i32) -> Result<StatementOrder, RequestError> {
    use pb::StatementOrder as Wire;
    Ok(match Wire::try_from(wire) {
        Ok(Wire::Unspecified | Wire::TotalTime) => StatementOrder::TotalTime,
        Ok(Wire::MeanTime) => StatementOrder::MeanTime,
        Ok(Wire::Calls) => StatementOrder::Calls,
        Ok(Wire::Rows) => StatementOrder::Rows,
        Ok(Wire::SharedBlocksRead) => StatementOrder::SharedBlocksRead,
        Ok(Wire::SharedBlocksHit) => StatementOrder::SharedBlocksHit,
        Err(_) => return Err(RequestError::invalid("order_by", format!("unknown value {wire}"))),
    })
}

fn timestamp_field(
    wire: Option<&prost_types::Timestamp>,
    field: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, RequestError> {
    wire.map(|ts| {
        convert::timestamp_to_chrono(ts).ok_or_else(|| RequestError::invalid(field, "not a valid time"))
    })
    .transpose()
}

#[tonic::async_trait]
impl insights_service_server::InsightsService for InsightsService {
    async fn search_slow_queries(
        &self,
        request: Request<pb::SearchSlowQueriesRequest>,
    ) -> Result<Response<pb::SearchSlowQueriesResponse>, Status> {
        let identity = super::identity(&request)?.clone();
        let wire = request.into_inner();
        let filter = (|| {
            if !wire.fingerprint.is_empty()
                && (wire.fingerprint.len() != 16 || !wire.fingerprint.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(RequestError::invalid("fingerprint", "16 hex digits"));
            }
            Ok(SlowQueryFilter {
                cloud: non_empty(wire.cloud),
                database: non_empty(wire.database),
                fingerprint: non_empty(wire.fingerprint.to_ascii_lowercase()),
                min_duration: wire
                    .min_duration
                    .as_ref()
                    .map(|d| convert::duration_from_wire(d, "min_duration"))
                    .transpose()?,
                since: timestamp_field(wire.since.as_ref(), "since")?,
                until: timestamp_field(wire.until.as_ref(), "until")?,
                actor: non_empty(wire.actor),
            })
        })()
        .map_err(request_status)?;
        let page_size = u32::try_from(wire.page_size)
            .map_err(|_| request_status(RequestError::invalid("page_size", "must not be negative")))?;
        let after = match wire.page_token.as_str() {
            "" => None,
            token => Some(token.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
                request_status(RequestError::invalid("page_token", "not a token of this search"))
            })?),
        };
        let page = self
            .slow_log
            .search(&identity, filter, after, page_size)
            .await
            .map_err(request_status)?;
        Ok(Response::new(pb::SearchSlowQueriesResponse {
            slow_queries: page.entries.into_iter().map(slow_query_to_wire).collect(),
            next_page_token: page.next_after.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }

    async fn list_activity(
        &self,
        request: Request<pb::ListActivityRequest>,
    ) -> Result<Response<pb::ListActivityResponse>, Status> {
        let identity = super::identity(&request)?.clone();
        let wire = request.into_inner();
        let spec = ActivitySpec {
            database: wire.database,
            cloud: wire.cloud,
            min_age: wire
                .min_duration
                .as_ref()
                .map(|d| convert::duration_from_wire(d, "min_duration"))
                .transpose()
                .map_err(request_status)?
                .filter(|d| !d.is_zero()),
        };
        let targets = activity::list_activity(&self.registry, &self.history, &identity, &spec)
            .await
            .map_err(request_status)?;
        let targets = targets
            .into_iter()
            .map(|activity| {
                let (backends, error) = match activity.backends {
                    Ok(backends) => (backends, None),
                    Err(failure) => (Vec::new(), Some(convert::target_error(failure))),
                };
                pb::TargetActivity {
                    target: Some(convert::target(&activity.target)),
                    backends: backends
                        .into_iter()
                        .map(|backend| pb::Backend {
                            pid: backend.pid,
                            user: backend.user,
                            application_name: backend.application_name,
                            client_address: backend.client_address,
                            state: backend.state,
                            wait_event_type: backend.wait_event_type,
                            wait_event: backend.wait_event,
                            query: backend.query,
                            query_age: backend.query_age.map(convert::duration),
                            transaction_age: backend.transaction_age.map(convert::duration),
                            blocked_by: backend.blocked_by,
                            waiting_for: backend
                                .waiting_for
                                .into_iter()
                                .map(|lock| pb::LockWait {
                                    lock_type: lock.lock_type,
                                    mode: lock.mode,
                                    relation: lock.relation,
                                })
                                .collect(),
                            pgfleet_own: backend.pgfleet_own,
                        })
                        .collect(),
                    error,
                }
            })
            .collect();
        Ok(Response::new(pb::ListActivityResponse { targets }))
    }

    async fn cancel_backend(
        &self,
        request: Request<pb::CancelBackendRequest>,
    ) -> Result<Response<pb::CancelBackendResponse>, Status> {
        let request = signal_request(request, |r| (r.target, r.pid));
        let done = self.signal(&request, BackendSignal::Cancel).await?;
        Ok(Response::new(pb::CancelBackendResponse {
            execution_id: done.execution_id.to_string(),
            signalled: done.signalled,
        }))
    }

    async fn terminate_backend(
        &self,
        request: Request<pb::TerminateBackendRequest>,
    ) -> Result<Response<pb::TerminateBackendResponse>, Status> {
        let request = signal_request(request, |r| (r.target, r.pid));
        let done = self.signal(&request, BackendSignal::Terminate).await?;
        Ok(Response::new(pb::TerminateBackendResponse {
            execution_id: done.execution_id.to_string(),
            signalled: done.signalled,
        }))
    }

    async fn get_statement_stats(
        &self,
        request: Request<pb::GetStatementStatsRequest>,
    ) -> Result<Response<pb::GetStatementStatsResponse>, Status> {
        let identity = super::identity(&request)?.clone();
        let wire = request.into_inner();
        let spec = StatsSpec {
            database: wire.database,
            top: u32::try_from(wire.top)
                .map_err(|_| request_status(RequestError::invalid("top", "must not be negative")))?,
            order: order_from_wire(wire.order_by).map_err(request_status)?,
            slower_factor: wire.slower_factor,
        };
        let stats = statements::statement_stats(&self.registry, &identity, &spec)
            .await
            .map_err(request_status)?;
        Ok(Response::new(pb::GetStatementStatsResponse {
            targets: stats
                .sources
                .iter()
                .map(|source| pb::StatementSource {
                    target: Some(convert::target(&source.target)),
                    available: source.unavailable.is_none(),
                    reason: source.unavailable.clone().unwrap_or_default(),
                })
                .collect(),
            statements: stats
                .statements
                .into_iter()
                .map(|statement| pb::MergedStatement {
                    total_calls: statement.total_calls(),
                    total_time: Some(convert::duration(statement.total_time())),
                    fingerprint: statement.fingerprint,
                    query: statement.query,
                    per_target: statement
                        .per_target
                        .into_iter()
                        .map(|stats| pb::StatementTargetStats {
                            target: Some(convert::target(&stats.target)),
                            calls: stats.calls,
                            total_time: Some(convert::duration(stats.total_time)),
                            mean_time: Some(convert::duration(stats.mean_time)),
                            rows: stats.rows,
                            shared_blocks_hit: stats.shared_blocks_hit,
                            shared_blocks_read: stats.shared_blocks_read,
                        })
                        .collect(),
                    slowest: statement.slowest.as_ref().map(convert::target),
                    slower_factor: statement.slower_factor,
                    highlight: statement.highlight.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn explain_query(
        &self,
        request: Request<pb::ExplainQueryRequest>,
    ) -> Result<Response<pb::ExplainQueryResponse>, Status> {
        let identity = super::identity(&request)?.clone();
        let wire = request.into_inner();
        let spec = ExplainSpec {
            query: wire.query,
            database: wire.database,
            analyze: wire.analyze,
        };
        let explained = explain::explain(&self.registry, &identity, &spec, self.max_query_bytes)
            .await
            .map_err(request_status)?;
        Ok(Response::new(pb::ExplainQueryResponse {
            shapes_differ: !explained.differences.is_empty(),
            differences: explained.differences,
            plans: explained
                .plans
                .into_iter()
                .map(|plan| match plan.plan {
                    Ok(made) => pb::TargetPlan {
                        target: Some(convert::target(&plan.target)),
                        plan_json: made.json,
                        shape: made.shape,
                        total_cost: made.total_cost,
                        error: None,
                    },
                    Err(failure) => pb::TargetPlan {
                        target: Some(convert::target(&plan.target)),
                        error: Some(convert::target_error(failure)),
                        ..Default::default()
                    },
                })
                .collect(),
        }))
    }

    async fn get_recommendations(
        &self,
        request: Request<pb::GetRecommendationsRequest>,
    ) -> Result<Response<pb::GetRecommendationsResponse>, Status> {
        let identity = super::identity(&request)?.clone();
        let wire = request.into_inner();
        let found = recommendations::recommendations(&self.registry, &identity, &wire.database)
            .await
            .map_err(request_status)?;
        Ok(Response::new(pb::GetRecommendationsResponse {
            recommendations: found
                .recommendations
                .into_iter()
                .map(|recommendation| pb::Recommendation {
                    target: Some(convert::target(&recommendation.target)),
                    kind: kind_to_wire(recommendation.kind).into(),
                    object: recommendation.object,
                    advice: recommendation.advice,
                    evidence: recommendation.evidence,
                })
                .collect(),
            unread: found
                .unread
                .into_iter()
                .map(|(target, failure)| pb::UnreadTarget {
                    target: Some(convert::target(&target)),
                    error: Some(convert::target_error(failure)),
                })
                .collect(),
        }))
    }
}
