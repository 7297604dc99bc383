//! Every PostgreSQL advisory lock pgfleet takes on its history store, so no
//! two purposes can share a key.
//!
//! PostgreSQL keeps two advisory key spaces that never conflict with each
//! other: one `bigint` key (shown in `pg_locks` with `objsubid = 1`) and a
//! pair of `int4` keys (`objsubid = 2`). pgfleet uses them like this:
//!
//! - [`HistoryLock`]: pgfleet's fixed locks, in the two-key space as
//!   ([`NAMESPACE`], purpose). Purposes are enum discriminants, so the
//!   compiler refuses two purposes with one key.
//! - Replication job locks: the `bigint` space, keyed
//!   `hashtextextended(job id, REPLICATION_JOB_SEED)`
//!   ([`replication_job_key!`]). Being in the other space, they can never
//!   meet a [`HistoryLock`], whatever the hash gives. Two jobs whose ids hash
//!   alike (odds 2^-64 per pair) would only run one at a time.
//! - [`MigrationLock`]: one per fleet database while its schema migrations
//!   run (apply, rollback, repair), in the `bigint` space, keyed
//!   `hashtextextended(database name, MIGRATION_DATABASE_SEED)`. A database
//!   whose hash equals a job's (odds 2^-64) would only make the two wait
//!   for each other.
//! - sqlx's migrator (not ours): a `bigint` key derived from the database
//!   name, shared by every replica on purpose. It shares the `bigint` space
//!   with job locks only; a job whose hash equals it (odds 2^-64) would make
//!   a migration and that job's runs wait for each other, nothing more.
//!
//! A new lock gets a variant here (or, for per-object locks, a helper next
//! to [`replication_job_key!`] with its own seed), never a literal key
//! where it is taken.

use sqlx::PgConnection;

/// The first key of every [`HistoryLock`]: `"pgfl"` in ASCII.
pub const NAMESPACE: i32 = 0x7067_666c;

/// Seed of `hashtextextended` for replication job lock keys, so pgfleet's
/// keys do not line up with someone else's hash of the same text.
pub const REPLICATION_JOB_SEED: i64 = 0x0070_6766_6c65_6574; // "pgfleet"

/// SQL for the `bigint` lock key of the replication job whose id is the
/// expression `$job`, with [`REPLICATION_JOB_SEED`] bound at `$seed`; a
/// string literal, so queries stay static (`concat!`).
#[macro_export]
#[doc(hidden)]
macro_rules! __replication_job_key {
    ($job:literal, $seed:literal) => {
        concat!("hashtextextended(", $job, "::text, ", $seed, ")")
    };
}
pub use __replication_job_key as replication_job_key;

/// Seed of `hashtextextended` for [`MigrationLock`] keys; not the job seed,
/// so a job id equal to a database name never shares a key.
pub const MIGRATION_DATABASE_SEED: i64 = 0x006d_6967_7261_7465; // "migrate"

/// Seed of `hashtextextended` for backup policy lock keys (`bigint` space,
/// keyed by the policy id, taken by `pgfleet_backup::scheduler`); its own
/// seed, so a policy id never shares a key with a job id or a database name.
pub const BACKUP_POLICY_SEED: i64 = 0x0000_6261_636b_7570; // "backup"

/// The history-store lock of one fleet database's migrations, held for a
/// whole apply, rollback or repair so that two pgfleet replicas (or a
/// replica and `pgfleet migrations apply`) never interleave on it.
///
/// A session lock on a connection of its own, taken out of the pool: it
/// stays held however long the rollout takes without holding a transaction
/// open, and if the holder is dropped (or dies) the connection closes and
/// PostgreSQL releases the lock; it never goes back to the pool held.
#[derive(Debug)]
pub struct MigrationLock {
    connection: Option<PgConnection>,
    database: String,
}

impl MigrationLock {
    /// Takes the lock of `database`, polling for at most `wait`; `Ok(Err(waited))`
    /// when another session held it all along.
    pub async fn acquire(
        pool: &sqlx::PgPool,
        database: &str,
        wait: std::time::Duration,
    ) -> Result<Result<Self, std::time::Duration>, sqlx::Error> {
        let started = std::time::Instant::now();
        let mut connection = pool.acquire().await?.detach();
        let mut pause = std::time::Duration::from_millis(20);
        loop {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, $2))")
                .bind(database)
                .bind(MIGRATION_DATABASE_SEED)
                .fetch_one(&mut connection)
                .await?;
            if locked {
                return Ok(Ok(Self {
                    connection: Some(connection),
                    database: database.to_owned(),
                }));
            }
            let waited = started.elapsed();
            if waited >= wait {
                return Ok(Err(waited));
            }
            tokio::time::sleep(pause.min(wait - waited)).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(500));
        }
    }

    /// Releases the lock and closes its connection (closing alone would do;
    /// unlocking first frees it at once even if the close is slow).
    pub async fn release(mut self) {
        use sqlx::Connection as _;
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, $2))")
            .bind(&self.database)
            .bind(MIGRATION_DATABASE_SEED)
            .execute(&mut connection)
            .await;
        if let Err(error) = unlocked {
            tracing::debug!(%error, database = %self.database, "releasing the migration lock failed (the close releases it)");
        }
        if let Err(error) = connection.close().await {
            tracing::debug!(%error, "closing the migration lock's connection failed");
        }
    }
}

/// pgfleet's fixed advisory locks (second key of the pair).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum HistoryLock {
    /// Serializes changes that could remove the last active MASTER
    /// (`auth::users`).
    LastMaster = 1,
    /// One replica at a time applies audit retention (`audit::maintenance`).
    AuditRetention = 2,
    /// One `pgfleet import-legacy` at a time: each decides what is new
    /// under it (`legacy_imports`).
    LegacyImport = 3,
    /// One replica at a time finishes atomic executions' prepared
    /// transactions (`atomic_recovery`), so no gid is acted on twice.
    AtomicRecovery = 4,
}

impl HistoryLock {
    /// Every lock, for the distinctness test and for docs.
    pub const ALL: [HistoryLock; 4] = [
        HistoryLock::LastMaster,
        HistoryLock::AuditRetention,
        HistoryLock::LegacyImport,
        HistoryLock::AtomicRecovery,
    ];

    /// The (`int4`, `int4`) key pair.
    pub const fn key(self) -> (i32, i32) {
        (NAMESPACE, self as i32)
    }

    /// Waits for the lock until the end of the current transaction.
    pub async fn lock_xact(self, transaction: &mut PgConnection) -> Result<(), sqlx::Error> {
        let (namespace, purpose) = self.key();
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(namespace)
            .bind(purpose)
            .execute(transaction)
            .await
            .map(drop)
    }

    /// Takes the lock until the end of the current transaction if it is
    /// free; false when another session holds it.
    pub async fn try_lock_xact(self, transaction: &mut PgConnection) -> Result<bool, sqlx::Error> {
        let (namespace, purpose) = self.key();
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
            .bind(namespace)
            .bind(purpose)
            .fetch_one(transaction)
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_fixed_lock_has_its_own_key_in_pgfleets_namespace() {
        // A variant missing from ALL fails to compile here.
        for lock in HistoryLock::ALL {
            match lock {
                HistoryLock::LastMaster
                | HistoryLock::AuditRetention
                | HistoryLock::LegacyImport
                | HistoryLock::AtomicRecovery => {}
            }
        }
        let keys: HashSet<(i32, i32)> = HistoryLock::ALL.iter().map(|lock| lock.key()).collect();
        assert_eq!(
            keys.len(),
            HistoryLock::ALL.len(),
            "two locks share a key: {keys:?}"
        );
        for lock in HistoryLock::ALL {
            assert_eq!(lock.key().0, NAMESPACE, "{lock:?}");
        }
    }

    #[test]
    fn the_namespace_and_seed_spell_pgfleet() {
        assert_eq!(NAMESPACE.to_be_bytes(), *b"pgfl");
        assert_eq!(&REPLICATION_JOB_SEED.to_be_bytes()[1..], b"pgfleet");
        assert_eq!(&MIGRATION_DATABASE_SEED.to_be_bytes()[1..], b"migrate");
        assert_eq!(&BACKUP_POLICY_SEED.to_be_bytes()[2..], b"backup");
    }
}
