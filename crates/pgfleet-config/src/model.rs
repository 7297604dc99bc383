//! The typed configuration: what a loaded, substituted file deserializes into.
//!
//! Every struct rejects unknown keys so a typo (`max_conections`) is an error
//! with its path rather than a silently ignored setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lenient::{lenient_f64, lenient_opt_u32, lenient_u16, lenient_u32, lenient_u64};
use crate::secret::Secret;

/// The whole pgfleet configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// The gRPC server itself.
    #[serde(default)]
    pub server: ServerConfig,
    /// The clouds, each holding its copy of the fleet's databases.
    #[serde(default)]
    pub clouds: Vec<CloudConfig>,
    /// pgfleet's own store: users, audit trail, replication jobs.
    pub history: HistoryStoreConfig,
    /// Session store; without it sessions live in the server process.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Limits applied to every query request.
    #[serde(default)]
    pub query: QueryLimits,
    /// Background health probing of every target.
    #[serde(default)]
    pub health: HealthConfig,
    /// Rate limits on the expensive RPCs (replication runs, exports, live
    /// catalog introspection), shared by every replica through Redis.
    #[serde(default)]
    pub rate_limits: crate::edge::ExpensiveCallLimits,
    /// Retrying connection acquisition.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Passwords, sessions, login throttling.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The audit trail in the history store.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Replication runs and their scheduler.
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// Log lines: format, level filter, optional rotating files.
    #[serde(default)]
    pub log: LogConfig,
    /// Distributed tracing: OpenTelemetry spans exported over OTLP/gRPC.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Where each fleet database's schema migrations are (`[[migrations]]`);
    /// a database without an entry uses the set uploaded through the API.
    #[serde(default)]
    pub migrations: Vec<MigrationsConfig>,
    /// The slow-query log and alert thresholds (`[insights]`).
    #[serde(default)]
    pub insights: crate::insights::InsightsConfig,
    /// Backups: where they are stored, how they are encrypted, the scheduler.
    #[serde(default)]
    pub backup: BackupConfig,
    /// Atomic (two-phase commit) writes: their recovery loop (`[atomic]`).
    #[serde(default)]
    pub atomic: AtomicConfig,
}

/// `[atomic]`: recovery of atomic executions' prepared transactions
/// (docs/ATOMIC.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AtomicConfig {
    /// Time between two recovery passes; one also runs at start. Each pass
    /// lists every target's prepared transactions, so not too often.
    #[serde(with = "humantime_serde")]
    pub recovery_interval: Duration,
}

impl Default for AtomicConfig {
    fn default() -> Self {
        Self {
            recovery_interval: Duration::from_secs(30),
        }
    }
}

/// The migration files of one fleet database (the `name` its clouds share).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationsConfig {
    /// A configured database name (`clouds[].databases[].name`).
    pub database: String,
    /// Directory of `NNNN_name.sql` (and `NNNN_name.down.sql`) files, read
    /// on every call (so added files count without a restart); a relative
    /// path is relative to the working directory, like every path here.
    pub dir: PathBuf,
}

impl FleetConfig {
    /// The migrations directory of `database`, when one is configured.
    pub fn migrations_dir(&self, database: &str) -> Option<&std::path::Path> {
        self.migrations
            .iter()
            .find(|m| m.database == database)
            .map(|m| m.dir.as_path())
    }
}

/// Listen addresses, TLS and shutdown behaviour of the gRPC server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the gRPC (and grpc-web) listener binds.
    pub listen_addr: SocketAddr,
    /// Address of the Prometheus metrics listener; none disables it.
    pub metrics_addr: Option<SocketAddr>,
    /// Address of the web console (the page at `/`, and grpc-web for its
    /// calls on the same origin); none (the default) serves no console.
    pub console_addr: Option<SocketAddr>,
    /// TLS for the gRPC port (and the console's); none serves plaintext.
    pub tls: Option<TlsConfig>,
    /// How long in-flight calls may run after SIGTERM before the server exits.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Apply the history-store migrations at start.
    pub run_migrations: bool,
    /// Answer grpc-web (HTTP/1.1 and HTTP/2) on the gRPC port, so browser
    /// pages call pgfleet without a gateway.
    pub grpc_web: bool,
    /// Which browser origins may call the gRPC port (CORS, for grpc-web).
    pub cors: CorsConfig,

    // Edge limits: applied by the server's `edge` module.
    /// Largest gRPC message accepted or sent, in bytes, on every service.
    #[serde(deserialize_with = "lenient_u64")]
    pub max_message_bytes: u64,
    /// HTTP/2 streams (concurrent calls) one connection may open.
    #[serde(deserialize_with = "lenient_u32")]
    pub max_concurrent_streams: u32,
    /// HTTP/2 PING sent to an idle connection this often; `0s` sends none.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// A connection whose PING is not answered within this is closed.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// TCP keepalive idle time on accepted sockets; `0s` leaves the OS default.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// Peers (CIDRs or addresses) whose `X-Forwarded-For` is believed: for
    /// them the client address is the right-most untrusted address there.
    #[serde(deserialize_with = "crate::edge::trusted_proxies")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_addr: None,
            console_addr: None,
            tls: None,
            shutdown_grace: Duration::from_secs(10),
            run_migrations: true,
            grpc_web: true,
            cors: CorsConfig::default(),
            max_message_bytes: 16 * 1024 * 1024,
            max_concurrent_streams: 200,
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            tcp_keepalive: Duration::from_secs(60),
            trusted_proxies: Vec::new(),
        }
    }
}

/// CORS for browser pages served from other origins than pgfleet's
/// (`server.cors`). With no origins, no CORS headers are sent and browsers
/// refuse cross-origin calls; same-origin pages and non-browser clients are
/// unaffected.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Exact origins (`https://console.example.com`, scheme, host and port
    /// only), or `["*"]` for any origin (only without `allow_credentials`).
    pub allowed_origins: Vec<String>,
    /// Let pages send credentialed requests, which carry the HttpOnly
    /// `pgfleet_session` cookie; bearer tokens and API keys do not need it.
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allow_credentials: false,
            // Chromium caps the cache at 2 hours; longer would not help.
            max_age: Duration::from_secs(2 * 60 * 60),
        }
    }
}

/// Certificate files for the gRPC listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the three files are read again; changed contents apply to
    /// new connections without a restart. `0s` reads them only at start.
    #[serde(default = "default_tls_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_tls_reload_interval() -> Duration {
    Duration::from_secs(60)
}

/// One cloud (AWS, GCP, …) and the databases it hosts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// Short name used in requests and results (`aws`).
    pub name: String,
    /// Human-readable name.
    #[serde(default)]
    pub label: Option<String>,
    /// The databases in this cloud; the same `name` in two clouds means two
    /// copies of one logical database.
    #[serde(default)]
    pub databases: Vec<DatabaseConfig>,
}

/// One database in one cloud: a fleet target.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Logical name shared by every cloud's copy (`db1`).
    pub name: String,
    /// Human-readable name.
    #[serde(default)]
    pub label: Option<String>,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    #[serde(default = "default_pg_port", deserialize_with = "lenient_u16")]
    pub port: u16,
    /// Login role.
    pub user: String,
    /// Password of `user`; may be empty with trust or certificate auth.
    #[serde(default)]
    pub password: Secret,
    /// Database name on the server.
    pub database: String,
    /// TLS to PostgreSQL.
    #[serde(default)]
    pub sslmode: SslMode,
    /// CA bundle for `verify-ca` / `verify-full`.
    #[serde(default)]
    pub ssl_root_cert: Option<PathBuf>,
    /// Schemas clients may select; the first is the default unless
    /// `default_schema` says otherwise.
    #[serde(default = "default_schemas")]
    pub schemas: Vec<String>,
    /// Schema used when a request names none.
    #[serde(default)]
    pub default_schema: Option<String>,
    /// The unprivileged login READER executions run as; without it (or
    /// with a privileged one) they are refused.
    #[serde(default)]
    pub reader_user: Option<String>,
    /// Password of `reader_user`.
    #[serde(default)]
    pub reader_password: Option<Secret>,
    /// Where reads go when replicas are configured.
    #[serde(default)]
    pub read_preference: ReadPreference,
    /// Where this copy lives (`eu-west-1`), shown in configuration and
    /// health.
    #[serde(default)]
    pub region: Option<String>,
    /// Nothing pgfleet does writes to this copy (a copy kept for reads, a
    /// frozen archive): executions that would write to it, replication
    /// onto it and migrations of it are refused before anything runs;
    /// reads go on.
    #[serde(default)]
    pub read_only: bool,
    /// A replica whose replay is further behind than this (measured by the
    /// health probes) takes no reads until it catches up; unset: any lag.
    #[serde(default, with = "humantime_serde")]
    pub max_replica_lag: Option<Duration>,
    /// Pool sizing and timeouts.
    #[serde(default)]
    pub pool: PoolConfig,
    /// Read replicas of this database.
    #[serde(default)]
    pub replicas: Vec<ReplicaConfig>,
}

impl DatabaseConfig {
    /// How to reach the primary of this database.
    pub fn connection(&self) -> ConnectionConfig {
        ConnectionConfig {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            database: self.database.clone(),
            sslmode: self.sslmode,
            ssl_root_cert: self.ssl_root_cert.clone(),
        }
    }

    /// How to reach each replica, unset fields taken from the primary.
    pub fn replica_connections(&self) -> Vec<(String, ConnectionConfig)> {
        self.replicas
            .iter()
            .enumerate()
            .map(|(index, replica)| {
                let name = replica
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("replica-{}", index + 1));
                let connection = ConnectionConfig {
                    host: replica.host.clone(),
                    port: replica.port.unwrap_or(self.port),
                    user: replica.user.clone().unwrap_or_else(|| self.user.clone()),
                    password: replica.password.clone().unwrap_or_else(|| self.password.clone()),
                    database: replica.database.clone().unwrap_or_else(|| self.database.clone()),
                    sslmode: self.sslmode,
                    ssl_root_cert: self.ssl_root_cert.clone(),
                };
                (name, connection)
            })
            .collect()
    }

    /// The schema used when a request names none.
    pub fn effective_default_schema(&self) -> Option<&str> {
        self.default_schema
            .as_deref()
            .or_else(|| self.schemas.first().map(String::as_str))
    }
}

fn default_schemas() -> Vec<String> {
    vec!["public".to_owned()]
}

/// How to reach one PostgreSQL server and database (derived from a
/// database, replica or history-store section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Login role.
    pub user: String,
    /// Password of `user`; may be empty with trust or certificate auth.
    pub password: Secret,
    /// Database name on the server.
    pub database: String,
    /// TLS to PostgreSQL.
    pub sslmode: SslMode,
    /// CA bundle for `verify-ca` / `verify-full`.
    pub ssl_root_cert: Option<PathBuf>,
}

fn default_pg_port() -> u16 {
    5432
}

/// A read replica; unset fields inherit from the primary.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// Name shown in health reports (`replica-1` by default).
    #[serde(default)]
    pub name: Option<String>,
    /// Host name or address.
    pub host: String,
    /// TCP port; the primary's when unset.
    #[serde(default, deserialize_with = "crate::lenient::lenient_opt_u16")]
    pub port: Option<u16>,
    /// Login role; the primary's when unset.
    #[serde(default)]
    pub user: Option<String>,
    /// Password; the primary's when unset.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Database name; the primary's when unset.
    #[serde(default)]
    pub database: Option<String>,
}

/// PostgreSQL `sslmode`, as libpq spells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// libpq's spelling, as in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where a read may be routed when a database has replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadPreference {
    /// Always the primary.
    #[default]
    Primary,
    /// A healthy replica; the primary only when none is healthy.
    Replica,
    /// The primary; a healthy replica when the primary is unhealthy.
    PrimaryThenReplica,
}

/// Pool sizing and timeouts for one target.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Connections kept open even when idle.
    #[serde(deserialize_with = "lenient_u32")]
    pub min_connections: u32,
    /// Upper bound of open connections.
    #[serde(deserialize_with = "lenient_u32")]
    pub max_connections: u32,
    /// Longest wait for a free connection (includes connecting).
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Idle connections above `min_connections` are closed after this.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Connections are replaced after this age.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Option<Duration>,
    /// A pooled connection idle for longer than this is checked with one
    /// round trip before it is handed out (PgBouncer's
    /// `server_check_delay`); one reused sooner is not, so a busy pool pays
    /// no check per call. A connection that turns out broken when a query
    /// begins on it is replaced there and the query goes on (nothing of it
    /// had run). `0s` checks every checkout.
    #[serde(with = "humantime_serde")]
    pub check_after_idle: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            min_connections: 0,
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
            max_lifetime: Some(Duration::from_secs(1800)),
            check_after_idle: Duration::from_secs(1),
        }
    }
}

/// pgfleet's own database (users, audit trail, replication jobs).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryStoreConfig {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    #[serde(default = "default_pg_port", deserialize_with = "lenient_u16")]
    pub port: u16,
    /// Login role.
    pub user: String,
    /// Password of `user`; may be empty with trust or certificate auth.
    #[serde(default)]
    pub password: Secret,
    /// Database name on the server.
    pub database: String,
    /// TLS to PostgreSQL.
    #[serde(default)]
    pub sslmode: SslMode,
    /// CA bundle for `verify-ca` / `verify-full`.
    #[serde(default)]
    pub ssl_root_cert: Option<PathBuf>,
    /// Pool sizing and timeouts.
    #[serde(default)]
    pub pool: PoolConfig,
}

impl HistoryStoreConfig {
    /// How to reach the history store.
    pub fn connection(&self) -> ConnectionConfig {
        ConnectionConfig {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            database: self.database.clone(),
            sslmode: self.sslmode,
            ssl_root_cert: self.ssl_root_cert.clone(),
        }
    }
}

/// The Redis session store.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`; treated as a secret because it
    /// may carry a password.
    pub url: Secret,
    /// Prefix of every key pgfleet writes, so one Redis can serve several
    /// fleets (or test runs) without collisions.
    #[serde(default = "default_redis_key_prefix")]
    pub key_prefix: String,
    /// Upper bound of pooled connections.
    #[serde(default = "default_redis_pool", deserialize_with = "lenient_u32")]
    pub max_connections: u32,
    /// Longest wait for a connection before a call fails UNAVAILABLE.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

fn default_redis_key_prefix() -> String {
    "pgfleet:".to_owned()
}

fn default_redis_pool() -> u32 {
    16
}

fn default_redis_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Limits on query requests.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryLimits {
    /// Timeout of a request that names none.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Largest timeout a request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Largest accepted query text, in bytes.
    #[serde(deserialize_with = "lenient_u64")]
    pub max_query_bytes: u64,
    /// Rows per statement returned by unary `Execute`; the rest is reported
    /// as truncated (`ExecuteStream` has no such cap).
    #[serde(deserialize_with = "lenient_u64")]
    pub max_rows_per_statement: u64,
    /// Bytes of result one unary `Execute` call may hold and return, summed
    /// over all its targets; past it each target still reading stops with
    /// RESOURCE_EXHAUSTED and rolls back. Capped at `server.max_message_bytes`
    /// (less a reserve for the response's own fields), so a response always
    /// encodes.
    #[serde(deserialize_with = "lenient_u64")]
    pub max_response_bytes: u64,
    /// Bytes of rows in one batch: one `RowBatch` message of `ExecuteStream`,
    /// and what a target reads ahead of its consumer. A single row larger
    /// than this fails its statement with RESOURCE_EXHAUSTED. Capped like
    /// `max_response_bytes`.
    #[serde(deserialize_with = "lenient_u64")]
    pub max_batch_bytes: u64,
    /// Per-identity limit on `Execute` / `ExecuteStream`; none: unlimited.
    #[serde(default)]
    pub rate_limit: Option<crate::edge::RateLimitConfig>,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            max_query_bytes: 1024 * 1024,
            max_rows_per_statement: 10_000,
            max_response_bytes: 64 * 1024 * 1024,
            max_batch_bytes: 4 * 1024 * 1024,
            rate_limit: None,
        }
    }
}

/// Smallest accepted `query.max_response_bytes` / `query.max_batch_bytes`.
pub const MIN_RESULT_BYTES: u64 = 4096;

/// Bytes of a response kept for what is not rows (target names, errors,
/// durations, headers) when a result budget is set against
/// `server.max_message_bytes`.
pub const RESPONSE_RESERVE_BYTES: u64 = 256 * 1024;

impl FleetConfig {
    /// The bytes of rows one unary `Execute` response may carry:
    /// `query.max_response_bytes`, capped so the whole response stays under
    /// `server.max_message_bytes` (else encoding it would fail the call
    /// after the memory was spent).
    pub fn response_budget_bytes(&self) -> u64 {
        self.query.max_response_bytes.min(self.rows_per_message())
    }

    /// The bytes of rows in one `RowBatch`: `query.max_batch_bytes`, capped
    /// the same way.
    pub fn batch_budget_bytes(&self) -> u64 {
        self.query.max_batch_bytes.min(self.rows_per_message())
    }

    /// What rows may fill of one message: `server.max_message_bytes` less a
    /// reserve for the other fields (a quarter of small limits).
    fn rows_per_message(&self) -> u64 {
        let message = self.server.max_message_bytes;
        message - RESPONSE_RESERVE_BYTES.min(message / 4)
    }
}

/// The write-ahead audit trail.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Longest wait to write an execution's record before it runs; past it
    /// the execution is refused with UNAVAILABLE and no target sees it.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Record plain reads too. Writes, DDL and replication runs are always
    /// recorded.
    pub reads: bool,
    /// Delete records older than this (in bounded batches, keeping an anchor
    /// so the chain stays verifiable); none keeps them forever.
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// Time between two retention passes.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// Records deleted per retention transaction.
    #[serde(deserialize_with = "lenient_u32")]
    pub retention_batch: u32,
    /// How often a server renews its writer lease.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A server whose lease is older than this is presumed dead: its
    /// records still RUNNING are closed as INTERRUPTED by any other server.
    #[serde(with = "humantime_serde")]
    pub writer_lease: Duration,
    /// The key the hash chain is linked with, kept outside the history
    /// store (`[audit.chain]`).
    pub chain: AuditChainConfig,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            write_timeout: Duration::from_secs(5),
            reads: false,
            retention: None,
            retention_interval: Duration::from_secs(3600),
            retention_batch: 1000,
            heartbeat_interval: Duration::from_secs(10),
            writer_lease: Duration::from_secs(60),
            chain: AuditChainConfig::default(),
        }
    }
}

/// Shortest accepted audit chain key, in bytes: 256 bits, the HMAC-SHA-256
/// block of security it is meant to give.
pub const MIN_CHAIN_KEY_BYTES: usize = 32;

/// The audit chain key (`[audit.chain]`): links are HMAC-SHA-256 under it
/// and checkpoints are signed with an Ed25519 key derived from it, so
/// someone who can write the history store but does not hold the key cannot
/// rewrite the chain or forge a checkpoint. The server refuses to start
/// without a key unless `allow_unkeyed` says otherwise.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditChainConfig {
    /// The key itself (at least 32 bytes, e.g. `${PGFLEET_AUDIT_CHAIN_KEY}`
    /// from a secret manager); or `key_file`.
    pub key: Option<Secret>,
    /// A file holding the key (its bytes, trailing whitespace removed);
    /// read once at start.
    pub key_file: Option<PathBuf>,
    /// Keys used before a rotation: links and checkpoints made with them
    /// still verify. Keep one until retention has deleted its links.
    pub previous_keys: Vec<Secret>,
    /// Files of previous keys, as `previous_keys`.
    pub previous_key_files: Vec<PathBuf>,
    /// Serve without a key: links are then plain SHA-256, which anyone who
    /// can write the history store can recompute. Off by default.
    pub allow_unkeyed: bool,
    /// How often each server writes a signed checkpoint of the chain's head
    /// to its log (for a SIEM to keep); `0s` writes none.
    #[serde(with = "humantime_serde")]
    pub checkpoint_log_interval: Duration,
}

impl Default for AuditChainConfig {
    fn default() -> Self {
        Self {
            key: None,
            key_file: None,
            previous_keys: Vec::new(),
            previous_key_files: Vec::new(),
            allow_unkeyed: false,
            checkpoint_log_interval: Duration::from_secs(5 * 60),
        }
    }
}

/// Replication runs and the scheduler of stored jobs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Run enabled jobs on their interval. Any number of replicas may run
    /// it: each job runs on one replica at a time (an advisory lock in the
    /// history store).
    pub scheduler: bool,
    /// How often the scheduler looks for due jobs.
    #[serde(with = "humantime_serde")]
    pub scheduler_tick: Duration,
    /// Most scheduled runs this replica runs at once; on-demand runs
    /// (RunJob) are not counted.
    #[serde(deserialize_with = "lenient_u32")]
    pub max_concurrent_runs: u32,
    /// How often a running job checks that it still holds its lock and is
    /// still enabled and not deleted; it stops at the next batch boundary
    /// otherwise.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
    /// Jobs created, or updated to match, at every start (`[[replication.jobs]]`).
    pub jobs: Vec<DeclaredJobConfig>,
}

/// A replication job declared in the file: at start it is created, or the
/// stored job of that name is updated to match (the file wins over changes
/// made through the API since). Removing it from the file does not delete
/// the stored job.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredJobConfig {
    /// Unique job name; the key that ties the file's job to the stored one.
    pub name: String,
    /// `cloud/database` rows are read from.
    pub source: String,
    /// `cloud/database` copies written to.
    pub targets: Vec<String>,
    /// Schema-qualified tables (`public.orders`), as in CreateJob.
    pub tables: Vec<String>,
    /// Column rows are compared by (incremental mode).
    #[serde(default)]
    pub sync_key: Option<String>,
    /// How often the scheduler runs it; unset: on demand only.
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// `incremental` (default when `sync_key` is set) or `full_refresh`.
    #[serde(default)]
    pub mode: Option<DeclaredJobMode>,
    /// Rows per batch; the server's default when unset.
    #[serde(default, deserialize_with = "crate::lenient::lenient_opt_u32")]
    pub batch_size: Option<u32>,
    /// Window re-read behind each watermark for rows committed late.
    #[serde(default, with = "humantime_serde")]
    pub overlap: Option<Duration>,
    /// Scheduled when true (the default).
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl DeclaredJobConfig {
    /// `cloud/database` split in two; `None` unless both are non-empty.
    pub fn parse_target(text: &str) -> Option<(&str, &str)> {
        text.split_once('/')
            .filter(|(cloud, database)| !cloud.is_empty() && !database.is_empty() && !database.contains('/'))
    }
}

fn default_true() -> bool {
    true
}

/// How a declared job copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeclaredJobMode {
    Incremental,
    FullRefresh,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            scheduler: true,
            scheduler_tick: Duration::from_secs(5),
            max_concurrent_runs: 4,
            watch_interval: Duration::from_secs(1),
            jobs: Vec::new(),
        }
    }
}

/// Background health probing.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Time between two probes of one target.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A probe slower than this fails.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// A successful probe slower than this marks the target degraded.
    #[serde(with = "humantime_serde")]
    pub degraded_latency: Duration,
    /// Time between two checks of pgfleet's own dependencies (the history
    /// store, and Redis when configured), which set the per-service
    /// `grpc.health.v1` statuses and `/readyz`.
    #[serde(with = "humantime_serde")]
    pub dependency_interval: Duration,
    /// A dependency check (`SELECT 1`, `PING`) slower than this counts as
    /// the dependency being down.
    #[serde(with = "humantime_serde")]
    pub dependency_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(5),
            degraded_latency: Duration::from_millis(500),
            dependency_interval: Duration::from_secs(2),
            dependency_timeout: Duration::from_secs(1),
        }
    }
}

/// Retrying transient failures while acquiring a connection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    #[serde(deserialize_with = "lenient_u32")]
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time, with jitter.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Cap on one backoff.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// No new attempt starts after this much time in all.
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_elapsed: Duration::from_secs(10),
        }
    }
}

/// Passwords, sessions and login throttling.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// bcrypt work factor for new password hashes (4..=31). Each step doubles
    /// the cost of a login and of an offline guess.
    #[serde(deserialize_with = "lenient_u32")]
    pub bcrypt_cost: u32,
    /// Shortest accepted password, in characters.
    #[serde(deserialize_with = "lenient_u32")]
    pub min_password_length: u32,
    /// Lifetime of a session token.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Renew a session's lifetime on every call that uses it.
    pub sliding_sessions: bool,
    /// Mark the session cookie `Secure` (sent over HTTPS only). Turn off only
    /// for a local gateway over plain HTTP.
    pub cookie_secure: bool,
    /// Failed logins one client address may make for one username before
    /// that (username, address) must wait `login_backoff_initial`; each
    /// further failure doubles the wait, up to `login_backoff_max`. Other
    /// addresses are not affected, so guessing cannot lock the owner out.
    /// (`login_attempts_per_username` is the older name.)
    #[serde(alias = "login_attempts_per_username", deserialize_with = "lenient_u32")]
    pub login_failures_before_backoff: u32,
    /// The first wait once `login_failures_before_backoff` is used up.
    #[serde(with = "humantime_serde")]
    pub login_backoff_initial: Duration,
    /// The longest wait between two attempts of one (username, address).
    #[serde(with = "humantime_serde")]
    pub login_backoff_max: Duration,
    /// Failed logins allowed per client address (any username; IPv6 counted
    /// per /64) within `login_window`; past it the address is refused until
    /// the window ends.
    #[serde(deserialize_with = "lenient_u32")]
    pub login_attempts_per_address: u32,
    /// The window of the per-address and per-username counts; a (username,
    /// address) forgets its failures after this long without one.
    #[serde(with = "humantime_serde")]
    pub login_window: Duration,
    /// Failed logins for one username from all addresses within
    /// `login_window` past which pgfleet reports password guessing
    /// (`pgfleet_login_guessing_detected_total`, a warning) and slows every
    /// login of that username down by `login_username_delay`. Never a
    /// refusal: the owner still logs in.
    #[serde(deserialize_with = "lenient_u32")]
    pub login_username_slowdown_after: u32,
    /// How long a login of a username under guessing waits before its
    /// password is checked (`0s`: report only).
    #[serde(with = "humantime_serde")]
    pub login_username_delay: Duration,
    /// The longest each replica serves a user's role and standing from its
    /// own memory instead of reading the history store. A change made
    /// through pgfleet applies on the next call everywhere regardless (the
    /// session store's users version says when); this bounds only a change
    /// made outside pgfleet (an `UPDATE` of `pgfleet.users` by hand). `0s`
    /// reads the store on every call.
    #[serde(with = "humantime_serde")]
    pub user_cache_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            bcrypt_cost: 12,
            min_password_length: 12,
            session_ttl: Duration::from_secs(7 * 24 * 60 * 60),
            sliding_sessions: false,
            cookie_secure: true,
            login_failures_before_backoff: 5,
            login_backoff_initial: Duration::from_secs(1),
            login_backoff_max: Duration::from_secs(15 * 60),
            login_attempts_per_address: 50,
            login_window: Duration::from_secs(5 * 60),
            login_username_slowdown_after: 100,
            login_username_delay: Duration::from_secs(1),
            user_cache_ttl: Duration::from_secs(10),
        }
    }
}

// ---- observability: [log] and [telemetry] ----

/// Log lines: where they go, in which format, how much.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`. `--log-format` (or `PGFLEET_LOG_FORMAT`) wins, so
    /// one command line can override a shared file.
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `warn,pgfleet_engine=debug`).
    /// `PGFLEET_LOG` (then `RUST_LOG`) wins when set.
    pub level: String,
    /// Directory of rotating log files (`pgfleet.<date>.log`); unset logs
    /// to stderr. Lines go to the files instead of stderr.
    pub file: Option<PathBuf>,
    /// When a new file is started.
    pub rotation: LogRotation,
    /// Files kept in `file`, the oldest deleted first; unset keeps them all.
    #[serde(deserialize_with = "lenient_opt_u32")]
    pub max_files: Option<u32>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info,sqlx=warn".to_owned(),
            file: None,
            rotation: LogRotation::Daily,
            max_files: None,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Readable lines for a terminal.
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// When a log file is closed and the next one started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogRotation {
    #[default]
    Daily,
    Hourly,
    /// One file, never rotated (rotate it with logrotate's copytruncate).
    Never,
}

/// OpenTelemetry trace export. Off unless `otlp_endpoint` is set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector endpoint (`http://otel-collector:4317`); unset
    /// exports nothing. Plain `http://` only: run the collector as a
    /// sidecar or node agent and let it speak TLS onwards.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled, 0.0 to 1.0. A caller's `traceparent`
    /// decides for its own trace (sampled or not), so one trace is never
    /// cut in half.
    #[serde(deserialize_with = "lenient_f64")]
    pub sampling_ratio: f64,
    /// `service.name` of every exported span.
    pub service_name: String,
    /// Longest wait for one batch of spans to reach the collector.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sampling_ratio: 1.0,
            service_name: "pgfleet".to_owned(),
            export_timeout: Duration::from_secs(10),
        }
    }
}

/// Backups (`[backup]`): storage, encryption and the scheduler of backup
/// policies (the policies themselves are stored in the history store).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Local directory backups go to when `storage_url` is unset (created if
    /// missing; relative to the working directory).
    pub dir: PathBuf,
    /// Object store instead of `dir`: `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix` (or `file:///absolute/dir`). Credentials come from
    /// the provider's usual environment variables or `storage_options`.
    pub storage_url: Option<String>,
    /// `object_store` options of the provider (`endpoint`, `region`,
    /// `allow_http`, `access_key_id`, `secret_access_key`...); values are
    /// secrets, never printed.
    pub storage_options: std::collections::BTreeMap<String, Secret>,
    /// age X25519 recipients (`age1...`) every backup is encrypted to; empty:
    /// backups are stored compressed but not encrypted.
    pub recipients: Vec<String>,
    /// File of age identities (`AGE-SECRET-KEY-1...`) to decrypt with when
    /// verifying and restoring; read on each use, never stored by pgfleet.
    pub identity_file: Option<PathBuf>,
    /// Directory of `pg_dump`, `pg_restore` and `psql`; unset: `PATH`.
    pub pg_bin_dir: Option<PathBuf>,
    /// Run enabled policies on their cron schedule (one replica at a time
    /// per policy, through an advisory lock in the history store).
    pub scheduler: bool,
    /// How often the scheduler looks for due policies.
    #[serde(with = "humantime_serde")]
    pub scheduler_tick: Duration,
    /// Bytes per multipart upload part (at least 5 MiB, S3's minimum).
    #[serde(deserialize_with = "lenient_u64")]
    pub part_bytes: u64,
}

/// S3's smallest multipart part (but the last).
pub const MIN_BACKUP_PART_BYTES: u64 = 5 * 1024 * 1024;

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("backups"),
            storage_url: None,
            storage_options: std::collections::BTreeMap::new(),
            recipients: Vec::new(),
            identity_file: None,
            pg_bin_dir: None,
            scheduler: true,
            scheduler_tick: Duration::from_secs(15),
            part_bytes: 8 * 1024 * 1024,
        }
    }
}
