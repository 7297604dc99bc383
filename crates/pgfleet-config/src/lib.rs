//! Loads pgfleet's configuration: one file (TOML, YAML, JSON, or the legacy
//! `databases.json`), `PGFLEET__SECTION__KEY` overrides, `${VAR}` and
//! `${VAR:-default}` substitution (variables may come from a `.env` file),
//! secrets read from `*_file` paths, then validation that reports every
//! problem with its path (`clouds[1].databases[0].port: must be 1-65535`).
//!
//! ```no_run
//! let loaded = pgfleet_config::load(std::path::Path::new("pgfleet.toml"))?;
//! for cloud in &loaded.config.clouds {
//!     println!("{}: {} databases", cloud.name, cloud.databases.len());
//! }
//! # Ok::<(), pgfleet_config::ConfigError>(())
//! ```
//!
//! Secrets are [`Secret`]s: they print as `<redacted>` everywhere.

mod edge;
pub mod env_file;
mod error;
mod insights;
mod legacy;
mod lenient;
mod load;
mod model;
mod overlay;
mod path;
mod secret;
mod secret_files;
mod substitute;
mod validate;

pub use edge::{CallerLimits, ExpensiveCallLimits, OnRedisError, RateLimitConfig};
pub use error::{ConfigError, Problem};
pub use insights::{AlertThresholds, InsightsConfig};
pub use load::{CONFIG_ENV, Inputs, LoadedConfig, format_of, load, load_str, load_with, render_redacted};
pub use model::CorsConfig;
pub use model::{
    AtomicConfig, AuditConfig, AuthConfig, CloudConfig, ConnectionConfig, DatabaseConfig, DeclaredJobConfig,
    DeclaredJobMode, FleetConfig, HealthConfig, HistoryStoreConfig, LogConfig, LogFormat, LogRotation,
    MigrationsConfig, PoolConfig, QueryLimits, ReadPreference, RedisConfig, ReplicaConfig, ReplicationConfig,
    RetryConfig, ServerConfig, SslMode, TelemetryConfig, TlsConfig,
};
pub use model::{AuditChainConfig, MIN_CHAIN_KEY_BYTES, MIN_RESULT_BYTES, RESPONSE_RESERVE_BYTES};
pub use model::{BackupConfig, MIN_BACKUP_PART_BYTES};
pub use overlay::PREFIX as OVERRIDE_PREFIX;
pub use secret::{REDACTED, Secret};
pub use substitute::{ProcessEnv, VariableSource};

/// Re-exported so callers can name a format without depending on `config`.
pub use config::FileFormat;
