//! `pgfleet backup run|list|verify|restore`: backups from the command line,
//! against the configuration (no server needed), through the same
//! `pgfleet_backup::run::Backups` as BackupService: the same storage, keys,
//! catalog and audit records (as the system actor `cli:<user>`).

use std::sync::Arc;

use clap::{Args, Subcommand};
use pgfleet_backup::BackupError;
use pgfleet_backup::policy::{DEFAULT_COMPRESSION_LEVEL, DumpFormat, TargetName, TargetSelection};
use pgfleet_backup::run::{BackupCaller, Backups, RestoreEvent, RestoreSpec, RunEvent, RunSpec};
use pgfleet_backup::store::BackupFilter;
use pgfleet_config::LoadedConfig;
use pgfleet_registry::Target;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::ServeError;
use crate::audited_command;

/// `pgfleet backup …`
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Backs up a policy's targets, or a database's copies, now. Exits 1
    /// unless every target succeeded.
    Run(RunArgs),
    /// Lists backups, newest first.
    List {
        /// Only this database.
        #[arg(long, default_value = "")]
        database: String,
        /// Only this cloud.
        #[arg(long, default_value = "")]
        cloud: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Reads a backup back (checksum, decryption, pg_restore --list). Exits 1
    /// when it cannot be read.
    Verify {
        /// The backup's id.
        id: Uuid,
    },
    /// Restores a backup onto a configured target (an empty database, or
    /// `--clean --confirm-dangerous`). Exits 1 when refused or failed.
    Restore {
        /// The backup's id.
        id: Uuid,
        /// Target cloud.
        #[arg(long)]
        cloud: String,
        /// Target database (configured name).
        #[arg(long)]
        database: String,
        /// Drop the target's objects first.
        #[arg(long)]
        clean: bool,
        /// Confirms --clean.
        #[arg(long)]
        confirm_dangerous: bool,
    },
}

/// What `backup run` backs up.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A stored policy's id.
    #[arg(long, conflicts_with = "database")]
    policy: Option<Uuid>,
    /// Every cloud's copy of this database (custom format, level 3).
    #[arg(long)]
    database: Option<String>,
    /// Only this cloud's copy (with --database).
    #[arg(long, requires = "database")]
    cloud: Option<String>,
}

/// Runs the command; `Ok(false)` when it worked but the answer is "no".
pub async fn run(loaded: &LoadedConfig, command: BackupCommand) -> Result<bool, ServeError> {
    let config = &loaded.config;
    audited_command::run(config, async |context| {
        let backups = Arc::new(Backups::new(
            Arc::clone(&context.registry),
            Arc::clone(&context.audit),
            context.history.clone(),
            &config.backup,
            Arc::new(()),
        )?);
        let caller = BackupCaller::system(&format!("cli:{}", context.user));
        Ok(execute(&backups, command, &caller).await?)
    })
    .await
}

async fn execute(
    backups: &Arc<Backups>,
    command: BackupCommand,
    caller: &BackupCaller,
) -> Result<bool, BackupError> {
    match command {
        BackupCommand::Run(args) => {
            let spec = match (args.policy, args.database) {
                (Some(id), _) => {
                    let policy = backups
                        .policies()
                        .get(id)
                        .await?
                        .ok_or_else(|| pgfleet_backup::store::not_found(id))?;
                    let targets = policy
                        .spec
                        .targets
                        .resolve(backups.registry(), "policy.targets")?;
                    RunSpec::of_policy(policy, targets)
                }
                (None, Some(database)) => {
                    let selection = match args.cloud {
                        Some(cloud) => TargetSelection::Targets {
                            targets: vec![TargetName { cloud, database }],
                        },
                        None => TargetSelection::AllClouds { database },
                    };
                    RunSpec {
                        policy: None,
                        targets: selection.resolve(backups.registry(), "--database")?,
                        format: DumpFormat::Custom,
                        compression_level: DEFAULT_COMPRESSION_LEVEL,
                    }
                }
                (None, None) => return Err(BackupError::invalid("--policy", "give --policy or --database")),
            };
            let mut events = backups.start_run(spec, caller, CancellationToken::new()).await?;
            let mut all_ok = false;
            while let Some(event) = events.recv().await {
                match event {
                    RunEvent::Started { target, backup_id } => println!("{target}: started {backup_id}"),
                    RunEvent::Progress { .. } => {}
                    RunEvent::Finished { target, outcome } => match outcome {
                        Ok(b) => println!(
                            "{target}: OK {} {} bytes stored ({} raw) sha256 {}",
                            b.id, b.stored_bytes, b.raw_bytes, b.stored_sha256
                        ),
                        Err(error) => println!("{target}: FAILED {error}"),
                    },
                    RunEvent::Done {
                        execution_id,
                        succeeded,
                        failed,
                    } => {
                        println!(
                            "done: {succeeded} succeeded, {failed} failed (audit record {execution_id})"
                        );
                        all_ok = failed == 0;
                    }
                }
            }
            Ok(all_ok)
        }
        BackupCommand::List {
            database,
            cloud,
            limit,
        } => {
            let filter = BackupFilter {
                cloud,
                database,
                ..BackupFilter::default()
            };
            for b in backups.list(&filter, None, limit.clamp(1, 500)).await? {
                println!(
                    "{} {} {} {} bytes {}",
                    b.id,
                    b.target,
                    b.started_at.to_rfc3339(),
                    b.stored_bytes,
                    b.object_key
                );
            }
            Ok(true)
        }
        BackupCommand::Verify { id } => match backups.verify(id).await {
            Ok(verified) => {
                println!(
                    "{id}: OK ({} bytes stored, {} bytes of dump)",
                    verified.stored_bytes, verified.raw_bytes
                );
                Ok(true)
            }
            Err(error @ (BackupError::FailedPrecondition(_) | BackupError::NotFound(_))) => {
                println!("{id}: FAILED {error}");
                Ok(false)
            }
            Err(other) => Err(other),
        },
        BackupCommand::Restore {
            id,
            cloud,
            database,
            clean,
            confirm_dangerous,
        } => {
            let spec = RestoreSpec {
                backup_id: id,
                target: Target::new(cloud, database),
                clean,
                confirm_dangerous,
            };
            let mut events = match backups
                .start_restore(spec, caller, CancellationToken::new())
                .await
            {
                Ok(events) => events,
                Err(error @ (BackupError::FailedPrecondition(_) | BackupError::NotFound(_))) => {
                    println!("{id}: REFUSED {error}");
                    return Ok(false);
                }
                Err(other) => return Err(other),
            };
            let mut ok = false;
            while let Some(event) = events.recv().await {
                match event {
                    RestoreEvent::Checked { stored_bytes } => println!("checksum OK ({stored_bytes} bytes)"),
                    RestoreEvent::Progress { .. } => {}
                    RestoreEvent::Done {
                        execution_id,
                        raw_bytes,
                    } => {
                        println!("restored {raw_bytes} bytes of dump (audit record {execution_id})");
                        ok = true;
                    }
                    RestoreEvent::Failed {
                        execution_id,
                        message,
                    } => {
                        println!("FAILED {message} (audit record {execution_id})");
                    }
                }
            }
            Ok(ok)
        }
    }
}
