//! The network edges against a real server: TLS and mTLS on the gRPC port
//! with certificates made at test time (and swapped while it runs), TLS to
//! real PostgreSQL servers in each `sslmode`, message and stream limits, the
//! per-identity query rate limit, and client addresses behind a trusted
//! proxy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::history_service_client::HistoryServiceClient;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_server::app::RunningServer;
use pgfleet_testkit::{PgCluster, TestCa, wait_until};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{self, Fleet, bearer, forwarded, run_grpcurl, run_sql, scalar, session_on};

fn query(channel: &Channel) -> QueryServiceClient<Channel> {
    QueryServiceClient::new(channel.clone())
}

fn history(channel: &Channel) -> HistoryServiceClient<Channel> {
    HistoryServiceClient::new(channel.clone())
}

fn execute_on(query: &str, cloud: &str, database: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        query: query.to_owned(),
        database: database.to_owned(),
        scope: Some(pb::execute_request::Scope::Cloud(cloud.to_owned())),
        ..Default::default()
    }
}

/// The first cell of the first row of a one-target result, as text.
fn first_cell(response: &pb::ExecuteResponse) -> String {
    use pb::cell::Kind;
    let cell = response
        .results
        .first()
        .and_then(|r| r.statements.first())
        .and_then(|s| s.rows.first())
        .and_then(|row| row.cells.first())
        .and_then(|cell| cell.kind.clone());
    match cell {
        Some(Kind::TextValue(v) | Kind::FormattedValue(v)) => v,
        Some(Kind::BoolValue(v)) => v.to_string(),
        other => format!("{other:?}"),
    }
}

// ---------------------------------------------------------------- gRPC TLS

/// Certificate files for the server, in a directory that lives as long as
/// the test.
struct ServerFiles {
    dir: tempfile::TempDir,
}

impl ServerFiles {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Installs a server certificate from `ca` as server.crt/server.key the
    /// way rotation tools do: each file written aside, then renamed over.
    fn install_server_cert(&self, ca: &TestCa) -> anyhow::Result<()> {
        let issued = ca.server_cert(&["localhost", "127.0.0.1"])?;
        issued.write_to(self.dir.path(), "next")?;
        std::fs::rename(self.path("next.key"), self.path("server.key"))?;
        std::fs::rename(self.path("next.crt"), self.path("server.crt"))?;
        Ok(())
    }

    fn write_pem(&self, name: &str, pem: &str) -> anyhow::Result<PathBuf> {
        let path = self.path(name);
        std::fs::write(&path, pem)?;
        Ok(path)
    }

    /// The `[server.tls]` table (appended after the clouds).
    fn tls_toml(&self, client_ca: Option<&Path>) -> String {
        let mut text = format!(
            "[server.tls]\ncert_file = '{}'\nkey_file = '{}'\nreload_interval = '1s'\n",
            self.path("server.crt").display(),
            self.path("server.key").display()
        );
        if let Some(ca) = client_ca {
            text.push_str(&format!("client_ca_file = '{}'\n", ca.display()));
        }
        text
    }
}

/// A channel over TLS trusting `ca_pem`, presenting `client` if given.
async fn tls_channel(
    server: &RunningServer,
    ca_pem: &str,
    client: Option<&pgfleet_testkit::IssuedCert>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(client) = client {
        tls = tls.identity(Identity::from_pem(&client.cert_pem, &client.key_pem));
    }
    Endpoint::from_shared(format!("https://localhost:{}", server.local_addr().port()))?
        .tls_config(tls)?
        .connect()
        .await
}

/// Health/Check over a fresh connection: the serving status, or why there
/// was no answer.
async fn health(channel: Result<Channel, tonic::transport::Error>) -> Result<ServingStatus, String> {
    let channel = channel.map_err(|e| format!("connect: {e:?}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map_err(|status| format!("call: {status:?}"))?;
    Ok(response.into_inner().status())
}

async fn grpcurl(args: Vec<String>) -> anyhow::Result<(bool, String, String)> {
    Ok(tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_grpcurl(&args)
    })
    .await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_port_serves_only_tls_and_picks_up_a_new_certificate_without_restart() -> anyhow::Result<()> {
    let first_ca = TestCa::new("pgfleet test CA 1")?;
    let files = ServerFiles::new()?;
    files.install_server_cert(&first_ca)?;
    let ca_file = files.write_pem("ca1.crt", &first_ca.cert_pem())?;
    let fleet = Fleet::create().await?;
    let server = fleet.start(&files.tls_toml(None)).await?;
    let port = server.local_addr().port();

    // A client trusting the CA gets an answer.
    assert_eq!(
        health(tls_channel(&server, &first_ca.cert_pem(), None).await).await,
        Ok(ServingStatus::Serving)
    );
    // A plaintext client gets none: its HTTP/2 preface is no TLS handshake.
    let plaintext = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect()
        .await;
    let refused = health(plaintext).await;
    assert!(refused.is_err(), "plaintext answered: {refused:?}");

    // grpcurl with the CA file, and grpcurl in plaintext.
    let target = format!("127.0.0.1:{port}");
    let (ok, out, err) = grpcurl(vec![
        "-cacert".into(),
        ca_file.display().to_string(),
        target.clone(),
        "grpc.health.v1.Health/Check".into(),
    ])
    .await?;
    assert!(ok && out.contains("\"SERVING\""), "grpcurl over TLS: {out} {err}");
    let (ok, out, _) = grpcurl(vec![
        "-plaintext".into(),
        "-connect-timeout".into(),
        "3".into(),
        target.clone(),
        "grpc.health.v1.Health/Check".into(),
    ])
    .await?;
    assert!(
        !ok && !out.contains("SERVING"),
        "grpcurl plaintext answered: {out}"
    );

    // The full stack over TLS: login, a write, its record names the peer.
    let password = fleet.create_user("tls-user", Role::User).await?;
    let channel = tls_channel(&server, &first_ca.cert_pem(), None).await?;
    let token = support::login(&channel, "tls-user", &password).await?;
    run_sql_on(&fleet, "aws", "app", "CREATE TABLE tls_items (id int)").await?;
    let done = query(&channel)
        .execute(bearer(
            execute_on("INSERT INTO tls_items VALUES (1)", "aws", "app"),
            &token,
        ))
        .await?
        .into_inner();
    assert!(done.success, "{done:?}");
    let record = history(&channel)
        .get_execution(bearer(
            pb::GetExecutionRequest {
                id: done.execution_id,
            },
            &token,
        ))
        .await?
        .into_inner()
        .execution
        .unwrap_or_default();
    assert!(
        record.client_address.starts_with("127.0.0.1:"),
        "{}",
        record.client_address
    );

    // Rotation: a certificate from another CA replaces the files; new
    // connections get it while the same server keeps running.
    let second_ca = TestCa::new("pgfleet test CA 2")?;
    files.install_server_cert(&second_ca)?;
    wait_until(Duration::from_secs(20), Duration::from_millis(200), async || {
        health(tls_channel(&server, &second_ca.cert_pem(), None).await).await == Ok(ServingStatus::Serving)
    })
    .await?;
    let stale = health(tls_channel(&server, &first_ca.cert_pem(), None).await).await;
    assert!(stale.is_err(), "the old certificate is still served: {stale:?}");
    assert_eq!(server.local_addr().port(), port);

    server.shutdown().await?;
    Ok(())
}

/// `run_sql` for a fleet without a session.
async fn run_sql_on(fleet: &Fleet, cloud: &str, name: &str, sql: &str) -> anyhow::Result<()> {
    let database = fleet
        .databases
        .iter()
        .find(|(c, n, _)| c == cloud && n == name)
        .map(|(_, _, db)| db)
        .ok_or_else(|| anyhow::anyhow!("no database {name} in {cloud}"))?;
    let mut connection = database.connect().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut connection)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_admits_only_clients_with_a_certificate_from_the_client_ca() -> anyhow::Result<()> {
    let server_ca = TestCa::new("pgfleet server CA")?;
    let client_ca = TestCa::new("pgfleet client CA")?;
    let stranger_ca = TestCa::new("someone else's CA")?;
    let files = ServerFiles::new()?;
    files.install_server_cert(&server_ca)?;
    let client_ca_file = files.write_pem("clients.crt", &client_ca.cert_pem())?;
    let fleet = Fleet::create().await?;
    let server = fleet.start(&files.tls_toml(Some(&client_ca_file))).await?;

    let no_cert = health(tls_channel(&server, &server_ca.cert_pem(), None).await).await;
    assert!(
        no_cert.is_err(),
        "a client without a certificate was answered: {no_cert:?}"
    );

    let foreign = stranger_ca.client_cert("mallory")?;
    let foreign_answer = health(tls_channel(&server, &server_ca.cert_pem(), Some(&foreign)).await).await;
    assert!(
        foreign_answer.is_err(),
        "a certificate from another CA was accepted: {foreign_answer:?}"
    );

    let ours = client_ca.client_cert("etl-service")?;
    assert_eq!(
        health(tls_channel(&server, &server_ca.cert_pem(), Some(&ours)).await).await,
        Ok(ServingStatus::Serving)
    );

    // grpcurl with a client certificate, and without one.
    let (cert, key) = ours.write_to(files.dir.path(), "client")?;
    let server_ca_file = files.write_pem("server-ca.crt", &server_ca.cert_pem())?;
    let target = format!("127.0.0.1:{}", server.local_addr().port());
    let base = vec!["-cacert".to_owned(), server_ca_file.display().to_string()];
    let mut with_cert = base.clone();
    with_cert.extend([
        "-cert".to_owned(),
        cert.display().to_string(),
        "-key".to_owned(),
        key.display().to_string(),
        target.clone(),
        "grpc.health.v1.Health/Check".to_owned(),
    ]);
    let (ok, out, err) = grpcurl(with_cert).await?;
    assert!(
        ok && out.contains("\"SERVING\""),
        "grpcurl with a client certificate: {out} {err}"
    );
    let mut without = base;
    without.extend([
        "-connect-timeout".to_owned(),
        "3".to_owned(),
        target,
        "grpc.health.v1.Health/Check".to_owned(),
    ]);
    let (ok, out, _) = grpcurl(without).await?;
    assert!(
        !ok && !out.contains("SERVING"),
        "grpcurl without a certificate answered: {out}"
    );

    server.shutdown().await?;
    Ok(())
}

// ---------------------------------------------------------- PostgreSQL TLS

#[tokio::test(flavor = "multi_thread")]
async fn postgres_sslmodes_verify_require_and_disable_against_real_servers() -> anyhow::Result<()> {
    let ca = TestCa::new("postgres test CA")?;
    let wrong_ca = TestCa::new("not the postgres CA")?;
    let tls_cluster = PgCluster::start_with_tls(&ca.server_cert(&["localhost", "127.0.0.1"])?).await?;
    tls_cluster.create_database("secure").await?;
    let plain_cluster = PgCluster::start().await?;
    plain_cluster.create_database("secure").await?;

    let files = tempfile::tempdir()?;
    let ca_file = files.path().join("pg-ca.crt");
    ca.write_cert(&ca_file)?;
    let wrong_ca_file = files.path().join("wrong-ca.crt");
    wrong_ca.write_cert(&wrong_ca_file)?;

    // The password is not needed (trust auth); it is here to prove it never
    // shows up in an error.
    let cloud = |name: &str, port: u16, mode: &str, root: Option<&Path>| {
        let root = root.map_or_else(String::new, |p| format!("ssl_root_cert = '{}'\n", p.display()));
        format!(
            "[[clouds]]\nname = '{name}'\n[[clouds.databases]]\nname = 'secure'\nhost = '127.0.0.1'\nport = {port}\n\
             user = 'postgres'\npassword = 'pg-secret-do-not-print'\ndatabase = 'secure'\nsslmode = '{mode}'\n{root}"
        )
    };
    let extra = [
        cloud("verified", tls_cluster.port(), "verify-full", Some(&ca_file)),
        cloud("required", tls_cluster.port(), "require", None),
        cloud("forged", tls_cluster.port(), "verify-full", Some(&wrong_ca_file)),
        cloud("plain", plain_cluster.port(), "disable", None),
    ]
    .concat();
    // One attempt: a certificate that does not verify will not verify later.
    let s = session_on(
        Fleet::create().await?,
        &format!("{extra}[retry]\nmax_attempts = 1\n"),
    )
    .await?;

    // As USER: these clusters have no reader_user (READERs would be refused).
    let uses_tls = "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    for (cloud, want) in [("verified", "true"), ("required", "true"), ("plain", "false")] {
        let response = query(&s.channel)
            .execute(bearer(execute_on(uses_tls, cloud, "secure"), &s.user))
            .await?
            .into_inner();
        assert!(response.success, "{cloud}: {response:?}");
        assert_eq!(first_cell(&response), want, "{cloud}: TLS in use");
    }

    let response = query(&s.channel)
        .execute(bearer(execute_on("SELECT 1", "forged", "secure"), &s.user))
        .await?
        .into_inner();
    assert!(
        !response.success,
        "a server with an unverifiable certificate was used"
    );
    let error = response.results[0].error.clone().unwrap_or_default();
    assert_eq!(error.code, i32::from(pb::ErrorCode::Unavailable), "{error:?}");
    let message = error.message.to_lowercase();
    assert!(
        message.contains("tls") && message.contains("certificate"),
        "the error does not say it is about TLS: {}",
        error.message
    );
    assert!(
        message.contains("forged"),
        "the error does not name the target: {}",
        error.message
    );
    assert!(
        !error.message.contains("pg-secret-do-not-print"),
        "{}",
        error.message
    );
    Ok(())
}

// ------------------------------------------------------------------ limits

#[tokio::test(flavor = "multi_thread")]
async fn oversized_messages_are_refused_and_http2_advertises_the_stream_limit() -> anyhow::Result<()> {
    let mut fleet = Fleet::create().await?;
    // Just above the 1 MiB query text limit (which it may not undercut).
    fleet.server_toml = "max_message_bytes = 1100000\nmax_concurrent_streams = 7\n".to_owned();
    let s = session_on(fleet, "").await?;

    // Under the limit: answered.
    let fits = format!("SELECT 1 -- {}", "x".repeat(20_000));
    let valid = query(&s.channel)
        .validate(bearer(pb::ValidateRequest { query: fits }, &s.reader))
        .await?
        .into_inner();
    assert!(valid.valid);

    // Over it: tonic refuses the request before any service code runs.
    let too_big = format!("SELECT 1 -- {}", "x".repeat(2_000_000));
    let status = query(&s.channel)
        .validate(bearer(pb::ValidateRequest { query: too_big }, &s.reader))
        .await
        .expect_err("a 2 MB request passed a 1.1 MB limit");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(status.message().contains("too large"), "{status:?}");

    // A result over the limit is never built: the result budgets are capped
    // under the message limit, so the target stops with RESOURCE_EXHAUSTED
    // naming the limit and the response itself still fits.
    let response = query(&s.channel)
        .execute(bearer(
            execute_on("SELECT repeat('y', 2000000)", "aws", "app"),
            &s.reader,
        ))
        .await?
        .into_inner();
    assert!(!response.success);
    let error = response.results[0].error.clone().unwrap_or_default();
    assert_eq!(
        error.code,
        i32::from(pb::ErrorCode::ResourceExhausted),
        "{error:?}"
    );
    assert!(error.message.contains("server.max_message_bytes"), "{error:?}");

    // The stream limit is what the server announces in its HTTP/2 SETTINGS.
    let tcp = tokio::net::TcpStream::connect(s.server.local_addr()).await?;
    let (_send, mut connection) = h2::client::handshake(tcp).await?;
    let announced = tokio::time::timeout(
        Duration::from_secs(10),
        std::future::poll_fn(|cx| {
            use std::future::Future as _;
            if let std::task::Poll::Ready(result) = std::pin::Pin::new(&mut connection).poll(cx) {
                return std::task::Poll::Ready(Err(format!("connection ended: {result:?}")));
            }
            match connection.max_concurrent_send_streams() {
                usize::MAX => std::task::Poll::Pending,
                limit => std::task::Poll::Ready(Ok(limit)),
            }
        }),
    )
    .await?;
    assert_eq!(announced, Ok(7));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn query_rate_limit_refuses_over_the_burst_per_identity_with_retry_info() -> anyhow::Result<()> {
    // One token per 100 s: nothing refills while the test runs.
    let s = session_on(
        Fleet::create().await?,
        "[query.rate_limit]\nper_second = 0.01\nburst = 3\n",
    )
    .await?;
    run_sql(&s, "aws", "app", "CREATE TABLE limited (id int)").await?;

    for id in 1..=3 {
        let done = query(&s.channel)
            .execute(bearer(
                execute_on(&format!("INSERT INTO limited VALUES ({id})"), "aws", "app"),
                &s.user,
            ))
            .await?
            .into_inner();
        assert!(done.success, "call {id} within the burst: {done:?}");
    }
    let status = query(&s.channel)
        .execute(bearer(
            execute_on("INSERT INTO limited VALUES (4)", "aws", "app"),
            &s.user,
        ))
        .await
        .expect_err("the call over the burst ran");
    support::assert_rate_limited(&status, "user:s-user", Duration::from_secs(100));
    // ExecuteStream draws on the same bucket.
    let stream = query(&s.channel)
        .execute_stream(bearer(
            pb::ExecuteStreamRequest {
                query: "SELECT 1".to_owned(),
                database: "app".to_owned(),
                ..Default::default()
            },
            &s.user,
        ))
        .await;
    assert_eq!(
        stream.err().map(|status| status.code()),
        Some(Code::ResourceExhausted)
    );

    // Another identity has its own bucket.
    let other = query(&s.channel)
        .execute(bearer(
            execute_on("SELECT count(*) FROM limited", "aws", "app"),
            &s.reader,
        ))
        .await?
        .into_inner();
    assert!(other.success);

    // The refused write never ran and is not on record.
    assert_eq!(
        scalar(
            &s,
            "aws",
            "app",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM limited"
        )
        .await?,
        Some("1,2,3".to_owned())
    );
    let records = history(&s.channel)
        .list_executions(bearer(
            pb::ListExecutionsRequest {
                filter: Some(pb::ExecutionFilter {
                    username: "s-user".to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &s.master,
        ))
        .await?
        .into_inner();
    let queries: Vec<&str> = records.executions.iter().map(|r| r.query.as_str()).collect();
    assert_eq!(queries.len(), 3, "{queries:?}");
    assert!(!queries.iter().any(|q| q.contains("VALUES (4)")), "{queries:?}");
    Ok(())
}

// ---------------------------------------------------------- trusted proxies

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_the_forwarded_address_is_audited_and_throttled() -> anyhow::Result<()> {
    let mut fleet = Fleet::create().await?;
    fleet.server_toml = "trusted_proxies = ['127.0.0.1/32']\n".to_owned();
    // The three session logins come from 127.0.0.1 itself.
    fleet.auth_toml.push_str("login_attempts_per_address = 3\n");
    let mut s = session_on(fleet, "").await?;
    run_sql(&s, "aws", "app", "CREATE TABLE proxied (id int)").await?;

    let write = execute_on("INSERT INTO proxied VALUES (1)", "aws", "app");
    let done = query(&s.channel)
        .execute(forwarded(write.clone(), &s.user, "198.51.100.1, 203.0.113.7"))
        .await?
        .into_inner();
    let record = history(&s.channel)
        .get_execution(bearer(
            pb::GetExecutionRequest {
                id: done.execution_id,
            },
            &s.user,
        ))
        .await?
        .into_inner()
        .execution
        .unwrap_or_default();
    assert_eq!(
        record.client_address, "203.0.113.7",
        "the right-most untrusted hop"
    );

    // Login throttling counts per forwarded address.
    let login = |username: &str| pb::LoginRequest {
        username: username.to_owned(),
        password: "not-the-password".to_owned(),
    };
    let mut codes = Vec::new();
    for attempt in 1..=4 {
        let mut request = tonic::Request::new(login(&format!("nobody{attempt}")));
        request
            .metadata_mut()
            .insert("x-forwarded-for", "203.0.113.7".parse()?);
        codes.push(
            support::auth_client(&s.channel)
                .login(request)
                .await
                .err()
                .map(|e| e.code()),
        );
    }
    assert_eq!(
        codes,
        [
            Some(Code::Unauthenticated),
            Some(Code::Unauthenticated),
            Some(Code::Unauthenticated),
            Some(Code::ResourceExhausted)
        ]
    );
    let mut elsewhere = tonic::Request::new(login("nobody5"));
    elsewhere
        .metadata_mut()
        .insert("x-forwarded-for", "203.0.113.8".parse()?);
    let code = support::auth_client(&s.channel)
        .login(elsewhere)
        .await
        .err()
        .map(|e| e.code());
    assert_eq!(
        code,
        Some(Code::Unauthenticated),
        "another forwarded address has its own count"
    );

    // A replica of the same fleet (same history store and sessions) that
    // trusts no proxy ignores the header.
    s.fleet.server_toml.clear();
    let replica = s.fleet.start("").await?;
    let channel = support::channel(&replica).await?;
    let done = query(&channel)
        .execute(forwarded(write, &s.user, "203.0.113.7"))
        .await?
        .into_inner();
    let record = history(&channel)
        .get_execution(bearer(
            pb::GetExecutionRequest {
                id: done.execution_id,
            },
            &s.user,
        ))
        .await?
        .into_inner()
        .execution
        .unwrap_or_default();
    assert!(
        record.client_address.starts_with("127.0.0.1:"),
        "{}",
        record.client_address
    );
    replica.shutdown().await?;
    Ok(())
}
