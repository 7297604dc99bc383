//! `pgfleet migrations status|plan|apply`: fleet schema migrations from the
//! command line, against the configuration (no server needed), for CI
//! pipelines that deploy a schema change. The same engine as
//! `MigrationService`: the same locks, and applies go on the audit trail
//! (as the system actor `cli:<user>`).

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use pgfleet_config::LoadedConfig;
use pgfleet_engine::migrations::{
    ApplySpec, Caller, MigrationError, MigrationScope, Migrations, RolloutEvent, Selection,
};
use pgfleet_migrate::{ApplyEvent, MigrationState, NotRun, RolloutOptions, RolloutPolicy};

use crate::app::ServeError;
use crate::audited_command;

/// `pgfleet migrations …`
#[derive(Debug, Subcommand)]
pub enum MigrationsCommand {
    /// Where every copy of the database stands. Exits 1 unless every copy is
    /// reachable, has every version and needs no attention.
    Status(Target),
    /// What `apply` would run on each copy, with dangerous findings. Exits 1
    /// when a copy is unreachable or would refuse the apply.
    Plan {
        #[command(flatten)]
        target: Target,
        /// Up to this version (inclusive); every pending version by default.
        #[arg(long)]
        to: Option<i64>,
    },
    /// Applies the pending versions. Exits 1 unless every copy succeeded.
    Apply {
        #[command(flatten)]
        target: Target,
        /// Up to this version (inclusive); every pending version by default.
        #[arg(long)]
        to: Option<i64>,
        /// The order of the copies.
        #[arg(long, value_enum, default_value_t = Policy::AllAtOnce)]
        policy: Policy,
        /// Start no further copy once one failed.
        #[arg(long)]
        stop_on_first_failure: bool,
        /// How long to wait for another run holding the database or a copy.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        lock_timeout: Duration,
    },
}

/// Which copies.
#[derive(Debug, Args)]
pub struct Target {
    /// The fleet database (its configured name).
    #[arg(long)]
    database: String,
    /// Only this cloud's copy; every cloud by default.
    #[arg(long)]
    cloud: Option<String>,
}

/// `--policy`
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Policy {
    AllAtOnce,
    OneCloudThenRest,
    OneByOne,
}

impl Target {
    fn scope(&self) -> MigrationScope {
        MigrationScope {
            database: self.database.clone(),
            selection: self.cloud.clone().map_or(Selection::AllClouds, Selection::Cloud),
        }
    }
}

/// Runs the command; `Ok(false)` when it worked but the answer is "no"
/// (behind, refused, failed), so the process exits 1.
pub async fn run(loaded: &LoadedConfig, command: MigrationsCommand) -> Result<bool, ServeError> {
    let config = Arc::new(loaded.config.clone());
    audited_command::run(&config, async |context| {
        let engine = Migrations::new(
            Arc::clone(&context.registry),
            Arc::clone(&config),
            Arc::clone(&context.audit),
        );
        let caller = Caller::command_line(&context.user);
        match command {
            MigrationsCommand::Status(target) => status(&engine, &target, &caller).await,
            MigrationsCommand::Plan { target, to } => plan(&engine, &target, to, &caller).await,
            MigrationsCommand::Apply {
                target,
                to,
                policy,
                stop_on_first_failure,
                lock_timeout,
            } => {
                let spec = ApplySpec {
                    scope: target.scope(),
                    up_to: to,
                    rollout: RolloutOptions {
                        policy: match policy {
                            Policy::AllAtOnce => RolloutPolicy::AllAtOnce,
                            Policy::OneCloudThenRest => RolloutPolicy::OneCloudThenRest,
                            Policy::OneByOne => RolloutPolicy::OneByOne,
                        },
                        stop_on_first_failure,
                    },
                    lock_wait: lock_timeout,
                };
                apply(&engine, spec, &caller).await
            }
        }
    })
    .await
}

async fn status(engine: &Migrations, target: &Target, caller: &Caller) -> Result<bool, ServeError> {
    let (set, statuses) = engine.status(&target.scope(), caller).await?;
    println!(
        "database {}: {} version(s) in the set, newest {}",
        set.database,
        set.set.len(),
        set.set.newest_version().unwrap_or(0)
    );
    let summary = pgfleet_migrate::FleetStatus::new(
        &set.set,
        statuses
            .iter()
            .map(|(t, s)| (t.clone(), s.clone().map_err(|f| f.message))),
    );
    for (target, status) in &statuses {
        match status {
            Err(failure) => println!("  {target}: UNREACHABLE: {}", failure.message),
            Ok(status) => {
                println!(
                    "  {target}: newest applied {}, pending {:?}",
                    status.newest_applied().unwrap_or(0),
                    status.pending()
                );
                for entry in &status.migrations {
                    let extra = match &entry.state {
                        MigrationState::Failed(failed) => format!(" ({})", failed.failure),
                        MigrationState::Applied(row) => {
                            format!(" by {} at {}", row.applied_by, row.applied_at)
                        }
                        _ => String::new(),
                    };
                    println!(
                        "    {:>6} {:<32} {}{extra}",
                        entry.version,
                        entry.name,
                        entry.state.as_str()
                    );
                }
            }
        }
    }
    let up_to_date = summary.is_up_to_date();
    println!(
        "{}",
        if up_to_date {
            "up to date".to_owned()
        } else {
            format!(
                "behind: {}; needing attention: {}",
                list(&summary.behind()),
                list(&summary.needing_attention())
            )
        }
    );
    Ok(up_to_date)
}

fn list(targets: &[&pgfleet_registry::Target]) -> String {
    if targets.is_empty() {
        return "none".to_owned();
    }
    targets
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn plan(
    engine: &Migrations,
    target: &Target,
    to: Option<i64>,
    caller: &Caller,
) -> Result<bool, ServeError> {
    let (set, plans) = engine.plan(&target.scope(), to, caller).await?;
    println!("database {}:", set.database);
    let mut all_ok = true;
    for (target, plan) in plans {
        match plan {
            Err(failure) => {
                all_ok = false;
                println!("  {target}: {}", failure.message);
            }
            Ok(plan) if plan.migrations.is_empty() => println!("  {target}: up to date"),
            Ok(plan) => {
                println!("  {target}: would apply");
                for migration in plan.migrations {
                    println!(
                        "    {} {}{}",
                        migration.file,
                        if migration.no_transaction {
                            "(no transaction)"
                        } else {
                            ""
                        },
                        if migration.failed_before {
                            " (failed before)"
                        } else {
                            ""
                        }
                    );
                    for statement in migration.statements {
                        for finding in statement.findings {
                            println!(
                                "      line {}: {} [{}] {}",
                                statement.position.line,
                                statement.command,
                                finding.code.as_str().to_uppercase(),
                                finding.reason
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(all_ok)
}

async fn apply(engine: &Migrations, spec: ApplySpec, caller: &Caller) -> Result<bool, ServeError> {
    let prepared = engine.prepare_apply(spec, caller).await?;
    println!(
        "applying {} on {} (audit record {})",
        prepared.set().database,
        list(&prepared.targets().iter().collect::<Vec<_>>()),
        prepared.execution_id()
    );
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let running = tokio::spawn(prepared.run(sender));
    while let Some(event) = receiver.recv().await {
        match event {
            RolloutEvent::Target { target, event } => match event {
                ApplyEvent::Locked { pending, .. } => println!("  {target}: to apply {pending:?}"),
                ApplyEvent::Started { .. } => {}
                ApplyEvent::Applied {
                    version,
                    name,
                    duration,
                } => println!("  {target}: applied {version} {name} ({duration:?})"),
                ApplyEvent::Failed {
                    version,
                    name,
                    failure,
                    line_column,
                } => println!(
                    "  {target}: FAILED {version} {name}{}: {failure}",
                    line_column.map_or_else(String::new, |(l, c)| format!(" at line {l}, column {c}"))
                ),
                ApplyEvent::Skipped { version, reason, .. } => {
                    println!("  {target}: skipped {version} ({reason:?})")
                }
            },
            RolloutEvent::TargetFinished { target, result } => match (&result.failure, result.not_run) {
                (_, Some(NotRun::CanaryFailed)) => println!("  {target}: not run (the canary cloud failed)"),
                (_, Some(NotRun::EarlierFailure)) => {
                    println!("  {target}: not run (an earlier target failed)")
                }
                (Some(failure), None) => println!("  {target}: failed: {}", failure.failure.message),
                (None, None) => println!(
                    "  {target}: done, newest applied {}",
                    result.newest_applied.unwrap_or(0)
                ),
            },
            RolloutEvent::Finished {
                success,
                duration,
                failed,
            } => {
                if success {
                    println!("done in {duration:?}");
                } else {
                    println!(
                        "FAILED on {} (after {duration:?})",
                        list(&failed.iter().collect::<Vec<_>>())
                    );
                }
            }
        }
    }
    running.await.map_err(ServeError::Task)
}

impl From<MigrationError> for ServeError {
    fn from(error: MigrationError) -> Self {
        ServeError::Migrations(error)
    }
}
