//! `pgfleet import-legacy`: a fixture of the old Dual Database Manager's
//! schema (its own DDL) imported by the real binary; the old users log in
//! with their old passwords, the old history is listed with its times and
//! verifies in the chain, and a second run imports nothing.

use std::collections::HashMap;
use std::process::Output;

use chrono::{DateTime, Utc};
use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::history_service_client::HistoryServiceClient;
use pgfleet_testkit::TestDatabase;
use tonic::Code;
use uuid::Uuid;

use crate::support::{Fleet, auth_client, bearer, channel, login};

/// The old schema, as the old system's documentation gives it.
const LEGACY_SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS dual_db_manager;
CREATE TABLE dual_db_manager.users (
  id SERIAL PRIMARY KEY,
  username VARCHAR(50) UNIQUE NOT NULL,
  email VARCHAR(255) UNIQUE NOT NULL,
  name VARCHAR(255),
  password_hash VARCHAR(255) NOT NULL,
  role VARCHAR(10) NOT NULL DEFAULT 'USER',
  is_active BOOLEAN DEFAULT true,
  created_at TIMESTAMP DEFAULT NOW(),
  last_login TIMESTAMP,
  CONSTRAINT check_role CHECK (role IN ('MASTER', 'USER', 'READER'))
);
CREATE INDEX idx_users_username ON dual_db_manager.users(username);
CREATE INDEX idx_users_email ON dual_db_manager.users(email);
CREATE INDEX idx_users_is_active ON dual_db_manager.users(is_active);
CREATE TABLE dual_db_manager.query_history (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id INTEGER REFERENCES dual_db_manager.users(id),
  query TEXT NOT NULL,
  database_name VARCHAR(100) NOT NULL,
  execution_mode VARCHAR(50) NOT NULL,
  cloud_results JSONB NOT NULL,
  overall_success BOOLEAN NOT NULL,
  created_at TIMESTAMP DEFAULT NOW()
);
CREATE INDEX idx_query_history_user_id ON dual_db_manager.query_history(user_id);
CREATE INDEX idx_query_history_database ON dual_db_manager.query_history(database_name);
CREATE INDEX idx_query_history_success ON dual_db_manager.query_history(overall_success);
CREATE INDEX idx_query_history_created_at ON dual_db_manager.query_history(created_at DESC);
CREATE INDEX idx_query_history_cloud_results ON dual_db_manager.query_history USING gin(cloud_results);
";

/// An old user: username, role, active, password (None: an md5 hash).
struct OldUser {
    username: &'static str,
    role: &'static str,
    active: Option<bool>,
    password: String,
    hash: String,
}

/// Node's bcryptjs writes `$2a$`; PHP's `$2y$` and Rust's `$2b$` verify too.
fn old_user(
    username: &'static str,
    role: &'static str,
    active: Option<bool>,
    version: bcrypt::Version,
) -> OldUser {
    let password = format!("old-{username}-{}", Uuid::new_v4().simple());
    let parts = bcrypt::hash_with_result(&password, 4).expect("bcrypt");
    let hash = parts.format_for_version(version);
    OldUser {
        username,
        role,
        active,
        password,
        hash,
    }
}

async fn pgfleet(config: &std::path::Path, args: &[&str], url_env: Option<&str>) -> anyhow::Result<Output> {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfleet"));
    command
        .args(["--config", &config.to_string_lossy(), "import-legacy"])
        .args(args)
        .env_remove("PGFLEET_LOG")
        .env_remove("PGFLEET_LEGACY_URL");
    if let Some(url) = url_env {
        command.env("PGFLEET_LEGACY_URL", url);
    }
    Ok(command.output().await?)
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn imported_records(
    history: &mut HistoryServiceClient<tonic::transport::Channel>,
    token: &str,
    kind: pb::RecordKind,
) -> anyhow::Result<Vec<pb::ExecutionRecord>> {
    let filter = pb::ExecutionFilter {
        kind: kind.into(),
        ..Default::default()
    };
    Ok(history
        .list_executions(bearer(
            pb::ListExecutionsRequest {
                filter: Some(filter),
                page_size: 500,
                ..Default::default()
            },
            token,
        ))
        .await?
        .into_inner()
        .executions)
}

async fn counts(pool: &sqlx::PgPool) -> anyhow::Result<(i64, i64, i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT (SELECT count(*) FROM pgfleet.users), (SELECT count(*) FROM pgfleet.executions), \
         (SELECT count(*) FROM pgfleet.legacy_imports), (SELECT sequence FROM pgfleet.audit_chain_head)",
    )
    .fetch_one(pool)
    .await?)
}

#[tokio::test]
async fn old_users_log_in_and_old_history_verifies_in_the_chain() -> anyhow::Result<()> {
    let fleet = Fleet::create().await?;
    let server = fleet.start("").await?;
    let channel = channel(&server).await?;
    // pgfleet's own MASTER, and a pgfleet user whose name an old user has.
    let master_password = fleet.create_user("p-master", Role::Master).await?;
    let carol_password = fleet.create_user("carol", Role::Reader).await?;
    let master = login(&channel, "p-master", &master_password).await?;

    let legacy = TestDatabase::create("legacy_ddm").await?;
    let old = legacy.pool().await?;
    sqlx::raw_sql(LEGACY_SCHEMA).execute(&old).await?;
    let users = [
        old_user("admin", "MASTER", Some(true), bcrypt::Version::TwoA),
        old_user("Alice", "USER", Some(true), bcrypt::Version::TwoB),
        old_user("reader1", "READER", Some(true), bcrypt::Version::TwoY),
        old_user("ghost", "USER", Some(false), bcrypt::Version::TwoA),
        old_user("md5user", "USER", Some(true), bcrypt::Version::TwoA),
        old_user("carol", "USER", Some(true), bcrypt::Version::TwoA),
    ];
    let mut old_ids: HashMap<&str, i32> = HashMap::new();
    for user in &users {
        let hash = if user.username == "md5user" {
            "5f4dcc3b5aa765d61d8327deb882cf99".to_owned()
        } else {
            user.hash.clone()
        };
        let id: i32 = sqlx::query_scalar(
            "INSERT INTO dual_db_manager.users (username, email, name, password_hash, role, is_active, \
             created_at, last_login) VALUES ($1, lower($1) || '@old.example', 'Old ' || $1, $2, $3, $4, \
             '2023-05-01 08:00:00', '2024-02-01 09:30:00') RETURNING id",
        )
        .bind(user.username)
        .bind(hash)
        .bind(user.role)
        .bind(user.active)
        .fetch_one(&old)
        .await?;
        old_ids.insert(user.username, id);
    }
    let rows = [
        (
            Some(old_ids["Alice"]),
            "UPDATE accounts SET active = true WHERE id = 1;",
            "both",
            r#"{"aws": {"success": true, "result": {"rows": [{"secret": "row data"}], "rowCount": 1, "command": "UPDATE"}, "duration_ms": 45},
                "gcp": {"success": true, "result": {"rows": [], "rowCount": 1, "command": "UPDATE"}, "duration_ms": 52}}"#,
            true,
            "2024-01-30 12:00:00",
        ),
        (
            Some(old_ids["admin"]),
            "DELETE FROM sessions WHERE created < now() - interval '1 day'",
            "both",
            r#"{"aws": {"success": true, "result": {"rowCount": 3, "command": "DELETE"}, "duration_ms": 12},
                "gcp": {"success": false, "error": "relation \"sessions\" does not exist", "duration_ms": 5000}}"#,
            false,
            "2024-01-31 07:15:30.25",
        ),
        (
            Some(old_ids["admin"]),
            "ALTER ROLE app_user PASSWORD 'hunter2-old'",
            "aws",
            r#"{"aws": {"success": true, "result": {"command": "ALTER"}, "duration_ms": 3}}"#,
            true,
            "2024-02-01 10:00:00",
        ),
        (
            Some(old_ids["carol"]),
            "SELEC broken",
            "gcp",
            r#"{"gcp": {"success": false, "error": "syntax error at or near \"SELEC\"", "duration_ms": 1}}"#,
            false,
            "2024-02-02 11:00:00",
        ),
        (
            None,
            "INSERT INTO audit_note VALUES (1)",
            "both",
            r#"{"aws": {"success": true, "duration_ms": 2}, "gcp": {"success": true, "duration_ms": 2}}"#,
            true,
            "2024-02-03 12:00:00",
        ),
    ];
    let mut history_ids = Vec::new();
    for (user_id, query, mode, results, success, at) in rows {
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO dual_db_manager.query_history (user_id, query, database_name, execution_mode, \
             cloud_results, overall_success, created_at) VALUES ($1, $2, 'app', $3, $4::jsonb, $5, $6::timestamp) \
             RETURNING id",
        )
        .bind(user_id)
        .bind(query)
        .bind(mode)
        .bind(results)
        .bind(success)
        .bind(at)
        .fetch_one(&old)
        .await?;
        history_ids.push(id);
    }
    // The instants the old system meant, as the old server reads its own
    // timestamps (not a hard-coded zone).
    let old_times: HashMap<Uuid, DateTime<Utc>> = sqlx::query_as::<_, (Uuid, DateTime<Utc>)>(
        "SELECT id, created_at::timestamptz FROM dual_db_manager.query_history",
    )
    .fetch_all(&old)
    .await?
    .into_iter()
    .collect();

    // The URL's password must never show; trust authentication ignores a
    // made-up one.
    let mut url = url::Url::parse(legacy.url())?;
    let secret = match url.password() {
        Some(real) => real.to_owned(),
        None => {
            url.set_password(Some("Legacy-Url-Secret-42"))
                .map_err(|()| anyhow::anyhow!("cannot set a password"))?;
            "Legacy-Url-Secret-42".to_owned()
        }
    };
    let url = url.to_string();
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("pgfleet.toml");
    std::fs::write(&config, fleet.config_toml(""))?;
    let store = fleet.history.pool().await?;
    let before = counts(&store).await?;

    // Dry run: the plan, nothing changed.
    let dry = pgfleet(&config, &["--dry-run"], Some(&url)).await?;
    let out = text(&dry);
    assert_eq!(
        dry.status.code(),
        Some(1),
        "refusals and conflicts need a look: {out}"
    );
    for expected in [
        "user \"admin\"",
        "create as MASTER (active)",
        "create as USER (inactive)",
        "user \"md5user\"",
        "refused: password hash: not a bcrypt hash",
        "conflict: pgfleet already has a user named \"carol\"",
        "users: 4 to create, 0 already imported, 1 in conflict, 1 refused",
        "history: 5 to import, 0 already imported",
        "dry run: nothing was changed",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert_eq!(counts(&store).await?, before, "a dry run changes nothing");

    // All or nothing: a failure at the last step (the list of what was
    // imported) leaves no user, record or link behind.
    sqlx::raw_sql(
        "CREATE FUNCTION pgfleet.test_refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$; \
         CREATE TRIGGER test_refuse BEFORE INSERT ON pgfleet.legacy_imports \
         FOR EACH STATEMENT EXECUTE FUNCTION pgfleet.test_refuse();",
    )
    .execute(&store)
    .await?;
    let failed = pgfleet(&config, &[], Some(&url)).await?;
    let out = text(&failed);
    assert_eq!(failed.status.code(), Some(1), "{out}");
    assert!(out.contains("refused by the test"), "{out}");
    assert!(!out.contains(&secret), "{out}");
    assert_eq!(counts(&store).await?, before, "a failed import leaves nothing");
    sqlx::raw_sql("DROP TRIGGER test_refuse ON pgfleet.legacy_imports; DROP FUNCTION pgfleet.test_refuse();")
        .execute(&store)
        .await?;

    // The import, the URL on the command line this time.
    let run = pgfleet(&config, &["--from", &url], None).await?;
    let out = text(&run);
    assert_eq!(run.status.code(), Some(1), "{out}");
    assert!(
        out.contains("imported 4 user(s) and 5 history record(s)"),
        "{out}"
    );
    for output in [&dry, &run] {
        let all = text(output);
        assert!(!all.contains(&secret), "the URL's password leaked:\n{all}");
        for user in &users {
            assert!(!all.contains(&user.hash), "a hash was printed:\n{all}");
        }
        assert!(!all.contains("5f4dcc3b"), "the md5 hash was printed:\n{all}");
    }

    // Old users log in with their old passwords, with their old roles.
    let by_name: HashMap<&str, &OldUser> = users.iter().map(|u| (u.username, u)).collect();
    for (username, role) in [
        ("admin", pb::Role::Master),
        ("alice", pb::Role::User),
        ("Alice", pb::Role::User),
        ("reader1", pb::Role::Reader),
    ] {
        let password = &by_name[if username == "alice" { "Alice" } else { username }].password;
        let token = login(&channel, username, password)
            .await
            .map_err(|status| anyhow::anyhow!("{username} cannot log in: {status:?}"))?;
        let me = auth_client(&channel)
            .me(bearer(pb::MeRequest::default(), &token))
            .await?
            .into_inner();
        assert_eq!(me.role(), role, "{username}");
        let Some(pb::me_response::Principal::User(user)) = me.principal else {
            anyhow::bail!("{username}: not a user");
        };
        assert_eq!(user.email, format!("{}@old.example", username.to_lowercase()));
    }
    // The inactive old user's password is right, and the account inactive.
    let ghost = login(&channel, "ghost", &by_name["ghost"].password).await;
    assert!(
        matches!(&ghost, Err(status) if status.code() == Code::PermissionDenied
            && status.message().contains("deactivated")),
        "{ghost:?}"
    );
    // Refused and conflicting old users do not get in with their old
    // passwords; the pgfleet carol keeps hers.
    for username in ["md5user", "carol"] {
        let refused = login(&channel, username, &by_name[username].password).await;
        assert!(
            matches!(&refused, Err(status) if status.code() == Code::Unauthenticated),
            "{username}: {refused:?}"
        );
    }
    login(&channel, "carol", &carol_password).await?;

    // The old history is listed, marked imported, with its own ids and times.
    let mut history = HistoryServiceClient::new(channel.clone());
    let imported = imported_records(&mut history, &master, pb::RecordKind::ImportedQuery).await?;
    assert_eq!(imported.len(), history_ids.len());
    let by_id: HashMap<Uuid, &pb::ExecutionRecord> = imported
        .iter()
        .map(|r| Ok((r.id.parse::<Uuid>()?, r)))
        .collect::<anyhow::Result<_>>()?;
    for id in &history_ids {
        let record = by_id
            .get(id)
            .ok_or_else(|| anyhow::anyhow!("old row {id} is not listed"))?;
        let started = record.started_at.unwrap_or_default();
        let started = DateTime::<Utc>::from_timestamp(started.seconds, u32::try_from(started.nanos)?)
            .ok_or_else(|| anyhow::anyhow!("bad time"))?;
        assert_eq!(started, old_times[id], "{id}");
        assert_eq!(record.kind(), pb::RecordKind::ImportedQuery);
        assert!(
            record.opened.is_some() && record.closed.is_some(),
            "{id} is linked twice"
        );
    }
    let alice_update = by_id[&history_ids[0]];
    assert_eq!(
        alice_update.actor.as_ref().and_then(|a| a.principal.clone()),
        Some(pb::actor::Principal::Username("alice".to_owned()))
    );
    assert_eq!(alice_update.status(), pb::ExecutionStatus::Succeeded);
    assert_eq!(alice_update.scope(), pb::TargetScope::AllClouds);
    assert_eq!(alice_update.outcomes.len(), 2);
    assert_eq!(alice_update.outcomes[0].command_tags, ["UPDATE"]);
    assert_eq!(
        alice_update.outcomes[0].duration.map(|d| d.nanos),
        Some(45_000_000)
    );
    let partial = by_id[&history_ids[1]];
    assert_eq!(partial.status(), pb::ExecutionStatus::Partial);
    assert!(!partial.success);
    let gcp = partial
        .outcomes
        .iter()
        .find(|o| o.target.as_ref().is_some_and(|t| t.cloud == "gcp"))
        .ok_or_else(|| anyhow::anyhow!("no gcp outcome"))?;
    assert!(
        gcp.error
            .as_ref()
            .is_some_and(|e| e.message.contains("does not exist"))
    );
    let password_change = by_id[&history_ids[2]];
    assert!(password_change.query_redacted, "{password_change:?}");
    assert!(
        !password_change.query.contains("hunter2"),
        "{}",
        password_change.query
    );
    assert_eq!(password_change.scope(), pb::TargetScope::Cloud);
    assert_eq!(
        password_change.actor.as_ref().map(|a| a.role()),
        Some(pb::Role::Master)
    );
    let nobody = by_id[&history_ids[4]];
    assert!(matches!(
        nobody.actor.as_ref().and_then(|a| a.principal.clone()),
        Some(pb::actor::Principal::System(_))
    ));
    let imports = imported_records(&mut history, &master, pb::RecordKind::LegacyImport).await?;
    assert_eq!(imports.len(), 1);
    assert!(
        imports[0].query.contains("4 user(s) created"),
        "{}",
        imports[0].query
    );
    assert!(!imports[0].query.contains(&secret));

    // Alice sees her own old history, as any USER sees their own.
    let alice = login(&channel, "alice", &by_name["Alice"].password).await?;
    let hers = imported_records(&mut history, &alice, pb::RecordKind::ImportedQuery).await?;
    assert_eq!(
        hers.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        [history_ids[0].to_string()]
    );

    // Chained after the head, and the whole chain verifies.
    let verified = history
        .verify_chain(bearer(pb::VerifyChainRequest::default(), &master))
        .await?
        .into_inner();
    assert!(verified.ok, "{:?}", verified.first_broken);
    assert!(verified.keyed);
    let first_imported = imports[0].opened.as_ref().map(|l| l.sequence).unwrap_or_default();
    assert_eq!(
        first_imported,
        u64::try_from(before.3)? + 1,
        "the import follows the old head"
    );
    assert_eq!(
        verified.head.map(|h| h.sequence),
        imports[0].closed.as_ref().map(|l| l.sequence)
    );

    // Again: nothing new, nothing written.
    let after = counts(&store).await?;
    let again = pgfleet(&config, &[], Some(&url)).await?;
    let out = text(&again);
    assert!(
        out.contains("users: 0 to create, 4 already imported, 1 in conflict, 1 refused")
            && out.contains("history: 0 to import, 5 already imported")
            && out.contains("nothing to import"),
        "{out}"
    );
    assert_eq!(counts(&store).await?, after, "a second run writes nothing");
    store.close().await;
    old.close().await;
    Ok(())
}
