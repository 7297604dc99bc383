//! The audit chain against someone who can write the history store but does
//! not hold the chain key: keyed links, the seal, the signed anchor, signed
//! checkpoints and VerifyChain's flags, through the real server and the
//! real history store. The "attacks" are plain SQL on that store.

use std::time::Duration;

use pgfleet_engine::audit::checkpoint::Checkpoint;
use pgfleet_engine::audit::keys::ChainKeys;
use pgfleet_engine::audit::record::{ExecutionRow, LinkKind, link_hash};
use pgfleet_engine::audit::{
    self, Actor, AuditLog, Kind, NewExecution, RecordedOutcome, RecordedTarget, TargetScope,
};
use pgfleet_engine::identity::Role;
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_proto::pgfleet::v1::history_service_client::HistoryServiceClient;
use pgfleet_proto::pgfleet::v1::query_service_client::QueryServiceClient;
use pgfleet_testkit::wait_until;
use sqlx::PgPool;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::support::{
    self, Fleet, Session, bad_field, bearer, child_output, login, run_sql, send_signal, session, session_on,
    spawn_server_binary, test_chain_key,
};

fn history(channel: &Channel) -> HistoryServiceClient<Channel> {
    HistoryServiceClient::new(channel.clone())
}

async fn verify_against(
    channel: &Channel,
    token: &str,
    checkpoint: Option<pb::ChainCheckpoint>,
) -> anyhow::Result<pb::VerifyChainResponse> {
    Ok(history(channel)
        .verify_chain(bearer(
            pb::VerifyChainRequest {
                checkpoint,
                ..Default::default()
            },
            token,
        ))
        .await?
        .into_inner())
}

async fn verify(s: &Session) -> anyhow::Result<pb::VerifyChainResponse> {
    verify_against(&s.channel, &s.master, None).await
}

async fn export(channel: &Channel, token: &str) -> Result<pb::ExportChainCheckpointResponse, tonic::Status> {
    Ok(history(channel)
        .export_chain_checkpoint(bearer(pb::ExportChainCheckpointRequest {}, token))
        .await?
        .into_inner())
}

/// `INSERT INTO items VALUES (n)` for each n, one after another through
/// the server as a USER: two links each, in order.
async fn insert(
    channel: &Channel,
    token: &str,
    ids: std::ops::RangeInclusive<i32>,
) -> anyhow::Result<Vec<String>> {
    let mut executions = Vec::new();
    for n in ids {
        let response = QueryServiceClient::new(channel.clone())
            .execute(bearer(
                pb::ExecuteRequest {
                    query: format!("INSERT INTO items VALUES ({n})"),
                    database: "app".to_owned(),
                    scope: Some(pb::execute_request::Scope::Cloud("aws".to_owned())),
                    ..Default::default()
                },
                token,
            ))
            .await?
            .into_inner();
        anyhow::ensure!(response.success, "{:?}", response.results);
        executions.push(response.execution_id);
    }
    Ok(executions)
}

/// Records written straight through an audit log, one after another (two
/// consecutive links each).
async fn write_records(log: &std::sync::Arc<AuditLog>, count: usize) -> anyhow::Result<Vec<Uuid>> {
    let mut ids = Vec::new();
    for n in 0..count {
        let target = RecordedTarget {
            cloud: "aws".to_owned(),
            database: "app".to_owned(),
        };
        let open = log
            .open(new_execution(&format!("UPDATE t SET n = {n}"), target.clone()))
            .await?;
        ids.push(open.id());
        open.started()
            .finish(vec![RecordedOutcome {
                success: true,
                error: None,
                outcome_unknown: false,
                ..RecordedOutcome::unknown(target, "")
            }])
            .await;
    }
    Ok(ids)
}

fn new_execution(query: &str, target: RecordedTarget) -> NewExecution {
    NewExecution {
        id: Uuid::now_v7(),
        kind: Kind::Query,
        actor: Actor::System("security-test".to_owned()),
        role: Role::Master,
        client_address: String::new(),
        request_id: String::new(),
        query: query.to_owned(),
        query_redacted: false,
        fingerprint: String::new(),
        statement_classes: vec!["WRITE".to_owned()],
        database: target.database.clone(),
        pg_schema: String::new(),
        scope: TargetScope::Cloud,
        targets: vec![target],
        read_only: false,
        confirmed_dangerous: false,
        findings: Vec::new(),
        replication_job_id: None,
    }
}

fn warnings_of(response: &pb::VerifyChainResponse, kind: pb::ChainWarningKind) -> Vec<&pb::ChainWarning> {
    response
        .warnings
        .iter()
        .filter(|w| w.kind == i32::from(kind))
        .collect()
}

fn comparison(response: &pb::VerifyChainResponse) -> (pb::CheckpointComparison, String) {
    let check = response.checkpoint_check.clone().unwrap_or_default();
    (
        pb::CheckpointComparison::try_from(check.comparison).unwrap_or_default(),
        check.reason,
    )
}

/// What someone without the key can do to hide a change: recompute every
/// link from `from` to `through` with plain SHA-256 (pgfleet's unkeyed
/// algorithm is public), keeping the key ids or blanking them, and move
/// the head when the rewrite reaches it.
async fn rewrite_links_unkeyed(
    pool: &PgPool,
    from: i64,
    through: i64,
    keep_key_ids: bool,
) -> anyhow::Result<()> {
    let mut prev: String = sqlx::query_scalar(
        "SELECT coalesce((SELECT hash FROM pgfleet.audit_chain WHERE sequence = $1), \
         (SELECT anchor_hash FROM pgfleet.audit_chain_head))",
    )
    .bind(from - 1)
    .fetch_one(pool)
    .await?;
    let links: Vec<(i64, Uuid, String)> = sqlx::query_as(
        "SELECT sequence, execution_id, link FROM pgfleet.audit_chain \
         WHERE sequence BETWEEN $1 AND $2 ORDER BY sequence",
    )
    .bind(from)
    .bind(through)
    .fetch_all(pool)
    .await?;
    for (sequence, execution_id, link) in links {
        let row: ExecutionRow = sqlx::query_as("SELECT * FROM pgfleet.executions WHERE id = $1")
            .bind(execution_id)
            .fetch_one(pool)
            .await?;
        let kind = LinkKind::parse(&link).ok_or_else(|| anyhow::anyhow!("link kind {link}"))?;
        let hash = link_hash(&prev, sequence, kind, &row.canonical_content(kind));
        sqlx::query(
            "UPDATE pgfleet.audit_chain SET prev_hash = $2, hash = $3, \
             key_id = CASE WHEN $4 THEN key_id ELSE '' END WHERE sequence = $1",
        )
        .bind(sequence)
        .bind(&prev)
        .bind(&hash)
        .bind(keep_key_ids)
        .execute(pool)
        .await?;
        prev = hash;
    }
    sqlx::query("UPDATE pgfleet.audit_chain_head SET hash = $2 WHERE sequence = $1")
        .bind(through)
        .bind(&prev)
        .execute(pool)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_newest_records_is_caught_against_an_exported_checkpoint() -> anyhow::Result<()> {
    let s = session("").await?;
    run_sql(&s, "aws", "app", "CREATE TABLE items (id int PRIMARY KEY)").await?;
    insert(&s.channel, &s.user, 1..=3).await?;
    let exported = export(&s.channel, &s.master).await?;
    let checkpoint = exported.checkpoint.clone().unwrap_or_default();
    assert_eq!(
        (
            checkpoint.head_sequence,
            checkpoint.anchor_sequence,
            checkpoint.keyed_since
        ),
        (6, 0, 1)
    );
    assert_eq!(exported.public_key.len(), 32);
    insert(&s.channel, &s.user, 4..=5).await?;

    let whole = verify_against(&s.channel, &s.master, Some(checkpoint.clone())).await?;
    assert!(whole.ok, "{:?}", whole.first_broken);
    assert_eq!(comparison(&whole).0, pb::CheckpointComparison::Matched);
    assert_eq!((whole.records_checked, whole.executions_checked), (10, 5));
    assert_eq!(whole.head.clone().unwrap_or_default().sequence, 10);
    assert_eq!(whole.last.clone().unwrap_or_default().sequence, 10);
    assert_eq!(
        whole.head.clone().unwrap_or_default().hash,
        whole.last.clone().unwrap_or_default().hash
    );
    assert!(whole.keyed && whole.keyed_since == 1 && whole.unkeyed_links_checked == 0);
    assert_eq!(whole.key_ids, vec![checkpoint.key_id.clone()]);
    assert!(whole.warnings.is_empty(), "{:?}", whole.warnings);
    let fresh = whole.checkpoint.clone().unwrap_or_default();
    assert_eq!(fresh.head_sequence, 10, "VerifyChain signs the head it verified");

    // A part of the chain: counted as such, and no checkpoint of a head
    // that was not walked.
    let part = history(&s.channel)
        .verify_chain(bearer(
            pb::VerifyChainRequest {
                from_sequence: 3,
                to_sequence: 6,
                checkpoint: None,
            },
            &s.master,
        ))
        .await?
        .into_inner();
    assert!(
        part.ok && part.records_checked == 4 && part.checkpoint.is_none(),
        "{part:?}"
    );

    // The attack: delete the newest records (links 5..=10: executions 3, 4
    // and 5) and move the head back to link 4, all in SQL. What remains is
    // a genuine chain, so on its own it verifies...
    let pool = s.fleet.history.pool().await?;
    let mut attack = pool.begin().await?;
    let deleted: Vec<Uuid> =
        sqlx::query_scalar("DELETE FROM pgfleet.audit_chain WHERE sequence > 4 RETURNING execution_id")
            .fetch_all(&mut *attack)
            .await?;
    sqlx::query("DELETE FROM pgfleet.executions WHERE id = ANY($1)")
        .bind(&deleted)
        .execute(&mut *attack)
        .await?;
    sqlx::query(
        "UPDATE pgfleet.audit_chain_head SET sequence = 4, \
         hash = (SELECT hash FROM pgfleet.audit_chain WHERE sequence = 4)",
    )
    .execute(&mut *attack)
    .await?;
    attack.commit().await?;
    let alone = verify(&s).await?;
    assert!(
        alone.ok && alone.records_checked == 4,
        "truncation is invisible without a checkpoint: {alone:?}"
    );

    // ...but not against either checkpoint kept outside the store.
    for kept in [checkpoint, fresh] {
        let against = verify_against(&s.channel, &s.master, Some(kept.clone())).await?;
        assert!(!against.ok, "head {} accepted", kept.head_sequence);
        let (result, reason) = comparison(&against);
        assert_eq!(result, pb::CheckpointComparison::Mismatch);
        assert!(
            reason.contains(&format!(
                "the chain ends at 4 but the checkpoint's head is {}",
                kept.head_sequence
            )) && reason.contains("newest records were deleted"),
            "{reason}"
        );
    }

    // Only a MASTER exports checkpoints.
    let denied = export(&s.channel, &s.user).await.err().map(|e| e.code());
    assert_eq!(denied, Some(Code::PermissionDenied));
    pool.close().await;
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rewriting_the_chain_without_the_key_is_detected() -> anyhow::Result<()> {
    let s = session("").await?;
    run_sql(&s, "aws", "app", "CREATE TABLE items (id int PRIMARY KEY)").await?;
    let ids = insert(&s.channel, &s.user, 1..=4).await?;
    let second = Uuid::parse_str(&ids[1])?;
    let pool = s.fleet.history.pool().await?;
    assert!(verify(&s).await?.ok);

    // The second INSERT "was" a SELECT; every link from its opening link
    // (3) to the head (8) is recomputed so the chain is consistent again.
    sqlx::query("UPDATE pgfleet.executions SET query = 'SELECT 1' WHERE id = $1")
        .bind(second)
        .execute(&pool)
        .await?;
    enum Seal {
        Kept,
        MovedPastTheHead,
        Removed,
    }
    let cases = [
        (
            "plain SHA-256, key ids kept",
            3,
            true,
            Seal::Kept,
            3,
            "hash mismatch",
        ),
        (
            "plain SHA-256, key ids blanked",
            3,
            false,
            Seal::Kept,
            3,
            "unkeyed link in the keyed part of the chain",
        ),
        (
            "the whole chain unkeyed, the seal moved past it",
            1,
            false,
            Seal::MovedPastTheHead,
            9,
            "the seal does not verify",
        ),
        (
            "the whole chain unkeyed, the seal removed",
            1,
            false,
            Seal::Removed,
            0,
            "the chain is not sealed",
        ),
    ];
    for (name, from, keep_key_ids, seal, broken_at, reason) in cases {
        rewrite_links_unkeyed(&pool, from, 8, keep_key_ids).await?;
        match seal {
            Seal::Kept => {}
            Seal::MovedPastTheHead => {
                sqlx::query("UPDATE pgfleet.audit_chain_head SET keyed_since = 9, seal_prev_hash = hash")
                    .execute(&pool)
                    .await?;
            }
            Seal::Removed => {
                sqlx::query("UPDATE pgfleet.audit_chain_head SET keyed_since = NULL, seal_mac = ''")
                    .execute(&pool)
                    .await?;
            }
        }
        let verified = verify(&s).await?;
        assert!(!verified.ok, "{name}: accepted");
        let broken = verified.first_broken.unwrap_or_default();
        assert_eq!(broken.sequence, broken_at, "{name}: {broken:?}");
        assert!(broken.reason.contains(reason), "{name}: {}", broken.reason);
        if broken_at == 3 {
            assert_eq!(broken.execution_id, ids[1], "{name}");
        }
        // And no checkpoint of a rewritten head is signed.
        let refused = export(&s.channel, &s.master).await.err();
        assert_eq!(
            refused.map(|e| e.code()),
            Some(Code::FailedPrecondition),
            "{name}"
        );
    }
    pool.close().await;
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_anchor_is_detected_and_an_early_one_flagged() -> anyhow::Result<()> {
    // The server keeps records for an hour; a second writer (as a replica
    // with another retention, or anyone holding the key) deletes after 2 s.
    let s = session("[audit]\nretention = '1h'\n").await?;
    let pool = s.fleet.history.pool().await?;
    let early = AuditLog::new(
        pool.clone(),
        pgfleet_config::AuditConfig {
            retention: Some(Duration::from_secs(2)),
            retention_batch: 4,
            ..s.fleet.audit_config()
        },
    )?;
    write_records(&early, 4).await?;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let retained = write_records(&early, 3).await?;
    assert_eq!(audit::maintenance::apply_retention(&early).await?, 4);

    let verified = verify(&s).await?;
    assert!(verified.ok, "{:?}", verified.first_broken);
    assert_eq!(verified.records_checked, 6);
    let anchor = verified.anchor.clone().unwrap_or_default();
    assert_eq!(anchor.sequence, 8);
    assert!(anchor.newest_deleted_started_at.is_some());
    let flagged = warnings_of(&verified, pb::ChainWarningKind::AnchorWithinRetention);
    assert_eq!(flagged.len(), 1, "{:?}", verified.warnings);
    assert!(
        flagged[0].message.contains("within audit.retention (1h)"),
        "{}",
        flagged[0].message
    );
    let checkpoint = export(&s.channel, &s.master)
        .await?
        .checkpoint
        .unwrap_or_default();
    assert_eq!((checkpoint.anchor_sequence, checkpoint.head_sequence), (8, 14));

    let (anchor_hash, anchor_mac, anchor_key_id): (String, String, String) =
        sqlx::query_as("SELECT anchor_hash, anchor_mac, anchor_key_id FROM pgfleet.audit_chain_head")
            .fetch_one(&pool)
            .await?;
    let hash_10: String = sqlx::query_scalar("SELECT hash FROM pgfleet.audit_chain WHERE sequence = 10")
        .fetch_one(&pool)
        .await?;
    // The oldest retained record (links 9 and 10) goes too, and the anchor
    // is moved onto link 10 as retention would have: first keeping the old
    // MAC, then without one.
    sqlx::query("DELETE FROM pgfleet.audit_chain WHERE sequence IN (9, 10)")
        .execute(&pool)
        .await?;
    sqlx::query("DELETE FROM pgfleet.executions WHERE id = $1")
        .bind(retained[0])
        .execute(&pool)
        .await?;
    let moves = [
        (
            10,
            hash_10.clone(),
            anchor_mac.clone(),
            anchor_key_id.clone(),
            "the anchor does not verify",
        ),
        (
            10,
            hash_10,
            String::new(),
            String::new(),
            "the anchor is not signed",
        ),
    ];
    for (sequence, hash, mac, key_id, reason) in moves {
        sqlx::query(
            "UPDATE pgfleet.audit_chain_head SET anchor_sequence = $1, anchor_hash = $2, anchor_mac = $3, \
             anchor_key_id = $4",
        )
        .bind(sequence)
        .bind(&hash)
        .bind(&mac)
        .bind(&key_id)
        .execute(&pool)
        .await?;
        let moved = verify(&s).await?;
        assert!(!moved.ok, "{reason}: accepted");
        let broken = moved.first_broken.unwrap_or_default();
        assert_eq!(broken.sequence, 10, "{reason}");
        assert!(broken.reason.contains(reason), "{}", broken.reason);
    }

    // Moved back to its signed place (8), the deleted links show; against
    // the checkpoint, an anchor moved back before it shows as well.
    sqlx::query(
        "UPDATE pgfleet.audit_chain_head SET anchor_sequence = 8, anchor_hash = $1, anchor_mac = $2, \
         anchor_key_id = $3",
    )
    .bind(&anchor_hash)
    .bind(&anchor_mac)
    .bind(&anchor_key_id)
    .execute(&pool)
    .await?;
    let gap = verify_against(&s.channel, &s.master, Some(checkpoint.clone())).await?;
    assert!(!gap.ok);
    let broken = gap.first_broken.clone().unwrap_or_default();
    assert!(broken.reason.contains("missing"), "{}", broken.reason);
    assert_eq!(
        comparison(&gap).0,
        pb::CheckpointComparison::Matched,
        "head 14 is still there"
    );
    sqlx::query("UPDATE pgfleet.audit_chain_head SET anchor_sequence = 0, anchor_hash = '', anchor_mac = ''")
        .execute(&pool)
        .await?;
    let back = verify_against(&s.channel, &s.master, Some(checkpoint)).await?;
    let (result, reason) = comparison(&back);
    assert_eq!(result, pb::CheckpointComparison::Mismatch);
    assert!(reason.contains("the anchor moved back from 8"), "{reason}");
    pool.close().await;
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_checkpoint_is_refused_and_a_genuine_one_checks_with_openssl() -> anyhow::Result<()> {
    let s = session("").await?;
    run_sql(&s, "aws", "app", "CREATE TABLE items (id int PRIMARY KEY)").await?;
    insert(&s.channel, &s.user, 1..=3).await?;
    let exported = export(&s.channel, &s.master).await?;
    let genuine = exported.checkpoint.clone().unwrap_or_default();
    let genuine_time = genuine.created_at.unwrap_or_default();

    // Someone with their own key signs what they would like the head to be.
    let own_keys = ChainKeys::from_secrets(Some(test_chain_key().as_bytes()), [])?;
    let own_key = own_keys.current().ok_or_else(|| anyhow::anyhow!("no key"))?;
    let time = chrono::DateTime::from_timestamp(genuine_time.seconds, 0).unwrap_or_default();
    let forged = Checkpoint::sign(
        own_key,
        (2, genuine.head_hash.clone()),
        (0, String::new()),
        1,
        time,
    );
    let as_wire = |checkpoint: &Checkpoint| pb::ChainCheckpoint {
        head_sequence: u64::try_from(checkpoint.head_sequence).unwrap_or_default(),
        head_hash: checkpoint.head_hash.clone(),
        anchor_sequence: u64::try_from(checkpoint.anchor_sequence).unwrap_or_default(),
        anchor_hash: checkpoint.anchor_hash.clone(),
        keyed_since: u64::try_from(checkpoint.keyed_since).unwrap_or_default(),
        created_at: Some(prost_types::Timestamp {
            seconds: checkpoint.created_at.timestamp(),
            nanos: 0,
        }),
        key_id: checkpoint.key_id.clone(),
        signature: checkpoint.signature.clone(),
        signed_text: String::new(),
    };
    let mut claiming_ours = forged.clone();
    claiming_ours.key_id = genuine.key_id.clone();
    claiming_ours.signature = own_key.sign(claiming_ours.signed_text().as_bytes());

    let cases = [
        (
            "head moved back, signature kept",
            pb::ChainCheckpoint {
                head_sequence: 2,
                signed_text: String::new(),
                ..genuine.clone()
            },
            "checkpoint.signature",
        ),
        ("signed with another key", as_wire(&forged), "checkpoint.key_id"),
        (
            "signed with another key, claiming the server's key id",
            as_wire(&claiming_ours),
            "checkpoint.signature",
        ),
        (
            "text that does not match the fields",
            pb::ChainCheckpoint {
                head_sequence: 2,
                ..genuine.clone()
            },
            "checkpoint.signed_text",
        ),
        (
            "no time",
            pb::ChainCheckpoint {
                created_at: None,
                ..genuine.clone()
            },
            "checkpoint.created_at",
        ),
    ];
    for (name, checkpoint, field) in cases {
        let refused = verify_against(&s.channel, &s.master, Some(checkpoint))
            .await
            .err()
            .and_then(|e| e.downcast::<tonic::Status>().ok())
            .unwrap_or_else(|| panic!("{name}: accepted"));
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{name}: {}",
            refused.message()
        );
        assert_eq!(bad_field(&refused), field, "{name}");
    }
    let accepted = verify_against(&s.channel, &s.master, Some(genuine.clone())).await?;
    assert!(accepted.ok);
    assert_eq!(comparison(&accepted).0, pb::CheckpointComparison::Matched);

    // A SIEM holding only the public key checks the signature with stock
    // tools, and a changed text fails.
    let dir = tempfile::tempdir()?;
    let pem = dir.path().join("pgfleet-audit.pem");
    let text = dir.path().join("checkpoint.txt");
    let signature = dir.path().join("checkpoint.sig");
    std::fs::write(&pem, &exported.public_key_pem)?;
    std::fs::write(&signature, &genuine.signature)?;
    let openssl_verify = |signed: &str| -> anyhow::Result<bool> {
        std::fs::write(&text, signed)?;
        let output = std::process::Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
            .arg(&pem)
            .arg("-in")
            .arg(&text)
            .arg("-sigfile")
            .arg(&signature)
            .output()?;
        Ok(output.status.success())
    };
    assert!(
        openssl_verify(&genuine.signed_text)?,
        "openssl refused a genuine checkpoint"
    );
    let altered = genuine.signed_text.replace("head_sequence=6", "head_sequence=2");
    assert_ne!(altered, genuine.signed_text);
    assert!(!openssl_verify(&altered)?, "openssl took an altered checkpoint");
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn records_from_before_the_key_still_verify_and_keys_rotate() -> anyhow::Result<()> {
    let mut fleet = Fleet::create().await?;
    fleet.audit_chain_toml = "allow_unkeyed = true\n".to_owned();
    let s = session_on(fleet, "").await?;
    run_sql(&s, "aws", "app", "CREATE TABLE items (id int PRIMARY KEY)").await?;
    let before_key = insert(&s.channel, &s.user, 1..=2).await?;
    let unkeyed = verify(&s).await?;
    assert!(unkeyed.ok && !unkeyed.keyed && unkeyed.keyed_since == 0 && unkeyed.unkeyed_links_checked == 4);
    assert_eq!(warnings_of(&unkeyed, pb::ChainWarningKind::Unkeyed).len(), 1);
    assert!(unkeyed.checkpoint.is_none());
    let no_key = export(&s.channel, &s.master).await.err().map(|e| e.code());
    assert_eq!(no_key, Some(Code::FailedPrecondition));
    let Session {
        mut fleet,
        server,
        master,
        user,
        ..
    } = s;
    server.shutdown().await?;

    // Sessions live in Redis: the same tokens work on the restarted server.
    let first_key = test_chain_key();
    fleet.audit_chain_toml = format!("key = '{first_key}'\n");
    let server = fleet.start("").await?;
    let channel = support::channel(&server).await?;
    insert(&channel, &user, 3..=4).await?;
    let sealed = verify_against(&channel, &master, None).await?;
    assert!(sealed.ok, "{:?}", sealed.first_broken);
    assert!(sealed.keyed && sealed.keyed_since == 5);
    assert_eq!((sealed.records_checked, sealed.unkeyed_links_checked), (8, 4));
    let first_checkpoint = export(&channel, &master).await?.checkpoint.unwrap_or_default();

    // The links from before the key cannot be changed any more: recomputing
    // them with SHA-256 leaves the first keyed link pointing at the old hash;
    // moving that pointer breaks the keyed link and the seal.
    let pool = fleet.history.pool().await?;
    let saved: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT sequence, prev_hash, hash FROM pgfleet.audit_chain WHERE sequence <= 5")
            .fetch_all(&pool)
            .await?;
    sqlx::query("UPDATE pgfleet.executions SET query = 'SELECT 1' WHERE id = $1")
        .bind(Uuid::parse_str(&before_key[0])?)
        .execute(&pool)
        .await?;
    rewrite_links_unkeyed(&pool, 1, 4, true).await?;
    let broken = verify_against(&channel, &master, None)
        .await?
        .first_broken
        .unwrap_or_default();
    assert_eq!(broken.sequence, 5);
    assert!(
        broken.reason.contains("prev_hash does not match"),
        "{}",
        broken.reason
    );
    sqlx::query(
        "UPDATE pgfleet.audit_chain SET prev_hash = (SELECT hash FROM pgfleet.audit_chain WHERE sequence = 4) \
         WHERE sequence = 5",
    )
    .execute(&pool)
    .await?;
    let broken = verify_against(&channel, &master, None)
        .await?
        .first_broken
        .unwrap_or_default();
    assert!(broken.reason.contains("the seal pinned"), "{}", broken.reason);
    // Put back, it verifies again: the old links are checked, not ignored.
    sqlx::query("UPDATE pgfleet.executions SET query = 'INSERT INTO items VALUES (1)' WHERE id = $1")
        .bind(Uuid::parse_str(&before_key[0])?)
        .execute(&pool)
        .await?;
    for (sequence, prev_hash, hash) in &saved {
        sqlx::query("UPDATE pgfleet.audit_chain SET prev_hash = $2, hash = $3 WHERE sequence = $1")
            .bind(sequence)
            .bind(prev_hash)
            .bind(hash)
            .execute(&pool)
            .await?;
    }
    assert!(verify_against(&channel, &master, None).await?.ok);
    server.shutdown().await?;

    // Once keyed, always keyed: no key, or the wrong key, and it will not start.
    let refusals = [
        (
            "allow_unkeyed = true\n".to_owned(),
            "keyed since sequence 5".to_owned(),
        ),
        (
            format!("key = '{}'\n", test_chain_key()),
            format!("seal is signed with key {:?}", first_checkpoint.key_id),
        ),
    ];
    for (chain_toml, expected) in refusals {
        fleet.audit_chain_toml = chain_toml;
        let refused = match fleet.start("").await {
            Ok(server) => {
                server.shutdown().await?;
                panic!("started with [audit.chain] {}", fleet.audit_chain_toml);
            }
            Err(error) => format!("{error:#}"),
        };
        assert!(refused.contains(&expected), "{refused}");
    }

    // A rotation: the new key links, the old one still verifies its links
    // and its checkpoints.
    let second_key = test_chain_key();
    fleet.audit_chain_toml = format!("key = '{second_key}'\nprevious_keys = ['{first_key}']\n");
    let server = fleet.start("").await?;
    let channel = support::channel(&server).await?;
    insert(&channel, &user, 5..=5).await?;
    let rotated = verify_against(&channel, &master, Some(first_checkpoint.clone())).await?;
    assert!(rotated.ok, "{:?}", rotated.first_broken);
    assert_eq!(comparison(&rotated).0, pb::CheckpointComparison::Matched);
    assert_eq!(rotated.key_ids.len(), 2);
    assert!(rotated.key_ids.contains(&first_checkpoint.key_id));
    let second_id = rotated.checkpoint.clone().unwrap_or_default().key_id;
    assert_ne!(second_id, first_checkpoint.key_id);
    server.shutdown().await?;

    // Without the old key the server starts (seal and anchor were signed
    // again with the new one), and VerifyChain names the missing key rather
    // than calling its links tampered with.
    fleet.audit_chain_toml = format!("key = '{second_key}'\n");
    let server = fleet.start("").await?;
    let channel = support::channel(&server).await?;
    let missing = verify_against(&channel, &master, None).await?;
    let broken = missing.first_broken.unwrap_or_default();
    assert_eq!(broken.sequence, 5);
    assert!(
        broken.reason.contains(&format!(
            "linked with key {:?}, which is not configured",
            first_checkpoint.key_id
        )),
        "{}",
        broken.reason
    );
    pool.close().await;
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_left_running_past_its_lease_is_flagged() -> anyhow::Result<()> {
    let s = session("[audit]\nheartbeat_interval = '300ms'\nwriter_lease = '1s'\nwrite_timeout = '500ms'\n")
        .await?;
    let pool = s.fleet.history.pool().await?;
    // A server that opened a record and died without a lease.
    let dead = AuditLog::new(pool.clone(), s.fleet.audit_config())?;
    let target = RecordedTarget {
        cloud: "aws".to_owned(),
        database: "app".to_owned(),
    };
    let open = dead.open(new_execution("DELETE FROM items", target)).await?;
    let id = open.id();
    std::mem::forget(open.started());
    // The sweep that would close it as INTERRUPTED is stuck behind a lock.
    let mut stuck = pool.begin().await?;
    sqlx::query("SELECT 1 FROM pgfleet.executions WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *stuck)
        .await?;

    let mut flagged = pb::VerifyChainResponse::default();
    wait_until(Duration::from_secs(15), Duration::from_millis(200), async || {
        flagged = verify(&s).await?;
        anyhow::Ok(!warnings_of(&flagged, pb::ChainWarningKind::StaleRunning).is_empty())
    })
    .await?;
    assert!(
        flagged.ok,
        "a flag, not a broken link: {:?}",
        flagged.first_broken
    );
    let stale = warnings_of(&flagged, pb::ChainWarningKind::StaleRunning);
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].execution_id, id.to_string());
    assert!(stale[0].message.contains("the sweep"), "{}", stale[0].message);

    // Released, the sweep closes it and the flag goes.
    stuck.rollback().await?;
    wait_until(Duration::from_secs(15), Duration::from_millis(200), async || {
        let verified = verify(&s).await?;
        anyhow::Ok(verified.ok && warnings_of(&verified, pb::ChainWarningKind::StaleRunning).is_empty())
    })
    .await?;
    let status: String = sqlx::query_scalar("SELECT status FROM pgfleet.executions WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await?;
    assert_eq!(status, "INTERRUPTED");
    pool.close().await;
    s.server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_log_signed_checkpoints_that_verify_and_never_the_key() -> anyhow::Result<()> {
    let mut fleet = Fleet::create().await?;
    let dir = tempfile::tempdir()?;
    let key = test_chain_key();
    let key_file = dir.path().join("audit-chain.key");
    std::fs::write(&key_file, format!("{key}\n"))?;
    fleet.audit_chain_toml = format!(
        "key_file = '{}'\ncheckpoint_log_interval = '1s'\n",
        key_file.display()
    );
    let port = pgfleet_testkit::free_port()?;
    let config_path = dir.path().join("pgfleet.toml");
    std::fs::write(
        &config_path,
        fleet.config_toml("").replace(
            "listen_addr = '127.0.0.1:0'",
            &format!("listen_addr = '127.0.0.1:{port}'"),
        ),
    )?;
    let (mut child, channel) = spawn_server_binary(&config_path, port).await?;
    let password = fleet.create_user("auditor", Role::Master).await?;
    let token = login(&channel, "auditor", &password).await?;
    let database = &fleet.databases[0].2;
    let mut connection = database.connect().await?;
    sqlx::raw_sql("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(&mut connection)
        .await?;
    insert(&channel, &token, 1..=1).await?;
    // Two more intervals: a checkpoint of the head with the insert in it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    send_signal(&child, "TERM").await?;
    child.wait().await?;
    let output = child_output(&mut child).await?;
    assert!(!output.contains(&key), "the chain key is in the log");

    let logged = output
        .lines()
        .filter(|line| line.contains("signed audit chain checkpoint"))
        .filter_map(|line| line.split("checkpoint=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .next_back()
        .ok_or_else(|| anyhow::anyhow!("no checkpoint logged:\n{output}"))?;
    let text = |name: &str| logged[name].as_str().unwrap_or_default().to_owned();
    let number = |name: &str| text(name).parse::<u64>().unwrap_or_default();
    let created_at = chrono::DateTime::parse_from_rfc3339(&text("created_at"))?;
    let checkpoint = pb::ChainCheckpoint {
        head_sequence: number("head_sequence"),
        head_hash: text("head_hash"),
        anchor_sequence: number("anchor_sequence"),
        anchor_hash: text("anchor_hash"),
        keyed_since: number("keyed_since"),
        created_at: Some(prost_types::Timestamp {
            seconds: created_at.timestamp(),
            nanos: i32::try_from(created_at.timestamp_subsec_nanos()).unwrap_or_default(),
        }),
        key_id: text("key_id"),
        signature: base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text("signature"))?,
        signed_text: text("signed_text"),
    };
    assert_eq!(checkpoint.head_sequence, 2, "{logged}");

    // The logged checkpoint is what VerifyChain takes, on any server with
    // the key.
    let server = fleet.start("").await?;
    let channel = support::channel(&server).await?;
    let token = login(&channel, "auditor", &password).await?;
    let verified = verify_against(&channel, &token, Some(checkpoint)).await?;
    assert!(verified.ok, "{:?}", verified.first_broken);
    assert_eq!(comparison(&verified).0, pb::CheckpointComparison::Matched);
    server.shutdown().await?;
    Ok(())
}
