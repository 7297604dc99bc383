//! Least privilege on the database side, end to end against the real server
//! and PostgreSQL: a READER's statements run under the database's
//! unprivileged `reader_user`, so PostgreSQL itself refuses what reads the
//! server (42501); without a `reader_user`, or with a privileged one, READER
//! executions are refused before any statement runs.

mod support;

use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_testkit::TestDatabase;
use tonic::Code;
use tonic::transport::Channel;

use support::{Fleet, bearer, session, session_on};

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
    // gets past it (the EXPLAIN option trick of issue 13); never read.
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
