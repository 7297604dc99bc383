//! `pgfleet.v1.FleetService`: what the fleet is (configuration), how it is
//! doing (the health monitor's last probes) and what a target holds (schemas
//! and tables, read live from its catalog for clients that build pickers).
//!
//! Secrets never leave: responses are built field by field from the
//! configuration and no password field is ever read here. Connection details
//! (host, port, user) go to MASTER only, and so does the driver's text of a
//! member's last error (others get its category). API keys see only the
//! targets in their allow-list: other targets are left out of the
//! configuration and the health report, and introspecting them is
//! PERMISSION_DENIED, the same answer as for a target that does not exist.
//! ListTables shows only the database's configured schemas below MASTER.
//!
//! Catalog queries are fixed statements with bind parameters: a schema or
//! table name from a request is never spliced into SQL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::status::request_status;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use pgfleet_config::{ConnectionConfig, DatabaseConfig, FleetConfig, ReadPreference};
use pgfleet_engine::replication::catalog::CatalogError;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::fleet_service_server;
use pgfleet_registry::{HealthStatus, Member, MemberHealth, ReadOnlyError, Registry, Route, Target};
use serde::{Deserialize, Serialize};
use sqlx::postgres::types::Oid;
use tonic::{Request, Response, Status};

use super::convert::{self, timestamp};
use pgfleet_engine::RequestError;
use pgfleet_engine::audit::AuditLog;
use pgfleet_engine::identity::{Identity, Principal, Role};
use pgfleet_engine::migrations::Caller;
use pgfleet_engine::topology::{self, PromoteSpec};

/// Page size when a request asks for none.
const DEFAULT_PAGE_SIZE: i64 = 100;
/// Largest page a request may ask for.
const MAX_PAGE_SIZE: i64 = 1000;

/// Serves `pgfleet.v1.FleetService`.
#[derive(Clone)]
pub struct FleetService {
    registry: Arc<Registry>,
    config: Arc<FleetConfig>,
    /// Promotions are on record before they act.
    audit: Arc<AuditLog>,
}

impl FleetService {
    pub fn new(registry: Arc<Registry>, config: Arc<FleetConfig>, audit: Arc<AuditLog>) -> Self {
        Self {
            registry,
            config,
            audit,
        }
    }

    /// The configured target a request names, with its configuration, once
    /// the caller may touch it.
    fn resolve_target(
        &self,
        identity: &Identity,
        wire: Option<&pb::Target>,
    ) -> Result<(Target, DatabaseConfig), RequestError> {
        let wire = wire.ok_or_else(|| RequestError::invalid("target", "required"))?;
        if wire.cloud.is_empty() {
            return Err(RequestError::invalid("target.cloud", "required"));
        }
        if wire.database.is_empty() {
            return Err(RequestError::invalid("target.database", "required"));
        }
        let target = Target::new(&wire.cloud, &wire.database);
        // The allow-list first, with one answer whether the target exists or
        // not: an API key cannot probe which targets are configured.
        if !identity.may_access(&target) {
            return Err(RequestError::PermissionDenied(format!(
                "this API key may not access {target}"
            )));
        }
        let Some(database) = self.registry.database_config(&target) else {
            if matches!(identity.principal, Principal::ApiKey { .. }) {
                return Err(RequestError::PermissionDenied(format!(
                    "this API key may not access {target}"
                )));
            }
            return Err(RequestError::NotFound(
                if self
                    .registry
                    .clouds()
                    .iter()
                    .any(|cloud| cloud.name == wire.cloud)
                {
                    format!("no database {:?} in cloud {:?}", wire.database, wire.cloud)
                } else {
                    format!("no cloud {:?}", wire.cloud)
                },
            ));
        };
        Ok((target, database))
    }

    /// NOT_FOUND for a GetHealth filter that names nothing configured.
    fn check_health_filter(&self, cloud: &str, database: &str) -> Result<(), RequestError> {
        // The live list: SIGHUP may have added or removed clouds.
        let clouds = self.registry.clouds();
        if !cloud.is_empty() && !clouds.iter().any(|c| c.name == cloud) {
            return Err(RequestError::NotFound(format!("no cloud {cloud:?}")));
        }
        if database.is_empty() {
            return Ok(());
        }
        let exists = clouds
            .iter()
            .filter(|c| cloud.is_empty() || c.name == cloud)
            .any(|c| c.databases.iter().any(|d| d.name == database));
        match (exists, cloud.is_empty()) {
            (true, _) => Ok(()),
            (false, true) => Err(RequestError::NotFound(format!(
                "no database {database:?} in any cloud"
            ))),
            (false, false) => Err(RequestError::NotFound(format!(
                "no database {database:?} in cloud {cloud:?}"
            ))),
        }
    }

    /// `detailed`: the driver's error text (hosts, ports, users) for MASTER;
    /// others get its category only ("connection refused", "timeout"…).
    fn target_health(&self, health: MemberHealth, now: DateTime<Utc>, detailed: bool) -> pb::TargetHealth {
        // Every snapshot entry comes from a configured target; the default
        // only guards against a registry built from another config.
        let database = self.registry.database_config(&health.target);
        let max_size = database
            .as_ref()
            .map_or(0, |database| database.pool.max_connections);
        let region = database.and_then(|database| database.region).unwrap_or_default();
        let status = wire_status(&health, max_size, self.config.health.interval, now);
        let breaches = pgfleet_engine::insights::alerts::check(&self.config.insights.alerts, &health)
            .into_iter()
            .filter(|check| check.breached)
            .map(|check| pb::ThresholdBreach {
                threshold: check.threshold.to_owned(),
                value: check.value,
                limit: check.limit,
            })
            .collect();
        pb::TargetHealth {
            breaches,
            target: Some(convert::target(&health.target)),
            replica: match &health.member {
                Member::Primary => String::new(),
                Member::Replica(name) => name.clone(),
            },
            status: status.into(),
            latency: health.latency.map(convert::duration),
            pool: Some(pb::PoolStats {
                size: health.pool_size,
                idle: health.pool_idle,
                waiting: health.pool_waiting,
                max_size,
            }),
            last_error: if detailed {
                health.last_error.unwrap_or_default()
            } else {
                health.last_error_category.unwrap_or_default().to_owned()
            },
            last_error_at: health.last_error_at.map(timestamp),
            last_checked_at: health.last_checked_at.map(timestamp),
            consecutive_failures: health.consecutive_failures,
            region,
            replay_lag: health.replay_lag.and_then(|lag| lag.time).map(convert::duration),
            replay_lag_bytes: health.replay_lag.map_or(0, |lag| lag.bytes),
            database_size_bytes: health.database_size,
            role: match health.in_recovery {
                None => pb::ServerRole::Unspecified,
                Some(false) => pb::ServerRole::Primary,
                Some(true) => pb::ServerRole::Standby,
            }
            .into(),
        }
    }
}

#[tonic::async_trait]
impl fleet_service_server::FleetService for FleetService {
    async fn get_configuration(
        &self,
        request: Request<pb::GetConfigurationRequest>,
    ) -> Result<Response<pb::GetConfigurationResponse>, Status> {
        let identity = super::identity(&request)?;
        let show_connections = identity.role >= Role::Master;
        let is_api_key = matches!(identity.principal, Principal::ApiKey { .. });
        let clouds = self
            .registry
            .clouds()
            .iter()
            .enumerate()
            .filter_map(|(index, cloud)| {
                let databases: Vec<pb::DatabaseInfo> = cloud
                    .databases
                    .iter()
                    .filter(|database| identity.may_access(&Target::new(&cloud.name, &database.name)))
                    .map(|database| database_info(database, show_connections))
                    .collect();
                // A key sees no trace of a cloud it may touch nothing in.
                (!is_api_key || !databases.is_empty()).then(|| pb::Cloud {
                    name: cloud.name.clone(),
                    // The legacy loader puts the `primary` cloud first; native
                    // configurations have no other notion of a primary cloud.
                    primary: index == 0,
                    databases,
                })
            })
            .collect();
        let limits = &self.config.query;
        Ok(Response::new(pb::GetConfigurationResponse {
            clouds,
            limits: Some(pb::QueryLimits {
                default_timeout: Some(convert::duration(limits.default_timeout)),
                max_timeout: Some(convert::duration(limits.max_timeout)),
                max_query_bytes: limits.max_query_bytes,
                max_rows: limits.max_rows_per_statement,
            }),
        }))
    }

    async fn promote_replica(
        &self,
        request: Request<pb::PromoteReplicaRequest>,
    ) -> Result<Response<pb::PromoteReplicaResponse>, Status> {
        let identity = super::identity(&request)?;
        let caller = Caller::of(identity, super::origin(&request));
        let wire = request.get_ref();
        let (target, _) = self
            .resolve_target(identity, wire.target.as_ref())
            .map_err(request_status)?;
        let wait = match &wire.wait {
            None => topology::DEFAULT_PROMOTE_WAIT,
            Some(wait) => convert::duration_from_wire(wait, "wait").map_err(request_status)?,
        };
        let spec = PromoteSpec {
            target,
            replica: wire.replica.clone(),
            confirm: wire.confirm,
            wait,
        };
        let promoted = topology::promote_replica(&self.registry, &self.audit, &spec, &caller)
            .await
            .map_err(request_status)?;
        Ok(Response::new(pb::PromoteReplicaResponse {
            execution_id: promoted.execution_id.to_string(),
            duration: Some(convert::duration(promoted.duration)),
        }))
    }

    async fn get_health(
        &self,
        request: Request<pb::GetHealthRequest>,
    ) -> Result<Response<pb::GetHealthResponse>, Status> {
        let identity = super::identity(&request)?;
        let filter = request.get_ref();
        // An API key gets an empty list for a name that does not exist, as
        // for one outside its allow-list: it cannot probe what exists.
        if !matches!(identity.principal, Principal::ApiKey { .. }) {
            self.check_health_filter(&filter.cloud, &filter.database)
                .map_err(request_status)?;
        }
        let detailed = identity.role >= Role::Master;
        let now = Utc::now();
        let targets = self
            .registry
            .health_snapshot()
            .into_iter()
            .filter(|health| filter.cloud.is_empty() || health.target.cloud == filter.cloud)
            .filter(|health| filter.database.is_empty() || health.target.database == filter.database)
            .filter(|health| identity.may_access(&health.target))
            .map(|health| self.target_health(health, now, detailed))
            .collect();
        Ok(Response::new(pb::GetHealthResponse { targets }))
    }

    async fn list_schemas(
        &self,
        request: Request<pb::ListSchemasRequest>,
    ) -> Result<Response<pb::ListSchemasResponse>, Status> {
        let identity = super::identity(&request)?.clone();
        let message = request.into_inner();
        let limit = page_size(message.page_size).map_err(request_status)?;
        let token = PageToken::decode(&message.page_token).map_err(request_status)?;
        let (target, database) = self
            .resolve_target(&identity, message.target.as_ref())
            .map_err(request_status)?;
        let after = match token {
            Some(token) => Some(token.position_for(&target, None).map_err(request_status)?),
            None => None,
        };

        let timeout = self.config.query.default_timeout;
        let read = self
            .registry
            .read_only(&target, Route::Read, timeout, async |transaction| {
                let rows: Vec<(String, String)> = sqlx::query_as(concat!(
                    "SELECT n.nspname::text, pg_catalog.pg_get_userbyid(n.nspowner)::text ",
                    "FROM pg_catalog.pg_namespace AS n ",
                    "WHERE ($1::name IS NULL OR n.nspname > $1::name) ",
                    // Temporary schemas of other sessions are system schemas too.
                    "AND ($2 OR n.nspname::text !~ ",
                    "'^(pg_catalog|information_schema|pg_toast|pg_temp_[0-9]+|pg_toast_temp_[0-9]+)$') ",
                    "ORDER BY n.nspname LIMIT $3"
                ))
                .bind(after)
                .bind(message.include_system)
                .bind(limit + 1)
                .fetch_all(&mut *transaction)
                .await?;
                Ok(rows)
            })
            .await;
        let mut rows = match read {
            Ok(rows) => rows,
            Err(error) => return Err(request_status(catalog_error(&target, error))),
        };

        let next_page_token = next_page(&mut rows, limit, |(name, _)| {
            PageToken::new(&target, None, name).encode()
        });
        let schemas = rows
            .into_iter()
            .map(|(name, owner)| pb::SchemaInfo {
                configured: database.schemas.contains(&name),
                name,
                owner,
            })
            .collect();
        Ok(Response::new(pb::ListSchemasResponse {
            schemas,
            next_page_token,
        }))
    }

    async fn list_tables(
        &self,
        request: Request<pb::ListTablesRequest>,
    ) -> Result<Response<pb::ListTablesResponse>, Status> {
        let identity = super::identity(&request)?.clone();
        let message = request.into_inner();
        let limit = page_size(message.page_size).map_err(request_status)?;
        let token = PageToken::decode(&message.page_token).map_err(request_status)?;
        let (target, database) = self
            .resolve_target(&identity, message.target.as_ref())
            .map_err(request_status)?;
        let schema = if message.schema.is_empty() {
            database
                .effective_default_schema()
                .ok_or_else(|| {
                    RequestError::invalid("schema", "required: the database has no default schema")
                })
                .map_err(request_status)?
                .to_owned()
        } else {
            message.schema.clone()
        };
        // Below MASTER, only what the configuration exposes (as for
        // pg_schema in QueryService); MASTER may look at any schema.
        if identity.role < Role::Master && !database.schemas.contains(&schema) {
            return Err(request_status(RequestError::invalid(
                "schema",
                format!(
                    "{schema:?} is not a configured schema of {target} (configured: {})",
                    database.schemas.join(", ")
                ),
            )));
        }
        let after = match token {
            Some(token) => Some(
                token
                    .position_for(&target, Some(&schema))
                    .map_err(request_status)?,
            ),
            None => None,
        };

        let timeout = self.config.query.default_timeout;
        let read = self
            .registry
            .read_only(&target, Route::Read, timeout, async |transaction| {
                let namespace: Option<Oid> =
                    sqlx::query_scalar("SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1::name")
                        .bind(&schema)
                        .fetch_optional(&mut *transaction)
                        .await?;
                let Some(namespace) = namespace else {
                    return Ok(None);
                };
                let tables: Vec<TableRow> = sqlx::query_as(concat!(
                    "SELECT c.oid, c.relname::text AS name, c.relkind::text AS kind, ",
                    // Never analyzed is -1 from PostgreSQL 14 on, 0 before.
                    "CASE WHEN c.reltuples < 0 THEN -1 ELSE c.reltuples::bigint END AS estimated_rows, ",
                    "EXISTS (SELECT 1 FROM pg_catalog.pg_constraint AS k ",
                    "WHERE k.conrelid = c.oid AND k.contype = 'p') AS has_primary_key, ",
                    "COALESCE(pg_catalog.obj_description(c.oid, 'pg_class'), '') AS comment ",
                    "FROM pg_catalog.pg_class AS c ",
                    "WHERE c.relnamespace = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ",
                    "AND ($2::name IS NULL OR c.relname > $2::name) ",
                    "ORDER BY c.relname LIMIT $3"
                ))
                .bind(namespace)
                .bind(&after)
                .bind(limit + 1)
                .fetch_all(&mut *transaction)
                .await?;
                let columns: Vec<ColumnRow> = if message.include_columns && !tables.is_empty() {
                    let oids: Vec<Oid> = tables.iter().map(|table| table.oid).collect();
                    sqlx::query_as(concat!(
                    "SELECT a.attrelid AS table_oid, a.attname::text AS name, ",
                    "pg_catalog.format_type(a.atttypid, a.atttypmod) AS type_name, ",
                    "a.atttypid AS type_oid, NOT a.attnotnull AS nullable, ",
                    // conkey is an ordinary 1-based array (indkey is 0-based).
                    "COALESCE(pg_catalog.array_position(k.conkey, a.attnum), 0) AS primary_key_position, ",
                    // A generated column's expression is not a default.
                    "COALESCE(CASE WHEN a.attgenerated = '' ",
                    "THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END, '') AS default_expression ",
                    "FROM pg_catalog.pg_attribute AS a ",
                    "LEFT JOIN pg_catalog.pg_constraint AS k ON k.conrelid = a.attrelid AND k.contype = 'p' ",
                    "LEFT JOIN pg_catalog.pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum ",
                    "WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped ",
                    "ORDER BY a.attrelid, a.attnum"
                ))
                .bind(oids)
                .fetch_all(&mut *transaction)
                .await?
                } else {
                    Vec::new()
                };
                Ok(Some((tables, columns)))
            })
            .await;
        let (mut tables, columns) = match read {
            Ok(Some(found)) => found,
            Ok(None) => {
                return Err(request_status(RequestError::NotFound(format!(
                    "no schema {schema:?} on {target}"
                ))));
            }
            Err(error) => return Err(request_status(catalog_error(&target, error))),
        };

        let next_page_token = next_page(&mut tables, limit, |table| {
            PageToken::new(&target, Some(&schema), &table.name).encode()
        });
        let mut columns_by_table = group_columns(columns);
        let tables = tables
            .into_iter()
            .map(|table| {
                let columns = columns_by_table.remove(&table.oid.0).unwrap_or_default();
                table.into_wire(&schema, columns)
            })
            .collect();
        Ok(Response::new(pb::ListTablesResponse {
            tables,
            next_page_token,
        }))
    }
}

/// One relation of a ListTables page.
#[derive(sqlx::FromRow)]
struct TableRow {
    oid: Oid,
    name: String,
    kind: String,
    estimated_rows: i64,
    has_primary_key: bool,
    comment: String,
}

impl TableRow {
    fn into_wire(self, schema: &str, columns: Vec<pb::ColumnInfo>) -> pb::TableInfo {
        let kind = match self.kind.as_str() {
            "r" => pb::TableKind::Table,
            "p" => pb::TableKind::PartitionedTable,
            "v" => pb::TableKind::View,
            "m" => pb::TableKind::MaterializedView,
            "f" => pb::TableKind::ForeignTable,
            _ => pb::TableKind::Unspecified,
        };
        pb::TableInfo {
            schema: schema.to_owned(),
            name: self.name,
            kind: kind.into(),
            estimated_rows: self.estimated_rows,
            has_primary_key: self.has_primary_key,
            comment: self.comment,
            columns,
        }
    }
}

/// One column of a table of a ListTables page.
#[derive(sqlx::FromRow)]
struct ColumnRow {
    table_oid: Oid,
    name: String,
    type_name: String,
    type_oid: Oid,
    nullable: bool,
    primary_key_position: i32,
    default_expression: String,
}

/// Columns by table OID, each table's in position order.
fn group_columns(rows: Vec<ColumnRow>) -> HashMap<u32, Vec<pb::ColumnInfo>> {
    let mut tables: HashMap<u32, Vec<pb::ColumnInfo>> = HashMap::new();
    for row in rows {
        tables.entry(row.table_oid.0).or_default().push(pb::ColumnInfo {
            name: row.name,
            type_name: row.type_name,
            type_oid: row.type_oid.0,
            nullable: row.nullable,
            // array_position gives 1..=32 (the index column limit) or 0.
            primary_key_position: u32::try_from(row.primary_key_position).unwrap_or(0),
            default_expression: row.default_expression,
        });
    }
    tables
}

/// What a page token holds: where the page ends and what it was issued for,
/// so a token cannot silently be replayed against another listing.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PageToken {
    cloud: String,
    database: String,
    /// The listed schema for ListTables; none for ListSchemas.
    schema: Option<String>,
    /// Name of the last entry of the previous page.
    after: String,
}

impl PageToken {
    fn new(target: &Target, schema: Option<&str>, after: &str) -> Self {
        Self {
            cloud: target.cloud.clone(),
            database: target.database.clone(),
            schema: schema.map(str::to_owned),
            after: after.to_owned(),
        }
    }

    fn encode(&self) -> String {
        // Serializing plain strings cannot fail; an empty token would only
        // end the listing early.
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// None for the first page.
    fn decode(token: &str) -> Result<Option<Self>, RequestError> {
        if token.is_empty() {
            return Ok(None);
        }
        URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .map(Some)
            .ok_or_else(|| RequestError::invalid("page_token", "not a token this server issued"))
    }

    /// The position to continue after, if the token belongs to this listing.
    fn position_for(self, target: &Target, schema: Option<&str>) -> Result<String, RequestError> {
        if self.cloud != target.cloud || self.database != target.database || self.schema.as_deref() != schema
        {
            return Err(RequestError::invalid(
                "page_token",
                "was issued for another target or schema",
            ));
        }
        Ok(self.after)
    }
}

/// The row limit for a requested page size.
fn page_size(requested: i32) -> Result<i64, RequestError> {
    match requested {
        ..0 => Err(RequestError::invalid("page_size", "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        // Refused, not quietly cut: every list call of the API answers an
        // oversized page the same way (INVALID_ARGUMENT naming the field).
        n if i64::from(n) > MAX_PAGE_SIZE => Err(RequestError::invalid(
            "page_size",
            format!("{n} is above the maximum of {MAX_PAGE_SIZE}"),
        )),
        n => Ok(i64::from(n)),
    }
}

/// Cuts `rows` (fetched with one extra row) to `limit` and returns the token
/// of the next page, empty when this one is the last.
fn next_page<T>(rows: &mut Vec<T>, limit: i64, token_after: impl Fn(&T) -> String) -> String {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() <= limit {
        return String::new();
    }
    rows.truncate(limit);
    rows.last().map(token_after).unwrap_or_default()
}

/// A failed catalog read: UNAVAILABLE (naming the target) when the target or
/// the connection failed, INTERNAL (details logged only) otherwise.
fn catalog_error(target: &Target, error: ReadOnlyError) -> RequestError {
    match error {
        ReadOnlyError::Acquire(error) => error.into(),
        ReadOnlyError::Query(error) => CatalogError::from_query(target, error).into(),
    }
}

/// The wire status of a member. A member that answers is still DEGRADED when
/// its pool is saturated or it failed within the last probe interval.
fn wire_status(
    health: &MemberHealth,
    max_size: u32,
    interval: Duration,
    now: DateTime<Utc>,
) -> pb::HealthStatus {
    match health.status {
        HealthStatus::Unknown if health.last_checked_at.is_none() => pb::HealthStatus::Unspecified,
        HealthStatus::Unknown => pb::HealthStatus::Unknown,
        HealthStatus::Unhealthy => pb::HealthStatus::Unhealthy,
        HealthStatus::Degraded => pb::HealthStatus::Degraded,
        HealthStatus::Healthy => {
            let saturated = health.pool_waiting > 0 && health.pool_idle == 0 && health.pool_size >= max_size;
            let window = chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX);
            let failed_recently = health
                .last_error_at
                .is_some_and(|at| now.signed_duration_since(at) < window);
            if saturated || failed_recently {
                pb::HealthStatus::Degraded
            } else {
                pb::HealthStatus::Healthy
            }
        }
    }
}

fn database_info(database: &DatabaseConfig, show_connections: bool) -> pb::DatabaseInfo {
    let replicas = database
        .replica_connections()
        .into_iter()
        .map(|(name, connection)| pb::ReplicaInfo {
            name,
            connection: show_connections.then(|| connection_info(&connection)),
        })
        .collect();
    pb::DatabaseInfo {
        name: database.name.clone(),
        // Pickers always have something to show.
        label: database.label.clone().unwrap_or_else(|| database.name.clone()),
        schemas: database.schemas.clone(),
        default_schema: database.effective_default_schema().unwrap_or_default().to_owned(),
        replicas,
        read_preference: read_preference(database.read_preference).into(),
        connection: show_connections.then(|| connection_info(&database.connection())),
        has_reader_login: database.reader_user.is_some(),
        region: database.region.clone().unwrap_or_default(),
        read_only: database.read_only,
        max_replica_lag: database.max_replica_lag.map(convert::duration),
    }
}

/// Connection details without the password (ConnectionInfo has no field
/// for it, by design).
fn connection_info(connection: &ConnectionConfig) -> pb::ConnectionInfo {
    pb::ConnectionInfo {
        host: connection.host.clone(),
        port: u32::from(connection.port),
        user: connection.user.clone(),
        database: connection.database.clone(),
        sslmode: connection.sslmode.as_str().to_owned(),
    }
}

fn read_preference(preference: ReadPreference) -> pb::ReadPreference {
    match preference {
        ReadPreference::Primary => pb::ReadPreference::Primary,
        ReadPreference::Replica => pb::ReadPreference::Replica,
        ReadPreference::PrimaryThenReplica => pb::ReadPreference::PrimaryThenReplica,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(status: HealthStatus) -> MemberHealth {
        MemberHealth {
            target: Target::new("aws", "app"),
            member: Member::Primary,
            status,
            in_recovery: Some(false),
            replay_lag: None,
            database_size: Some(8_000_000),
            latency: Some(Duration::from_millis(3)),
            pool_size: 2,
            pool_idle: 1,
            pool_waiting: 0,
            last_error: None,
            last_error_category: None,
            last_error_at: None,
            last_checked_at: Some(Utc::now()),
            consecutive_failures: 0,
        }
    }

    #[test]
    fn answering_members_are_degraded_when_saturated_or_recently_failing() {
        let now = Utc::now();
        let interval = Duration::from_secs(30);
        let status = |health: &MemberHealth| wire_status(health, 2, interval, now);
        assert_eq!(status(&member(HealthStatus::Healthy)), pb::HealthStatus::Healthy);
        assert_eq!(
            status(&member(HealthStatus::Degraded)),
            pb::HealthStatus::Degraded
        );
        assert_eq!(
            status(&member(HealthStatus::Unhealthy)),
            pb::HealthStatus::Unhealthy
        );

        let mut never_probed = member(HealthStatus::Unknown);
        never_probed.last_checked_at = None;
        assert_eq!(status(&never_probed), pb::HealthStatus::Unspecified);
        assert_eq!(status(&member(HealthStatus::Unknown)), pb::HealthStatus::Unknown);

        let mut saturated = member(HealthStatus::Healthy);
        saturated.pool_idle = 0;
        saturated.pool_waiting = 3;
        assert_eq!(status(&saturated), pb::HealthStatus::Degraded);

        let mut recovering = member(HealthStatus::Healthy);
        recovering.last_error_at = Some(now - chrono::Duration::seconds(5));
        assert_eq!(status(&recovering), pb::HealthStatus::Degraded);
        recovering.last_error_at = Some(now - chrono::Duration::seconds(60));
        assert_eq!(status(&recovering), pb::HealthStatus::Healthy);
    }

    #[test]
    fn page_tokens_round_trip_and_stay_with_their_listing() {
        let target = Target::new("aws", "app");
        let token = PageToken::new(&target, Some("public"), "orders").encode();
        let decoded = PageToken::decode(&token).ok().flatten().expect("our token");
        assert_eq!(
            decoded.position_for(&target, Some("public")).ok().as_deref(),
            Some("orders")
        );
        let again = PageToken::decode(&token).ok().flatten().expect("our token");
        assert!(again.position_for(&target, Some("sales")).is_err());
        let again = PageToken::decode(&token).ok().flatten().expect("our token");
        assert!(
            again
                .position_for(&Target::new("gcp", "app"), Some("public"))
                .is_err()
        );
        assert!(matches!(PageToken::decode(""), Ok(None)));
        assert!(PageToken::decode("!!!").is_err());
        assert!(
            PageToken::decode("aGVsbG8").is_err(),
            "base64url of something else"
        );
    }

    #[test]
    fn page_sizes_default_cap_and_refuse_negatives() {
        assert_eq!(page_size(0).ok(), Some(100));
        assert_eq!(page_size(7).ok(), Some(7));
        assert_eq!(page_size(1000).ok(), Some(1000));
        assert!(page_size(1001).is_err());
        assert!(page_size(-1).is_err());

        let mut rows = vec![1, 2, 3];
        assert_eq!(next_page(&mut rows, 3, |n| n.to_string()), "");
        assert_eq!(rows, [1, 2, 3]);
        assert_eq!(next_page(&mut rows, 2, |n| n.to_string()), "2");
        assert_eq!(rows, [1, 2]);
    }
}
