//! Shared test fixtures: a fleet of throwaway databases and a running server.
//! The benchmarks (`benches/`) include this module too.

use std::path::{Path, PathBuf};
use std::process::Command;

use pgfleet_config::{FileFormat, Inputs, LoadedConfig, ProcessEnv};
use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::auth_service_client::AuthServiceClient;
use pgfleet_server::app::RunningServer;
use pgfleet_server::auth::{Authenticator, SessionStore, UserSpec};
use pgfleet_testkit::TestDatabase;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// Two clouds with two databases each, plus a history store.
pub struct Fleet {
    pub history: TestDatabase,
    /// (cloud, logical name, database)
    pub databases: Vec<(String, String, TestDatabase)>,
    /// Body of the `[auth]` table (bcrypt cost 4 keeps tests fast).
    pub auth_toml: String,
    /// Redis for sessions; `None` keeps them in the server process.
    pub redis_url: Option<String>,
    /// Reach the history store through this port (a fault proxy) instead.
    pub history_port: Option<u16>,
    /// Body of the `[replication]` table: the scheduler is off unless a
    /// test turns it on, so jobs created by tests run only when asked.
    pub replication_toml: String,
    /// Extra lines of the `[server]` table (limits, trusted proxies).
    pub server_toml: String,
    /// Body of the `[audit.chain]` table: a chain key of this fleet's own
    /// (the server refuses to start without one); empty for no table.
    pub audit_chain_toml: String,
    /// Extra lines of every `[[clouds.databases]]` entry (e.g. its `pool`).
    pub database_toml: String,
    /// Configure the testkit's unprivileged reader login as every
    /// database's `reader_user` (pgfleet refuses READER executions
    /// without one); false for tests of exactly that refusal.
    pub reader_login: bool,
}

impl Fleet {
    pub async fn create() -> anyhow::Result<Self> {
        let history = TestDatabase::create("srv_history").await?;
        let mut databases = Vec::new();
        for cloud in ["aws", "gcp"] {
            for name in ["app", "analytics"] {
                let db = TestDatabase::create(&format!("srv_{cloud}_{name}")).await?;
                databases.push((cloud, name, db));
            }
        }
        Self::with_databases(history, databases).await
    }

    /// A fleet of the caller's databases: `(cloud, logical name, database)`,
    /// a cloud's databases next to each other. Each database grants the
    /// testkit's reader login what it needs (see `reader_login`).
    pub async fn with_databases(
        history: TestDatabase,
        databases: Vec<(&str, &str, TestDatabase)>,
    ) -> anyhow::Result<Self> {
        let mut owned = Vec::new();
        for (cloud, name, db) in databases {
            db.grant_reader().await?;
            owned.push((cloud.to_owned(), name.to_owned(), db));
        }
        Ok(Self {
            history,
            databases: owned,
            auth_toml: "bcrypt_cost = 4\nmin_password_length = 10\n".to_owned(),
            redis_url: Some(pgfleet_testkit::redis_url()),
            history_port: None,
            // Runs notice a disabled job within 100 ms, so tests need not
            // copy for long to see it.
            replication_toml: "scheduler = false\nwatch_interval = '100ms'\n".to_owned(),
            server_toml: String::new(),
            audit_chain_toml: format!("key = '{}'\n", test_chain_key()),
            database_toml: String::new(),
            reader_login: true,
        })
    }

    /// TOML for this fleet; `extra_clouds` is appended verbatim.
    pub fn config_toml(&self, extra_clouds: &str) -> String {
        let mut text = format!(
            "[server]\nlisten_addr = '127.0.0.1:0'\nshutdown_grace = '2s'\n{}\n\
             [history]\nhost = '{}'\nport = {}\nuser = '{}'\ndatabase = '{}'\nsslmode = 'disable'\n",
            self.server_toml,
            self.history.host(),
            self.history_port.unwrap_or(self.history.port()),
            self.history.user(),
            self.history.name()
        );
        text.push_str(&format!("[auth]\n{}\n", self.auth_toml));
        text.push_str(&format!("[replication]\n{}\n", self.replication_toml));
        // A sub-table, so a test's own `[audit]` table can still follow.
        if !self.audit_chain_toml.is_empty() {
            text.push_str(&format!("[audit.chain]\n{}\n", self.audit_chain_toml));
        }
        if let Some(url) = &self.redis_url {
            // The history database's name is unique per fleet: so are the keys.
            text.push_str(&format!(
                "[redis]\nurl = '{url}'\nkey_prefix = '{}:'\nconnect_timeout = '500ms'\n",
                self.history.name()
            ));
        }
        let mut current_cloud = "";
        for (cloud, name, db) in &self.databases {
            if cloud != current_cloud {
                text.push_str(&format!("[[clouds]]\nname = '{cloud}'\n"));
                current_cloud = cloud;
            }
            text.push_str(&format!(
                "[[clouds.databases]]\nname = '{name}'\nhost = '{}'\nport = {}\nuser = '{}'\ndatabase = '{}'\n\
                 sslmode = 'disable'\nschemas = ['public']\n",
                db.host(),
                db.port(),
                db.user(),
                db.name()
            ));
            text.push_str(&self.database_toml);
            if self.reader_login {
                text.push_str(&reader_toml());
            }
        }
        text.push_str(extra_clouds);
        text
    }

    pub fn config(&self, extra_clouds: &str) -> LoadedConfig {
        let text = self.config_toml(extra_clouds);
        pgfleet_config::load_str(
            &text,
            FileFormat::Toml,
            Path::new("test.toml"),
            &Inputs {
                variables: &ProcessEnv,
                overrides: Vec::new(),
            },
        )
        .unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
    }

    pub async fn start(&self, extra_clouds: &str) -> anyhow::Result<RunningServer> {
        Ok(RunningServer::start(self.config(extra_clouds)).await?)
    }
}

impl Fleet {
    /// The database `name` of `cloud`.
    pub fn database(&self, cloud: &str, name: &str) -> &TestDatabase {
        self.databases
            .iter()
            .find(|(c, n, _)| c == cloud && n == name)
            .map(|(_, _, db)| db)
            .unwrap_or_else(|| panic!("no database {name} in cloud {cloud}"))
    }

    /// The `[audit]` settings the fleet's servers run with (their chain
    /// key included), for an `AuditLog` a test drives directly.
    pub fn audit_config(&self) -> pgfleet_config::AuditConfig {
        self.config("").config.audit
    }

    /// Creates a user straight in the history store (the server must have
    /// started once, for the migrations); returns its password.
    pub async fn create_user(&self, username: &str, role: Role) -> anyhow::Result<String> {
        let config = self.config("").config;
        let pool = self.history.pool().await?;
        let authenticator = Authenticator::new(pool.clone(), SessionStore::memory(), config.auth).await?;
        let password = format!("Pw-{}", uuid::Uuid::new_v4().simple());
        authenticator
            .create_user(&UserSpec {
                username,
                email: &format!("{username}@example.com"),
                name: username,
                password: &password,
                role,
            })
            .await?;
        pool.close().await;
        Ok(password)
    }

    /// Creates `username` with `role` ([`Fleet::create_user`]) and logs it
    /// in on `channel`; returns the session token.
    pub async fn log_in(&self, channel: &Channel, username: &str, role: Role) -> anyhow::Result<String> {
        let password = self.create_user(username, role).await?;
        Ok(login(channel, username, &password).await?)
    }
}

/// A random audit chain key (64 hex digits).
pub fn test_chain_key() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A gRPC channel to a running server.
pub async fn channel(server: &RunningServer) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{}", server.local_addr()))?
        .connect()
        .await?)
}

pub fn auth_client(channel: &Channel) -> AuthServiceClient<Channel> {
    AuthServiceClient::new(channel.clone())
}

/// `message` with `authorization: Bearer <token>`.
pub fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = MetadataValue::try_from(format!("Bearer {token}")).expect("token is a valid header");
    request.metadata_mut().insert("authorization", value);
    request
}

/// [`bearer`], as forwarded by a proxy: `x-forwarded-for: <forwarded_for>`.
pub fn forwarded<T>(message: T, token: &str, forwarded_for: &str) -> Request<T> {
    let mut request = bearer(message, token);
    let value = MetadataValue::try_from(forwarded_for).expect("header value");
    request.metadata_mut().insert("x-forwarded-for", value);
    request
}

/// `message` with `x-api-key: <key>`.
pub fn api_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = MetadataValue::try_from(key).expect("key is a valid header");
    request.metadata_mut().insert("x-api-key", value);
    request
}

/// Logs in and returns the session token.
pub async fn login(channel: &Channel, username: &str, password: &str) -> Result<String, Status> {
    let response = auth_client(channel)
        .login(pb::LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        })
        .await?;
    Ok(response.into_inner().token)
}

/// The workspace root (for `.tools/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The real grpcurl binary: on PATH, or where `scripts/bootstrap` puts it.
pub fn grpcurl() -> PathBuf {
    let local = workspace_root().join(".tools/venv/bin/grpcurl");
    if local.is_file() {
        return local;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("grpcurl"))
        .find(|candidate| candidate.is_file());
    on_path.unwrap_or_else(|| {
        panic!("grpcurl not found: run scripts/bootstrap (it installs .tools/venv/bin/grpcurl)")
    })
}

/// Runs grpcurl with `args`; returns (success, stdout, stderr).
pub fn run_grpcurl(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(grpcurl())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run grpcurl: {e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A running fleet with a logged-in user of each role.
pub struct Session {
    pub fleet: Fleet,
    pub server: pgfleet_server::app::RunningServer,
    pub channel: Channel,
    pub master: String,
    pub user: String,
    pub reader: String,
}

pub async fn session(extra: &str) -> anyhow::Result<Session> {
    session_on(Fleet::create().await?, extra).await
}

/// [`session`] on a fleet the caller prepared (e.g. with `server_toml`).
pub async fn session_on(fleet: Fleet, extra: &str) -> anyhow::Result<Session> {
    let server = fleet.start(extra).await?;
    let channel = channel(&server).await?;
    let mut tokens = Vec::new();
    for (name, role) in [
        ("s-master", Role::Master),
        ("s-user", Role::User),
        ("s-reader", Role::Reader),
    ] {
        tokens.push(fleet.log_in(&channel, name, role).await?);
    }
    let reader = tokens.pop().unwrap_or_default();
    let user = tokens.pop().unwrap_or_default();
    let master = tokens.pop().unwrap_or_default();
    Ok(Session {
        fleet,
        server,
        channel,
        master,
        user,
        reader,
    })
}

/// A cloud `frozen` whose database `app` is gcp's analytics database of
/// `fleet` under another name, configured `read_only = true`.
pub fn frozen_copy_toml(fleet: &Fleet) -> anyhow::Result<String> {
    let database = fleet
        .databases
        .iter()
        .find(|(c, n, _)| c == "gcp" && n == "analytics")
        .map(|(_, _, db)| db)
        .ok_or_else(|| anyhow::anyhow!("no gcp/analytics in the fleet"))?;
    Ok(format!(
        "[[clouds]]\nname = 'frozen'\n[[clouds.databases]]\nname = 'app'\nhost = '{}'\nport = {}\n\
         user = '{}'\ndatabase = '{}'\nsslmode = 'disable'\nread_only = true\n",
        database.host(),
        database.port(),
        database.user(),
        database.name()
    ))
}

/// The database `name` of `cloud` in the session's fleet.
pub fn fleet_database<'a>(s: &'a Session, cloud: &str, name: &str) -> &'a TestDatabase {
    s.fleet.database(cloud, name)
}

/// Runs `sql` (one or more statements) directly on one fleet database, not
/// through pgfleet.
pub async fn run_sql(s: &Session, cloud: &str, name: &str, sql: &str) -> anyhow::Result<()> {
    let mut connection = fleet_database(s, cloud, name).connect().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut connection)
        .await?;
    Ok(())
}

/// A wire target.
pub fn target(cloud: &str, database: &str) -> pb::Target {
    pb::Target {
        cloud: cloud.to_owned(),
        database: database.to_owned(),
    }
}

/// The field an INVALID_ARGUMENT status names in its BadRequest detail.
pub fn bad_field(status: &Status) -> String {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .bad_request()
        .and_then(|bad| bad.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

/// Asserts `status` is a rate limit's refusal: RESOURCE_EXHAUSTED naming
/// `who`, with a `google.rpc.RetryInfo` delay in (0, `at_most`].
pub fn assert_rate_limited(status: &Status, who: &str, at_most: std::time::Duration) {
    use tonic_types::StatusExt as _;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(who), "{}", status.message());
    let retry = status
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo with a delay");
    assert!(
        retry > std::time::Duration::ZERO && retry <= at_most,
        "retry in {retry:?}"
    );
}

/// The first column of the first row of `sql`, as text.
pub async fn scalar(s: &Session, cloud: &str, name: &str, sql: &str) -> anyhow::Result<Option<String>> {
    let mut connection = fleet_database(s, cloud, name).connect().await?;
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut connection)
        .await?)
}

/// An ordered hash of a whole table (ordered by its `id`): equal hashes,
/// equal rows.
pub async fn table_hash(s: &Session, cloud: &str, name: &str, table: &str) -> anyhow::Result<String> {
    database_hash(fleet_database(s, cloud, name), table).await
}

/// [`table_hash`] of a table in any database.
pub async fn database_hash(database: &TestDatabase, table: &str) -> anyhow::Result<String> {
    let mut connection = database.connect().await?;
    let sql = format!("SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY id), '')) FROM {table} t");
    let hash: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(&mut connection)
        .await?;
    Ok(hash.unwrap_or_default())
}

/// The `reader_user` lines of a `[[clouds.databases]]` entry: the testkit's
/// unprivileged login (see `TestDatabase::grant_reader`).
pub fn reader_toml() -> String {
    format!(
        "reader_user = '{}'\nreader_password = '{}'\n",
        pgfleet_testkit::TEST_READER,
        pgfleet_testkit::TEST_READER_PASSWORD
    )
}

/// A third cloud, "azure", whose `app` database sits behind a fault proxy.
pub struct ProxiedCloud {
    pub database: TestDatabase,
    pub proxy: pgfleet_testkit::FaultProxy,
}

impl ProxiedCloud {
    /// `prefix` names the throwaway database.
    pub async fn start(prefix: &str) -> anyhow::Result<Self> {
        let database = TestDatabase::create(prefix).await?;
        database.grant_reader().await?;
        let proxy =
            pgfleet_testkit::FaultProxy::start(format!("{}:{}", database.host(), database.port())).await?;
        Ok(Self { database, proxy })
    }

    /// The `[[clouds]]` entry to pass to [`session`].
    pub fn toml(&self) -> String {
        format!(
            "[[clouds]]\nname = 'azure'\n[[clouds.databases]]\nname = 'app'\nhost = '127.0.0.1'\nport = {}\n\
             user = '{}'\ndatabase = '{}'\nsslmode = 'disable'\nschemas = ['public']\n{}",
            self.proxy.port(),
            self.database.user(),
            self.database.name(),
            reader_toml()
        )
    }

    /// Runs `sql` on the database directly (not through the proxy).
    pub async fn sql(&self, sql: &str) -> anyhow::Result<()> {
        let mut connection = self.database.connect().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut connection)
            .await?;
        Ok(())
    }
}

pub async fn count(s: &Session, cloud: &str, name: &str, table: &str) -> anyhow::Result<i64> {
    let text = scalar(s, cloud, name, &format!("SELECT count(*)::text FROM {table}")).await?;
    Ok(text.unwrap_or_default().parse()?)
}

/// A `pgfleet serve` child (a `Child` through `Deref`) whose stdout and
/// stderr are read while it runs: a pipe nobody reads fills up (64 KiB of
/// debug log, e.g. the migrations' SQL) and then blocks the server's logging
/// threads, and so the server.
pub struct ServerProcess {
    child: tokio::process::Child,
    /// stderr, then stdout, each read to its end.
    output: Vec<tokio::task::JoinHandle<String>>,
}

impl std::ops::Deref for ServerProcess {
    type Target = tokio::process::Child;

    fn deref(&self) -> &Self::Target {
        &self.child
    }
}

impl std::ops::DerefMut for ServerProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.child
    }
}

/// Reads `pipe` to its end in a task.
fn drain(
    pipe: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes).await;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// `pgfleet --config <config_path> serve` as an operator runs it (debug
/// logs, output captured), and a channel once it listens on `port`.
pub async fn spawn_server_binary(config_path: &Path, port: u16) -> anyhow::Result<(ServerProcess, Channel)> {
    spawn_server_binary_in(config_path, port, None).await
}

/// [`spawn_server_binary`] in `working_dir` (where it finds a `.env`).
pub async fn spawn_server_binary_in(
    config_path: &Path,
    port: u16,
    working_dir: Option<&Path>,
) -> anyhow::Result<(ServerProcess, Channel)> {
    spawn_server_binary_with(config_path, port, working_dir, &[]).await
}

/// [`spawn_server_binary_in`] with extra environment variables (e.g. a
/// test-only failpoint).
pub async fn spawn_server_binary_with(
    config_path: &Path,
    port: u16,
    working_dir: Option<&Path>,
    env: &[(&str, &str)],
) -> anyhow::Result<(ServerProcess, Channel)> {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfleet"));
    if let Some(dir) = working_dir {
        command.current_dir(dir);
    }
    command.envs(env.iter().copied());
    let mut child = command
        .env("PGFLEET_LOG", "debug")
        .args(["--config", &config_path.to_string_lossy(), "serve"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let output = vec![drain(child.stderr.take()), drain(child.stdout.take())];
    let server = ServerProcess { child, output };
    let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?;
    for _ in 0..200 {
        if let Ok(channel) = endpoint.connect().await {
            return Ok((server, channel));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("pgfleet serve did not listen on port {port}")
}

/// Sends `signal` (`TERM`, `HUP`) to a child process.
pub async fn send_signal(child: &tokio::process::Child, signal: &str) -> anyhow::Result<()> {
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("the process has exited"))?;
    let status = tokio::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// Everything the server wrote to stderr and stdout, after it exited.
pub async fn child_output(server: &mut ServerProcess) -> anyhow::Result<String> {
    let mut output = String::new();
    for drained in server.output.drain(..) {
        output.push_str(&drained.await?);
    }
    Ok(output)
}

/// The audit record of execution `id`, read through HistoryService.
pub async fn recorded(s: &Session, id: &str) -> anyhow::Result<pb::ExecutionRecord> {
    pgfleet_proto::pgfleet::v1::history_service_client::HistoryServiceClient::new(s.channel.clone())
        .get_execution(bearer(pb::GetExecutionRequest { id: id.to_owned() }, &s.master))
        .await?
        .into_inner()
        .execution
        .ok_or_else(|| anyhow::anyhow!("execution {id} is not on record"))
}

/// Panics anywhere in this process since [`count_panics`]: the fuzz
/// harnesses run the server in the test's process, and a handler's panic
/// reaches the client only as some status (CANCELLED, a reset stream).
static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts every panic in [`panics`], then reports it as before.
pub fn count_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// Panics counted since [`count_panics`] was first called.
pub fn panics() -> usize {
    PANICS.load(std::sync::atomic::Ordering::SeqCst)
}

/// `public.big`: `rows` rows of about 1 KiB each (`id`, then eight SHA-512s in hex), so
/// `pg_dump` writes about `rows` KiB and zstd halves it, no more (hex digits carry 4 bits a
/// byte). Unlogged: the fill writes no WAL, and `pg_dump` still dumps the rows.
pub fn big_table_sql(rows: u64) -> String {
    let payload = (0..8)
        .map(|k| format!("encode(sha512(('{k}:' || g)::bytea), 'hex')"))
        .collect::<Vec<_>>()
        .join(" || ");
    format!(
        "CREATE UNLOGGED TABLE public.big (id bigint NOT NULL, payload text NOT NULL);
         INSERT INTO public.big SELECT g, {payload} FROM generate_series(1, {rows}) g;"
    )
}

/// `orders (id bigint primary key, customer int, note text)` with `rows`
/// rows from `generate_series`: the table the CompareTables tests and
/// benchmark compare.
pub fn orders_sql(rows: impl std::fmt::Display) -> String {
    format!(
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer int, note text);\n\
         INSERT INTO orders SELECT g, g % 977, 'note ' || g FROM generate_series(1, {rows}) AS g;\n\
         ANALYZE orders;"
    )
}

/// Resident memory of this process (a test or bench that runs the server in process), in bytes.
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resident bytes of process `root` and all its descendants now (the sum of
/// their `VmRSS`); processes that exit while they are read are skipped.
pub fn tree_rss(root: u32) -> u64 {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().nth(1))
            .and_then(|field| field.parse().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut tree = vec![root];
    let mut next = 0;
    while next < tree.len() {
        let parent = tree[next];
        tree.extend(parents.iter().filter(|(_, p)| *p == parent).map(|(pid, _)| *pid));
        next += 1;
    }
    tree.iter().map(|pid| vm_rss(*pid).unwrap_or(0)).sum()
}

/// `VmRSS` of one process, in bytes.
fn vm_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The peak of [`tree_rss`] while it runs, sampled every 20 ms on a thread of
/// its own (not the runtime's: a busy runtime must not skip samples).
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
    /// [`tree_rss`] when sampling began.
    pub baseline: u64,
}

impl RssSampler {
    pub fn start(root: u32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let baseline = tree_rss(root);
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peak = baseline;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(tree_rss(root));
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            peak
        });
        Self {
            stop,
            thread,
            baseline,
        }
    }

    /// The peak seen, in bytes.
    pub fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(self.baseline)
    }
}
