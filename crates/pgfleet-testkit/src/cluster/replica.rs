//! Physical streaming replicas: a [`PgCluster`] made with `pg_basebackup -R` from a running
//! one, and what tests do to replicas: promote them, pause and resume replay, measure how
//! far behind they are, wait for them to catch up.

use std::time::Duration;

use anyhow::Context as _;

use super::{PG_CTL_WAIT_SECS, PgCluster, READY_LIMIT};
use crate::services::{close_quietly, connect_admin};
use crate::{bounded, wait_until};

/// How long `pg_basebackup` of a test cluster may take.
const BASE_BACKUP_LIMIT: Duration = Duration::from_secs(60);
/// How long [`PgCluster::wait_for_replay`] waits.
const REPLAY_LIMIT: Duration = Duration::from_secs(30);
/// How often replication state is polled.
const POLL: Duration = Duration::from_millis(20);

/// The primary a replica was made from.
#[derive(Debug, Clone)]
pub(super) struct Upstream {
    /// The primary's port on 127.0.0.1 (0 while a builder has a slot but no primary yet).
    pub(super) port: u16,
    pub(super) slot: Option<String>,
}

/// How far a replica is behind its primary, measured at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayLag {
    /// WAL the primary has inserted that this replica has not replayed yet, in bytes
    /// (`pg_current_wal_insert_lsn()` on the primary minus `pg_last_wal_replay_lsn()` here,
    /// never negative). Zero when caught up.
    pub bytes: u64,
    /// Zero when caught up (`bytes == 0`); otherwise how long ago the last transaction
    /// replayed here committed on the primary (`now() - pg_last_xact_replay_timestamp()`),
    /// the "seconds behind" of monitoring tools. `None` when behind but no transaction has
    /// been replayed since the replica started.
    pub time: Option<Duration>,
}

/// The primary's current WAL insert position as `pg_lsn` text, moved back to the page
/// boundary when it sits right after a page header: the end of the last record then *is*
/// the boundary, which is what a replica's replay position reports once it has replayed it.
const PRIMARY_WAL_END: &str = "SELECT (CASE WHEN offset_in_page IN (24, 40) \
     THEN lsn - offset_in_page ELSE lsn END)::text \
     FROM (SELECT lsn, (lsn - '0/0'::pg_lsn) % current_setting('wal_block_size')::numeric \
     AS offset_in_page FROM pg_current_wal_insert_lsn() AS lsn) AS now";

impl PgCluster {
    /// Port of the primary this replica was made from; `None` for a cluster made by
    /// `initdb`. Stays set after [`promote`](Self::promote).
    pub fn primary_port(&self) -> Option<u16> {
        self.replication.as_ref().map(|upstream| upstream.port)
    }

    /// The name this replica streams under: `application_name` in the primary's
    /// `pg_stat_replication` (its `cluster_name`). `None` for a cluster made by `initdb`.
    pub fn application_name(&self) -> Option<String> {
        self.replication.as_ref().map(|_| self.replica_name())
    }

    /// The replication slot this replica streams through, if it was made with one.
    pub fn replication_slot(&self) -> Option<&str> {
        self.replication.as_ref()?.slot.as_deref()
    }

    pub(super) fn replica_name(&self) -> String {
        format!("pgfleet_testkit_replica_{}", self.port)
    }

    /// `SELECT pg_is_in_recovery()`: true on a replica until it is promoted.
    pub async fn is_in_recovery(&self) -> anyhow::Result<bool> {
        self.query_bool("SELECT pg_is_in_recovery()").await
    }

    /// Promotes a replica to a primary (`pg_ctl promote`), returning once it accepts
    /// writes (`pg_is_in_recovery()` is false). It keeps its port; its old primary is not
    /// told and keeps running: stopping it is the test's business.
    pub async fn promote(&self) -> anyhow::Result<()> {
        let data = self.data_dir.to_string_lossy().into_owned();
        self.run("pg_ctl", &["promote", "-D", &data, "-w", "-t", PG_CTL_WAIT_SECS])
            .await
            .with_context(|| format!("promoting the cluster on port {}", self.port))?;
        wait_until(READY_LIMIT, POLL, async || {
            anyhow::Ok(!self.is_in_recovery().await?)
        })
        .await
        .with_context(|| {
            format!(
                "cluster on port {} is still in recovery after promotion",
                self.port
            )
        })
    }

    /// Pauses WAL replay (`pg_wal_replay_pause()`), returning once the replica reports it
    /// paused: from then on it still receives WAL but its data stays as it is, so
    /// [`replay_lag`](Self::replay_lag) grows with every write on the primary.
    pub async fn pause_replay(&self) -> anyhow::Result<()> {
        self.execute("SELECT pg_wal_replay_pause()").await?;
        wait_until(READY_LIMIT, POLL, async || {
            anyhow::Ok(self.replay_pause_state().await? == "paused")
        })
        .await
        .with_context(|| format!("replay on port {} did not pause", self.port))
    }

    /// Resumes WAL replay (`pg_wal_replay_resume()`), returning once it is no longer
    /// paused (not once it has caught up: see [`wait_for_replay`](Self::wait_for_replay)).
    pub async fn resume_replay(&self) -> anyhow::Result<()> {
        self.execute("SELECT pg_wal_replay_resume()").await?;
        wait_until(READY_LIMIT, POLL, async || {
            anyhow::Ok(self.replay_pause_state().await? == "not paused")
        })
        .await
        .with_context(|| format!("replay on port {} did not resume", self.port))
    }

    /// Whether replay is paused (`pg_get_wal_replay_pause_state() = 'paused'`).
    pub async fn is_replay_paused(&self) -> anyhow::Result<bool> {
        Ok(self.replay_pause_state().await? == "paused")
    }

    async fn replay_pause_state(&self) -> anyhow::Result<String> {
        let mut conn = self.connect().await?;
        let state = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
            .fetch_one(&mut conn)
            .await
            .with_context(|| format!("reading the replay pause state on port {}", self.port));
        close_quietly(conn).await;
        state
    }

    /// How far this replica is behind its primary now; see [`ReplayLag`]. The primary must
    /// be up and this cluster still in recovery.
    pub async fn replay_lag(&self) -> anyhow::Result<ReplayLag> {
        anyhow::ensure!(
            self.is_in_recovery().await?,
            "the cluster on port {} is not a replica in recovery: no replay lag to measure",
            self.port
        );
        let primary_end = self.primary_wal_end().await?;
        let mut conn = self.connect().await?;
        let row: Result<(i64, Option<f64>), _> = sqlx::query_as(
            "SELECT lag, CASE WHEN lag = 0 THEN 0 \
             ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END \
             FROM (SELECT greatest(pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn()), 0)::int8 \
             AS lag) AS replay",
        )
        .bind(&primary_end)
        .fetch_one(&mut conn)
        .await;
        close_quietly(conn).await;
        let (bytes, seconds) = row.with_context(|| format!("measuring replay lag on port {}", self.port))?;
        Ok(ReplayLag {
            bytes: u64::try_from(bytes).unwrap_or(0),
            time: seconds.map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }

    /// Waits until this replica has replayed everything its primary had inserted when the
    /// call began (committed transactions included, also under `synchronous_commit = off`),
    /// for at most 30 s: after a write on the primary, the replica then reads it.
    pub async fn wait_for_replay(&self) -> anyhow::Result<()> {
        let target = self.primary_wal_end().await?;
        wait_until(REPLAY_LIMIT, POLL, async || {
            let mut conn = self.connect().await?;
            let done = sqlx::query_scalar("SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)")
                .bind(&target)
                .fetch_one(&mut conn)
                .await;
            close_quietly(conn).await;
            anyhow::Ok(done?)
        })
        .await
        .with_context(|| {
            format!(
                "replica on port {} did not replay up to {target} (paused replay waits for resume_replay)",
                self.port
            )
        })
    }

    /// `pg_basebackup -R` from `upstream` into this cluster's data directory, then the
    /// test kit's own listen settings after the copied `postgresql.conf`.
    pub(super) async fn base_backup(&mut self, upstream: &Upstream) -> anyhow::Result<()> {
        let data = self.data_dir.to_string_lossy().into_owned();
        let port = upstream.port.to_string();
        let mut args = vec![
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--username",
            "postgres",
            "--no-password",
            "--pgdata",
            &data,
            "--write-recovery-conf",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--no-sync",
        ];
        if let Some(slot) = &upstream.slot {
            args.extend(["--create-slot", "--slot", slot]);
        }
        bounded(
            BASE_BACKUP_LIMIT,
            format!("pg_basebackup from port {}", upstream.port),
            self.run("pg_basebackup", &args),
        )
        .await
        .with_context(|| format!("making a replica of the cluster on port {}", upstream.port))?;
        self.append_testkit_defaults()
    }

    /// Waits until the primary lists this replica as `streaming`.
    pub(super) async fn wait_streaming(&self) -> anyhow::Result<()> {
        let Some(upstream) = &self.replication else {
            return Ok(());
        };
        let primary_url = primary_url(upstream.port);
        let name = self.replica_name();
        wait_until(READY_LIMIT, POLL, async || {
            let mut primary = connect_admin(&primary_url).await?;
            let state: Result<Option<String>, _> =
                sqlx::query_scalar("SELECT state FROM pg_stat_replication WHERE application_name = $1")
                    .bind(&name)
                    .fetch_optional(&mut primary)
                    .await;
            close_quietly(primary).await;
            anyhow::Ok(state?.as_deref() == Some("streaming"))
        })
        .await
        .with_context(|| {
            format!(
                "replica on port {} does not stream from port {}; replica log tail:\n{}",
                self.port,
                upstream.port,
                self.log_tail()
            )
        })
    }

    async fn primary_wal_end(&self) -> anyhow::Result<String> {
        let upstream = self
            .replication
            .as_ref()
            .with_context(|| format!("the cluster on port {} was not made as a replica", self.port))?;
        let mut primary = connect_admin(&primary_url(upstream.port)).await?;
        let end = sqlx::query_scalar(PRIMARY_WAL_END)
            .fetch_one(&mut primary)
            .await
            .with_context(|| {
                format!(
                    "reading the WAL position of the primary on port {}",
                    upstream.port
                )
            });
        close_quietly(primary).await;
        end
    }

    async fn query_bool(&self, sql: &'static str) -> anyhow::Result<bool> {
        let mut conn = self.connect().await?;
        let value = sqlx::query_scalar(sql)
            .fetch_one(&mut conn)
            .await
            .with_context(|| format!("{sql} on port {}", self.port));
        close_quietly(conn).await;
        value
    }

    async fn execute(&self, sql: &'static str) -> anyhow::Result<()> {
        let mut conn = self.connect().await?;
        let done = sqlx::query(sql)
            .execute(&mut conn)
            .await
            .with_context(|| format!("{sql} on port {}", self.port));
        close_quietly(conn).await;
        done.map(drop)
    }
}

fn primary_url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}
