//! The unprivileged login tests configure as `reader_user`: pgfleet refuses
//! READER executions without one (or with a privileged one), so every fleet
//! whose READERs run queries needs it, with the grants a reader needs.

use std::sync::OnceLock;

use anyhow::Context as _;
use sqlx::AssertSqlSafe;

use crate::database::TestDatabase;
use crate::services::{close_quietly, connect_admin};

/// The reader login's name: one role per server, shared by every test
/// (roles are cluster-wide; it holds no attribute and no predefined role).
pub const TEST_READER: &str = "pgfleet_test_reader";
/// Its password (for servers that do not trust loopback logins).
pub const TEST_READER_PASSWORD: &str = "pgfleet-test-reader";

/// Admin URLs whose server already has the role, in this process.
static CREATED: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();

impl TestDatabase {
    /// Makes [`TEST_READER`] a reader of this database: creates the login on
    /// the server if needed, then grants CONNECT, USAGE and SELECT on what
    /// exists in `public`, and by default privileges USAGE on every schema
    /// and SELECT on every table and sequence the admin login creates later.
    /// The grants documented in docs/SECURITY.md, nothing more.
    pub async fn grant_reader(&self) -> anyhow::Result<&'static str> {
        ensure_role(self.admin_url()).await?;
        let mut connection = self.connect().await?;
        let name = self.name();
        // Identifiers are this module's constant and a checked database name.
        let statements = [
            format!("GRANT CONNECT ON DATABASE \"{name}\" TO {TEST_READER}"),
            format!("GRANT USAGE ON SCHEMA public TO {TEST_READER}"),
            format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {TEST_READER}"),
            format!("GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {TEST_READER}"),
            format!("ALTER DEFAULT PRIVILEGES GRANT USAGE ON SCHEMAS TO {TEST_READER}"),
            format!("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {TEST_READER}"),
            format!("ALTER DEFAULT PRIVILEGES GRANT SELECT ON SEQUENCES TO {TEST_READER}"),
        ];
        for statement in statements {
            sqlx::raw_sql(AssertSqlSafe(statement.clone()))
                .execute(&mut connection)
                .await
                .with_context(|| format!("{statement} on {name}"))?;
        }
        close_quietly(connection).await;
        Ok(TEST_READER)
    }
}

async fn ensure_role(admin_url: &str) -> anyhow::Result<()> {
    let created = CREATED.get_or_init(Default::default);
    if created
        .lock()
        .map(|urls| urls.iter().any(|url| url == admin_url))
        .unwrap_or(false)
    {
        return Ok(());
    }
    let mut admin = connect_admin(admin_url).await?;
    // Parallel test processes race to create it: the loser's error is fine.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DO $$ BEGIN CREATE ROLE {TEST_READER} LOGIN PASSWORD '{TEST_READER_PASSWORD}'; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
    )))
    .execute(&mut admin)
    .await
    .context("creating the test reader login")?;
    close_quietly(admin).await;
    if let Ok(mut urls) = created.lock() {
        urls.push(admin_url.to_owned());
    }
    Ok(())
}
