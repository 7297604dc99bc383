//! Least privilege on the database side, end to end against the real server
//! and PostgreSQL: a READER's statements run under the database's
//! unprivileged `reader_user`, so PostgreSQL itself refuses what reads the
//! server (42501); without a `reader_user`, or with a privileged one, READER
//! executions are refused before any statement runs.

use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_testkit::TestDatabase;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{self, Fleet, bearer, session, session_on};

fn client(channel: &Channel) -> QueryServiceClient<Channel> {
    QueryServiceClient::new(channel.clone())
}

fn execute(query: &str, database: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        query: query.to_owned(),
        database: database.to_owned(),
        scope: Some(pb::execute_request::Scope::AllClouds(pb::AllClouds {})),
        ..Default::default()
    }
}

/// The SQLSTATE each target reported, in result order ("" for none).
fn sqlstates(response: &pb::ExecuteResponse) -> Vec<String> {
    response
        .results
        .iter()
        .map(|result| {
            result
                .error
                .as_ref()
                .and_then(|error| error.postgres.as_ref())
                .map(|postgres| postgres.sqlstate.clone())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn readers_cannot_read_the_server_through_their_login() -> anyhow::Result<()> {
    let s = session("").await?;
    // Plain SELECTs the classifier has no reason to refuse: only the login's
    // missing privileges stop them.
    let cases = [
        ("password hashes", "SELECT rolname, rolpassword FROM pg_authid"),
        ("configuration files", "SELECT * FROM pg_file_settings"),
        ("client authentication rules", "SELECT * FROM pg_hba_file_rules"),
    ];
    for (name, query) in cases {
        let response = client(&s.channel)
            .execute(bearer(execute(query, "app"), &s.reader))
            .await?
            .into_inner();
        assert!(!response.success, "{name}: {response:?}");
        assert_eq!(response.results.len(), 2, "{name}: {response:?}");
        assert_eq!(sqlstates(&response), ["42501", "42501"], "{name}: {response:?}");
    }
    // Server files: refused by the classifier, or by PostgreSQL when a text
    // gets past it (e.g. a repeated EXPLAIN option, `EXPLAIN (ANALYZE false,
    // ANALYZE)`, read otherwise than PostgreSQL reads it); never read.
    for query in [
        "SELECT pg_read_file('PG_VERSION')",
        "SELECT pg_ls_dir('.')",
        "EXPLAIN (ANALYZE false, ANALYZE) SELECT pg_read_file('PG_VERSION')",
    ] {
        match client(&s.channel)
            .execute(bearer(execute(query, "app"), &s.reader))
            .await
        {
            Ok(response) => {
                let response = response.into_inner();
                assert!(!response.success, "{query}: {response:?}");
                assert_eq!(sqlstates(&response), ["42501", "42501"], "{query}: {response:?}");
            }
            Err(status) => assert!(
                matches!(status.code(), Code::PermissionDenied | Code::InvalidArgument),
                "{query}: {status:?}"
            ),
        }
    }
    // What a reader is for still works, as the reader login.
    let response = client(&s.channel)
        .execute(bearer(execute("SELECT session_user::text", "app"), &s.reader))
        .await?
        .into_inner();
    assert!(response.success, "{response:?}");
    for result in &response.results {
        let cell = &result.statements[0].rows[0].cells[0];
        assert_eq!(
            cell.kind,
            Some(pb::cell::Kind::TextValue(pgfleet_testkit::TEST_READER.to_owned())),
            "{result:?}"
        );
    }
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_reader_user_reader_executions_are_refused_naming_it() -> anyhow::Result<()> {
    let mut fleet = Fleet::create().await?;
    fleet.reader_login = false;
    let s = session_on(fleet, "").await?;
    for query in ["SELECT 1", "SELECT rolpassword FROM pg_authid"] {
        let status = client(&s.channel)
            .execute(bearer(execute(query, "app"), &s.reader))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::FailedPrecondition, "{query}: {status:?}");
        assert!(status.message().contains("reader_user"), "{status:?}");
        assert!(status.message().contains("docs/SECURITY.md"), "{status:?}");
    }
    // The stream is refused the same way, before anything is sent.
    let status = client(&s.channel)
        .execute_stream(bearer(
            pb::ExecuteStreamRequest {
                query: "SELECT 1".to_owned(),
                database: "app".to_owned(),
                scope: Some(pb::execute_stream_request::Scope::AllClouds(pb::AllClouds {})),
                ..Default::default()
            },
            &s.reader,
        ))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // USER and MASTER keep the main login: not a READER's concern.
    for token in [&s.user, &s.master] {
        let response = client(&s.channel)
            .execute(bearer(execute("SELECT 1", "app"), token))
            .await?
            .into_inner();
        assert!(response.success, "{response:?}");
    }
    s.server.shutdown().await?;
    Ok(())
}

/// A role of this test's own (roles are cluster-wide): `LOGIN` plus `grant`.
struct ScratchRole {
    name: String,
}

impl ScratchRole {
    async fn create(admin: &sqlx::PgPool, grant: &str) -> anyhow::Result<Self> {
        let name = format!(
            "pgfleet_priv_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {name} LOGIN; {}",
            grant.replace("{role}", &name)
        )))
        .execute(admin)
        .await?;
        Ok(Self { name })
    }

    async fn drop(self, admin: &sqlx::PgPool, databases: &[&TestDatabase]) -> anyhow::Result<()> {
        for database in databases {
            let mut connection = database.connect().await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP OWNED BY {}", self.name)))
                .execute(&mut connection)
                .await?;
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE {}", self.name)))
            .execute(admin)
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_privileged_reader_user_is_refused_until_it_loses_the_privilege() -> anyhow::Result<()> {
    let admin = sqlx::PgPool::connect(&pgfleet_testkit::pg_admin_url()).await?;
    let database = TestDatabase::create("sec_priv_reader").await?;
    // One extra cloud per case, each with its own reader_user.
    let cases = [
        (
            "files",
            "GRANT pg_read_server_files TO {role}",
            "pg_read_server_files",
        ),
        (
            "signals",
            "GRANT pg_signal_backend TO {role}",
            "pg_signal_backend",
        ),
        (
            "everything",
            "GRANT pg_read_all_data TO {role}",
            "pg_read_all_data",
        ),
        ("attribute", "ALTER ROLE {role} BYPASSRLS", "BYPASSRLS"),
        // Membership through another role counts, inherited or not.
        (
            "indirect",
            "CREATE ROLE {role}_via NOINHERIT; GRANT pg_execute_server_program TO {role}_via; \
             GRANT {role}_via TO {role}",
            "pg_execute_server_program",
        ),
    ];
    let mut roles = Vec::new();
    let mut extra = String::new();
    for (cloud, grant, _) in &cases {
        let role = ScratchRole::create(&admin, grant).await?;
        extra.push_str(&format!(
            "[[clouds]]\nname = '{cloud}'\n[[clouds.databases]]\nname = 'priv'\nhost = '{}'\nport = {}\n\
             user = '{}'\ndatabase = '{}'\nsslmode = 'disable'\nschemas = ['public']\nreader_user = '{}'\n",
            database.host(),
            database.port(),
            database.user(),
            database.name(),
            role.name
        ));
        roles.push(role);
    }
    // And the superuser main login as reader_user.
    extra.push_str(&format!(
        "[[clouds]]\nname = 'superuser'\n[[clouds.databases]]\nname = 'priv'\nhost = '{}'\nport = {}\n\
         user = '{}'\ndatabase = '{}'\nsslmode = 'disable'\nschemas = ['public']\nreader_user = '{}'\n",
        database.host(),
        database.port(),
        database.user(),
        database.name(),
        database.user()
    ));
    let s = session(&extra).await?;
    let expected = cases
        .iter()
        .map(|(cloud, _, excess)| (*cloud, *excess))
        .chain([("superuser", "SUPERUSER")]);
    for (cloud, excess) in expected {
        let response = client(&s.channel)
            .execute(bearer(
                pb::ExecuteRequest {
                    scope: Some(pb::execute_request::Scope::Cloud(cloud.to_owned())),
                    ..execute("SELECT 1", "priv")
                },
                &s.reader,
            ))
            .await?
            .into_inner();
        assert!(!response.success, "{cloud}: {response:?}");
        let error = response.results[0].error.clone().expect("target error");
        assert_eq!(
            error.code,
            pb::ErrorCode::FailedPrecondition as i32,
            "{cloud}: {error:?}"
        );
        assert!(error.message.contains(excess), "{cloud}: {error:?}");
        assert!(error.message.contains("reader_user"), "{cloud}: {error:?}");
        assert!(response.results[0].statements.is_empty(), "{cloud}: nothing ran");
    }
    // Checked on every checkout: revoking the grant is enough, no restart.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "REVOKE pg_read_server_files FROM {}",
        roles[0].name
    )))
    .execute(&admin)
    .await?;
    let response = client(&s.channel)
        .execute(bearer(
            pb::ExecuteRequest {
                scope: Some(pb::execute_request::Scope::Cloud("files".to_owned())),
                ..execute("SELECT session_user::text", "priv")
            },
            &s.reader,
        ))
        .await?
        .into_inner();
    assert!(response.success, "{response:?}");
    s.server.shutdown().await?;
    for role in roles {
        let via = format!("{}_via", role.name);
        role.drop(&admin, &[&database]).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {via}")))
            .execute(&admin)
            .await?;
    }
    admin.close().await;
    database.drop_now().await?;
    Ok(())
}

/// Creates a READER API key limited to `patterns`; returns its secret.
async fn reader_key(channel: &Channel, master: &str, patterns: &[(&str, &str)]) -> anyhow::Result<String> {
    let created = support::auth_client(channel)
        .create_api_key(bearer(
            pb::CreateApiKeyRequest {
                name: format!("key-{}", patterns.len()),
                role: pb::Role::Reader.into(),
                expires_at: None,
                allowed_targets: patterns
                    .iter()
                    .map(|(cloud, database)| pb::TargetPattern {
                        cloud: (*cloud).to_owned(),
                        database: (*database).to_owned(),
                    })
                    .collect(),
            },
            master,
        ))
        .await?
        .into_inner();
    Ok(created.secret)
}

/// A status as (code, message with `name` blanked): equal for two targets
/// when nothing but the name the caller sent differs.
fn answer<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    name: &str,
) -> (Code, String) {
    match result {
        // The message only: metadata (request ids) differs between calls.
        Ok(response) => (
            Code::Ok,
            format!("{:?}", response.get_ref()).replace(name, "<target>"),
        ),
        Err(status) => (status.code(), status.message().replace(name, "<target>")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_get_one_answer_for_unknown_and_forbidden_targets() -> anyhow::Result<()> {
    let s = session("").await?;
    let key = reader_key(&s.channel, &s.master, &[("aws", "*")]).await?;
    let fleet =
        || pgfleet_proto::pgfleet::v1::fleet_service_client::FleetServiceClient::new(s.channel.clone());
    // gcp/app exists outside the key's allow-list; the others do not exist.
    let forbidden = ("gcp", "app");
    for unknown in [("gcp", "nope"), ("azure", "app")] {
        let mut answers = Vec::new();
        for (cloud, database) in [forbidden, unknown] {
            let name = format!("{cloud}/{database}");
            let tables = fleet()
                .list_tables(support::api_key(
                    pb::ListTablesRequest {
                        target: Some(support::target(cloud, database)),
                        ..Default::default()
                    },
                    &key,
                ))
                .await;
            let schemas = fleet()
                .list_schemas(support::api_key(
                    pb::ListSchemasRequest {
                        target: Some(support::target(cloud, database)),
                        ..Default::default()
                    },
                    &key,
                ))
                .await;
            let health = fleet()
                .get_health(support::api_key(
                    pb::GetHealthRequest {
                        cloud: cloud.to_owned(),
                        database: database.to_owned(),
                    },
                    &key,
                ))
                .await;
            let by_target = client(&s.channel)
                .execute(support::api_key(
                    pb::ExecuteRequest {
                        scope: Some(pb::execute_request::Scope::Targets(pb::TargetList {
                            targets: vec![support::target(cloud, database)],
                        })),
                        ..execute("SELECT 1", "")
                    },
                    &key,
                ))
                .await;
            let by_cloud = client(&s.channel)
                .execute(support::api_key(
                    pb::ExecuteRequest {
                        scope: Some(pb::execute_request::Scope::Cloud(cloud.to_owned())),
                        ..execute("SELECT 1", database)
                    },
                    &key,
                ))
                .await;
            let answer = [
                answer(tables, &name),
                answer(schemas, &name),
                answer(health, &name),
                answer(by_target, &name),
                answer(by_cloud, &name),
            ];
            assert_eq!(answer[0].0, Code::PermissionDenied, "{name}: {answer:?}");
            assert_eq!(answer[2].0, Code::Ok, "{name}: {answer:?}");
            assert_eq!(answer[3].0, Code::PermissionDenied, "{name}: {answer:?}");
            answers.push(answer);
        }
        assert_eq!(answers[0], answers[1], "{forbidden:?} vs {unknown:?}");
    }
    // A database name alone: one that exists outside the list, one nowhere.
    let all_clouds = async |database: &str| {
        answer(
            client(&s.channel)
                .execute(support::api_key(execute("SELECT 1", database), &key))
                .await,
            database,
        )
    };
    let (exists, nowhere) = (all_clouds("app").await, all_clouds("nowhere").await);
    assert_eq!(exists.0, Code::PermissionDenied, "{exists:?}");
    assert_eq!(exists, nowhere);
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn health_errors_show_their_category_below_master() -> anyhow::Result<()> {
    let dead_port = pgfleet_testkit::free_port()?;
    let live = TestDatabase::create("sec_health_error").await?;
    // Nobody listens on `dead_port`; `stranger` is a login the server lacks.
    let extra = format!(
        "[[clouds]]\nname = 'azure'\n[[clouds.databases]]\nname = 'app'\nhost = '127.0.0.1'\nport = {dead_port}\n\
         user = 'fleet_owner'\ndatabase = 'nowhere'\nsslmode = 'disable'\nschemas = ['public']\n\
         pool = {{ acquire_timeout = '300ms' }}\n\
         [[clouds]]\nname = 'onprem'\n[[clouds.databases]]\nname = 'app'\nhost = '{}'\nport = {}\n\
         user = 'stranger_{}'\ndatabase = '{}'\nsslmode = 'disable'\nschemas = ['public']\n\
         pool = {{ acquire_timeout = '300ms' }}\n\
         [health]\ninterval = '200ms'\nprobe_timeout = '1s'\n[retry]\nmax_attempts = 1\n",
        live.host(),
        live.port(),
        dead_port,
        live.name()
    );
    let s = session(&extra).await?;
    let last_error = async |cloud: &str, token: &str| -> anyhow::Result<String> {
        let health =
            pgfleet_proto::pgfleet::v1::fleet_service_client::FleetServiceClient::new(s.channel.clone())
                .get_health(bearer(
                    pb::GetHealthRequest {
                        cloud: cloud.to_owned(),
                        database: String::new(),
                    },
                    token,
                ))
                .await?
                .into_inner();
        Ok(health.targets[0].last_error.clone())
    };
    for (cloud, categories) in [
        ("azure", &["connection refused", "timeout"][..]),
        ("onprem", &["authentication failed"][..]),
    ] {
        pgfleet_testkit::wait_until(
            std::time::Duration::from_secs(15),
            std::time::Duration::from_millis(100),
            async || {
                last_error(cloud, &s.master)
                    .await
                    .is_ok_and(|error| !error.is_empty())
            },
        )
        .await?;
        let detailed = last_error(cloud, &s.master).await?;
        for token in [&s.user, &s.reader] {
            let shown = last_error(cloud, token).await?;
            assert!(
                categories.contains(&shown.as_str()),
                "{cloud}: {shown:?}, master sees {detailed:?}"
            );
            assert!(!shown.contains(&dead_port.to_string()), "{shown:?}");
        }
        assert!(
            !categories.contains(&detailed.as_str()),
            "MASTER gets the driver's text: {detailed:?}"
        );
    }
    // The login the server refused is named to MASTER only.
    assert!(last_error("onprem", &s.master).await?.contains("stranger_"));
    s.server.shutdown().await?;
    live.drop_now().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn list_tables_shows_only_configured_schemas_below_master() -> anyhow::Result<()> {
    let s = session("").await?;
    support::run_sql(
        &s,
        "aws",
        "app",
        "CREATE SCHEMA hidden; CREATE TABLE hidden.secrets (v int)",
    )
    .await?;
    let list = async |token: &str| {
        pgfleet_proto::pgfleet::v1::fleet_service_client::FleetServiceClient::new(s.channel.clone())
            .list_tables(bearer(
                pb::ListTablesRequest {
                    target: Some(support::target("aws", "app")),
                    schema: "hidden".to_owned(),
                    ..Default::default()
                },
                token,
            ))
            .await
    };
    for token in [&s.user, &s.reader] {
        let status = list(token).await.expect_err("not a configured schema");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(support::bad_field(&status), "schema", "{status:?}");
        assert!(
            status.message().contains("public"),
            "names what is configured: {status:?}"
        );
    }
    let shown = list(&s.master).await?.into_inner();
    assert_eq!(
        shown.tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["secrets"]
    );
    s.server.shutdown().await?;
    Ok(())
}
