//! End-to-end loading of real files in every supported shape.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use pgfleet_config::{ConfigError, FileFormat, Inputs, ReadPreference, SslMode, load_str, render_redacted};

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load(
    text: &str,
    format: FileFormat,
    variables: &HashMap<String, String>,
) -> Result<pgfleet_config::LoadedConfig, ConfigError> {
    load_str(
        text,
        format,
        Path::new("test-config"),
        &Inputs {
            variables,
            overrides: Vec::new(),
        },
    )
}

const TOML: &str = r#"
[server]
listen_addr = "0.0.0.0:50051"
metrics_addr = "127.0.0.1:9464"
shutdown_grace = "5s"

[history]
host = "${HISTORY_HOST:-127.0.0.1}"
user = "postgres"
password = "${HISTORY_PASSWORD}"
database = "pgfleet"

[redis]
url = "redis://127.0.0.1:6379"

[query]
default_timeout = "20s"
max_timeout = "2m"
max_rows_per_statement = 500

[[clouds]]
name = "aws"
label = "Amazon"

[[clouds.databases]]
name = "db1"
host = "aws.internal"
port = "${AWS_PORT}"
user = "app"
password = "${AWS_PASSWORD}"
database = "myapp"
schemas = ["public", "app"]
default_schema = "app"
read_preference = "primary_then_replica"
pool = { max_connections = 4, acquire_timeout = "3s" }
replicas = [{ host = "aws-replica.internal" }]

[[clouds]]
name = "gcp"

[[clouds.databases]]
name = "db1"
host = "gcp.internal"
user = "app"
database = "myapp"
sslmode = "require"
"#;

#[test]
fn toml_with_substitution_loads_every_section() {
    let loaded = load(
        TOML,
        FileFormat::Toml,
        &vars(&[
            ("HISTORY_PASSWORD", "s3cret-history"),
            ("AWS_PORT", "6432"),
            ("AWS_PASSWORD", "s3cret-aws"),
        ]),
    )
    .unwrap();
    let config = loaded.config;
    assert!(!loaded.legacy);
    assert_eq!(config.server.listen_addr.to_string(), "0.0.0.0:50051");
    assert_eq!(config.server.shutdown_grace, Duration::from_secs(5));
    assert_eq!(config.history.host, "127.0.0.1");
    assert_eq!(config.history.password.expose(), "s3cret-history");
    assert_eq!(config.query.max_timeout, Duration::from_secs(120));
    assert_eq!(config.query.max_rows_per_statement, 500);
    assert_eq!(config.clouds.len(), 2);
    let aws = &config.clouds[0].databases[0];
    assert_eq!(aws.port, 6432);
    assert_eq!(aws.effective_default_schema(), Some("app"));
    assert_eq!(aws.read_preference, ReadPreference::PrimaryThenReplica);
    assert_eq!(aws.pool.max_connections, 4);
    assert_eq!(aws.pool.acquire_timeout, Duration::from_secs(3));
    let replicas = aws.replica_connections();
    assert_eq!(replicas[0].0, "replica-1");
    assert_eq!(replicas[0].1.port, 6432, "replica inherits the primary's port");
    assert_eq!(replicas[0].1.password.expose(), "s3cret-aws");
    let gcp = &config.clouds[1].databases[0];
    assert_eq!(gcp.port, 5432);
    assert_eq!(gcp.sslmode, SslMode::Require);
    assert_eq!(gcp.schemas, vec!["public".to_owned()]);

    let rendered = render_redacted(&config);
    assert!(!rendered.contains("s3cret"), "{rendered}");
    assert!(rendered.contains("<redacted>"), "{rendered}");
}

#[test]
fn yaml_and_json_read_the_same_model() {
    let yaml = r#"
history: {host: h, user: u, database: d}
clouds:
  - name: aws
    databases:
      - {name: db1, host: a, port: "5433", user: u, database: d}
"#;
    let json = r#"{"history": {"host": "h", "user": "u", "database": "d"},
        "clouds": [{"name": "aws", "databases": [{"name": "db1", "host": "a", "port": 5433, "user": "u", "database": "d"}]}]}"#;
    for (format, text) in [(FileFormat::Yaml, yaml), (FileFormat::Json, json)] {
        let config = load(text, format, &vars(&[]))
            .unwrap_or_else(|e| panic!("{format:?}: {e}"))
            .config;
        assert_eq!(config.clouds[0].databases[0].port, 5433, "{format:?}");
    }
}

/// The example from the Node.js Dual Database Manager README, unchanged.
const LEGACY: &str = r#"{
  "primary": {
    "cloudName": "aws",
    "db_configs": [
      {
        "name": "db1",
        "label": "Production Database",
        "host": "${AWS_DB_HOST}",
        "port": 5432,
        "user": "${AWS_DB_USER}",
        "password": "${AWS_DB_PASSWORD}",
        "database": "myapp",
        "schemas": ["public", "app_schema"],
        "defaultSchema": "public"
      }
    ]
  },
  "secondary": [
    {
      "cloudName": "gcp",
      "db_configs": [
        {
          "name": "db1",
          "label": "Replica Database",
          "host": "${GCP_DB_HOST}",
          "port": 5432,
          "user": "${GCP_DB_USER}",
          "password": "${GCP_DB_PASSWORD}",
          "database": "myapp",
          "schemas": ["public"],
          "defaultSchema": "public"
        }
      ]
    }
  ],
  "history": {
    "host": "${AWS_DB_HOST}",
    "port": 5432,
    "user": "${AWS_DB_USER}",
    "password": "${AWS_DB_PASSWORD}",
    "database": "myapp"
  }
}"#;

#[test]
fn legacy_databases_json_loads_unchanged() {
    let env = vars(&[
        ("AWS_DB_HOST", "localhost"),
        ("AWS_DB_USER", "postgres"),
        ("AWS_DB_PASSWORD", "postgres"),
        ("GCP_DB_HOST", "gcp-host"),
        ("GCP_DB_USER", "postgres"),
        ("GCP_DB_PASSWORD", "pw"),
    ]);
    let loaded = load(LEGACY, FileFormat::Json, &env).unwrap();
    assert!(loaded.legacy);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = loaded.config;
    let names: Vec<_> = config.clouds.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["aws", "gcp"]);
    let aws = &config.clouds[0].databases[0];
    assert_eq!(aws.label.as_deref(), Some("Production Database"));
    assert_eq!(aws.schemas, ["public", "app_schema"]);
    assert_eq!(aws.default_schema.as_deref(), Some("public"));
    assert_eq!(config.clouds[1].databases[0].host, "gcp-host");
    assert_eq!(config.history.database, "myapp");
}

#[test]
fn legacy_missing_variable_names_variable_and_native_path() {
    let err = load(
        LEGACY,
        FileFormat::Json,
        &vars(&[("AWS_DB_HOST", "h"), ("AWS_DB_USER", "u")]),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("AWS_DB_PASSWORD"), "{text}");
    assert!(text.contains("clouds[0].databases[0].password"), "{text}");
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let text = r#"
[history]
host = ""
user = "u"
database = "d"

[query]
default_timeout = "10m"
max_timeout = "5m"

[[clouds]]
name = "aws"
[[clouds.databases]]
name = "db1"
host = "a"
port = 0
user = "u"
database = "d"
schemas = ["public"]
default_schema = "nope"
pool = { min_connections = 5, max_connections = 2 }

[[clouds]]
name = "aws"
"#;
    let err = load(text, FileFormat::Toml, &vars(&[])).unwrap_err();
    let rendered: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
    let expected = [
        "clouds[0].databases[0].port: must be 1-65535",
        "clouds[0].databases[0].default_schema: \"nope\" is not one of schemas [\"public\"]",
        "clouds[0].databases[0].pool.min_connections: 5 is above max_connections 2",
        "clouds[1].name: duplicate cloud name \"aws\"",
        "clouds[1].databases: at least one database is required",
        "history.host: must not be empty",
        "query.default_timeout: 10m is above max_timeout 5m",
    ];
    for line in expected {
        assert!(
            rendered.iter().any(|r| r == line),
            "missing {line:?} in {rendered:#?}"
        );
    }
    assert_eq!(rendered.len(), expected.len(), "{rendered:#?}");
}

#[test]
fn typo_and_bad_type_name_their_path() {
    let cases = [
        (
            "typo",
            "max_conections = 3",
            "clouds[0].databases[0].pool",
            "max_conections",
        ),
        (
            "bad port",
            "",
            "clouds[0].databases[0].port",
            "not a valid number",
        ),
    ];
    for (name, pool_line, path, needle) in cases {
        let port = if name == "bad port" {
            "\"fivefour\""
        } else {
            "5432"
        };
        let text = format!(
            "[history]\nhost='h'\nuser='u'\ndatabase='d'\n[[clouds]]\nname='aws'\n[[clouds.databases]]\nname='db1'\nhost='a'\nport={port}\nuser='u'\ndatabase='d'\n[clouds.databases.pool]\n{pool_line}\n"
        );
        let err = load(&text, FileFormat::Toml, &vars(&[])).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(path), "{name}: {message}");
        assert!(message.contains(needle), "{name}: {message}");
    }
}

#[test]
fn overrides_apply_before_validation() {
    let inputs_vars = vars(&[
        ("HISTORY_PASSWORD", "x"),
        ("AWS_PORT", "1"),
        ("AWS_PASSWORD", "y"),
    ]);
    let loaded = load_str(
        TOML,
        FileFormat::Toml,
        Path::new("t.toml"),
        &Inputs {
            variables: &inputs_vars,
            overrides: vec![
                (
                    "PGFLEET__CLOUDS__GCP__DATABASES__DB1__PORT".to_owned(),
                    "7000".to_owned(),
                ),
                (
                    "PGFLEET__QUERY__MAX_ROWS_PER_STATEMENT".to_owned(),
                    "9".to_owned(),
                ),
            ],
        },
    )
    .unwrap();
    assert_eq!(loaded.config.clouds[1].databases[0].port, 7000);
    assert_eq!(loaded.config.query.max_rows_per_statement, 9);
}

#[test]
fn syntax_error_names_the_file() {
    let err = load("[history\nhost=", FileFormat::Toml, &vars(&[])).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    assert!(err.to_string().contains("test-config"), "{err}");
}

#[test]
fn the_shipped_example_configuration_loads() {
    let text = include_str!("../../../deploy/pgfleet.example.toml");
    let env = vars(&[
        ("AWS_DB_HOST", "aws.example.com"),
        ("AWS_DB_PASSWORD", "p"),
        ("AWS_REPLICA_HOST", "aws-replica.example.com"),
        ("AWS_READER_PASSWORD", "p"),
        ("GCP_DB_HOST", "gcp.example.com"),
        ("GCP_DB_PASSWORD", "p"),
        ("HISTORY_DB_HOST", "history.example.com"),
        ("HISTORY_DB_PASSWORD", "p"),
        (
            "PGFLEET_AUDIT_CHAIN_KEY",
            "an-audit-chain-key-of-at-least-32-bytes",
        ),
        ("RDS_CA_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")),
    ]);
    let loaded = load(text, FileFormat::Toml, &env).unwrap_or_else(|e| panic!("{e}"));
    let auth = &loaded.config.auth;
    assert_eq!(auth.bcrypt_cost, 12);
    assert_eq!(auth.session_ttl, Duration::from_secs(7 * 24 * 3600));
    assert!(auth.cookie_secure);
    let redis = loaded.config.redis.as_ref().expect("redis");
    assert_eq!(redis.key_prefix, "pgfleet:");
    let server = &loaded.config.server;
    assert!(server.grpc_web);
    assert_eq!(server.cors.allowed_origins, ["https://console.example.com"]);
    assert!(!server.cors.allow_credentials);
}

#[test]
fn auth_settings_are_checked() {
    let text = r#"
[history]
host = "h"
user = "u"
database = "d"
[auth]
bcrypt_cost = 40
min_password_length = 4
session_ttl = "10s"
# The older name of login_failures_before_backoff still loads.
login_attempts_per_username = 0
login_backoff_initial = "2s"
login_backoff_max = "1s"
login_username_slowdown_after = 0
login_username_delay = "11s"
[[clouds]]
name = "aws"
[[clouds.databases]]
name = "app"
host = "h"
user = "u"
database = "d"
schemas = ["public"]
"#;
    let error = load(text, FileFormat::Toml, &vars(&[])).expect_err("invalid auth settings");
    let shown = error.to_string();
    for expected in [
        "auth.bcrypt_cost: must be between 4 and 31",
        "auth.min_password_length: must be at least 8",
        "auth.session_ttl: must be at least 1m",
        "auth.login_failures_before_backoff: must be at least 1",
        "auth.login_backoff_max: must be at least login_backoff_initial and at most 24h",
        "auth.login_username_slowdown_after: must be at least 1",
        "auth.login_username_delay: must be at most 10s",
    ] {
        assert!(shown.contains(expected), "{expected:?} missing from:\n{shown}");
    }
}

/// A minimal valid file with `server` appended to its `[server]` table.
fn with_server(server: &str) -> String {
    format!(
        "[server]\n{server}\n[history]\nhost = 'h'\nuser = 'u'\ndatabase = 'd'\n\
         [[clouds]]\nname = 'aws'\n[[clouds.databases]]\nname = 'app'\nhost = 'h'\nuser = 'u'\ndatabase = 'd'\n"
    )
}

#[test]
fn grpc_web_is_on_and_cors_off_by_default() {
    let loaded = load(&with_server(""), FileFormat::Toml, &vars(&[])).unwrap();
    let server = &loaded.config.server;
    assert!(server.grpc_web);
    assert!(server.cors.allowed_origins.is_empty());
    assert!(!server.cors.allow_credentials);
    assert_eq!(server.cors.max_age, Duration::from_secs(2 * 3600));

    let loaded = load(
        &with_server(
            "grpc_web = true\n[server.cors]\nallowed_origins = ['https://console.example.com', \
             'http://localhost:3000', 'http://[::1]:8080']\nallow_credentials = true\nmax_age = '10m'",
        ),
        FileFormat::Toml,
        &vars(&[]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cors = &loaded.config.server.cors;
    assert_eq!(cors.allowed_origins.len(), 3);
    assert!(cors.allow_credentials);
    assert_eq!(cors.max_age, Duration::from_secs(600));
}

#[test]
fn cors_origins_must_be_exact_and_never_any_with_credentials() {
    let cases = [
        (
            "trailing slash",
            "allowed_origins = ['https://console.example.com/']",
            "server.cors.allowed_origins[0]: \"https://console.example.com/\" is not an exact origin \
             (scheme://host[:port], as browsers send it): did you mean \"https://console.example.com\"?",
        ),
        (
            "upper case and default port",
            "allowed_origins = ['https://a.example', 'HTTPS://Console.Example.com:443']",
            "server.cors.allowed_origins[1]: \"HTTPS://Console.Example.com:443\" is not an exact origin \
             (scheme://host[:port], as browsers send it): did you mean \"https://console.example.com\"?",
        ),
        (
            "path",
            "allowed_origins = ['http://localhost:3000/app']",
            "did you mean \"http://localhost:3000\"?",
        ),
        (
            "not a URL",
            "allowed_origins = ['console.example.com']",
            "server.cors.allowed_origins[0]: \"console.example.com\" is not an origin",
        ),
        (
            "scheme",
            "allowed_origins = ['file:///tmp/page.html']",
            "server.cors.allowed_origins[0]: \"file:///tmp/page.html\": the scheme must be http or https",
        ),
        (
            "duplicate",
            "allowed_origins = ['https://a.example', 'https://a.example']",
            "server.cors.allowed_origins[1]: duplicate origin \"https://a.example\"",
        ),
        (
            "any origin with credentials",
            "allowed_origins = ['*']\nallow_credentials = true",
            "server.cors.allowed_origins: \"*\" cannot be combined with allow_credentials = true",
        ),
        (
            "any origin among others",
            "allowed_origins = ['*', 'https://a.example']",
            "server.cors.allowed_origins: \"*\" must be the only entry",
        ),
        (
            "max age",
            "allowed_origins = ['*']\nmax_age = '2d'",
            "server.cors.max_age: must be at most 24h",
        ),
    ];
    for (name, cors, expected) in cases {
        let text = with_server(&format!("[server.cors]\n{cors}"));
        let error = load(&text, FileFormat::Toml, &vars(&[])).expect_err(name);
        let shown = error.to_string();
        assert!(
            shown.contains(expected),
            "{name}: {expected:?} missing from:\n{shown}"
        );
    }

    // Any origin is fine without credentials.
    let text = with_server("[server.cors]\nallowed_origins = ['*']");
    load(&text, FileFormat::Toml, &vars(&[])).unwrap_or_else(|e| panic!("{e}"));

    // CORS means nothing without grpc-web: browsers speak nothing else.
    let text = with_server("grpc_web = false\n[server.cors]\nallowed_origins = ['https://a.example']");
    let shown = load(&text, FileFormat::Toml, &vars(&[])).unwrap_err().to_string();
    assert!(
        shown.contains("server.cors.allowed_origins: set while server.grpc_web = false"),
        "{shown}"
    );
}

const MINIMAL_FLEET: &str = r#"
[history]
host = "h"
user = "u"
database = "d"
[[clouds]]
name = "aws"
[[clouds.databases]]
name = "app"
host = "h"
user = "u"
database = "d"
"#;

#[test]
fn edge_settings_load_with_their_defaults_and_are_checked() {
    let defaults = load(MINIMAL_FLEET, FileFormat::Toml, &vars(&[])).unwrap_or_else(|e| panic!("{e}"));
    let server = &defaults.config.server;
    assert_eq!(server.max_message_bytes, 16 * 1024 * 1024);
    assert_eq!(server.max_concurrent_streams, 200);
    assert!(server.trusted_proxies.is_empty());
    assert!(
        defaults.config.query.rate_limit.is_none(),
        "rate limit off by default"
    );

    let set = format!(
        "[server]\ntrusted_proxies = ['10.0.0.0/8', '127.0.0.1', 'fd00::/8']\nkeepalive_interval = '0s'\n\
         [query.rate_limit]\nper_second = '2.5'\n{MINIMAL_FLEET}"
    );
    let loaded = load(&set, FileFormat::Toml, &vars(&[])).unwrap_or_else(|e| panic!("{e}"));
    let proxies: Vec<String> = loaded
        .config
        .server
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(proxies, ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"]);
    let limit = loaded.config.query.rate_limit.expect("rate limit");
    assert_eq!(limit.effective_burst(), 3);

    let bad = format!(
        "[server]\nmax_message_bytes = 1000\nmax_concurrent_streams = 0\nkeepalive_timeout = '0s'\n\
         [query.rate_limit]\nper_second = 0\nburst = 0\n{MINIMAL_FLEET}"
    );
    let shown = load(&bad, FileFormat::Toml, &vars(&[]))
        .expect_err("invalid edge settings")
        .to_string();
    for expected in [
        "server.max_message_bytes: must be at least 4096",
        "server.max_concurrent_streams: must be at least 1",
        "server.keepalive_timeout: must be greater than zero while keepalive_interval is set",
        "query.rate_limit.per_second: must be greater than 0 and at most 1000000",
        "query.rate_limit.burst: must be at least 1",
    ] {
        assert!(shown.contains(expected), "{expected:?} missing from:\n{shown}");
    }

    let below_query = format!("[server]\nmax_message_bytes = 65536\n{MINIMAL_FLEET}");
    let shown = load(&below_query, FileFormat::Toml, &vars(&[]))
        .expect_err("message limit under the query limit")
        .to_string();
    assert!(
        shown.contains("server.max_message_bytes: 65536 is below query.max_query_bytes 1048576"),
        "{shown}"
    );

    let bad_cidr = format!("[server]\ntrusted_proxies = ['10.0.0.0/33']\n{MINIMAL_FLEET}");
    let shown = load(&bad_cidr, FileFormat::Toml, &vars(&[]))
        .expect_err("bad CIDR")
        .to_string();
    assert!(
        shown.contains("server.trusted_proxies") && shown.contains("\"10.0.0.0/33\" is not a CIDR"),
        "{shown}"
    );
}

#[test]
fn shared_rate_limits_and_dependency_checks_load_and_validate() {
    let defaults = load(MINIMAL_FLEET, FileFormat::Toml, &vars(&[])).unwrap_or_else(|e| panic!("{e}"));
    let limits = &defaults.config.rate_limits;
    assert!(!limits.any(), "no shared limit by default");
    assert_eq!(limits.on_redis_error, pgfleet_config::OnRedisError::Open);
    assert_eq!(defaults.config.health.dependency_interval, Duration::from_secs(2));
    assert_eq!(defaults.config.health.dependency_timeout, Duration::from_secs(1));

    let set = format!(
        "[health]\ndependency_interval = '500ms'\n\
         [rate_limits]\non_redis_error = 'closed'\n\
         replication = {{ per_identity = {{ per_second = 0.1, burst = 2 }}, per_address = {{ per_second = '1' }} }}\n\
         [rate_limits.introspection.per_address]\nper_second = 5\n{MINIMAL_FLEET}"
    );
    let loaded = load(&set, FileFormat::Toml, &vars(&[])).unwrap_or_else(|e| panic!("{e}"));
    let limits = &loaded.config.rate_limits;
    assert_eq!(limits.on_redis_error, pgfleet_config::OnRedisError::Closed);
    let replication = limits.replication.as_ref().expect("replication limits");
    assert_eq!(
        replication.per_identity.as_ref().map(|l| l.effective_burst()),
        Some(2)
    );
    assert_eq!(
        replication.per_address.as_ref().map(|l| l.effective_burst()),
        Some(1)
    );
    assert!(limits.export.is_none());
    assert!(
        limits
            .introspection
            .as_ref()
            .is_some_and(|l| l.per_identity.is_none())
    );
    assert_eq!(
        loaded.config.health.dependency_interval,
        Duration::from_millis(500)
    );

    let bad = format!(
        "[health]\ndependency_interval = '10ms'\ndependency_timeout = '0s'\n\
         [rate_limits]\non_redis_error = 'sometimes'\n{MINIMAL_FLEET}"
    );
    let shown = load(&bad, FileFormat::Toml, &vars(&[]))
        .expect_err("unknown on_redis_error")
        .to_string();
    assert!(shown.contains("on_redis_error"), "{shown}");
    let bad = format!(
        "[health]\ndependency_interval = '10ms'\ndependency_timeout = '0s'\n\
         [rate_limits.export]\n[rate_limits.replication.per_identity]\nper_second = 0\nburst = 0\n{MINIMAL_FLEET}"
    );
    let shown = load(&bad, FileFormat::Toml, &vars(&[]))
        .expect_err("invalid limits")
        .to_string();
    for expected in [
        "health.dependency_interval: must be at least 100ms",
        "health.dependency_timeout: must be greater than zero",
        "rate_limits.export: set per_identity, per_address or both",
        "rate_limits.replication.per_identity.per_second: must be greater than 0 and at most 1000000",
        "rate_limits.replication.per_identity.burst: must be at least 1",
    ] {
        assert!(shown.contains(expected), "{expected:?} missing from:\n{shown}");
    }
}

const MINIMAL: &str = r#"
[history]
host = "h"
user = "u"
database = "d"
[[clouds]]
name = "aws"
[[clouds.databases]]
name = "app"
host = "h"
user = "u"
database = "d"
"#;

#[test]
fn log_and_telemetry_settings_are_checked_with_their_paths() {
    let not_a_directory = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let cases = [
        (
            "[log]\nlevel = 'info,=,x=loud'",
            "log.level: not a tracing filter",
        ),
        ("[log]\nlevel = ' '", "log.level: must not be empty"),
        (
            &format!("[log]\nfile = '{not_a_directory}'") as &str,
            "log.file: ",
        ),
        ("[log]\nmax_files = 0", "log.max_files: must be at least 1"),
        ("[log]\nrotation = 'weekly'", "log.rotation"),
        ("[log]\nformat = 'xml'", "log.format"),
        (
            "[telemetry]\notlp_endpoint = 'https://collector:4317'",
            "telemetry.otlp_endpoint: https is not supported",
        ),
        (
            "[telemetry]\notlp_endpoint = 'collector:4317'",
            "telemetry.otlp_endpoint: must be an http:// URL",
        ),
        (
            "[telemetry]\notlp_endpoint = 'http://'",
            "telemetry.otlp_endpoint: names no host",
        ),
        (
            "[telemetry]\nsampling_ratio = 1.5",
            "telemetry.sampling_ratio: must be between 0.0 and 1.0",
        ),
        (
            "[telemetry]\nservice_name = ''",
            "telemetry.service_name: must not be empty",
        ),
        (
            "[telemetry]\nexport_timeout = '0s'",
            "telemetry.export_timeout: must be greater than zero",
        ),
    ];
    for (section, expected) in cases {
        let text = format!("{section}\n{MINIMAL}");
        let error = load(&text, FileFormat::Toml, &vars(&[])).expect_err(section);
        let shown = error.to_string();
        assert!(
            shown.contains(expected),
            "{section}: {expected:?} missing from:\n{shown}"
        );
    }
}

#[test]
fn log_and_telemetry_settings_load_from_the_file_and_overrides() {
    let text = format!(
        "[server]\nlisten_addr = '127.0.0.1:0'\nmetrics_addr = '127.0.0.1:0'\n\
         [log]\nformat = 'json'\nlevel = 'warn,pgfleet_server=debug'\nrotation = 'hourly'\nmax_files = '24'\n\
         [telemetry]\notlp_endpoint = 'http://127.0.0.1:4317'\nservice_name = 'pgfleet-eu'\n{MINIMAL}"
    );
    let loaded = load_str(
        &text,
        FileFormat::Toml,
        Path::new("t.toml"),
        &Inputs {
            variables: &vars(&[]),
            overrides: vec![("PGFLEET__TELEMETRY__SAMPLING_RATIO".to_owned(), "0.25".to_owned())],
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = loaded.config;
    assert_eq!(config.log.format, pgfleet_config::LogFormat::Json);
    assert_eq!(config.log.level, "warn,pgfleet_server=debug");
    assert_eq!(config.log.rotation, pgfleet_config::LogRotation::Hourly);
    assert_eq!(config.log.max_files, Some(24));
    assert_eq!(
        config.telemetry.otlp_endpoint.as_deref(),
        Some("http://127.0.0.1:4317")
    );
    assert_eq!(config.telemetry.sampling_ratio, 0.25);
    assert_eq!(config.telemetry.service_name, "pgfleet-eu");
    // Off by default.
    let defaults = load(MINIMAL, FileFormat::Toml, &vars(&[])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(defaults.config.telemetry.otlp_endpoint, None);
    assert_eq!(defaults.config.server.metrics_addr, None);
    assert_eq!(defaults.config.log.file, None);
}

#[test]
fn the_console_is_off_by_default_and_must_not_share_a_port() {
    let defaults = load(MINIMAL, FileFormat::Toml, &vars(&[])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(defaults.config.server.console_addr, None);
    let on = format!("[server]\nlisten_addr = '127.0.0.1:50051'\nconsole_addr = '127.0.0.1:8080'\n{MINIMAL}");
    let loaded = load(&on, FileFormat::Toml, &vars(&[])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        loaded.config.server.console_addr,
        Some("127.0.0.1:8080".parse().unwrap())
    );
    for (clash, expected) in [
        (
            "console_addr = '127.0.0.1:50051'\n",
            "must differ from listen_addr",
        ),
        (
            "metrics_addr = '127.0.0.1:9464'\nconsole_addr = '127.0.0.1:9464'\n",
            "must differ from metrics_addr",
        ),
    ] {
        let text = format!("[server]\nlisten_addr = '127.0.0.1:50051'\n{clash}{MINIMAL}");
        let error = load(&text, FileFormat::Toml, &vars(&[]))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("server.console_addr") && error.contains(expected),
            "{clash}: {error}"
        );
    }
}

#[test]
fn result_budgets_default_validate_and_fit_the_message_limit() {
    let loaded = load(MINIMAL_FLEET, FileFormat::Toml, &vars(&[])).expect("loads");
    let config = &loaded.config;
    assert_eq!(config.query.max_response_bytes, 64 * 1024 * 1024);
    assert_eq!(config.query.max_batch_bytes, 4 * 1024 * 1024);
    // 64 MiB could never be sent under the 16 MiB message limit: capped.
    assert_eq!(config.response_budget_bytes(), 16 * 1024 * 1024 - 256 * 1024);
    assert_eq!(config.batch_budget_bytes(), 4 * 1024 * 1024);

    let small = format!("[server]\nmax_message_bytes = 1100000\n{MINIMAL_FLEET}");
    let config = load(&small, FileFormat::Toml, &vars(&[])).expect("loads").config;
    assert_eq!(config.batch_budget_bytes(), 1_100_000 - 256 * 1024);

    let bad = format!("[query]\nmax_response_bytes = 0\nmax_batch_bytes = 100\n{MINIMAL_FLEET}");
    let shown = load(&bad, FileFormat::Toml, &vars(&[]))
        .expect_err("budgets too small")
        .to_string();
    for expected in [
        "query.max_response_bytes: must be at least 4096",
        "query.max_batch_bytes: must be at least 4096",
    ] {
        assert!(shown.contains(expected), "{expected:?} missing from:\n{shown}");
    }
}

#[test]
fn migrations_directories_name_configured_databases_once() {
    let valid = format!(
        "{}[[migrations]]\ndatabase = 'app'\ndir = 'migrations/app'\n",
        with_server("")
    );
    let loaded = load(&valid, FileFormat::Toml, &vars(&[])).expect("valid migrations entry");
    assert_eq!(
        loaded.config.migrations_dir("app"),
        Some(Path::new("migrations/app"))
    );
    assert_eq!(loaded.config.migrations_dir("analytics"), None);

    let invalid = format!(
        "{}[[migrations]]\ndatabase = 'nope'\ndir = 'm'\n\
         [[migrations]]\ndatabase = 'app'\ndir = ''\n\
         [[migrations]]\ndatabase = 'app'\ndir = 'again'\n",
        with_server("")
    );
    let shown = load(&invalid, FileFormat::Toml, &vars(&[]))
        .expect_err("invalid migrations entries")
        .to_string();
    for expected in [
        "migrations[0].database: \"nope\" is not a database of any cloud",
        "migrations[1].dir: must name a directory",
        "migrations[2].database: \"app\" has a migrations entry already",
    ] {
        assert!(shown.contains(expected), "{expected:?} missing from:\n{shown}");
    }
    let typo = format!(
        "{}[[migrations]]\ndatabase = 'app'\ndirectory = 'm'\n",
        with_server("")
    );
    assert!(
        load(&typo, FileFormat::Toml, &vars(&[])).is_err(),
        "unknown keys are refused"
    );
}

#[test]
fn declared_replication_jobs_load_and_name_their_problems() {
    let two_clouds = format!(
        "{}[[clouds]]\nname = 'gcp'\n[[clouds.databases]]\nname = 'app'\nhost = 'h'\nuser = 'u'\ndatabase = 'd'\n",
        with_server("")
    );
    let valid = format!(
        "{}[[replication.jobs]]\nname = 'orders'\nsource = 'aws/app'\ntargets = ['gcp/app']\n\
         tables = ['public.orders']\nsync_key = 'updated_at'\ninterval = '5m'\n",
        two_clouds
    );
    let loaded = load(&valid, FileFormat::Toml, &vars(&[])).expect("valid declared job");
    let job = &loaded.config.replication.jobs[0];
    assert_eq!(job.interval, Some(Duration::from_secs(300)));
    assert!(job.enabled, "enabled unless said otherwise");

    let invalid = format!(
        "{}[[replication.jobs]]\nname = 'a'\nsource = 'aws/nope'\ntargets = ['aws/app', 'azure']\ntables = []\n\
         [[replication.jobs]]\nname = 'a'\nsource = 'aws/app'\ntargets = []\ntables = ['public.t']\nbatch_size = 0\n",
        two_clouds
    );
    let shown = load(&invalid, FileFormat::Toml, &vars(&[]))
        .expect_err("invalid declared jobs")
        .to_string();
    for expected in [
        "replication.jobs[0].source: \"aws/nope\" is not a cloud/database of [[clouds]]",
        "replication.jobs[0].targets[1]: \"azure\" is not a cloud/database of [[clouds]]",
        "replication.jobs[0].tables: at least one table",
        "replication.jobs[1].name: \"a\" is declared twice",
        "replication.jobs[1].targets: at least one cloud/database",
        "replication.jobs[1].batch_size: must be at least 1",
    ] {
        assert!(shown.contains(expected), "{expected:?} missing from:\n{shown}");
    }
}

#[test]
fn passwords_come_from_files_read_at_every_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("db-password");
    std::fs::write(&file, "from-the-file\n").expect("write secret");
    let text = with_server("").replacen(
        "[[clouds.databases]]\n",
        &format!("[[clouds.databases]]\npassword_file = '{}'\n", file.display()),
        1,
    );
    let first = load(&text, FileFormat::Toml, &vars(&[])).expect("loads");
    let password = |loaded: &pgfleet_config::LoadedConfig| {
        loaded.config.clouds[0].databases[0].password.expose().to_owned()
    };
    assert_eq!(password(&first), "from-the-file");
    assert!(!render_redacted(&first.config).contains("from-the-file"));

    std::fs::write(&file, "rotated\n").expect("rotate secret");
    let second = load(&text, FileFormat::Toml, &vars(&[])).expect("loads again");
    assert_eq!(password(&second), "rotated");

    std::fs::remove_file(&file).expect("remove secret");
    let shown = load(&text, FileFormat::Toml, &vars(&[]))
        .expect_err("missing secret file")
        .to_string();
    assert!(
        shown.contains("clouds[0].databases[0].password_file: cannot read"),
        "{shown}"
    );
}
