//! Extra PostgreSQL servers (`initdb` clusters) for tests in which a whole server must die
//! and come back, which a database on the shared server cannot model, or that need settings
//! the shared server does not have (`shared_preload_libraries`, `max_prepared_transactions`),
//! or a streaming replica (`cluster/replica.rs`).
//!
//! Each cluster lives in its own temporary directory (`data/`, the unix socket, the server
//! log and an `owner.pid` naming the test process). PostgreSQL refuses to run as root, so
//! as root every server binary runs as `postgres` through `runuser`.

mod replica;

use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Once;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::AssertSqlSafe;
use tempfile::TempDir;

pub use replica::ReplayLag;

use crate::services::{close_quietly, connect_admin};
use crate::{check_identifier, free_port, wait_until};

/// Environment variable naming the directory of `initdb` and `pg_ctl`, when the usual
/// places (`pg_config --bindir`, `/usr/lib/postgresql/*/bin`, `PATH`) are wrong.
pub const PG_BINDIR_ENV: &str = "PGFLEET_TEST_PG_BINDIR";

/// Temporary directories of clusters start with this.
const DIR_PREFIX: &str = "pgfleet-testkit-cluster-";
/// Seconds `pg_ctl` may wait for a start or stop.
const PG_CTL_WAIT_SECS: &str = "30";
/// How long a started server may take to accept a connection after `pg_ctl` said ready.
const READY_LIMIT: Duration = Duration::from_secs(15);
/// Ports tried when the free port is taken by someone else in the meantime.
const PORT_ATTEMPTS: usize = 3;
/// Settings the test kit owns: a cluster must listen where [`PgCluster::port`] says.
const RESERVED_SETTINGS: [&str; 3] = ["port", "listen_addresses", "unix_socket_directories"];

static SWEEP_ORPHANS: Once = Once::new();

/// A PostgreSQL server of its own on 127.0.0.1, trust auth, superuser `postgres`, tuned for
/// speed over durability (`fsync = off`). Dropping it stops the server (immediate mode) and
/// deletes its directory.
///
/// [`PgCluster::builder`] adds `postgresql.conf` settings, TLS, or makes the cluster a
/// streaming replica of another one.
#[derive(Debug)]
pub struct PgCluster {
    /// `Some` until Drop removes it, so removal errors can be reported.
    root: Option<TempDir>,
    root_path: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    bin_dir: PathBuf,
    as_postgres: bool,
    port: u16,
    /// Set on replicas made by [`PgClusterBuilder::replica_of`].
    replication: Option<replica::Upstream>,
}

/// How to start a [`PgCluster`]: `postgresql.conf` settings, TLS, and whether it is a new
/// primary (`initdb`) or a streaming replica of a running cluster (`pg_basebackup -R`).
///
/// ```no_run
/// # async fn example() -> anyhow::Result<()> {
/// use pgfleet_testkit::PgCluster;
/// let primary = PgCluster::builder()
///     .setting("shared_preload_libraries", "pg_stat_statements")
///     .setting("max_prepared_transactions", 10)
///     .start()
///     .await?;
/// let replica = PgCluster::builder().replica_of(&primary).start().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until start() is awaited"]
pub struct PgClusterBuilder {
    settings: Vec<(String, String)>,
    tls: Option<crate::IssuedCert>,
    replica_of: Option<replica::Upstream>,
    passwords: bool,
}

impl PgClusterBuilder {
    /// Adds `name = 'value'` to `postgresql.conf` (after the test kit's defaults, so it wins
    /// over them; a later call for the same name wins over an earlier one). The value is
    /// written quoted, which PostgreSQL accepts for every type: `10`, `on`, `'250ms'`,
    /// `pg_stat_statements`. `port`, `listen_addresses` and `unix_socket_directories` belong
    /// to the test kit and are refused by [`start`](Self::start).
    ///
    /// A replica starts with a copy of its primary's `postgresql.conf`; settings given here
    /// are added to that copy.
    pub fn setting(mut self, name: &str, value: impl ToString) -> Self {
        self.settings.push((name.to_owned(), value.to_string()));
        self
    }

    /// `ssl = on` with `server` as the certificate and key (see
    /// [`PgCluster::start_with_tls`]). Ignored for replicas, which copy the primary's
    /// certificate along with its data directory.
    pub fn tls(mut self, server: &crate::IssuedCert) -> Self {
        self.tls = Some(server.clone());
        self
    }

    /// Logins other than `postgres` must give their password over TCP
    /// (`scram-sha-256` in `pg_hba.conf`), so a wrong or stale password is
    /// refused as on a real server; `postgres` and the socket stay `trust`.
    /// Ignored for replicas, which copy the primary's `pg_hba.conf`.
    pub fn password_auth(mut self) -> Self {
        self.passwords = true;
        self
    }

    /// Makes the cluster a physical streaming replica of `primary`: `pg_basebackup -R`
    /// instead of `initdb`, and [`start`](Self::start) returns once the primary lists it
    /// as `streaming` in `pg_stat_replication`. `primary` must be running.
    pub fn replica_of(mut self, primary: &PgCluster) -> Self {
        self.replica_of = Some(replica::Upstream {
            port: primary.port,
            slot: self.replica_of.and_then(|upstream| upstream.slot),
        });
        self
    }

    /// Streams through physical replication slot `name` (`[a-z_][a-z0-9_]*`), created on the
    /// primary by `pg_basebackup -C`, so the primary keeps WAL the replica has not received.
    /// The slot outlives the replica: drop it on the primary
    /// (`pg_drop_replication_slot`) if the primary lives on. Only for replicas.
    pub fn replication_slot(mut self, name: &str) -> Self {
        let upstream = self
            .replica_of
            .get_or_insert(replica::Upstream { port: 0, slot: None });
        upstream.slot = Some(name.to_owned());
        self
    }

    /// Creates the cluster and starts it on a free port; returns once it accepts
    /// connections (and, for a replica, streams from its primary).
    pub async fn start(self) -> anyhow::Result<PgCluster> {
        for (name, value) in &self.settings {
            check_setting(name, value)?;
        }
        if let Some(upstream) = &self.replica_of {
            anyhow::ensure!(
                upstream.port != 0,
                "replication_slot() is for replicas: call replica_of(&primary) too"
            );
            if let Some(slot) = &upstream.slot {
                check_identifier(slot, "replication slot name")?;
            }
        }
        let mut cluster = PgCluster::create_dir(self.replica_of.clone())?;
        match &self.replica_of {
            None => cluster.initdb(self.tls.as_ref(), self.passwords).await?,
            Some(upstream) => cluster.base_backup(upstream).await?,
        }
        let mut settings = String::new();
        for (name, value) in &self.settings {
            settings.push_str(&format!("{name} = {}\n", quote_setting(value)));
        }
        cluster.append_conf(&settings)?;
        cluster.start_on_free_port().await?;
        if cluster.replication.is_some() {
            cluster.wait_streaming().await?;
        }
        Ok(cluster)
    }
}

impl PgCluster {
    /// Runs `initdb` into a new temporary directory and starts the server on a free port,
    /// returning once it accepts connections.
    pub async fn start() -> anyhow::Result<Self> {
        Self::builder().start().await
    }

    /// Like [`start`](Self::start), with `ssl = on` and `server` as its certificate and key
    /// (see [`crate::TestCa::server_cert`]; name `127.0.0.1` and/or `localhost` in it for
    /// `verify-full`). Plain connections are still accepted (`pg_hba` is `host … trust`), so
    /// one cluster serves every `sslmode`; `pg_stat_ssl` tells which one a session used.
    pub async fn start_with_tls(server: &crate::IssuedCert) -> anyhow::Result<Self> {
        Self::builder().tls(server).start().await
    }

    /// A cluster with settings, TLS, or as a replica; see [`PgClusterBuilder`].
    pub fn builder() -> PgClusterBuilder {
        PgClusterBuilder::default()
    }

    /// A streaming replica of `primary` (no slot, no extra settings), returned once it
    /// streams; see [`PgClusterBuilder::replica_of`].
    pub async fn start_replica_of(primary: &PgCluster) -> anyhow::Result<Self> {
        Self::builder().replica_of(primary).start().await
    }

    /// The temporary directory, handed to `postgres` when running as root.
    fn create_dir(replication: Option<replica::Upstream>) -> anyhow::Result<Self> {
        SWEEP_ORPHANS.call_once(sweep_orphan_clusters);
        let bin_dir = find_bin_dir()?;
        let as_postgres = running_as_root()?;
        let root = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .context("creating a temporary directory for a PostgreSQL cluster")?;
        let root_path = root.path().to_owned();
        std::fs::write(root_path.join("owner.pid"), std::process::id().to_string())
            .context("writing owner.pid into the cluster directory")?;
        if as_postgres {
            let (uid, gid) = postgres_ids()?;
            chown(&root_path, Some(uid), Some(gid))
                .with_context(|| format!("handing {} to the postgres user", root_path.display()))?;
        }
        Ok(Self {
            data_dir: root_path.join("data"),
            log_path: root_path.join("postgres.log"),
            root_path,
            root: Some(root),
            bin_dir,
            as_postgres,
            port: 0,
            replication,
        })
    }

    async fn initdb(&mut self, tls: Option<&crate::IssuedCert>, passwords: bool) -> anyhow::Result<()> {
        let data = self.data_dir.to_string_lossy().into_owned();
        self.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )
        .await?;
        self.append_testkit_defaults()?;
        if let Some(server) = tls {
            self.install_certificate(server)?;
            // Relative paths are read from the data directory.
            self.append_conf("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")?;
        }
        if passwords {
            // The first matching line wins.
            std::fs::write(
                self.data_dir.join("pg_hba.conf"),
                "local all all trust\n\
                 host all postgres 127.0.0.1/32 trust\n\
                 host replication all 127.0.0.1/32 trust\n\
                 host all all 127.0.0.1/32 scram-sha-256\n",
            )
            .context("writing pg_hba.conf")?;
        }
        Ok(())
    }

    /// Where this cluster listens and how it trades durability for speed. A replica gets
    /// them again after its primary's copied `postgresql.conf` (a later line wins), so it
    /// listens on its own socket.
    fn append_testkit_defaults(&self) -> anyhow::Result<()> {
        self.append_conf(&format!(
            "\n# pgfleet-testkit: a throwaway local server, speed over durability\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             shared_buffers = 16MB\n\
             max_connections = 50\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             logging_collector = off\n",
            self.root_path.display()
        ))
    }

    async fn start_on_free_port(&mut self) -> anyhow::Result<()> {
        let mut attempt = 1;
        loop {
            self.port = free_port()?;
            // A later line wins, so a retry just appends the new port.
            self.append_conf(&format!("port = {}\n", self.port))?;
            if self.replication.is_some() {
                // The walreceiver's application_name, to find it in pg_stat_replication.
                self.append_conf(&format!("cluster_name = '{}'\n", self.replica_name()))?;
            }
            match self.start_server().await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < PORT_ATTEMPTS && self.log_says_port_taken() => {
                    tracing::debug!(port = self.port, error = %format!("{e:#}"), "port taken, retrying");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Port the server listens on (127.0.0.1), the same across [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    /// `postgres://postgres@127.0.0.1:{port}/postgres`.
    pub fn admin_url(&self) -> String {
        self.database_url("postgres")
    }

    /// URL of database `name` on this server, as user `postgres`.
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The data directory (owned by `postgres` when running as root).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log, quoted in start errors.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Creates database `name` (`[a-z_][a-z0-9_]*`) and returns its URL.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<String> {
        check_identifier(name, "database name")?;
        let mut admin = connect_admin(&self.admin_url()).await?;
        // `name` is a checked identifier: nothing to escape.
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating database {name} on cluster port {}", self.port))?;
        close_quietly(admin).await;
        Ok(self.database_url(name))
    }

    /// A superuser connection to the `postgres` database, bounded in time.
    pub async fn connect(&self) -> anyhow::Result<sqlx::PgConnection> {
        connect_admin(&self.admin_url()).await
    }

    /// Whether the server accepts connections and answers `SELECT 1` right now ("is it
    /// up", from a client's point of view; [`is_running`](Self::is_running) asks whether
    /// the postmaster process exists). A replica answers once it is consistent.
    pub async fn accepts_connections(&self) -> bool {
        let Ok(mut conn) = self.connect().await else {
            return false;
        };
        let answered = crate::bounded(READY_LIMIT, "SELECT 1", async {
            Ok(sqlx::query_scalar::<_, i32>("SELECT 1")
                .fetch_one(&mut conn)
                .await?)
        })
        .await
        .is_ok_and(|one| one == 1);
        close_quietly(conn).await;
        answered
    }

    /// Appends `name = 'value'` to `postgresql.conf`, quoted and checked as in
    /// [`PgClusterBuilder::setting`]. It takes effect on [`reload`](Self::reload) for
    /// settings PostgreSQL reloads (`log_min_duration_statement`), on
    /// [`restart`](Self::restart) for the others (`shared_preload_libraries`,
    /// `max_prepared_transactions`); `pg_settings.pending_restart` tells which.
    pub fn set_setting(&self, name: &str, value: impl ToString) -> anyhow::Result<()> {
        let value = value.to_string();
        check_setting(name, &value)?;
        self.append_conf(&format!(
            "{name} = {}
",
            quote_setting(&value)
        ))
    }

    /// Makes the server re-read its configuration files (`pg_ctl reload`, i.e. SIGHUP);
    /// returns once the server reports the file's settings as loaded, so a test can rely
    /// on a reloadable setting right after.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let mut conn = self.connect().await?;
        let before: f64 = sqlx::query_scalar("SELECT extract(epoch FROM pg_conf_load_time())::float8")
            .fetch_one(&mut conn)
            .await
            .context("reading pg_conf_load_time()")?;
        let data = self.data_dir.to_string_lossy().into_owned();
        self.run("pg_ctl", &["reload", "-D", &data])
            .await
            .with_context(|| format!("reloading the cluster on port {}", self.port))?;
        // The postmaster and then each backend reload asynchronously; a new session sees
        // the new load time once the postmaster has re-read the files.
        close_quietly(conn).await;
        let url = self.admin_url();
        wait_until(READY_LIMIT, Duration::from_millis(20), async || {
            let mut conn = connect_admin(&url).await?;
            let now: f64 = sqlx::query_scalar("SELECT extract(epoch FROM pg_conf_load_time())::float8")
                .fetch_one(&mut conn)
                .await?;
            close_quietly(conn).await;
            anyhow::Ok(now > before)
        })
        .await
        .with_context(|| format!("cluster on port {} did not reload its configuration", self.port))
    }

    /// Whether a postmaster is running on the data directory (`pg_ctl status`).
    pub async fn is_running(&self) -> anyhow::Result<bool> {
        let data = self.data_dir.to_string_lossy().into_owned();
        let output = self
            .command("pg_ctl", &["status", "-D", &data])
            .output()
            .await
            .context("running pg_ctl status")?;
        match output.status.code() {
            Some(0) => Ok(true),
            Some(3) => Ok(false),
            _ => Err(command_failed("pg_ctl status", &output)),
        }
    }

    /// Stops the server cleanly (fast mode: sessions are terminated, a checkpoint is
    /// written). Fails if it is not running.
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl_stop("fast").await
    }

    /// Stops the server like a crash (immediate mode: every process quits at once, no
    /// checkpoint; the next start runs crash recovery). Open connections break. Fails if it
    /// is not running.
    pub async fn kill(&self) -> anyhow::Result<()> {
        self.pg_ctl_stop("immediate").await
    }

    /// Starts the server again on the same port and data directory, stopping it first
    /// (fast) if it is running; returns once it accepts connections.
    pub async fn restart(&self) -> anyhow::Result<()> {
        if self.is_running().await? {
            self.stop().await?;
        }
        self.start_server().await
    }

    async fn start_server(&self) -> anyhow::Result<()> {
        let data = self.data_dir.to_string_lossy().into_owned();
        let log = self.log_path.to_string_lossy().into_owned();
        let started = self
            .run(
                "pg_ctl",
                &["start", "-D", &data, "-l", &log, "-w", "-t", PG_CTL_WAIT_SECS],
            )
            .await;
        if let Err(e) = started {
            return Err(e.context(format!(
                "starting PostgreSQL on port {}; server log tail:\n{}",
                self.port,
                self.log_tail()
            )));
        }
        let url = self.admin_url();
        wait_until(
            READY_LIMIT,
            Duration::from_millis(100),
            async || match connect_admin(&url).await {
                Ok(conn) => {
                    close_quietly(conn).await;
                    Ok(true)
                }
                Err(e) => Err(e),
            },
        )
        .await
        .with_context(|| format!("cluster on port {} does not accept connections", self.port))
    }

    async fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        let data = self.data_dir.to_string_lossy().into_owned();
        self.run(
            "pg_ctl",
            &["stop", "-D", &data, "-m", mode, "-w", "-t", PG_CTL_WAIT_SECS],
        )
        .await
        .with_context(|| format!("stopping the cluster on port {} ({mode})", self.port))
    }

    /// Runs a PostgreSQL binary to completion; a non-zero exit is an error quoting its output.
    async fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let output = self
            .command(program, args)
            .output()
            .await
            .with_context(|| format!("running {program}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(command_failed(program, &output))
        }
    }

    fn command(&self, program: &str, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::from(server_command(
            &self.bin_dir,
            self.as_postgres,
            &self.root_path,
            program,
            args,
        ));
        command.kill_on_drop(true);
        command
    }

    /// Writes `server.crt` and `server.key` into the data directory, owned by the server's
    /// user, the key readable by it alone (PostgreSQL refuses a key others may read).
    fn install_certificate(&self, server: &crate::IssuedCert) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let (cert, key) = server.write_to(&self.data_dir, "server")?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private", key.display()))?;
        if self.as_postgres {
            let (uid, gid) = postgres_ids()?;
            for file in [&cert, &key] {
                chown(file, Some(uid), Some(gid))
                    .with_context(|| format!("handing {} to the postgres user", file.display()))?;
            }
        }
        Ok(())
    }

    fn append_conf(&self, lines: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let path = self.data_dir.join("postgresql.conf");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(lines.as_bytes()))
            .with_context(|| format!("appending to {}", path.display()))
    }

    fn log_tail(&self) -> String {
        match std::fs::read_to_string(&self.log_path) {
            Ok(log) => {
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.log_path.display()),
        }
    }

    fn log_says_port_taken(&self) -> bool {
        std::fs::read_to_string(&self.log_path)
            .is_ok_and(|log| log.contains("could not bind") || log.contains("already in use"))
    }
}

/// Refuses what would break the test kit or `postgresql.conf`: names that are not GUC names,
/// settings the kit owns, and control characters (a newline would end the quoted value).
fn check_setting(name: &str, value: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    anyhow::ensure!(
        starts_well && rest_ok,
        "{name:?} is not a PostgreSQL setting name ([a-z_][a-z0-9_.]*)"
    );
    anyhow::ensure!(
        !RESERVED_SETTINGS.contains(&name),
        "{name} is set by the test kit (every cluster listens on 127.0.0.1, its own socket \
         directory and a free port: see PgCluster::port)"
    );
    anyhow::ensure!(
        !value.chars().any(char::is_control),
        "the value of {name} contains a control character"
    );
    Ok(())
}

/// A `postgresql.conf` string literal: quotes doubled, backslashes escaped (the file's
/// parser reads `\` escapes in quoted values).
fn quote_setting(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.data_dir.join("postmaster.pid").exists()
            && let Err(e) = stop_blocking(&self.bin_dir, self.as_postgres, &self.root_path)
        {
            report_drop_problem(&format!(
                "could not stop the cluster on port {}: {e:#}",
                self.port
            ));
        }
        if let Some(root) = self.root.take()
            && let Err(e) = root.close()
        {
            report_drop_problem(&format!("could not remove {}: {e}", self.root_path.display()));
        }
    }
}

fn report_drop_problem(message: &str) {
    // Drop cannot return errors: show them in the test output and the logs.
    eprintln!("pgfleet-testkit: {message}");
    tracing::warn!("{message}");
}

/// `pg_ctl stop -m immediate` on the cluster rooted at `root`, blocking (for Drop and the
/// orphan sweep).
fn stop_blocking(bin_dir: &Path, as_postgres: bool, root: &Path) -> anyhow::Result<()> {
    let data = root.join("data").to_string_lossy().into_owned();
    let output = server_command(
        bin_dir,
        as_postgres,
        root,
        "pg_ctl",
        &["stop", "-D", &data, "-m", "immediate", "-w", "-t", "10"],
    )
    .output()
    .context("running pg_ctl stop")?;
    if output.status.success() {
        Ok(())
    } else {
        Err(command_failed("pg_ctl stop", &output))
    }
}

fn server_command(
    bin_dir: &Path,
    as_postgres: bool,
    cwd: &Path,
    program: &str,
    args: &[&str],
) -> std::process::Command {
    let exe = bin_dir.join(program);
    let mut command = if as_postgres {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        std::process::Command::new(exe)
    };
    // postgres must be able to enter its working directory; the test's may be root-only.
    command
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn command_failed(what: &str, output: &Output) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Where `initdb` and `pg_ctl` are: `PGFLEET_TEST_PG_BINDIR`, `pg_config --bindir`, the
/// newest `/usr/lib/postgresql/*/bin`, then `PATH`.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os(PG_BINDIR_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        anyhow::ensure!(
            has_tools(&dir),
            "{PG_BINDIR_ENV}={} has no initdb and pg_ctl",
            dir.display()
        );
        return Ok(dir);
    }
    let mut tried = Vec::new();
    match std::process::Command::new("pg_config").arg("--bindir").output() {
        Ok(output) if output.status.success() => {
            let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            if has_tools(&dir) {
                return Ok(dir);
            }
            tried.push(format!("pg_config --bindir ({})", dir.display()));
        }
        Ok(output) => tried.push(format!("pg_config --bindir (exit {})", output.status)),
        Err(e) => tried.push(format!("pg_config ({e})")),
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_tools(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    tried.push("/usr/lib/postgresql/*/bin".to_owned());
    if let Some(dir) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| has_tools(dir))
    {
        return Ok(dir);
    }
    tried.push("PATH".to_owned());
    anyhow::bail!(
        "no PostgreSQL server binaries (initdb, pg_ctl) found; tried {}. Install the server \
         (`apt-get install postgresql`, which `.ci/run` does) or set {PG_BINDIR_ENV}",
        tried.join(", ")
    )
}

fn running_as_root() -> anyhow::Result<bool> {
    Ok(id(&["-u"])? == 0)
}

fn postgres_ids() -> anyhow::Result<(u32, u32)> {
    let ids = id(&["-u", "postgres"]).and_then(|uid| Ok((uid, id(&["-g", "postgres"])?)));
    ids.context(
        "running as root, and PostgreSQL refuses to run as root, but there is no `postgres` \
         user to run it as (installing the postgresql package creates one)",
    )
}

fn id(args: &[&str]) -> anyhow::Result<u32> {
    let output = std::process::Command::new("id")
        .args(args)
        .output()
        .context("running id")?;
    anyhow::ensure!(
        output.status.success(),
        "id {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("id {} printed {text:?}", args.join(" ")))
}

/// Stops and removes clusters left by test processes that no longer exist (killed runs),
/// so their servers do not pile up. Best effort: problems are logged.
fn sweep_orphan_clusters() {
    let entries = match std::fs::read_dir(std::env::temp_dir()) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the temporary directory for orphan clusters");
            return;
        }
    };
    for entry in entries.filter_map(Result::ok) {
        let is_cluster = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(DIR_PREFIX));
        if !is_cluster {
            continue;
        }
        let root = entry.path();
        let owner = std::fs::read_to_string(root.join("owner.pid"))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        let Some(owner) = owner else {
            continue; // being created right now, or not ours to judge
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        if root.join("data/postmaster.pid").exists() {
            let stopped = find_bin_dir().and_then(|bin| {
                let as_postgres = running_as_root()?;
                stop_blocking(&bin, as_postgres, &root)
            });
            if let Err(e) = stopped {
                tracing::warn!(dir = %root.display(), error = %format!("{e:#}"), "cannot stop an orphan cluster");
                continue;
            }
        }
        match std::fs::remove_dir_all(&root) {
            Ok(()) => tracing::info!(dir = %root.display(), "removed an orphan test cluster"),
            Err(e) => {
                tracing::warn!(dir = %root.display(), error = %e, "cannot remove an orphan cluster")
            }
        }
    }
}
