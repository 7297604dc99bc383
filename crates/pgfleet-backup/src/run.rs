//! `Backups`: what BackupService does, without the wire. Policy changes,
//! runs (one task per target, each on record before it starts), verify,
//! restore, delete and the health view.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pgfleet_config::BackupConfig;
use pgfleet_engine::Observer;
use pgfleet_engine::audit::{
    Actor, AuditLog, Kind, NewExecution, RecordedError, RecordedOutcome, TargetScope,
};
use pgfleet_engine::identity::Role;
use pgfleet_engine::query::audited::{Origin, recorded_target};
use pgfleet_registry::{Registry, Route, Target};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::BackupError;
use crate::manifest::{MANIFEST_VERSION, Manifest};
use crate::pipeline::{self, Encoding, Identities, Progress};
use crate::policy::{DumpFormat, Policy, PolicySpec, TargetName};
use crate::retention;
use crate::storage::{self, BackupStorage};
use crate::store::{BackupCatalog, BackupFilter, BackupRecord, BackupStatus, PolicyStore};
use crate::tools::{ConnectionEnv, PgTools};

/// How often a run reports progress per target.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
/// Events buffered between the targets and the caller.
const EVENT_BUFFER: usize = 64;
/// Bound on reading a target's server version.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Who asks, for the audit trail.
#[derive(Debug, Clone)]
pub struct BackupCaller {
    pub actor: Actor,
    pub role: Role,
    pub origin: Origin,
}

impl BackupCaller {
    /// pgfleet itself (the scheduler).
    pub fn system(name: &str) -> Self {
        Self {
            actor: Actor::System(name.to_owned()),
            role: Role::Master,
            origin: Origin {
                client_address: String::new(),
                request_id: Uuid::now_v7().to_string(),
            },
        }
    }
}

/// What one run backs up, and how.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub policy: Option<Policy>,
    pub targets: Vec<Target>,
    pub format: DumpFormat,
    pub compression_level: i32,
}

impl RunSpec {
    pub fn of_policy(policy: Policy, targets: Vec<Target>) -> Self {
        Self {
            format: policy.spec.format,
            compression_level: policy.spec.compression_level,
            policy: Some(policy),
            targets,
        }
    }
}

/// What a run reports, in order per target.
#[derive(Debug, Clone)]
pub enum RunEvent {
    Started {
        target: Target,
        backup_id: Uuid,
    },
    Progress {
        target: Target,
        raw_bytes: u64,
        stored_bytes: u64,
        elapsed: Duration,
    },
    Finished {
        target: Target,
        outcome: Result<Box<BackupRecord>, String>,
    },
    /// Last event: the run's audit record and the counts.
    Done {
        execution_id: Uuid,
        succeeded: usize,
        failed: usize,
    },
}

/// What a restore reports.
#[derive(Debug, Clone)]
pub enum RestoreEvent {
    /// The checksum of the stored object was checked (before any target work).
    Checked {
        stored_bytes: u64,
    },
    Progress {
        raw_bytes: u64,
        elapsed: Duration,
    },
    Done {
        execution_id: Uuid,
        raw_bytes: u64,
    },
    Failed {
        execution_id: Uuid,
        message: String,
    },
}

/// What to restore where.
#[derive(Debug, Clone)]
pub struct RestoreSpec {
    pub backup_id: Uuid,
    pub target: Target,
    /// `--clean --if-exists` into a database that has objects of its own.
    pub clean: bool,
    pub confirm_dangerous: bool,
}

/// A verified backup.
#[derive(Debug, Clone)]
pub struct Verified {
    pub stored_bytes: u64,
    pub raw_bytes: u64,
}

/// One target's backup health.
#[derive(Debug, Clone)]
pub struct TargetHealth {
    pub target: Target,
    pub last_success: Option<BackupRecord>,
    /// Failures since the last success.
    pub failures_since_success: u64,
    /// Stored sizes of the last successful backups, newest first (at most 10).
    pub recent_sizes: Vec<u64>,
    /// The strictest `max_age` of the policies that cover it.
    pub max_age: Option<Duration>,
    /// No success within `max_age`.
    pub degraded: bool,
}

/// BackupService's work.
pub struct Backups {
    registry: Arc<Registry>,
    audit: Arc<AuditLog>,
    policies: PolicyStore,
    catalog: BackupCatalog,
    /// Opened on first use, so a server that never backs up creates no
    /// directory and needs no storage credentials.
    storage: std::sync::OnceLock<BackupStorage>,
    config: BackupConfig,
    tools: PgTools,
    recipients: Vec<age::x25519::Recipient>,
    recipient_texts: Vec<String>,
    identity_file: Option<PathBuf>,
    /// Receives each health reading (the server's Prometheus gauges).
    observer: Arc<dyn Observer>,
}

impl Backups {
    pub fn new(
        registry: Arc<Registry>,
        audit: Arc<AuditLog>,
        pool: sqlx::PgPool,
        config: &BackupConfig,
        observer: Arc<dyn Observer>,
    ) -> Result<Self, BackupError> {
        Ok(Self {
            observer,
            registry,
            audit,
            policies: PolicyStore::new(pool.clone()),
            catalog: BackupCatalog::new(pool),
            storage: std::sync::OnceLock::new(),
            config: config.clone(),
            tools: PgTools::new(config.pg_bin_dir.clone()),
            recipients: pipeline::parse_recipients(&config.recipients)?,
            recipient_texts: config.recipients.clone(),
            identity_file: config.identity_file.clone(),
        })
    }

    pub fn policies(&self) -> &PolicyStore {
        &self.policies
    }

    pub fn catalog(&self) -> &BackupCatalog {
        &self.catalog
    }

    /// The backup storage, opened on first use.
    pub fn storage(&self) -> Result<&BackupStorage, BackupError> {
        if let Some(storage) = self.storage.get() {
            return Ok(storage);
        }
        let opened = BackupStorage::from_config(&self.config)?;
        Ok(self.storage.get_or_init(|| opened))
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Checks `spec` and its targets (`policy.` fields).
    pub fn check_policy(&self, spec: &PolicySpec) -> Result<Vec<Target>, BackupError> {
        spec.check("policy.")?;
        spec.targets.resolve(&self.registry, "policy.targets")
    }

    /// A record of kind `kind` about `targets`, opened (committed) now.
    async fn open_record(
        &self,
        kind: Kind,
        caller: &BackupCaller,
        description: String,
        targets: &[Target],
        database: &str,
        dangerous: bool,
    ) -> Result<pgfleet_engine::audit::RunningExecution, BackupError> {
        let new = NewExecution {
            id: Uuid::now_v7(),
            kind,
            actor: caller.actor.clone(),
            role: caller.role,
            client_address: caller.origin.client_address.clone(),
            request_id: caller.origin.request_id.clone(),
            query: description,
            query_redacted: false,
            fingerprint: String::new(),
            statement_classes: vec!["UTILITY".to_owned()],
            database: database.to_owned(),
            pg_schema: String::new(),
            scope: TargetScope::Targets,
            targets: targets.iter().map(recorded_target).collect(),
            read_only: false,
            confirmed_dangerous: dangerous,
            findings: Vec::new(),
            replication_job_id: None,
        };
        Ok(self.audit.open(new).await?.started())
    }

    pub async fn create_policy(
        &self,
        spec: &PolicySpec,
        caller: &BackupCaller,
        created_by: &str,
    ) -> Result<Policy, BackupError> {
        self.check_policy(spec)?;
        let record = self
            .open_record(
                Kind::BackupPolicy,
                caller,
                policy_text("create", spec),
                &[],
                "",
                false,
            )
            .await?;
        let created = self.policies.create(spec, created_by).await;
        record.finish(Vec::new()).await;
        created
    }

    pub async fn update_policy(
        &self,
        id: Uuid,
        revision: i64,
        spec: &PolicySpec,
        caller: &BackupCaller,
    ) -> Result<Policy, BackupError> {
        self.check_policy(spec)?;
        let record = self
            .open_record(
                Kind::BackupPolicy,
                caller,
                policy_text("update", spec),
                &[],
                "",
                false,
            )
            .await?;
        let updated = self.policies.update(id, revision, spec).await;
        record.finish(Vec::new()).await;
        updated
    }

    pub async fn delete_policy(&self, id: Uuid, caller: &BackupCaller) -> Result<(), BackupError> {
        let policy = self
            .policies
            .get(id)
            .await?
            .ok_or_else(|| crate::store::not_found(id))?;
        let record = self
            .open_record(
                Kind::BackupPolicy,
                caller,
                policy_text("delete", &policy.spec),
                &[],
                "",
                false,
            )
            .await?;
        let deleted = self.policies.delete(id).await;
        record.finish(Vec::new()).await;
        match deleted? {
            true => Ok(()),
            false => Err(crate::store::not_found(id)),
        }
    }

    /// Starts a run of `spec`: checked, on record, then one task per target;
    /// the events end with [`RunEvent::Done`] after the record is closed.
    pub async fn start_run(
        self: &Arc<Self>,
        spec: RunSpec,
        caller: &BackupCaller,
        cancel: CancellationToken,
    ) -> Result<mpsc::Receiver<RunEvent>, BackupError> {
        if spec.targets.is_empty() {
            return Err(BackupError::invalid("targets", "selects no configured target"));
        }
        let dump_version = self.tools.version("pg_dump").await?;
        let database = common_database(&spec.targets);
        let description = format!(
            "-- pgfleet backup run{}\n-- targets: {}",
            spec.policy
                .as_ref()
                .map(|p| format!(" (policy {})", p.spec.name))
                .unwrap_or_default(),
            spec.targets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let record = self
            .open_record(
                Kind::BackupRun,
                caller,
                description,
                &spec.targets,
                &database,
                false,
            )
            .await?;
        let execution_id = record.id();
        let (events, receiver) = mpsc::channel(EVENT_BUFFER);
        let mut tasks = tokio::task::JoinSet::new();
        for target in spec.targets.clone() {
            let this = Arc::clone(self);
            let spec = spec.clone();
            let events = events.clone();
            let cancel = cancel.clone();
            let dump_version = dump_version.clone();
            tasks.spawn(async move {
                let started = Instant::now();
                let outcome = this
                    .backup_one(&target, &spec, &dump_version, execution_id, &events, cancel)
                    .await;
                let duration = started.elapsed();
                let recorded = tool_outcome(&target, "BACKUP", duration, outcome.as_ref().err());
                let _ = events.send(RunEvent::Finished { target, outcome }).await;
                recorded
            });
        }
        // The recorder: every target's outcome, the record closed, then Done.
        let done = Arc::clone(self);
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(error) => tracing::error!(%error, "a backup task failed"),
                }
            }
            let succeeded = outcomes.iter().filter(|o| o.success).count();
            let failed = outcomes.len() - succeeded;
            record.finish(outcomes).await;
            let _ = events
                .send(RunEvent::Done {
                    execution_id,
                    succeeded,
                    failed,
                })
                .await;
            drop(done);
        });
        Ok(receiver)
    }

    async fn backup_one(
        &self,
        target: &Target,
        spec: &RunSpec,
        dump_version: &crate::tools::ToolVersion,
        execution_id: Uuid,
        events: &mpsc::Sender<RunEvent>,
        cancel: CancellationToken,
    ) -> Result<Box<BackupRecord>, String> {
        let config = self
            .registry
            .database_config(target)
            .ok_or_else(|| format!("no configured target {target}"))?;
        let (server_major, server_version) = self.server_version(target).await.map_err(|e| e.to_string())?;
        if dump_version.major < server_major {
            return Err(format!(
                "pg_dump {} is older than the server ({server_version}): install pg_dump {server_major} or newer \
                 (backup.pg_bin_dir)",
                dump_version.major
            ));
        }
        let id = Uuid::now_v7();
        let started_at = Utc::now();
        let encrypted = !self.recipients.is_empty();
        let object_key = storage::object_key(target, started_at, id, spec.format, encrypted);
        let mut record = BackupRecord {
            id,
            policy_id: spec.policy.as_ref().map(|p| p.id),
            policy_name: spec
                .policy
                .as_ref()
                .map(|p| p.spec.name.clone())
                .unwrap_or_default(),
            target: target.clone(),
            status: BackupStatus::Running,
            format: spec.format,
            encrypted,
            manifest_key: storage::manifest_key(&object_key),
            object_key,
            started_at,
            finished_at: None,
            raw_bytes: 0,
            compressed_bytes: 0,
            stored_bytes: 0,
            stored_sha256: String::new(),
            raw_sha256: String::new(),
            server_version,
            pg_dump_version: dump_version.text.clone(),
            execution_id,
            error: String::new(),
        };
        self.catalog
            .insert_running(&record)
            .await
            .map_err(|e| e.to_string())?;
        let _ = events
            .send(RunEvent::Started {
                target: target.clone(),
                backup_id: id,
            })
            .await;
        let progress = Arc::new(Progress::default());
        let ticker = spawn_progress(target.clone(), Arc::clone(&progress), events.clone());
        let encoding = Encoding {
            format: spec.format,
            compression_level: spec.compression_level,
            recipients: self.recipients.clone(),
        };
        let storage = match self.storage() {
            Ok(storage) => storage,
            Err(error) => {
                let message = error.to_string();
                let _ = self.catalog.failed(id, &message).await;
                ticker.abort();
                return Err(message);
            }
        };
        let dumped = pipeline::dump(
            &self.tools,
            &ConnectionEnv::of(&config),
            encoding,
            storage,
            &record.object_key,
            progress,
            cancel,
        )
        .await;
        ticker.abort();
        let stored = match dumped {
            Ok(dumped) => {
                record.raw_bytes = dumped.raw_bytes;
                record.compressed_bytes = dumped.compressed_bytes;
                record.stored_bytes = dumped.stored_bytes;
                record.raw_sha256 = dumped.raw_sha256;
                record.stored_sha256 = dumped.stored_sha256;
                record.finished_at = Some(Utc::now());
                record.status = BackupStatus::Succeeded;
                storage.put_manifest(&self.manifest(&record)).await
            }
            Err(error) => Err(error),
        };
        if let Err(error) = stored {
            let message = error.to_string();
            // Nothing stays behind: the object (the upload was aborted, or
            // completed before the manifest failed) and its manifest.
            let _ = storage.delete(&record.object_key).await;
            let _ = storage.delete(&record.manifest_key).await;
            if let Err(store) = self.catalog.failed(id, &message).await {
                tracing::warn!(error = %store, backup = %id, "recording a failed backup failed");
            }
            tracing::warn!(target = %target, backup = %id, error = %message, "backup failed");
            return Err(message);
        }
        self.catalog.succeeded(&record).await.map_err(|e| e.to_string())?;
        tracing::info!(target = %target, backup = %id, bytes = record.stored_bytes, "backup stored");
        if let Some(policy) = &spec.policy
            && let Err(error) = self.apply_retention(policy, target).await
        {
            tracing::warn!(target = %target, policy = %policy.id, error = %error, "retention failed");
        }
        Ok(Box::new(record))
    }

    fn manifest(&self, record: &BackupRecord) -> Manifest {
        Manifest {
            manifest_version: MANIFEST_VERSION,
            backup_id: record.id,
            target: TargetName::from(&record.target),
            policy_id: record.policy_id,
            policy_name: record.policy_name.clone(),
            server_version: record.server_version.clone(),
            pg_dump_version: record.pg_dump_version.clone(),
            format: record.format,
            compression: "zstd".to_owned(),
            compression_level: 0,
            encryption: if record.encrypted {
                "age-x25519".to_owned()
            } else {
                String::new()
            },
            recipients: if record.encrypted {
                self.recipient_texts.clone()
            } else {
                Vec::new()
            },
            object_key: record.object_key.clone(),
            raw_bytes: record.raw_bytes,
            compressed_bytes: record.compressed_bytes,
            stored_bytes: record.stored_bytes,
            stored_sha256: record.stored_sha256.clone(),
            raw_sha256: record.raw_sha256.clone(),
            started_at: record.started_at,
            finished_at: record.finished_at.unwrap_or(record.started_at),
            execution_id: record.execution_id,
        }
    }

    async fn server_version(&self, target: &Target) -> Result<(u32, String), BackupError> {
        let read = async {
            let mut checkout = self
                .registry
                .acquire(target, Route::Write)
                .await
                .map_err(|e| BackupError::Unavailable(format!("{target}: {e}")))?;
            let (number, text): (String, String) = sqlx::query_as(
                "SELECT current_setting('server_version_num'), current_setting('server_version')",
            )
            .fetch_one(checkout.connection_mut())
            .await
            .map_err(|e| BackupError::Unavailable(format!("{target}: {e}")))?;
            let major = number.parse::<u32>().map(|n| n / 10_000).unwrap_or(0);
            Ok((major, text))
        };
        tokio::time::timeout(VERSION_TIMEOUT, read).await.map_err(|_| {
            BackupError::Unavailable(format!("{target}: no answer within {VERSION_TIMEOUT:?}"))
        })?
    }

    /// Deletes what `policy` no longer keeps of `target`'s backups.
    pub async fn apply_retention(&self, policy: &Policy, target: &Target) -> Result<Vec<Uuid>, BackupError> {
        let backups = self.catalog.of_target(target, Some(policy.id)).await?;
        let succeeded: Vec<(Uuid, DateTime<Utc>)> = backups
            .iter()
            .filter(|b| b.status == BackupStatus::Succeeded)
            .map(|b| (b.id, b.started_at))
            .collect();
        let expired = retention::expired(&succeeded, &policy.spec.retention, Utc::now());
        for id in &expired {
            if let Some(backup) = backups.iter().find(|b| b.id == *id) {
                self.remove(backup).await?;
            }
        }
        Ok(expired)
    }

    /// The object, then the manifest, then the row: a crash in between
    /// leaves a listed backup whose object is gone (VerifyBackup says so),
    /// never an object nobody lists.
    async fn remove(&self, backup: &BackupRecord) -> Result<(), BackupError> {
        self.storage()?.delete(&backup.object_key).await?;
        self.storage()?.delete(&backup.manifest_key).await?;
        self.catalog.delete(backup.id).await?;
        Ok(())
    }

    pub async fn get(&self, id: Uuid) -> Result<BackupRecord, BackupError> {
        self.catalog
            .get(id)
            .await?
            .filter(|b| b.status != BackupStatus::Running)
            .ok_or_else(|| BackupError::NotFound(format!("no backup {id}")))
    }

    pub async fn list(
        &self,
        filter: &BackupFilter,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<BackupRecord>, BackupError> {
        self.catalog.list(filter, after, limit).await
    }

    pub async fn delete_backup(&self, id: Uuid, caller: &BackupCaller) -> Result<(), BackupError> {
        let backup = self.get(id).await?;
        let record = self
            .open_record(
                Kind::BackupDelete,
                caller,
                format!("-- pgfleet backup delete {id} ({})", backup.object_key),
                &[],
                &backup.target.database,
                false,
            )
            .await?;
        let removed = self.remove(&backup).await;
        record.finish(Vec::new()).await;
        removed
    }

    fn identities(&self, backup: &BackupRecord) -> Result<Identities, BackupError> {
        if !backup.encrypted {
            return Ok(None);
        }
        let file = self.identity_file.as_ref().ok_or_else(|| {
            BackupError::FailedPrecondition(
                "the backup is encrypted and backup.identity_file is not configured".to_owned(),
            )
        })?;
        Ok(Some(Arc::new(pipeline::read_identities(file)?)))
    }

    /// Reads the backup back: SHA-256 of the stored bytes, then decryption,
    /// decompression (the raw SHA-256 too) and `pg_restore --list` for a
    /// custom archive.
    pub async fn verify(&self, id: Uuid) -> Result<Verified, BackupError> {
        let backup = self.usable(id).await?;
        let identities = self.identities(&backup)?;
        let progress = Arc::new(Progress::default());
        let storage = self.storage()?;
        pipeline::check_stored(storage, &backup.object_key, &backup.stored_sha256, &progress).await?;
        pipeline::check_key(storage, &backup.object_key, &identities).await?;
        let command = match backup.format {
            DumpFormat::Custom => {
                let mut command = tokio::process::Command::new(self.tools_program("pg_restore"));
                command.arg("--list").kill_on_drop(true);
                command
            }
            // A plain dump has no table of contents: decoding it whole and
            // matching the raw SHA-256 is the check.
            DumpFormat::Plain => {
                let mut command = tokio::process::Command::new("cat");
                command.kill_on_drop(true);
                command
            }
        };
        let decoded = pipeline::decode_into(
            storage,
            &backup.object_key,
            identities,
            &backup.raw_sha256,
            command,
            false,
            Arc::clone(&progress),
            CancellationToken::new(),
        )
        .await?;
        Ok(Verified {
            stored_bytes: backup.stored_bytes,
            raw_bytes: decoded.raw_bytes,
        })
    }

    fn tools_program(&self, name: &str) -> PathBuf {
        self.tools.program(name)
    }

    /// A listed backup whose manifest is still stored and agrees with the row.
    async fn usable(&self, id: Uuid) -> Result<BackupRecord, BackupError> {
        let backup = self.get(id).await?;
        if backup.status != BackupStatus::Succeeded {
            return Err(BackupError::FailedPrecondition(format!(
                "backup {id} did not succeed"
            )));
        }
        let manifest = self.storage()?.get_manifest(&backup.object_key).await?;
        if manifest.stored_sha256 != backup.stored_sha256 || manifest.backup_id != backup.id {
            return Err(BackupError::FailedPrecondition(format!(
                "the manifest of backup {id} does not match its catalog row"
            )));
        }
        Ok(backup)
    }

    /// Restores a backup onto `spec.target`: checksum, then key, then the
    /// target's emptiness (or `clean` with confirmation), then the audit
    /// record, and only then the target is touched.
    pub async fn start_restore(
        self: &Arc<Self>,
        spec: RestoreSpec,
        caller: &BackupCaller,
        cancel: CancellationToken,
    ) -> Result<mpsc::Receiver<RestoreEvent>, BackupError> {
        let config = self
            .registry
            .database_config(&spec.target)
            .ok_or_else(|| BackupError::invalid("target", format!("no configured target {}", spec.target)))?;
        if spec.clean && !spec.confirm_dangerous {
            return Err(BackupError::FailedPrecondition(
                "clean drops the target's objects before restoring: set confirm_dangerous".to_owned(),
            ));
        }
        let backup = self.usable(spec.backup_id).await?;
        let identities = self.identities(&backup)?;
        let progress = Arc::new(Progress::default());
        let storage = self.storage()?;
        pipeline::check_stored(storage, &backup.object_key, &backup.stored_sha256, &progress).await?;
        pipeline::check_key(storage, &backup.object_key, &identities).await?;
        let objects = self.user_objects(&spec.target).await?;
        if !objects.is_empty() && !spec.clean {
            return Err(BackupError::FailedPrecondition(format!(
                "{} is not empty (it has {}): restore into an empty database, or set clean and \
                 confirm_dangerous",
                spec.target,
                objects.describe()
            )));
        }
        let record = self
            .open_record(
                Kind::BackupRestore,
                caller,
                format!(
                    "-- pgfleet backup restore {} ({}) onto {}{}",
                    backup.id,
                    backup.target,
                    spec.target,
                    if spec.clean { " --clean" } else { "" }
                ),
                std::slice::from_ref(&spec.target),
                &spec.target.database,
                spec.clean,
            )
            .await?;
        let execution_id = record.id();
        let connection = ConnectionEnv::of(&config);
        let mut command = match backup.format {
            DumpFormat::Custom => {
                let mut command = self.tools.command("pg_restore", &connection);
                command.args([
                    "--no-owner",
                    "--no-privileges",
                    "--exit-on-error",
                    "--dbname",
                    &connection.database,
                ]);
                if spec.clean {
                    command.args(["--clean", "--if-exists"]);
                }
                command
            }
            DumpFormat::Plain => {
                let mut command = self.tools.command("psql", &connection);
                command.args([
                    "--no-psqlrc",
                    "--quiet",
                    "--set",
                    "ON_ERROR_STOP=1",
                    "--single-transaction",
                ]);
                command
            }
        };
        command.kill_on_drop(true);
        let (events, receiver) = mpsc::channel(EVENT_BUFFER);
        let _ = events
            .send(RestoreEvent::Checked {
                stored_bytes: backup.stored_bytes,
            })
            .await;
        let this = Arc::clone(self);
        let target = spec.target.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let ticker_progress = Arc::clone(&progress);
            let ticker_events = events.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(PROGRESS_INTERVAL).await;
                    let (raw_bytes, _, _) = ticker_progress.snapshot();
                    let event = RestoreEvent::Progress {
                        raw_bytes,
                        elapsed: started.elapsed(),
                    };
                    if ticker_events.send(event).await.is_err() {
                        break;
                    }
                }
            });
            progress.raw_bytes.store(0, std::sync::atomic::Ordering::Relaxed);
            let Ok(storage) = this.storage() else {
                return;
            };
            let decoded = pipeline::decode_into(
                storage,
                &backup.object_key,
                identities,
                &backup.raw_sha256,
                command,
                true,
                progress,
                cancel,
            )
            .await;
            ticker.abort();
            let outcome = decoded
                .map(|decoded| decoded.raw_bytes)
                .map_err(|error| error.to_string());
            let duration = started.elapsed();
            record
                .finish(vec![tool_outcome(
                    &target,
                    "RESTORE",
                    duration,
                    outcome.as_ref().err(),
                )])
                .await;
            let last = match outcome {
                Ok(raw_bytes) => RestoreEvent::Done {
                    execution_id,
                    raw_bytes,
                },
                Err(message) => RestoreEvent::Failed {
                    execution_id,
                    message,
                },
            };
            let _ = events.send(last).await;
            drop(this);
        });
        Ok(receiver)
    }

    /// The target's own objects: what a restore's `CREATE`s could collide
    /// with, or what it would silently mix its objects into.
    async fn user_objects(&self, target: &Target) -> Result<UserObjects, BackupError> {
        let mut checkout = self
            .registry
            .acquire(target, Route::Write)
            .await
            .map_err(|e| BackupError::Unavailable(format!("{target}: {e}")))?;
        let counts: (i64, i64, i64, i64, i64, i64) = sqlx::query_as(USER_OBJECTS)
            .fetch_one(checkout.connection_mut())
            .await
            .map_err(|e| BackupError::Unavailable(format!("{target}: {e}")))?;
        let (tables, views, sequences, functions, types, schemas) = counts;
        Ok(UserObjects {
            counts: [
                ("table", tables),
                ("view", views),
                ("sequence", sequences),
                ("function", functions),
                ("type", types),
                ("schema", schemas),
            ],
        })
    }

    /// Per target covered by a policy: last success, failures since, sizes,
    /// and DEGRADED when no success within the strictest `max_age`.
    pub async fn health(&self, now: DateTime<Utc>) -> Result<Vec<TargetHealth>, BackupError> {
        let mut covered: Vec<(Target, Option<Duration>)> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.policies.list(after.as_deref(), 500).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.spec.name.clone());
            for policy in &page {
                let Ok(targets) = policy.spec.targets.resolve(&self.registry, "targets") else {
                    continue;
                };
                for target in targets {
                    let max_age = policy.spec.max_age();
                    match covered.iter_mut().find(|(t, _)| *t == target) {
                        Some((_, known)) => {
                            *known = match (*known, max_age) {
                                (Some(a), Some(b)) => Some(a.min(b)),
                                (a, b) => a.or(b),
                            }
                        }
                        None => covered.push((target, max_age)),
                    }
                }
            }
        }
        let mut health = Vec::new();
        for (target, max_age) in covered {
            let backups = self.catalog.of_target(&target, None).await?;
            let last_success = backups
                .iter()
                .find(|b| b.status == BackupStatus::Succeeded)
                .cloned();
            let failures_since_success = backups
                .iter()
                .take_while(|b| b.status != BackupStatus::Succeeded)
                .count() as u64;
            let recent_sizes = backups
                .iter()
                .filter(|b| b.status == BackupStatus::Succeeded)
                .take(10)
                .map(|b| b.stored_bytes)
                .collect();
            let degraded = max_age.is_some_and(|max_age| {
                last_success.as_ref().is_none_or(|b| {
                    let finished = b.finished_at.unwrap_or(b.started_at);
                    (now - finished).to_std().unwrap_or_default() > max_age
                })
            });
            let age = last_success.as_ref().map(|b| {
                let finished = b.finished_at.unwrap_or(b.started_at);
                (now - finished).to_std().unwrap_or_default().as_secs_f64()
            });
            self.observer.backup_health(&target, degraded, age);
            health.push(TargetHealth {
                target,
                last_success,
                failures_since_success,
                recent_sizes,
                max_age,
                degraded,
            });
        }
        Ok(health)
    }
}

/// Counts a database's own objects, by kind: tables (and partitioned and
/// foreign tables), views (and materialized views), sequences, functions
/// (and procedures and aggregates), types, and schemas other than `public`.
/// Outside `pg_catalog`, `information_schema` and the toast and temporary
/// schemas; not an extension's members, nor what another object brings with
/// it (`pg_depend` internal: a table's row type, an array type, an identity
/// sequence, a range's constructors), which its owner already counts.
const USER_OBJECTS: &str = "
WITH user_namespaces AS (
    SELECT oid, nspname FROM pg_catalog.pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema')
      AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp\\_%'
),
brought AS (
    SELECT classid, objid FROM pg_catalog.pg_depend WHERE deptype IN ('e', 'i')
),
relations AS (
    SELECT c.relkind FROM pg_catalog.pg_class c JOIN user_namespaces n ON n.oid = c.relnamespace
    WHERE NOT EXISTS (SELECT FROM brought b
                      WHERE b.classid = 'pg_catalog.pg_class'::regclass AND b.objid = c.oid)
)
SELECT
    (SELECT count(*) FROM relations WHERE relkind IN ('r', 'p', 'f')),
    (SELECT count(*) FROM relations WHERE relkind IN ('v', 'm')),
    (SELECT count(*) FROM relations WHERE relkind = 'S'),
    (SELECT count(*) FROM pg_catalog.pg_proc p JOIN user_namespaces n ON n.oid = p.pronamespace
     WHERE NOT EXISTS (SELECT FROM brought b
                       WHERE b.classid = 'pg_catalog.pg_proc'::regclass AND b.objid = p.oid)),
    (SELECT count(*) FROM pg_catalog.pg_type t JOIN user_namespaces n ON n.oid = t.typnamespace
     WHERE NOT EXISTS (SELECT FROM brought b
                       WHERE b.classid = 'pg_catalog.pg_type'::regclass AND b.objid = t.oid)
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_class c
                       WHERE c.oid = t.typrelid AND c.relkind <> 'c')),
    (SELECT count(*) FROM user_namespaces n WHERE n.nspname <> 'public'
     AND NOT EXISTS (SELECT FROM brought b
                     WHERE b.classid = 'pg_catalog.pg_namespace'::regclass AND b.objid = n.oid))
";

/// A target's own objects by kind ([`USER_OBJECTS`]).
struct UserObjects {
    counts: [(&'static str, i64); 6],
}

impl UserObjects {
    fn is_empty(&self) -> bool {
        self.counts.iter().all(|(_, count)| *count == 0)
    }

    /// `3 tables, 1 function`.
    fn describe(&self) -> String {
        self.counts
            .iter()
            .filter(|(_, count)| *count > 0)
            .map(|(kind, count)| format!("{count} {kind}{}", if *count == 1 { "" } else { "s" }))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn policy_text(action: &str, spec: &PolicySpec) -> String {
    format!(
        "-- pgfleet backup policy {action} {}\n{}",
        spec.name,
        serde_json::to_string(spec).unwrap_or_default()
    )
}

/// The database the targets share, or empty.
fn common_database(targets: &[Target]) -> String {
    match targets.first() {
        Some(first) if targets.iter().all(|t| t.database == first.database) => first.database.clone(),
        _ => String::new(),
    }
}

fn spawn_progress(
    target: Target,
    progress: Arc<Progress>,
    events: mpsc::Sender<RunEvent>,
) -> tokio::task::JoinHandle<()> {
    let started = Instant::now();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PROGRESS_INTERVAL).await;
            let (raw_bytes, _, stored_bytes) = progress.snapshot();
            let event = RunEvent::Progress {
                target: target.clone(),
                raw_bytes,
                stored_bytes,
                elapsed: started.elapsed(),
            };
            if events.send(event).await.is_err() {
                break;
            }
        }
    })
}

/// The audit outcome of a pg_dump or pg_restore on one target: `tag` as its
/// command tag, a failure as UNAVAILABLE with the tool's message.
fn tool_outcome(target: &Target, tag: &str, duration: Duration, error: Option<&String>) -> RecordedOutcome {
    RecordedOutcome {
        target: recorded_target(target),
        success: error.is_none(),
        command_tags: vec![tag.to_owned()],
        rows_affected: 0,
        duration_micros: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
        error: error.map(|message| RecordedError {
            code: "ERROR_CODE_UNAVAILABLE".to_owned(),
            message: message.clone(),
            sqlstate: String::new(),
            detail: String::new(),
            hint: String::new(),
            position: 0,
        }),
        outcome_unknown: false,
        failed_statement_index: None,
        replica: String::new(),
    }
}
