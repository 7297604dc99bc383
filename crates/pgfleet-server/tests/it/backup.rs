//! BackupService end to end against real databases: a policy backing up
//! `app` on two clouds into a local directory (age-encrypted), the stored
//! objects and manifests, VerifyBackup, a restore into an empty database
//! with equal ordered table hashes, a non-empty target refused, a corrupted
//! byte and a wrong key refused, retention, a target killed mid-dump, and
//! memory staying flat while a database of more than 1 GiB is backed up.

use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret as _;
use pb::run_backup_response::Event as RunEvent;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::backup_service_client::BackupServiceClient;
use sha2::Digest as _;
use tonic::Code;

use crate::support::{
    ProxiedCloud, RssSampler, Session, bearer, big_table_sql, run_sql, session, table_hash, target,
};

fn client(s: &Session) -> BackupServiceClient<tonic::transport::Channel> {
    BackupServiceClient::new(s.channel.clone())
}

/// A backup directory and an age key pair of the test's own.
struct Keys {
    dir: tempfile::TempDir,
    recipient: String,
    identity_file: PathBuf,
}

impl Keys {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let identity = age::x25519::Identity::generate();
        let identity_file = dir.path().join("backup.key");
        std::fs::write(
            &identity_file,
            format!("{}\n", identity.to_string().expose_secret()),
        )?;
        Ok(Self {
            recipient: identity.to_public().to_string(),
            identity_file,
            dir,
        })
    }

    fn backups(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The `[backup]` table.
    fn toml(&self) -> String {
        format!(
            "[backup]\ndir = '{}'\nrecipients = ['{}']\nidentity_file = '{}'\nscheduler = false\n",
            self.backups().display(),
            self.recipient,
            self.identity_file.display()
        )
    }

    /// Replaces the identity file with a key the backups were not made for.
    fn swap_in_a_wrong_key(&self) -> anyhow::Result<()> {
        let other = age::x25519::Identity::generate();
        std::fs::write(
            &self.identity_file,
            format!("{}\n", other.to_string().expose_secret()),
        )?;
        Ok(())
    }
}

const ORDERS: &str =
    "CREATE TABLE public.orders (id bigint PRIMARY KEY, customer text NOT NULL, total numeric(12,2), \
     placed_at timestamptz NOT NULL, note text);
     CREATE TABLE public.customers (id bigint PRIMARY KEY, name text NOT NULL);";

fn orders_rows(cloud: &str, rows: i64) -> String {
    format!(
        "INSERT INTO public.orders SELECT g, 'customer ' || (g % 97), (g % 10000) / 100.0, \
         timestamptz '2026-01-01' + g * interval '1 minute', repeat('{cloud}', (g % 30)::int) \
         FROM generate_series(1, {rows}) g;
         INSERT INTO public.customers SELECT g, 'name ' || g FROM generate_series(1, 97) g;"
    )
}

async fn seed(s: &Session, cloud: &str, rows: i64) -> anyhow::Result<()> {
    run_sql(s, cloud, "app", ORDERS).await?;
    run_sql(s, cloud, "app", &orders_rows(cloud, rows)).await
}

fn policy(name: &str, keep_last: u32) -> pb::BackupPolicy {
    pb::BackupPolicy {
        name: name.to_owned(),
        targets: Some(pb::BackupTargets {
            selection: Some(pb::backup_targets::Selection::AllCloudsDatabase("app".to_owned())),
        }),
        retention: Some(pb::Retention {
            keep_last,
            ..Default::default()
        }),
        enabled: false,
        ..Default::default()
    }
}

async fn create_policy(s: &Session, policy: pb::BackupPolicy) -> anyhow::Result<pb::BackupPolicy> {
    client(s)
        .create_policy(bearer(
            pb::CreatePolicyRequest { policy: Some(policy) },
            &s.master,
        ))
        .await?
        .into_inner()
        .policy
        .ok_or_else(|| anyhow::anyhow!("no policy in the response"))
}

/// Every event of one RunBackup call.
async fn run(s: &Session, request: pb::RunBackupRequest) -> anyhow::Result<Vec<RunEvent>> {
    let mut stream = client(s)
        .run_backup(bearer(request, &s.master))
        .await?
        .into_inner();
    let mut events = Vec::new();
    while let Some(message) = stream.message().await? {
        events.extend(message.event);
    }
    Ok(events)
}

/// Each target's cloud and outcome (the backup, or why it failed).
type Outcomes = Vec<(String, Result<pb::Backup, String>)>;

/// The finished backups of a run, by target, and the run's summary.
fn finished(events: &[RunEvent]) -> (Outcomes, Option<pb::BackupRunDone>) {
    let mut outcomes = Vec::new();
    let mut done = None;
    for event in events {
        match event {
            RunEvent::Finished(f) => {
                let target = f.target.as_ref().map(|t| t.cloud.clone()).unwrap_or_default();
                let outcome = match &f.backup {
                    Some(backup) if f.error.is_empty() => Ok(backup.clone()),
                    _ => Err(f.error.clone()),
                };
                outcomes.push((target, outcome));
            }
            RunEvent::Done(d) => done = Some(d.clone()),
            _ => {}
        }
    }
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    (outcomes, done)
}

/// A backup of `cloud`'s `app` now, without a policy; it must succeed.
async fn backup_now(s: &Session, cloud: &str) -> anyhow::Result<pb::Backup> {
    let events = run(
        s,
        pb::RunBackupRequest {
            policy_id: String::new(),
            targets: vec![target(cloud, "app")],
        },
    )
    .await?;
    match finished(&events).0.into_iter().next() {
        Some((_, Ok(backup))) => Ok(backup),
        _ => anyhow::bail!("the backup must succeed: {events:?}"),
    }
}

async fn verify(s: &Session, id: &str, token: &str) -> Result<pb::VerifyBackupResponse, tonic::Status> {
    client(s)
        .verify_backup(bearer(pb::VerifyBackupRequest { id: id.to_owned() }, token))
        .await
        .map(tonic::Response::into_inner)
}

async fn list(s: &Session, request: pb::ListBackupsRequest) -> anyhow::Result<Vec<pb::Backup>> {
    Ok(client(s)
        .list_backups(bearer(request, &s.reader))
        .await?
        .into_inner()
        .backups)
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                found.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}

async fn restore(
    s: &Session,
    request: pb::RestoreBackupRequest,
) -> Result<Vec<pb::restore_backup_response::Event>, tonic::Status> {
    let mut stream = client(s)
        .restore_backup(bearer(request, &s.master))
        .await?
        .into_inner();
    let mut events = Vec::new();
    while let Some(message) = stream.message().await? {
        events.extend(message.event);
    }
    Ok(events)
}

fn restore_done(events: &[pb::restore_backup_response::Event]) -> Option<pb::RestoreDone> {
    events.iter().find_map(|e| match e {
        pb::restore_backup_response::Event::Done(done) => Some(done.clone()),
        _ => None,
    })
}

#[tokio::test]
async fn a_policy_backs_up_both_clouds_and_a_restore_reproduces_the_tables() -> anyhow::Result<()> {
    let keys = Keys::new()?;
    let s = session(&keys.toml()).await?;
    seed(&s, "aws", 5_000).await?;
    seed(&s, "gcp", 3_000).await?;
    let created = create_policy(&s, policy("nightly-app", 0)).await?;

    let events = run(
        &s,
        pb::RunBackupRequest {
            policy_id: created.id.clone(),
            targets: vec![],
        },
    )
    .await?;
    let (outcomes, done) = finished(&events);
    let done = done.ok_or_else(|| anyhow::anyhow!("no Done event: {events:?}"))?;
    assert_eq!((done.succeeded, done.failed), (2, 0), "{events:?}");
    assert!(
        events
            .iter()
            .filter(|e| matches!(e, RunEvent::Started(_)))
            .count()
            == 2,
        "one Started per target: {events:?}"
    );
    let [(aws_cloud, Ok(aws)), (gcp_cloud, Ok(gcp))] = outcomes.as_slice() else {
        panic!("both targets must succeed: {outcomes:?}");
    };
    assert_eq!((aws_cloud.as_str(), gcp_cloud.as_str()), ("aws", "gcp"));
    assert!(
        aws.object_key.starts_with("backups/aws/app/"),
        "{}",
        aws.object_key
    );
    assert!(
        aws.object_key.ends_with(&format!("-{}.dump.zst.age", aws.id)),
        "{}",
        aws.object_key
    );
    assert!(aws.encrypted && aws.raw_bytes > aws.compressed_bytes, "{aws:?}");
    assert_eq!(aws.policy_id, created.id);

    // The stored object and its manifest: the manifest's SHA-256 is the file's.
    let stored = std::fs::read(keys.backups().join(&aws.object_key))?;
    assert_eq!(stored.len() as u64, aws.stored_bytes);
    assert_eq!(hex(&sha2::Sha256::digest(&stored)), aws.stored_sha256);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(keys.backups().join(&aws.manifest_key))?)?;
    assert_eq!(manifest["stored_sha256"], aws.stored_sha256.as_str());
    assert_eq!(manifest["raw_sha256"], aws.raw_sha256.as_str());
    assert_eq!(manifest["target"]["cloud"], "aws");
    assert_eq!(manifest["execution_id"], done.execution_id.as_str());
    assert!(
        !String::from_utf8_lossy(&stored).contains("customer 1"),
        "the stored object is encrypted"
    );

    // Listed (newest first), filtered, and the run is on record.
    let listed = list(
        &s,
        pb::ListBackupsRequest {
            database: "app".into(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(listed.len(), 2);
    let only_gcp = list(
        &s,
        pb::ListBackupsRequest {
            cloud: "gcp".into(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(
        only_gcp.iter().map(|b| b.id.clone()).collect::<Vec<_>>(),
        vec![gcp.id.clone()]
    );
    let record = crate::support::recorded(&s, &done.execution_id).await?;
    assert_eq!(record.kind(), pb::RecordKind::BackupRun);

    // Verified: checksum, decryption, pg_restore --list.
    let verified = verify(&s, &aws.id, &s.reader).await?;
    assert_eq!(
        (verified.stored_bytes, verified.raw_bytes),
        (aws.stored_bytes, aws.raw_bytes)
    );

    // Restored into the empty aws/analytics: equal ordered table hashes.
    let events = restore(
        &s,
        pb::RestoreBackupRequest {
            backup_id: aws.id.clone(),
            target: Some(target("aws", "analytics")),
            ..Default::default()
        },
    )
    .await?;
    let done = restore_done(&events).ok_or_else(|| anyhow::anyhow!("no RestoreDone: {events:?}"))?;
    assert!(done.success, "{done:?}");
    for table in ["public.orders", "public.customers"] {
        assert_eq!(
            table_hash(&s, "aws", "analytics", table).await?,
            table_hash(&s, "aws", "app", table).await?,
            "{table}"
        );
    }
    assert_eq!(
        crate::support::recorded(&s, &done.execution_id).await?.kind(),
        pb::RecordKind::BackupRestore
    );

    // The same target again is not empty any more: refused without clean + confirm.
    let refused = restore(
        &s,
        pb::RestoreBackupRequest {
            backup_id: gcp.id.clone(),
            target: Some(target("aws", "analytics")),
            ..Default::default()
        },
    )
    .await
    .expect_err("a non-empty target without confirmation");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let refused = restore(
        &s,
        pb::RestoreBackupRequest {
            backup_id: gcp.id.clone(),
            target: Some(target("aws", "analytics")),
            clean: true,
            confirm_dangerous: false,
        },
    )
    .await
    .expect_err("clean without confirmation");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    // With both, gcp's copy replaces aws's.
    let events = restore(
        &s,
        pb::RestoreBackupRequest {
            backup_id: gcp.id.clone(),
            target: Some(target("aws", "analytics")),
            clean: true,
            confirm_dangerous: true,
        },
    )
    .await?;
    assert!(restore_done(&events).is_some_and(|d| d.success), "{events:?}");
    assert_eq!(
        table_hash(&s, "aws", "analytics", "public.orders").await?,
        table_hash(&s, "gcp", "app", "public.orders").await?
    );

    // USER may not run backups or restore.
    let denied = client(&s)
        .run_backup(bearer(
            pb::RunBackupRequest {
                policy_id: created.id.clone(),
                targets: vec![],
            },
            &s.user,
        ))
        .await
        .err()
        .map(|e| e.code());
    assert_eq!(denied, Some(Code::PermissionDenied));
    Ok(())
}

#[tokio::test]
async fn a_corrupted_byte_and_a_wrong_key_are_refused_before_the_target_is_touched() -> anyhow::Result<()> {
    let keys = Keys::new()?;
    let s = session(&keys.toml()).await?;
    seed(&s, "aws", 2_000).await?;
    let backup = &backup_now(&s, "aws").await?;

    // A wrong key: refused with a clear message, the target untouched.
    let original_key = std::fs::read(&keys.identity_file)?;
    keys.swap_in_a_wrong_key()?;
    let wrong = verify(&s, &backup.id, &s.master).await.expect_err("a wrong key");
    assert_eq!(wrong.code(), Code::FailedPrecondition, "{wrong:?}");
    assert!(wrong.message().contains("wrong key"), "{}", wrong.message());
    let wrong = restore(
        &s,
        pb::RestoreBackupRequest {
            backup_id: backup.id.clone(),
            target: Some(target("gcp", "analytics")),
            ..Default::default()
        },
    )
    .await
    .expect_err("a wrong key on restore");
    assert!(wrong.message().contains("wrong key"), "{}", wrong.message());
    std::fs::write(&keys.identity_file, original_key)?;

    // One byte flipped in the middle of the stored object.
    let path = keys.backups().join(&backup.object_key);
    let mut bytes = std::fs::read(&path)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, &bytes)?;
    let corrupted = verify(&s, &backup.id, &s.master)
        .await
        .expect_err("a corrupted object");
    assert_eq!(corrupted.code(), Code::FailedPrecondition, "{corrupted:?}");
    assert!(
        corrupted.message().contains("corrupted"),
        "{}",
        corrupted.message()
    );
    let corrupted = restore(
        &s,
        pb::RestoreBackupRequest {
            backup_id: backup.id.clone(),
            target: Some(target("gcp", "analytics")),
            ..Default::default()
        },
    )
    .await
    .expect_err("a corrupted object on restore");
    assert!(
        corrupted.message().contains("corrupted"),
        "{}",
        corrupted.message()
    );
    let tables = crate::support::scalar(
        &s,
        "gcp",
        "analytics",
        "SELECT count(*)::text FROM pg_tables WHERE schemaname = 'public'",
    )
    .await?;
    assert_eq!(tables.as_deref(), Some("0"), "the target was not touched");
    Ok(())
}

#[tokio::test]
async fn retention_deletes_exactly_the_expired_backups() -> anyhow::Result<()> {
    let keys = Keys::new()?;
    let s = session(&keys.toml()).await?;
    seed(&s, "aws", 100).await?;
    seed(&s, "gcp", 100).await?;
    let created = create_policy(&s, policy("keep-two", 2)).await?;
    let mut made: Vec<pb::Backup> = Vec::new();
    for _ in 0..3 {
        let events = run(
            &s,
            pb::RunBackupRequest {
                policy_id: created.id.clone(),
                targets: vec![],
            },
        )
        .await?;
        let (outcomes, _) = finished(&events);
        for (_, outcome) in outcomes {
            made.push(outcome.map_err(|e| anyhow::anyhow!(e))?);
        }
    }
    // Per target the newest two stay; the first run's two are gone, objects and manifests too.
    let listed = list(
        &s,
        pb::ListBackupsRequest {
            policy_id: created.id.clone(),
            ..Default::default()
        },
    )
    .await?;
    let mut kept: Vec<String> = listed.iter().map(|b| b.id.clone()).collect();
    kept.sort();
    let mut expected: Vec<String> = made[2..].iter().map(|b| b.id.clone()).collect();
    expected.sort();
    assert_eq!(kept, expected);
    let stored = files(&keys.backups());
    for gone in &made[..2] {
        assert!(
            !stored.iter().any(|f| f.contains(&gone.id)),
            "{} still stored: {stored:?}",
            gone.id
        );
    }
    assert_eq!(stored.len(), 8, "4 objects and 4 manifests: {stored:?}");
    Ok(())
}

#[tokio::test]
async fn a_target_killed_mid_dump_leaves_no_listed_backup_and_no_object() -> anyhow::Result<()> {
    let keys = Keys::new()?;
    let azure = ProxiedCloud::start("srv_backup_azure").await?;
    azure.sql(ORDERS).await?;
    azure.sql(&orders_rows("azure", 60_000)).await?;
    let s = session(&format!("{}{}", keys.toml(), azure.toml())).await?;
    seed(&s, "aws", 1_000).await?;
    // The dump's connection is reset once it has carried 1 MB to pg_dump.
    azure.proxy.close_after(None, Some(1_000_000));
    let events = run(
        &s,
        pb::RunBackupRequest {
            policy_id: String::new(),
            targets: vec![target("azure", "app"), target("aws", "app")],
        },
    )
    .await?;
    let (outcomes, done) = finished(&events);
    assert_eq!(done.map(|d| (d.succeeded, d.failed)), Some((1, 1)), "{events:?}");
    let azure_outcome = outcomes.iter().find(|(cloud, _)| cloud == "azure");
    assert!(
        matches!(azure_outcome, Some((_, Err(e))) if e.contains("pg_dump failed")),
        "{outcomes:?}"
    );
    assert!(
        list(
            &s,
            pb::ListBackupsRequest {
                cloud: "azure".into(),
                ..Default::default()
            }
        )
        .await?
        .is_empty()
    );
    let failed = list(
        &s,
        pb::ListBackupsRequest {
            cloud: "azure".into(),
            include_failed: true,
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].status(), pb::BackupStatus::Failed);
    let stored = files(&keys.backups());
    assert!(
        stored.iter().all(|f| !f.contains("azure")),
        "nothing of azure stays: {stored:?}"
    );
    assert_eq!(
        stored
            .iter()
            .filter(|f| f.starts_with("backups/aws/app/"))
            .count(),
        2,
        "{stored:?}"
    );
    Ok(())
}

/// What each kind of object reads as in the refusal, and how to make and
/// drop one in an otherwise empty database.
const USER_OBJECTS: &[(&str, &str, &str)] = &[
    ("1 table", "CREATE TABLE public.t (x int)", "DROP TABLE public.t"),
    (
        "1 table, 1 schema",
        "CREATE SCHEMA reports; CREATE TABLE reports.t (x int)",
        "DROP SCHEMA reports CASCADE",
    ),
    (
        "1 view",
        "CREATE VIEW public.v AS SELECT 1 AS x",
        "DROP VIEW public.v",
    ),
    (
        "1 view",
        "CREATE MATERIALIZED VIEW public.mv AS SELECT 1 AS x",
        "DROP MATERIALIZED VIEW public.mv",
    ),
    ("1 sequence", "CREATE SEQUENCE public.s", "DROP SEQUENCE public.s"),
    (
        "1 function",
        "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "DROP FUNCTION public.f()",
    ),
    (
        "1 function",
        "CREATE PROCEDURE public.p() LANGUAGE sql AS 'SELECT 1'",
        "DROP PROCEDURE public.p()",
    ),
    (
        "1 type",
        "CREATE TYPE public.mood AS ENUM ('ok', 'not ok')",
        "DROP TYPE public.mood",
    ),
    (
        "1 type",
        "CREATE TYPE public.pair AS (a int, b int)",
        "DROP TYPE public.pair",
    ),
    (
        "1 type",
        "CREATE DOMAIN public.positive AS int CHECK (VALUE > 0)",
        "DROP DOMAIN public.positive",
    ),
    (
        "1 type",
        "CREATE TYPE public.span AS RANGE (subtype = int8)",
        "DROP TYPE public.span",
    ),
    ("1 schema", "CREATE SCHEMA staging", "DROP SCHEMA staging"),
];

#[tokio::test]
async fn a_restore_needs_a_target_without_user_objects_not_only_without_tables() -> anyhow::Result<()> {
    let keys = Keys::new()?;
    let s = session(&keys.toml()).await?;
    seed(&s, "aws", 300).await?;
    let backup = &backup_now(&s, "aws").await?;
    let onto_analytics = || pb::RestoreBackupRequest {
        backup_id: backup.id.clone(),
        target: Some(target("gcp", "analytics")),
        ..Default::default()
    };
    for (expected, create, remove) in USER_OBJECTS {
        run_sql(&s, "gcp", "analytics", create).await?;
        let refused = restore(&s, onto_analytics())
            .await
            .map(|events| format!("restored: {events:?}"));
        let refused = refused.expect_err(create);
        assert_eq!(refused.code(), Code::FailedPrecondition, "{create}: {refused:?}");
        assert!(
            refused.message().contains(&format!("(it has {expected})")),
            "{create}: {}",
            refused.message()
        );
        run_sql(&s, "gcp", "analytics", remove).await?;
    }
    // Dropped again, the database is empty: the restore goes ahead.
    let events = restore(&s, onto_analytics()).await?;
    assert!(restore_done(&events).is_some_and(|d| d.success), "{events:?}");
    assert_eq!(
        table_hash(&s, "gcp", "analytics", "public.orders").await?,
        table_hash(&s, "aws", "app", "public.orders").await?
    );
    Ok(())
}

/// The age identity of `keys`.
fn identity(keys: &Keys) -> anyhow::Result<age::x25519::Identity> {
    std::fs::read_to_string(&keys.identity_file)?
        .trim()
        .parse()
        .map_err(|e: &str| anyhow::anyhow!("the test's identity: {e}"))
}

/// Replaces a stored backup with another valid object (decrypted,
/// decompressed, `edit`ed, compressed and encrypted again) and puts the new
/// object's SHA-256 and size into the catalog and the manifest: the stored
/// checksum holds, the dump is not the one backed up.
async fn forge(
    s: &Session,
    keys: &Keys,
    backup: &pb::Backup,
    edit: impl FnOnce(&mut Vec<u8>),
) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let path = keys.backups().join(&backup.object_key);
    let stored = std::fs::read(&path)?;
    let identity = identity(keys)?;
    let mut decrypted = Vec::new();
    age::Decryptor::new(stored.as_slice())?
        .decrypt(std::iter::once(&identity as &dyn age::Identity))?
        .read_to_end(&mut decrypted)?;
    let mut raw = zstd::stream::decode_all(decrypted.as_slice())?;
    let original = raw.clone();
    edit(&mut raw);
    anyhow::ensure!(raw != original, "the edit changed nothing");
    let compressed = zstd::stream::encode_all(raw.as_slice(), 3)?;
    let recipient = identity.to_public();
    let mut forged = Vec::new();
    let mut writer = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))?
        .wrap_output(&mut forged)?;
    writer.write_all(&compressed)?;
    writer.finish()?;
    std::fs::write(&path, &forged)?;
    let sha256 = hex(&sha2::Sha256::digest(&forged));
    let manifest_path = keys.backups().join(&backup.manifest_key);
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path)?)?;
    manifest["stored_sha256"] = sha256.clone().into();
    manifest["stored_bytes"] = forged.len().into();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest)?)?;
    let mut history = s.fleet.history.connect().await?;
    let updated =
        sqlx::query("UPDATE pgfleet.backups SET stored_sha256 = $1, stored_bytes = $2 WHERE id = $3::uuid")
            .bind(&sha256)
            .bind(i64::try_from(forged.len())?)
            .bind(&backup.id)
            .execute(&mut history)
            .await?;
    anyhow::ensure!(updated.rows_affected() == 1, "no catalog row for {}", backup.id);
    Ok(())
}

#[tokio::test]
async fn a_plain_backup_verifies_and_restores_and_a_dump_that_is_not_the_one_backed_up_is_never_committed()
-> anyhow::Result<()> {
    let keys = Keys::new()?;
    let s = session(&keys.toml()).await?;
    seed(&s, "aws", 2_000).await?;
    seed(&s, "gcp", 100).await?;
    let mut plain = policy("plain-app", 0);
    plain.format = pb::BackupFormat::Plain.into();
    let created = create_policy(&s, plain).await?;
    let events = run(
        &s,
        pb::RunBackupRequest {
            policy_id: created.id.clone(),
            targets: vec![],
        },
    )
    .await?;
    let (outcomes, _) = finished(&events);
    let Some((_, Ok(backup))) = outcomes.iter().find(|(cloud, _)| cloud == "aws") else {
        panic!("aws must succeed: {outcomes:?}");
    };
    assert!(
        backup.object_key.ends_with(".sql.zst.age"),
        "{}",
        backup.object_key
    );
    assert_eq!(backup.format(), pb::BackupFormat::Plain);
    let verified = verify(&s, &backup.id, &s.reader).await?;
    assert_eq!(verified.raw_bytes, backup.raw_bytes);
    let events = restore(
        &s,
        pb::RestoreBackupRequest {
            backup_id: backup.id.clone(),
            target: Some(target("aws", "analytics")),
            ..Default::default()
        },
    )
    .await?;
    assert!(restore_done(&events).is_some_and(|d| d.success), "{events:?}");
    for table in ["public.orders", "public.customers"] {
        assert_eq!(
            table_hash(&s, "aws", "analytics", table).await?,
            table_hash(&s, "aws", "app", table).await?,
            "{table}"
        );
    }

    // Another valid SQL script under the backup's name: one customer's name
    // changed. The stored checksum holds; the dump's does not.
    forge(&s, &keys, backup, |sql| {
        let text = String::from_utf8_lossy(sql).replacen("name 42\n", "name 24\n", 1);
        *sql = text.into_bytes();
    })
    .await?;
    let refused = verify(&s, &backup.id, &s.reader)
        .await
        .expect_err("a dump that is not the one backed up");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("SHA-256") && refused.message().contains(&backup.raw_sha256),
        "{}",
        refused.message()
    );
    // psql reads the whole script inside one transaction, and is killed
    // before its input ends: nothing of the script is committed.
    let outcome = restore(
        &s,
        pb::RestoreBackupRequest {
            backup_id: backup.id.clone(),
            target: Some(target("gcp", "analytics")),
            ..Default::default()
        },
    )
    .await;
    let failed = match &outcome {
        Ok(events) => restore_done(events).is_none_or(|d| !d.success),
        Err(status) => status.message().contains("SHA-256"),
    };
    assert!(failed, "{outcome:?}");
    let tables = crate::support::scalar(
        &s,
        "gcp",
        "analytics",
        "SELECT count(*)::text FROM pg_catalog.pg_tables WHERE schemaname = 'public'",
    )
    .await?;
    assert_eq!(
        tables.as_deref(),
        Some("0"),
        "the failed restore left tables behind"
    );
    Ok(())
}

/// Rows of [`big_table_sql`]: a dump of about 1.06 GiB.
const BIG_ROWS: u64 = 1_100_000;

#[tokio::test]
async fn memory_stays_flat_while_a_database_over_1_gib_is_backed_up() -> anyhow::Result<()> {
    let keys = Keys::new()?;
    let s = session(&keys.toml()).await?;
    run_sql(&s, "aws", "app", &big_table_sql(BIG_ROWS)).await?;
    // The whole process (server, client, this test) and its children
    // (pg_dump): everything the backup could make grow.
    let sampler = RssSampler::start(std::process::id());
    let backup = backup_now(&s, "aws").await;
    let baseline = sampler.baseline;
    let peak = sampler.stop();
    let backup = backup?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(keys.backups().join(&backup.manifest_key))?)?;
    let raw_bytes = manifest["raw_bytes"].as_u64().unwrap_or_default();
    assert!(raw_bytes >= 1 << 30, "the dump is at least 1 GiB: {manifest}");
    assert_eq!(raw_bytes, backup.raw_bytes);
    // The stored object is mostly hex digits compressed: half the dump or a
    // little more, so a backup held in memory would show as ~550 MiB.
    let stored = std::fs::metadata(keys.backups().join(&backup.object_key))?.len();
    assert_eq!(stored, backup.stored_bytes);
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 256 << 20,
        "resident memory grew by {} MiB (from {} MiB) backing up {} MiB into {} MiB",
        growth >> 20,
        baseline >> 20,
        raw_bytes >> 20,
        stored >> 20
    );
    Ok(())
}

/// `backup` (of aws/app) verifies, restores into the empty gcp/analytics,
/// and leaves there the orders of aws/app.
async fn verified_and_restored_onto_gcp_analytics(s: &Session, backup: &pb::Backup) -> anyhow::Result<()> {
    verify(s, &backup.id, &s.master).await?;
    let events = restore(
        s,
        pb::RestoreBackupRequest {
            backup_id: backup.id.clone(),
            target: Some(target("gcp", "analytics")),
            ..Default::default()
        },
    )
    .await?;
    assert!(restore_done(&events).is_some_and(|d| d.success), "{events:?}");
    assert_eq!(
        table_hash(s, "gcp", "analytics", "public.orders").await?,
        table_hash(s, "aws", "app", "public.orders").await?
    );
    Ok(())
}

#[tokio::test]
async fn the_same_policy_into_s3_served_by_moto() -> anyhow::Result<()> {
    let keys = Keys::new()?;
    let s3 = pgfleet_testkit::S3Server::start().await?;
    s3.create_bucket("pgfleet-backups").await?;
    let backup_toml = format!(
        "[backup]\nstorage_url = 's3://pgfleet-backups/fleet'\nrecipients = ['{}']\nidentity_file = '{}'\n\
         scheduler = false\n[backup.storage_options]\nendpoint = '{}'\nallow_http = 'true'\nregion = '{}'\n\
         access_key_id = '{}'\nsecret_access_key = '{}'\n",
        keys.recipient,
        keys.identity_file.display(),
        s3.endpoint(),
        pgfleet_testkit::S3_REGION,
        pgfleet_testkit::S3_ACCESS_KEY_ID,
        pgfleet_testkit::S3_SECRET_ACCESS_KEY
    );
    let s = session(&backup_toml).await?;
    seed(&s, "aws", 3_000).await?;
    seed(&s, "gcp", 1_000).await?;
    let created = create_policy(&s, policy("s3-app", 0)).await?;
    let events = run(
        &s,
        pb::RunBackupRequest {
            policy_id: created.id.clone(),
            targets: vec![],
        },
    )
    .await?;
    let (outcomes, done) = finished(&events);
    assert_eq!(done.map(|d| (d.succeeded, d.failed)), Some((2, 0)), "{events:?}");
    let Some((_, Ok(aws))) = outcomes.iter().find(|(cloud, _)| cloud == "aws") else {
        panic!("aws must succeed: {outcomes:?}");
    };
    verified_and_restored_onto_gcp_analytics(&s, aws).await?;
    // The storage going away fails the next backup cleanly: nothing listed.
    drop(s3);
    let events = run(
        &s,
        pb::RunBackupRequest {
            policy_id: String::new(),
            targets: vec![target("aws", "app")],
        },
    )
    .await?;
    let (_, done) = finished(&events);
    assert_eq!(done.map(|d| (d.succeeded, d.failed)), Some((0, 1)), "{events:?}");
    assert_eq!(
        list(
            &s,
            pb::ListBackupsRequest {
                cloud: "aws".into(),
                ..Default::default()
            }
        )
        .await?
        .len(),
        1
    );
    Ok(())
}

#[tokio::test]
async fn the_same_policy_into_azure_served_by_azurite() -> anyhow::Result<()> {
    let keys = Keys::new()?;
    let azurite = pgfleet_testkit::AzuriteServer::start().await?;
    azurite.create_container("pgfleet-backups").await?;
    let backup_toml = format!(
        "[backup]\nstorage_url = 'az://pgfleet-backups/fleet'\nrecipients = ['{}']\nidentity_file = '{}'\n\
         scheduler = false\n[backup.storage_options]\nendpoint = '{}'\nallow_http = 'true'\n\
         account_name = '{}'\naccess_key = '{}'\n",
        keys.recipient,
        keys.identity_file.display(),
        azurite.endpoint(),
        pgfleet_testkit::AZURITE_ACCOUNT,
        pgfleet_testkit::AZURITE_KEY
    );
    let s = session(&backup_toml).await?;
    seed(&s, "aws", 3_000).await?;
    seed(&s, "gcp", 1_000).await?;
    let created = create_policy(&s, policy("azure-app", 1)).await?;
    let mut made = Vec::new();
    for _ in 0..2 {
        let events = run(
            &s,
            pb::RunBackupRequest {
                policy_id: created.id.clone(),
                targets: vec![],
            },
        )
        .await?;
        let (outcomes, done) = finished(&events);
        assert_eq!(done.map(|d| (d.succeeded, d.failed)), Some((2, 0)), "{events:?}");
        made.extend(outcomes);
    }
    // Retention (keep the last one) deleted the first run's objects from the container.
    let listed = list(
        &s,
        pb::ListBackupsRequest {
            policy_id: created.id.clone(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let Some((_, Ok(aws))) = made.iter().rev().find(|(cloud, _)| cloud == "aws") else {
        panic!("aws must succeed: {made:?}");
    };
    assert!(listed.iter().any(|b| b.id == aws.id), "{listed:?}");
    verified_and_restored_onto_gcp_analytics(&s, aws).await?;
    Ok(())
}

#[tokio::test]
async fn two_servers_never_run_the_same_policy_at_once() -> anyhow::Result<()> {
    let keys = Keys::new()?;
    let scheduled = keys
        .toml()
        .replace("scheduler = false", "scheduler = true\nscheduler_tick = '100ms'");
    let s = session(&scheduled).await?;
    let second = s.fleet.start(&scheduled).await?;
    seed(&s, "aws", 20_000).await?;
    seed(&s, "gcp", 20_000).await?;
    // Every second, in a named zone; both servers see it due at once.
    let mut every_second = policy("every-second", 0);
    every_second.schedule = "* * * * * *".to_owned();
    every_second.time_zone = "Asia/Tokyo".to_owned();
    every_second.enabled = true;
    let created = create_policy(&s, every_second).await?;
    for _ in 0..600 {
        let so_far = list(
            &s,
            pb::ListBackupsRequest {
                policy_id: created.id.clone(),
                ..Default::default()
            },
        )
        .await?;
        if so_far.len() >= 8 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Stop scheduling, then let the runs in flight finish.
    let mut disabled = created.clone();
    disabled.enabled = false;
    disabled.revision = 0;
    client(&s)
        .update_policy(bearer(
            pb::UpdatePolicyRequest {
                policy: Some(disabled),
            },
            &s.master,
        ))
        .await?;
    second.shutdown().await?;
    let backups = list(
        &s,
        pb::ListBackupsRequest {
            policy_id: created.id.clone(),
            include_failed: true,
            ..Default::default()
        },
    )
    .await?;
    // A run the shutdown interrupted is FAILED; the rest succeeded.
    let succeeded = backups
        .iter()
        .filter(|b| b.status() == pb::BackupStatus::Succeeded)
        .count();
    assert!(
        succeeded >= 8 && succeeded + 2 >= backups.len(),
        "the scheduler ran the policy repeatedly: {backups:?}"
    );
    // One run at a time: per target, no two backups' intervals overlap.
    for cloud in ["aws", "gcp"] {
        let mut spans: Vec<(i64, i64)> = backups
            .iter()
            .filter(|b| b.target.as_ref().is_some_and(|t| t.cloud == cloud))
            .map(|b| {
                let micros = |t: &Option<prost_types::Timestamp>| {
                    t.as_ref()
                        .map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000))
                };
                (micros(&b.start_time), micros(&b.finish_time))
            })
            .collect();
        spans.sort();
        for pair in spans.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{cloud}: two runs overlapped: {pair:?}");
        }
    }
    Ok(())
}

/// The text of `/metrics` (HTTP/1.0, read to the end).
async fn scrape(addr: Option<std::net::SocketAddr>) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = addr.ok_or_else(|| anyhow::anyhow!("no metrics listener"))?;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text)
}

/// grpcurl off the test's runtime thread (the server runs on it).
async fn grpcurl(args: Vec<String>) -> anyhow::Result<(bool, String, String)> {
    Ok(tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::support::run_grpcurl(&args)
    })
    .await?)
}

#[tokio::test]
async fn grpcurl_and_the_command_line() -> anyhow::Result<()> {
    let keys = Keys::new()?;
    let mut fleet = crate::support::Fleet::create().await?;
    fleet.server_toml = "metrics_addr = '127.0.0.1:0'\n".to_owned();
    let s = crate::support::session_on(fleet, &keys.toml()).await?;
    seed(&s, "aws", 500).await?;
    seed(&s, "gcp", 500).await?;
    let addr = s.server.local_addr().to_string();
    let header = format!("authorization: Bearer {}", s.master);
    let call = |body: &str, method: &str| -> Vec<String> {
        ["-plaintext", "-H", &header, "-d", body, &addr, method]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    };
    let policy =
        serde_json::json!({"policy": {"name": "grpcurl-app", "targets": {"allCloudsDatabase": "app"},
        "schedule": "30 2 * * *", "timeZone": "Europe/Paris", "retention": {"keepLast": 3}, "maxAge": "3600s",
        "enabled": true}})
        .to_string();
    let (ok, out, err) = grpcurl(call(&policy, "pgfleet.v1.BackupService/CreatePolicy")).await?;
    assert!(ok && out.contains("nextRunTime"), "{out}\n{err}");
    let id = serde_json::from_str::<serde_json::Value>(&out)?["policy"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let run = serde_json::json!({ "policyId": id }).to_string();
    let (ok, out, err) = grpcurl(call(&run, "pgfleet.v1.BackupService/RunBackup")).await?;
    assert!(ok && out.contains("\"succeeded\": 2"), "{out}\n{err}");
    let (ok, out, err) = grpcurl(call("{}", "pgfleet.v1.BackupService/GetBackupHealth")).await?;
    assert!(ok && out.contains("BACKUP_HEALTH_STATE_HEALTHY"), "{out}\n{err}");
    assert!(!out.contains("BACKUP_HEALTH_STATE_DEGRADED"), "{out}");
    // A policy over a target never backed up: DEGRADED, and so is its gauge.
    let never = serde_json::json!({"policy": {"name": "never-run", "targets": {"cloudDatabase":
        {"cloud": "gcp", "database": "analytics"}}, "maxAge": "3600s"}})
    .to_string();
    let (ok, out, err) = grpcurl(call(&never, "pgfleet.v1.BackupService/CreatePolicy")).await?;
    assert!(ok, "{out}\n{err}");
    let (ok, out, err) = grpcurl(call("{}", "pgfleet.v1.BackupService/GetBackupHealth")).await?;
    assert!(ok && out.contains("BACKUP_HEALTH_STATE_DEGRADED"), "{out}\n{err}");
    let metrics = scrape(s.server.metrics_addr()).await?;
    assert!(
        metrics.contains("pgfleet_backup_degraded{cloud=\"gcp\",database=\"analytics\"} 1")
            && metrics.contains("pgfleet_backup_degraded{cloud=\"aws\",database=\"app\"} 0"),
        "{metrics}"
    );
    // A bad cron expression names its field.
    let bad = policy.replace("30 2 * * *", "every night");
    let (ok, _, err) = grpcurl(call(&bad, "pgfleet.v1.BackupService/CreatePolicy")).await?;
    assert!(
        !ok && err.contains("InvalidArgument") && err.contains("policy.schedule"),
        "{err}"
    );

    // The command line against the same configuration, no server involved.
    let config = keys.dir.path().join("pgfleet.toml");
    std::fs::write(&config, s.fleet.config_toml(&keys.toml()))?;
    let pgfleet = async |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfleet"))
            .args(["--config", &config.to_string_lossy(), "backup"])
            .args(args)
            .env_remove("PGFLEET_LOG")
            .output()
            .await
    };
    let ran = pgfleet(&["run", "--database", "app", "--cloud", "gcp"]).await?;
    let text = String::from_utf8_lossy(&ran.stdout).into_owned();
    assert!(
        ran.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(
        text.contains("gcp/app: OK") && text.contains("1 succeeded, 0 failed"),
        "{text}"
    );
    let listed = pgfleet(&["list", "--database", "app"]).await?;
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.status.success(), "{text}");
    assert_eq!(
        text.lines().count(),
        3,
        "two from RunBackup, one from the command line: {text}"
    );
    let newest = text.split_whitespace().next().unwrap_or_default().to_owned();
    let verified = pgfleet(&["verify", &newest]).await?;
    assert!(
        verified.status.success() && String::from_utf8_lossy(&verified.stdout).contains(": OK"),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    // Restoring onto a database with tables is refused (exit status 1), then done into an empty one.
    let refused = pgfleet(&["restore", &newest, "--cloud", "aws", "--database", "app"]).await?;
    assert!(
        !refused.status.success(),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );
    assert!(String::from_utf8_lossy(&refused.stdout).contains("REFUSED"));
    let restored = pgfleet(&["restore", &newest, "--cloud", "gcp", "--database", "analytics"]).await?;
    assert!(
        restored.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&restored.stdout),
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(
        table_hash(&s, "gcp", "analytics", "public.orders").await?,
        table_hash(&s, "gcp", "app", "public.orders").await?
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
