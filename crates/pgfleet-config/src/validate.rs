//! Semantic checks that serde cannot express; every problem is collected so a
//! user fixes the whole file in one pass.

use std::collections::HashSet;
use std::time::Duration;

use crate::edge::RateLimitConfig;
use crate::error::Problem;
use crate::model::{
    AuditConfig, AuthConfig, ConnectionConfig, DeclaredJobConfig, FleetConfig, LogConfig, MIN_RESULT_BYTES,
    PoolConfig, SslMode, TelemetryConfig,
};
use crate::path::ConfigPath;

/// `[[migrations]]`: each names a configured database, once, and a directory.
/// The directory's files are checked when a call reads them (they may change
/// while the server runs), so a missing directory is not a problem here.
fn check_migrations(problems: &mut Problems, path: &ConfigPath, config: &FleetConfig) {
    let mut seen = HashSet::new();
    for (index, entry) in config.migrations.iter().enumerate() {
        let entry_path = path.index(index);
        let configured = config
            .clouds
            .iter()
            .any(|cloud| cloud.databases.iter().any(|db| db.name == entry.database));
        if entry.database.is_empty() {
            problems.add(&entry_path.key("database"), "must name a configured database");
        } else if !configured {
            problems.add(
                &entry_path.key("database"),
                format!("{:?} is not a database of any cloud", entry.database),
            );
        }
        if !seen.insert(entry.database.as_str()) {
            problems.add(
                &entry_path.key("database"),
                format!("{:?} has a migrations entry already", entry.database),
            );
        }
        if entry.dir.as_os_str().is_empty() {
            problems.add(&entry_path.key("dir"), "must name a directory");
        }
    }
}

/// Every problem in `config`, in file order; empty when it is valid.
pub fn validate(config: &FleetConfig) -> Vec<Problem> {
    let mut problems = Problems::default();
    let root = ConfigPath::root();

    if config.clouds.is_empty() {
        problems.add(&root.key("clouds"), "at least one cloud is required");
    }
    let mut cloud_names = HashSet::new();
    for (cloud_index, cloud) in config.clouds.iter().enumerate() {
        let cloud_path = root.key("clouds").index(cloud_index);
        check_name(&mut problems, &cloud_path.key("name"), &cloud.name);
        if !cloud_names.insert(cloud.name.as_str()) {
            problems.add(
                &cloud_path.key("name"),
                format!("duplicate cloud name {:?}", cloud.name),
            );
        }
        if cloud.databases.is_empty() {
            problems.add(&cloud_path.key("databases"), "at least one database is required");
        }
        let mut database_names = HashSet::new();
        for (db_index, db) in cloud.databases.iter().enumerate() {
            let db_path = cloud_path.key("databases").index(db_index);
            check_name(&mut problems, &db_path.key("name"), &db.name);
            if !database_names.insert(db.name.as_str()) {
                problems.add(
                    &db_path.key("name"),
                    format!("duplicate database name {:?} in cloud {:?}", db.name, cloud.name),
                );
            }
            check_connection(&mut problems, &db_path, &db.connection());
            check_pool(&mut problems, &db_path.key("pool"), &db.pool);
            if db.schemas.is_empty() {
                problems.add(&db_path.key("schemas"), "at least one schema is required");
            }
            let mut schemas = HashSet::new();
            for (schema_index, schema) in db.schemas.iter().enumerate() {
                let schema_path = db_path.key("schemas").index(schema_index);
                if schema.is_empty() {
                    problems.add(&schema_path, "must not be empty");
                } else if schema.len() > 63 {
                    problems.add(&schema_path, "longer than PostgreSQL's 63-byte identifier limit");
                }
                if !schemas.insert(schema.as_str()) {
                    problems.add(&schema_path, format!("duplicate schema {schema:?}"));
                }
            }
            if let Some(default) = &db.default_schema
                && !db.schemas.contains(default)
            {
                problems.add(
                    &db_path.key("default_schema"),
                    format!("{default:?} is not one of schemas {:?}", db.schemas),
                );
            }
            if db.reader_password.is_some() && db.reader_user.is_none() {
                problems.add(&db_path.key("reader_password"), "set without reader_user");
            }
            for (replica_index, (_, connection)) in db.replica_connections().iter().enumerate() {
                check_connection(
                    &mut problems,
                    &db_path.key("replicas").index(replica_index),
                    connection,
                );
            }
        }
    }

    check_migrations(&mut problems, &root.key("migrations"), config);
    check_auth(&mut problems, &root.key("auth"), &config.auth);
    check_connection(&mut problems, &root.key("history"), &config.history.connection());
    check_pool(
        &mut problems,
        &root.key("history").key("pool"),
        &config.history.pool,
    );

    if let Some(redis) = &config.redis {
        let url = redis.url.expose();
        if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://"))
        {
            // Never echo the URL: it may hold a password.
            problems.add(
                &root.key("redis").key("url"),
                "must start with redis://, rediss:// or redis+unix://",
            );
        }
        if redis.max_connections == 0 {
            problems.add(&root.key("redis").key("max_connections"), "must be at least 1");
        }
    }

    let query = &config.query;
    let query_path = root.key("query");
    if query.default_timeout.is_zero() {
        problems.add(&query_path.key("default_timeout"), "must be greater than zero");
    }
    if query.default_timeout > query.max_timeout {
        problems.add(
            &query_path.key("default_timeout"),
            format!(
                "{} is above max_timeout {}",
                humantime::format_duration(query.default_timeout),
                humantime::format_duration(query.max_timeout)
            ),
        );
    }
    if query.max_query_bytes == 0 {
        problems.add(&query_path.key("max_query_bytes"), "must be at least 1");
    }
    if query.max_rows_per_statement == 0 {
        problems.add(&query_path.key("max_rows_per_statement"), "must be at least 1");
    }
    // Below this not even a row of a few wide columns fits a batch.
    if query.max_response_bytes < MIN_RESULT_BYTES {
        problems.add(
            &query_path.key("max_response_bytes"),
            format!("must be at least {MIN_RESULT_BYTES}"),
        );
    }
    if query.max_batch_bytes < MIN_RESULT_BYTES {
        problems.add(
            &query_path.key("max_batch_bytes"),
            format!("must be at least {MIN_RESULT_BYTES}"),
        );
    }

    check_audit(&mut problems, &root.key("audit"), &config.audit);
    check_insights(&mut problems, &root.key("insights"), &config.insights);
    if config.atomic.recovery_interval < Duration::from_millis(100) {
        problems.add(
            &root.key("atomic").key("recovery_interval"),
            "must be at least 100ms",
        );
    }

    let replication_path = root.key("replication");
    if config.replication.scheduler_tick < Duration::from_millis(10) {
        problems.add(&replication_path.key("scheduler_tick"), "must be at least 10ms");
    }
    if config.replication.max_concurrent_runs == 0 {
        problems.add(
            &replication_path.key("max_concurrent_runs"),
            "must be at least 1 (set scheduler = false to run no scheduled jobs)",
        );
    }
    if config.replication.watch_interval < Duration::from_millis(10) {
        problems.add(&replication_path.key("watch_interval"), "must be at least 10ms");
    }
    check_declared_jobs(&mut problems, &replication_path.key("jobs"), config);

    let backup_path = root.key("backup");
    if config.backup.scheduler_tick < Duration::from_millis(10) {
        problems.add(&backup_path.key("scheduler_tick"), "must be at least 10ms");
    }
    if config.backup.part_bytes < crate::model::MIN_BACKUP_PART_BYTES {
        problems.add(&backup_path.key("part_bytes"), "must be at least 5 MiB (5242880)");
    }
    for (index, recipient) in config.backup.recipients.iter().enumerate() {
        if !recipient.starts_with("age1") {
            problems.add(
                &backup_path.key("recipients").index(index),
                "must be an age X25519 recipient (age1...)",
            );
        }
    }

    let health_path = root.key("health");
    if config.health.interval.is_zero() {
        problems.add(&health_path.key("interval"), "must be greater than zero");
    }
    if config.health.probe_timeout.is_zero() {
        problems.add(&health_path.key("probe_timeout"), "must be greater than zero");
    }
    if config.health.dependency_interval < Duration::from_millis(100) {
        problems.add(&health_path.key("dependency_interval"), "must be at least 100ms");
    }
    if config.health.dependency_timeout.is_zero() {
        problems.add(
            &health_path.key("dependency_timeout"),
            "must be greater than zero",
        );
    }

    if config.retry.max_attempts == 0 {
        problems.add(&root.key("retry").key("max_attempts"), "must be at least 1");
    }
    if config.retry.initial_backoff > config.retry.max_backoff {
        problems.add(&root.key("retry").key("initial_backoff"), "is above max_backoff");
    }

    let server_path = root.key("server");
    if let Some(tls) = &config.server.tls {
        for (key, file) in [
            ("cert_file", Some(&tls.cert_file)),
            ("key_file", Some(&tls.key_file)),
            ("client_ca_file", tls.client_ca_file.as_ref()),
        ] {
            if let Some(file) = file
                && !file.is_file()
            {
                problems.add(
                    &server_path.key("tls").key(key),
                    format!("{} is not a readable file", file.display()),
                );
            }
        }
    }
    // Port 0 on both picks two different free ports.
    if config.server.metrics_addr.is_some()
        && config.server.metrics_addr == Some(config.server.listen_addr)
        && config.server.listen_addr.port() != 0
    {
        problems.add(&server_path.key("metrics_addr"), "must differ from listen_addr");
    }
    if let Some(console) = config.server.console_addr
        && console.port() != 0
    {
        if console == config.server.listen_addr {
            problems.add(&server_path.key("console_addr"), "must differ from listen_addr");
        } else if Some(console) == config.server.metrics_addr {
            problems.add(&server_path.key("console_addr"), "must differ from metrics_addr");
        }
    }
    check_cors(&mut problems, &server_path, &config.server);
    check_edges(&mut problems, config);

    check_log(&mut problems, &root.key("log"), &config.log);
    check_telemetry(&mut problems, &root.key("telemetry"), &config.telemetry);

    problems.0
}

/// What can be told about `[[replication.jobs]]` without a database: names,
/// targets that exist in `[[clouds]]`, something to copy. The tables and
/// the sync key are checked against the catalogs at start.
fn check_declared_jobs(problems: &mut Problems, path: &ConfigPath, config: &FleetConfig) {
    let configured = |text: &str| {
        DeclaredJobConfig::parse_target(text).is_some_and(|(cloud, database)| {
            config
                .clouds
                .iter()
                .any(|c| c.name == cloud && c.databases.iter().any(|d| d.name == database))
        })
    };
    let mut names = HashSet::new();
    for (index, job) in config.replication.jobs.iter().enumerate() {
        let at = path.index(index);
        if job.name.trim().is_empty() {
            problems.add(&at.key("name"), "required");
        } else if !names.insert(job.name.as_str()) {
            problems.add(&at.key("name"), format!("{:?} is declared twice", job.name));
        }
        if !configured(&job.source) {
            problems.add(
                &at.key("source"),
                format!("{:?} is not a cloud/database of [[clouds]]", job.source),
            );
        }
        if job.targets.is_empty() {
            problems.add(&at.key("targets"), "at least one cloud/database");
        }
        for (position, target) in job.targets.iter().enumerate() {
            if !configured(target) {
                problems.add(
                    &at.key("targets").index(position),
                    format!("{target:?} is not a cloud/database of [[clouds]]"),
                );
            } else if *target == job.source {
                problems.add(
                    &at.key("targets").index(position),
                    "the source cannot be a target",
                );
            }
        }
        if job.tables.is_empty() {
            problems.add(&at.key("tables"), "at least one table");
        }
        if job.batch_size == Some(0) {
            problems.add(&at.key("batch_size"), "must be at least 1");
        }
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: &ConfigPath, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.to_string(),
            message: message.into(),
        });
    }
}

fn check_name(problems: &mut Problems, path: &ConfigPath, name: &str) {
    if name.is_empty() {
        problems.add(path, "must not be empty");
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        problems.add(
            path,
            format!("{name:?} may hold only letters, digits, '_' and '-'"),
        );
    }
}

fn check_connection(problems: &mut Problems, path: &ConfigPath, connection: &ConnectionConfig) {
    if connection.host.is_empty() {
        problems.add(&path.key("host"), "must not be empty");
    }
    if connection.port == 0 {
        problems.add(&path.key("port"), "must be 1-65535");
    }
    if connection.user.is_empty() {
        problems.add(&path.key("user"), "must not be empty");
    }
    if connection.database.is_empty() {
        problems.add(&path.key("database"), "must not be empty");
    }
    if matches!(connection.sslmode, SslMode::VerifyCa | SslMode::VerifyFull) {
        match &connection.ssl_root_cert {
            None => problems.add(
                &path.key("ssl_root_cert"),
                "required with sslmode verify-ca / verify-full",
            ),
            Some(file) if !file.is_file() => {
                problems.add(
                    &path.key("ssl_root_cert"),
                    format!("{} is not a readable file", file.display()),
                );
            }
            Some(_) => {}
        }
    }
}

fn check_pool(problems: &mut Problems, path: &ConfigPath, pool: &PoolConfig) {
    if pool.max_connections == 0 {
        problems.add(&path.key("max_connections"), "must be at least 1");
    }
    if pool.min_connections > pool.max_connections {
        problems.add(
            &path.key("min_connections"),
            format!(
                "{} is above max_connections {}",
                pool.min_connections, pool.max_connections
            ),
        );
    }
    if pool.acquire_timeout.is_zero() {
        problems.add(&path.key("acquire_timeout"), "must be greater than zero");
    }
}

fn check_auth(problems: &mut Problems, path: &ConfigPath, auth: &AuthConfig) {
    // bcrypt's own bounds; outside them hashing fails at the first login.
    if !(4..=31).contains(&auth.bcrypt_cost) {
        problems.add(&path.key("bcrypt_cost"), "must be between 4 and 31");
    }
    if auth.min_password_length < 8 {
        problems.add(&path.key("min_password_length"), "must be at least 8");
    }
    if auth.session_ttl < Duration::from_secs(60) {
        problems.add(&path.key("session_ttl"), "must be at least 1m");
    }
    for (key, value) in [
        (
            "login_failures_before_backoff",
            auth.login_failures_before_backoff,
        ),
        ("login_attempts_per_address", auth.login_attempts_per_address),
        (
            "login_username_slowdown_after",
            auth.login_username_slowdown_after,
        ),
    ] {
        if value == 0 {
            problems.add(&path.key(key), "must be at least 1");
        }
    }
    if auth.login_window < Duration::from_secs(1) {
        problems.add(&path.key("login_window"), "must be at least 1s");
    }
    // A day bounds the wait (and keeps the millisecond arithmetic of the
    // session store's counters small).
    let day = Duration::from_secs(24 * 60 * 60);
    if auth.login_backoff_initial < Duration::from_millis(1) || auth.login_backoff_initial > day {
        problems.add(&path.key("login_backoff_initial"), "must be between 1ms and 24h");
    }
    if auth.login_backoff_max < auth.login_backoff_initial || auth.login_backoff_max > day {
        problems.add(
            &path.key("login_backoff_max"),
            "must be at least login_backoff_initial and at most 24h",
        );
    }
    // A longer delay would turn the slow-down into the lockout it replaces.
    if auth.login_username_delay > Duration::from_secs(10) {
        problems.add(&path.key("login_username_delay"), "must be at most 10s");
    }
}

fn check_insights(problems: &mut Problems, path: &ConfigPath, insights: &crate::InsightsConfig) {
    if insights.slow_query_retention < Duration::from_secs(60) {
        problems.add(&path.key("slow_query_retention"), "must be at least 1m");
    }
    if insights.slow_query_max_entries == 0 {
        problems.add(&path.key("slow_query_max_entries"), "must be at least 1");
    }
    if insights.retention_interval < Duration::from_secs(1) {
        problems.add(&path.key("retention_interval"), "must be at least 1s");
    }
}

fn check_audit(problems: &mut Problems, path: &ConfigPath, audit: &AuditConfig) {
    if audit.write_timeout.is_zero() {
        problems.add(&path.key("write_timeout"), "must be greater than zero");
    }
    if audit.retention.is_some_and(|age| age < Duration::from_secs(60)) {
        problems.add(
            &path.key("retention"),
            "must be at least 1m (or unset to keep forever)",
        );
    }
    if audit.retention_interval < Duration::from_secs(1) {
        problems.add(&path.key("retention_interval"), "must be at least 1s");
    }
    if audit.retention_batch == 0 {
        problems.add(&path.key("retention_batch"), "must be at least 1");
    }
    if audit.heartbeat_interval.is_zero() {
        problems.add(&path.key("heartbeat_interval"), "must be greater than zero");
    }
    // Two missed heartbeats must not look like a dead server.
    if audit.writer_lease < audit.heartbeat_interval * 3 {
        problems.add(
            &path.key("writer_lease"),
            format!(
                "{} is under three heartbeat intervals ({})",
                humantime::format_duration(audit.writer_lease),
                humantime::format_duration(audit.heartbeat_interval * 3)
            ),
        );
    }
    check_audit_chain(problems, &path.key("chain"), &audit.chain);
}

/// `audit.chain`: the key's shape only (never its value in a message).
/// Whether a key is required is decided when the server starts, so tools
/// that never write the chain (`check-config`, `migrate`) accept a file
/// without one.
fn check_audit_chain(problems: &mut Problems, path: &ConfigPath, chain: &crate::model::AuditChainConfig) {
    use crate::model::MIN_CHAIN_KEY_BYTES;
    let too_short = format!(
        "must be at least {MIN_CHAIN_KEY_BYTES} bytes (e.g. the output of `openssl rand -base64 48`)"
    );
    if chain.key.is_some() && chain.key_file.is_some() {
        problems.add(&path.key("key_file"), "set together with key: give one of them");
    }
    if let Some(key) = &chain.key
        && key.expose().trim_end().len() < MIN_CHAIN_KEY_BYTES
    {
        problems.add(&path.key("key"), too_short.clone());
    }
    for (index, key) in chain.previous_keys.iter().enumerate() {
        if key.expose().trim_end().len() < MIN_CHAIN_KEY_BYTES {
            problems.add(&path.key("previous_keys").index(index), too_short.clone());
        }
    }
    let files = chain
        .key_file
        .iter()
        .map(|file| (path.key("key_file"), file))
        .chain(
            chain
                .previous_key_files
                .iter()
                .enumerate()
                .map(|(index, file)| (path.key("previous_key_files").index(index), file)),
        );
    for (file_path, file) in files {
        if !file.is_file() {
            problems.add(&file_path, format!("{} is not a readable file", file.display()));
        }
    }
    if !chain.checkpoint_log_interval.is_zero() && chain.checkpoint_log_interval < Duration::from_secs(1) {
        problems.add(
            &path.key("checkpoint_log_interval"),
            "must be at least 1s (or 0s to log no checkpoints)",
        );
    }
}

/// `server.cors`: browsers compare the `Origin` they send byte for byte with
/// the allowed list, so only an origin exactly as a browser serializes it can
/// ever match; anything else is a typo that would silently refuse the page.
fn check_cors(problems: &mut Problems, server_path: &ConfigPath, server: &crate::model::ServerConfig) {
    let cors = &server.cors;
    let origins_path = server_path.key("cors").key("allowed_origins");
    if cors.allowed_origins.is_empty() {
        return;
    }
    if !server.grpc_web {
        // Browsers reach pgfleet only through grpc-web; a gateway in front
        // (deploy/envoy) answers CORS itself.
        problems.add(&origins_path, "set while server.grpc_web = false");
    }
    let any_origin = cors.allowed_origins.iter().any(|origin| origin == "*");
    if any_origin && cors.allowed_origins.len() > 1 {
        problems.add(&origins_path, "\"*\" must be the only entry");
    }
    if any_origin && cors.allow_credentials {
        // The CORS standard forbids it, and it would hand every site on the
        // web the session cookie's authority.
        problems.add(
            &origins_path,
            "\"*\" cannot be combined with allow_credentials = true; list the exact origins",
        );
    }
    let mut seen = HashSet::new();
    for (index, origin) in cors.allowed_origins.iter().enumerate() {
        let path = origins_path.index(index);
        if origin == "*" {
            continue;
        }
        if let Err(message) = exact_origin(origin) {
            problems.add(&path, message);
        }
        if !seen.insert(origin.as_str()) {
            problems.add(&path, format!("duplicate origin {origin:?}"));
        }
    }
    if cors.max_age > Duration::from_secs(24 * 60 * 60) {
        // Firefox caps at 24 hours, Chromium at 2: a longer value only
        // misleads the reader.
        problems.add(&server_path.key("cors").key("max_age"), "must be at most 24h");
    }
}

/// `Ok` when `origin` is what a browser sends in `Origin` for some page:
/// http(s), lower-case host, no default port, no path, no trailing slash.
fn exact_origin(origin: &str) -> Result<(), String> {
    let url = url::Url::parse(origin).map_err(|error| format!("{origin:?} is not an origin: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{origin:?}: the scheme must be http or https"));
    }
    let serialized = url.origin().ascii_serialization();
    if serialized != origin {
        return Err(format!(
            "{origin:?} is not an exact origin (scheme://host[:port], as browsers send it): \
             did you mean {serialized:?}?"
        ));
    }
    Ok(())
}
/// Transport limits, TLS reloading and the query rate limit.
fn check_edges(problems: &mut Problems, config: &FleetConfig) {
    let server = &config.server;
    let path = ConfigPath::root().key("server");
    // Below a few KiB not even a Login fits; a limit under the query text
    // limit would refuse texts `query.max_query_bytes` promises to take.
    if server.max_message_bytes < 4096 {
        problems.add(&path.key("max_message_bytes"), "must be at least 4096");
    } else if server.max_message_bytes < config.query.max_query_bytes {
        problems.add(
            &path.key("max_message_bytes"),
            format!(
                "{} is below query.max_query_bytes {}",
                server.max_message_bytes, config.query.max_query_bytes
            ),
        );
    } else if server.max_message_bytes > u64::from(u32::MAX) {
        problems.add(
            &path.key("max_message_bytes"),
            "must be at most 4294967295 (4 GiB)",
        );
    }
    if server.max_concurrent_streams == 0 {
        problems.add(&path.key("max_concurrent_streams"), "must be at least 1");
    }
    if !server.keepalive_interval.is_zero() && server.keepalive_timeout.is_zero() {
        problems.add(
            &path.key("keepalive_timeout"),
            "must be greater than zero while keepalive_interval is set",
        );
    }
    if let Some(tls) = &server.tls
        && !tls.reload_interval.is_zero()
        && tls.reload_interval < Duration::from_secs(1)
    {
        problems.add(
            &path.key("tls").key("reload_interval"),
            "must be at least 1s (or 0s to read the files only at start)",
        );
    }
    if let Some(limit) = &config.query.rate_limit {
        check_rate_limit(
            problems,
            &ConfigPath::root().key("query").key("rate_limit"),
            limit,
        );
    }
    let limits = &config.rate_limits;
    let limits_path = ConfigPath::root().key("rate_limits");
    for (group, limit) in [
        ("replication", &limits.replication),
        ("export", &limits.export),
        ("introspection", &limits.introspection),
    ] {
        let Some(limit) = limit else { continue };
        let group_path = limits_path.key(group);
        if !limit.any() {
            problems.add(&group_path, "set per_identity, per_address or both");
        }
        if let Some(bucket) = &limit.per_identity {
            check_rate_limit(problems, &group_path.key("per_identity"), bucket);
        }
        if let Some(bucket) = &limit.per_address {
            check_rate_limit(problems, &group_path.key("per_address"), bucket);
        }
    }
}

/// One token bucket (`[query.rate_limit]`, each bucket of `[rate_limits]`).
fn check_rate_limit(problems: &mut Problems, path: &ConfigPath, limit: &RateLimitConfig) {
    if !(limit.per_second.is_finite() && limit.per_second > 0.0 && limit.per_second <= 1_000_000.0) {
        problems.add(
            &path.key("per_second"),
            "must be greater than 0 and at most 1000000",
        );
    }
    if limit.burst == Some(0) {
        problems.add(&path.key("burst"), "must be at least 1");
    }
}

fn check_log(problems: &mut Problems, path: &ConfigPath, log: &LogConfig) {
    // The server's own filter parser: what passes here is what it installs.
    if log.level.trim().is_empty() {
        problems.add(&path.key("level"), "must not be empty (e.g. \"info\")");
    } else if let Err(error) = tracing_subscriber::EnvFilter::builder().parse(&log.level) {
        problems.add(&path.key("level"), format!("not a tracing filter: {error}"));
    }
    if let Some(directory) = &log.file {
        if directory.as_os_str().is_empty() {
            problems.add(&path.key("file"), "must not be empty (unset it to log to stderr)");
        } else if directory.exists() && !directory.is_dir() {
            problems.add(
                &path.key("file"),
                format!(
                    "{} is not a directory (log.file names the directory of the files)",
                    directory.display()
                ),
            );
        }
    }
    if log.max_files == Some(0) {
        problems.add(
            &path.key("max_files"),
            "must be at least 1 (or unset to keep every file)",
        );
    }
}

fn check_telemetry(problems: &mut Problems, path: &ConfigPath, telemetry: &TelemetryConfig) {
    if let Some(endpoint) = &telemetry.otlp_endpoint {
        let host = endpoint
            .strip_prefix("http://")
            .map(|rest| rest.split('/').next().unwrap_or(""));
        match host {
            _ if endpoint.starts_with("https://") => problems.add(
                &path.key("otlp_endpoint"),
                "https is not supported: export to a collector over plain http (a sidecar or node agent)",
            ),
            None => problems.add(
                &path.key("otlp_endpoint"),
                "must be an http:// URL of an OTLP/gRPC collector (e.g. http://127.0.0.1:4317)",
            ),
            Some("") => problems.add(&path.key("otlp_endpoint"), "names no host"),
            Some(host) if host.contains('@') => {
                problems.add(&path.key("otlp_endpoint"), "must not carry credentials")
            }
            Some(_) => {}
        }
    }
    if !(0.0..=1.0).contains(&telemetry.sampling_ratio) {
        problems.add(&path.key("sampling_ratio"), "must be between 0.0 and 1.0");
    }
    if telemetry.service_name.trim().is_empty() {
        problems.add(&path.key("service_name"), "must not be empty");
    }
    if telemetry.export_timeout.is_zero() {
        problems.add(&path.key("export_timeout"), "must be greater than zero");
    }
}
