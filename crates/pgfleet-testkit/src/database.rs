//! Throwaway databases: one per test (or per modelled cloud), unique names, always dropped.
//!
//! Names are `{prefix}_{unix seconds}_{8 hex}`: the random part keeps parallel tests apart,
//! the timestamp lets [`sweep_stale_databases`] recognise leftovers of killed runs.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, PgPool};

use crate::services::{close_quietly, connect_admin};
use crate::{bounded, check_identifier, percent_decode, pg_admin_url, redact_url};

/// Test databases older than this are leftovers of killed runs: the first
/// [`TestDatabase::create`] of a prefix in a process drops them.
pub const STALE_AFTER: Duration = Duration::from_secs(6 * 60 * 60);

/// Longest prefix that still leaves room for `_{10 digits}_{8 hex}` in 63 bytes.
const MAX_PREFIX_LEN: usize = 63 - 20;

/// How long dropping a database may take (terminating its sessions included).
const DROP_LIMIT: Duration = Duration::from_secs(30);

/// `(admin url, prefix)` pairs already swept by this process.
static SWEPT: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

/// A database created for one test and dropped when the test is done: by
/// [`drop_now`](Self::drop_now), or by `Drop` (which works inside a tokio runtime too).
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    admin_url: String,
    url: String,
    options: PgConnectOptions,
    password: Option<String>,
    dropped: bool,
}

impl TestDatabase {
    /// Creates a database named `{prefix}_{unix seconds}_{8 hex}` on the test server
    /// ([`pg_admin_url`]). `prefix` must be `[a-z_][a-z0-9_]*`, at most 43 bytes.
    pub async fn create(prefix: &str) -> anyhow::Result<Self> {
        Self::create_on(&pg_admin_url(), prefix).await
    }

    /// [`create`](Self::create) on another server, e.g. a [`PgCluster`](crate::PgCluster)'s
    /// [`admin_url`](crate::PgCluster::admin_url).
    pub async fn create_on(admin_url: &str, prefix: &str) -> anyhow::Result<Self> {
        check_prefix(prefix)?;
        let random = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("{prefix}_{}_{}", unix_now()?, &random[..8]);

        let mut parsed = url::Url::parse(admin_url)
            .with_context(|| format!("{} is not a valid URL", redact_url(admin_url)))?;
        let password = parsed.password().map(percent_decode).transpose()?;
        parsed.set_path(&format!("/{name}"));
        let url = parsed.to_string();
        let options: PgConnectOptions = url
            .parse()
            .with_context(|| format!("{} is not a valid PostgreSQL URL", redact_url(&url)))?;

        let mut admin = connect_admin(admin_url).await?;
        bounded(DROP_LIMIT, format!("CREATE DATABASE {name}"), async {
            // `name` is a checked identifier: nothing to escape.
            sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .execute(&mut admin)
                .await
                .with_context(|| format!("creating database {name} on {}", redact_url(admin_url)))?;
            Ok(())
        })
        .await?;
        close_quietly(admin).await;
        tracing::debug!(database = %name, "created test database");
        // After the create, so an unreachable server is reported once, by the connect above.
        sweep_once(admin_url, prefix).await;

        Ok(Self {
            name,
            admin_url: admin_url.to_owned(),
            url,
            options,
            password,
            dropped: false,
        })
    }

    /// The database name (also [`database`](Self::database)).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connection URL of this database, with the admin URL's user, password and parameters.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// sqlx options for this database.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.options.clone()
    }

    /// A new pool (at most 5 connections) on this database; one connection is opened now.
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(self.options.clone())
            .await
            .with_context(|| format!("opening a pool on test database {}", self.name))
    }

    /// A single new connection to this database.
    pub async fn connect(&self) -> anyhow::Result<PgConnection> {
        bounded(
            Duration::from_secs(10),
            format!("connecting to {}", self.name),
            async {
                PgConnection::connect_with(&self.options)
                    .await
                    .with_context(|| format!("connecting to test database {}", self.name))
            },
        )
        .await
    }

    /// Server host, as in the admin URL (for writing pgfleet config files).
    pub fn host(&self) -> &str {
        self.options.get_host()
    }

    /// Server port.
    pub fn port(&self) -> u16 {
        self.options.get_port()
    }

    /// Role the tests connect as.
    pub fn user(&self) -> &str {
        self.options.get_username()
    }

    /// Password from the admin URL, decoded; `None` with trust auth.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The admin URL the database was created with.
    pub(crate) fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The database name, for config files' `database` key.
    pub fn database(&self) -> &str {
        &self.name
    }

    /// Drops the database now (terminating its sessions), reporting any failure.
    pub async fn drop_now(mut self) -> anyhow::Result<()> {
        self.dropped = true;
        drop_database(&self.admin_url, &self.name).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Drop may run on a runtime thread, where blocking on a future of that runtime
        // panics or deadlocks: use a thread with its own runtime and wait for it.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let outcome = std::thread::Builder::new()
            .name("testkit-drop-db".to_owned())
            .spawn(move || -> anyhow::Result<()> {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building a runtime to drop the test database")?
                    .block_on(drop_database(&admin_url, &name))
            })
            .context("spawning a thread to drop the test database")
            .and_then(|thread| {
                thread
                    .join()
                    .map_err(|_| anyhow::anyhow!("the thread dropping the database panicked"))?
            });
        if let Err(e) = outcome {
            // Drop cannot return the error; make it visible in the test output and the logs.
            eprintln!(
                "pgfleet-testkit: test database {} was not dropped: {e:#} (it is swept after {}h)",
                self.name,
                STALE_AFTER.as_secs() / 3600
            );
            tracing::warn!(database = %self.name, error = %format!("{e:#}"), "test database was not dropped");
        }
    }
}

async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = connect_admin(admin_url).await?;
    bounded(DROP_LIMIT, format!("DROP DATABASE {name}"), async {
        // `name` is a checked identifier (created by this module or matched by the sweep).
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await
        .with_context(|| format!("dropping test database {name}"))?;
        Ok(())
    })
    .await?;
    close_quietly(admin).await;
    tracing::debug!(database = %name, "dropped test database");
    Ok(())
}

/// Drops the databases on `admin_url` named `{prefix}_{unix seconds}_{8 hex}` whose
/// timestamp is older than `older_than`, and returns their names. Other names, even with
/// the same prefix, are never touched.
pub async fn sweep_stale_databases(
    admin_url: &str,
    prefix: &str,
    older_than: Duration,
) -> anyhow::Result<Vec<String>> {
    check_prefix(prefix)?;
    let now = unix_now()?;
    let cutoff = now.saturating_sub(older_than.as_secs());
    let mut admin = connect_admin(admin_url).await?;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)")
            .bind(format!("{prefix}_"))
            .fetch_all(&mut admin)
            .await
            .context("listing databases to sweep")?;
    close_quietly(admin).await;

    let mut dropped = Vec::new();
    for name in names {
        let Some(created) = created_at(&name, prefix) else {
            continue;
        };
        if created < cutoff {
            drop_database(admin_url, &name).await?;
            dropped.push(name);
        }
    }
    Ok(dropped)
}

/// Sweeps leftovers of `prefix` once per process; a failed sweep must not fail the test
/// that triggered it, so it is logged instead.
async fn sweep_once(admin_url: &str, prefix: &str) {
    let key = (admin_url.to_owned(), prefix.to_owned());
    {
        let mut swept = SWEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !swept.insert(key) {
            return;
        }
    }
    match sweep_stale_databases(admin_url, prefix, STALE_AFTER).await {
        Ok(dropped) if !dropped.is_empty() => {
            tracing::info!(?dropped, "dropped stale test databases");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(prefix, error = %format!("{e:#}"), "sweeping stale test databases failed");
        }
    }
}

/// The creation time encoded in a name of this module's shape, or `None` for other names.
fn created_at(name: &str, prefix: &str) -> Option<u64> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('_')?;
    let (secs, random) = rest.split_once('_')?;
    let shaped = !secs.is_empty()
        && secs.bytes().all(|b| b.is_ascii_digit())
        && random.len() == 8
        && random.bytes().all(|b| b.is_ascii_hexdigit());
    if shaped { secs.parse().ok() } else { None }
}

fn check_prefix(prefix: &str) -> anyhow::Result<()> {
    check_identifier(prefix, "test database prefix")?;
    anyhow::ensure!(
        prefix.len() <= MAX_PREFIX_LEN,
        "test database prefix {prefix:?} is longer than {MAX_PREFIX_LEN} bytes"
    );
    Ok(())
}

fn unix_now() -> anyhow::Result<u64> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock is before 1970")?
        .as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_its_own_names() {
        let cases = [
            ("app_1700000000_0123abcd", Some(1_700_000_000)),
            ("app_1700000000_0123abc", None),
            ("app_1700000000_0123abcx", None),
            ("app_x_0123abcd", None),
            ("app_extra_1700000000_0123abcd", None),
            ("apple_1700000000_0123abcd", None),
            ("app__0123abcd", None),
        ];
        for (name, want) in cases {
            assert_eq!(created_at(name, "app"), want, "case {name}");
        }
    }

    #[test]
    fn rejects_long_prefixes() {
        assert!(check_prefix(&"p".repeat(MAX_PREFIX_LEN)).is_ok());
        assert!(check_prefix(&"p".repeat(MAX_PREFIX_LEN + 1)).is_err());
    }
}
