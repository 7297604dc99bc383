//! The hash chain: appending a link in commit order, sealing the chain
//! under the chain key, verifying it, and signing and comparing
//! checkpoints of its head.
//!
//! What the key protects: every link is HMAC-SHA-256 under a key the
//! history store never sees, so rewriting the chain from a point on needs
//! the key. The head row carries two MACs under the key: the seal (from
//! which sequence every link is keyed, pinning the unkeyed links written
//! before) and the anchor retention leaves. What it cannot protect:
//! deleting the newest links and moving the head back to a genuine older
//! link; only a checkpoint kept outside the store shows that.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::checkpoint::Checkpoint;
use super::keys::{ChainKey, ChainKeys, macs_equal};
use super::record::{ExecutionRow, LinkKind, execution_columns, link_hash};
use super::{AuditError, AuditLog};

/// A stored link.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Link {
    pub sequence: i64,
    pub hash: String,
    pub prev_hash: String,
}

/// Columns of `audit_chain_head` in [`HeadRow`] order.
macro_rules! head_columns {
    () => {
        "sequence, hash, anchor_sequence, anchor_hash, anchor_updated_at, anchor_started_at, \
         anchor_key_id, anchor_mac, keyed_since, seal_prev_hash, seal_key_id, seal_mac"
    };
}

/// The chain's head row as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HeadRow {
    pub sequence: i64,
    pub hash: String,
    pub anchor_sequence: i64,
    pub anchor_hash: String,
    pub anchor_updated_at: Option<DateTime<Utc>>,
    /// When the newest record retention deleted had started.
    pub anchor_started_at: Option<DateTime<Utc>>,
    pub anchor_key_id: String,
    pub anchor_mac: String,
    /// First sequence linked with a key; `None` while never keyed.
    pub keyed_since: Option<i64>,
    /// Hash of the link before `keyed_since` when the chain was sealed.
    pub seal_prev_hash: String,
    pub seal_key_id: String,
    pub seal_mac: String,
}

/// Appends the `link` of `row` to the chain inside the caller's
/// transaction, keyed with the current chain key. The head row's lock is
/// held until that transaction ends, so appends from every replica are
/// serialized and sequence order is commit order, without gaps.
pub async fn append(
    connection: &mut PgConnection,
    keys: &ChainKeys,
    row: &ExecutionRow,
    link: LinkKind,
) -> Result<Link, AuditError> {
    let mut appended = append_all(connection, keys, &[(row, link)]).await?;
    // One link in, one link out.
    appended.pop().ok_or(AuditError::Store(sqlx::Error::RowNotFound))
}

/// [`append`] for several links at once, in the order given (an import's
/// records): the head is locked and moved once and the links are inserted
/// in one statement, so the head is held for as short a time as possible.
pub async fn append_all(
    connection: &mut PgConnection,
    keys: &ChainKeys,
    links: &[(&ExecutionRow, LinkKind)],
) -> Result<Vec<Link>, AuditError> {
    let (head_sequence, head_hash, keyed_since): (i64, String, Option<i64>) =
        sqlx::query_as("SELECT sequence, hash, keyed_since FROM pgfleet.audit_chain_head FOR UPDATE")
            .fetch_one(&mut *connection)
            .await?;
    let key = match keys.current() {
        Some(key) => {
            // Sealed at start, unless the store could not be reached then.
            if keyed_since.is_none() {
                let head = locked_head(connection).await?;
                seal(connection, key, &head).await?;
            }
            Some(key)
        }
        // Once sealed, a link without the key would break the chain for good.
        None => match keyed_since {
            Some(keyed_since) => return Err(AuditError::KeyRequired { keyed_since }),
            None => None,
        },
    };
    let key_id = key.map_or("", |key| key.id());
    let mut appended: Vec<Link> = Vec::with_capacity(links.len());
    let (mut sequence, mut prev_hash) = (head_sequence, head_hash);
    for (row, link) in links {
        sequence += 1;
        let content = row.canonical_content(*link);
        let hash = match key {
            Some(key) => key.link_hash(&prev_hash, sequence, *link, &content),
            None => link_hash(&prev_hash, sequence, *link, &content),
        };
        appended.push(Link {
            sequence,
            hash: hash.clone(),
            prev_hash: std::mem::replace(&mut prev_hash, hash),
        });
    }
    let Some(last) = appended.last() else {
        return Ok(appended);
    };
    // The links and the new head in one statement: one round trip fewer
    // while the head's lock is held (every replica's writes wait on it).
    sqlx::query(
        "WITH links AS (\
           INSERT INTO pgfleet.audit_chain (sequence, execution_id, link, prev_hash, hash, key_id) \
           SELECT l.sequence, l.execution_id, l.link, l.prev_hash, l.hash, $6 \
           FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::text[]) \
           AS l (sequence, execution_id, link, prev_hash, hash)) \
         UPDATE pgfleet.audit_chain_head SET sequence = $7, hash = $8",
    )
    .bind(appended.iter().map(|l| l.sequence).collect::<Vec<_>>())
    .bind(links.iter().map(|(row, _)| row.id).collect::<Vec<_>>())
    .bind(links.iter().map(|(_, link)| link.as_str()).collect::<Vec<_>>())
    .bind(appended.iter().map(|l| l.prev_hash.as_str()).collect::<Vec<_>>())
    .bind(appended.iter().map(|l| l.hash.as_str()).collect::<Vec<_>>())
    .bind(key_id)
    .bind(last.sequence)
    .bind(&last.hash)
    .execute(&mut *connection)
    .await?;
    Ok(appended)
}

/// Readies the chain for this server's keys, before it writes anything.
///
/// - No key: refused if the chain is already keyed (once keyed, always
///   keyed); otherwise it runs unkeyed, loudly.
/// - A key and an unsealed chain: seals it at the next sequence (and signs
///   an anchor left before the key), so the links written before stay
///   verifiable by plain SHA-256 but cannot be changed any more.
/// - A key and a sealed chain: the seal's key must be configured (a wrong
///   key is refused here, not discovered by VerifyChain later); a seal or
///   anchor made with a previous key is signed again with the current one
///   after it verified, so a retired key is needed only for its links.
pub async fn prepare(pool: &PgPool, keys: &ChainKeys) -> Result<(), AuditError> {
    let mut transaction = pool.begin().await?;
    let head = locked_head(&mut transaction).await?;
    let Some(key) = keys.current() else {
        if let Some(keyed_since) = head.keyed_since {
            return Err(AuditError::KeyRequired { keyed_since });
        }
        tracing::warn!(
            "audit.chain.allow_unkeyed: the audit chain has no key; its links are plain SHA-256, which \
             anyone who can write the history store can recompute, so rewrites go undetected. \
             Configure [audit.chain] key or key_file."
        );
        return Ok(());
    };
    let mut sign_anchor = false;
    match head.keyed_since {
        None => seal(&mut transaction, key, &head).await?,
        Some(keyed_since) => {
            let sealed_with = keys
                .find(&head.seal_key_id)
                .ok_or_else(|| AuditError::UnknownKey {
                    what: "seal",
                    key_id: head.seal_key_id.clone(),
                    configured: keys.describe(),
                })?;
            let seal_verifies = macs_equal(
                &sealed_with.seal_mac(keyed_since, &head.seal_prev_hash),
                &head.seal_mac,
            );
            if !seal_verifies {
                tracing::error!(
                    keyed_since,
                    "the audit chain's seal does not verify under its key: it was altered; run VerifyChain"
                );
            } else if sealed_with.id() != key.id() {
                sqlx::query("UPDATE pgfleet.audit_chain_head SET seal_key_id = $1, seal_mac = $2")
                    .bind(key.id())
                    .bind(key.seal_mac(keyed_since, &head.seal_prev_hash))
                    .execute(&mut *transaction)
                    .await?;
                tracing::info!(
                    previous_key_id = sealed_with.id(),
                    key_id = key.id(),
                    "signed the audit chain's seal again with the current key"
                );
            }
            if head.anchor_sequence > 0 && !head.anchor_key_id.is_empty() && head.anchor_key_id != key.id() {
                match keys.find(&head.anchor_key_id) {
                    Some(anchored_with) if anchor_verifies(&head, anchored_with) => sign_anchor = true,
                    _ => tracing::error!(
                        anchor_sequence = head.anchor_sequence,
                        "the audit chain's anchor does not verify under a configured key; run VerifyChain"
                    ),
                }
            }
        }
    }
    if sign_anchor {
        sqlx::query("UPDATE pgfleet.audit_chain_head SET anchor_key_id = $1, anchor_mac = $2")
            .bind(key.id())
            .bind(key.anchor_mac(head.anchor_sequence, &head.anchor_hash, head.anchor_started_at))
            .execute(&mut *transaction)
            .await?;
    }
    transaction.commit().await?;
    Ok(())
}

async fn locked_head(connection: &mut PgConnection) -> Result<HeadRow, AuditError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        head_columns!(),
        " FROM pgfleet.audit_chain_head FOR UPDATE"
    ))
    .fetch_one(&mut *connection)
    .await?)
}

/// Seals an unsealed chain under `key` at the next sequence, in the
/// caller's transaction (which holds the head row), and signs an anchor
/// retention left before there was a key.
async fn seal(connection: &mut PgConnection, key: &ChainKey, head: &HeadRow) -> Result<(), AuditError> {
    let keyed_since = head.sequence + 1;
    sqlx::query(
        "UPDATE pgfleet.audit_chain_head SET keyed_since = $1, seal_prev_hash = $2, \
         seal_key_id = $3, seal_mac = $4",
    )
    .bind(keyed_since)
    .bind(&head.hash)
    .bind(key.id())
    .bind(key.seal_mac(keyed_since, &head.hash))
    .execute(&mut *connection)
    .await?;
    if head.anchor_sequence > 0 && head.anchor_key_id.is_empty() {
        sqlx::query("UPDATE pgfleet.audit_chain_head SET anchor_key_id = $1, anchor_mac = $2")
            .bind(key.id())
            .bind(key.anchor_mac(head.anchor_sequence, &head.anchor_hash, head.anchor_started_at))
            .execute(&mut *connection)
            .await?;
    }
    let unkeyed_links = head.sequence - head.anchor_sequence;
    if unkeyed_links > 0 {
        tracing::warn!(
            keyed_since,
            unkeyed_links,
            key_id = key.id(),
            "sealed the audit chain: links before keyed_since were written without a key and are \
             checked by plain SHA-256 only; every link from keyed_since on is keyed"
        );
    } else {
        tracing::info!(
            keyed_since,
            key_id = key.id(),
            "sealed the audit chain under its key"
        );
    }
    Ok(())
}

fn anchor_verifies(head: &HeadRow, key: &ChainKey) -> bool {
    macs_equal(
        &key.anchor_mac(head.anchor_sequence, &head.anchor_hash, head.anchor_started_at),
        &head.anchor_mac,
    )
}

/// Where retention cut the chain.
#[derive(Debug, Clone)]
pub struct Anchor {
    pub sequence: i64,
    pub hash: String,
    pub updated_at: Option<DateTime<Utc>>,
    pub newest_deleted_started_at: Option<DateTime<Utc>>,
}

/// The first place the chain stops matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub sequence: i64,
    pub execution_id: Option<Uuid>,
    pub reason: String,
    pub expected_hash: String,
    pub stored_hash: String,
}

impl ChainBreak {
    /// A break of the head row itself (seal, anchor, head).
    fn of_head(sequence: i64, reason: impl Into<String>) -> Self {
        Self {
            sequence,
            execution_id: None,
            reason: reason.into(),
            expected_hash: String::new(),
            stored_hash: String::new(),
        }
    }
}

/// What a [`ChainWarning`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarningKind {
    AnchorWithinRetention,
    StaleRunning,
    Unkeyed,
}

/// Something to look at that is not a broken link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainWarning {
    pub kind: WarningKind,
    pub message: String,
    pub execution_id: Option<Uuid>,
}

/// How a checkpoint compares with the chain now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointCheck {
    Matched,
    /// Retention deleted the checkpoint's head since.
    PastRetention,
    Mismatch(String),
}

/// The result of walking (part of) the chain.
#[derive(Debug, Clone)]
pub struct Verification {
    /// Links checked.
    pub records_checked: u64,
    /// Opening links checked (one per execution).
    pub executions_checked: u64,
    /// Links checked by plain SHA-256 (written before the key).
    pub unkeyed_links_checked: u64,
    /// Keys the checked links were made with.
    pub key_ids: BTreeSet<String>,
    pub first_break: Option<ChainBreak>,
    pub anchor: Option<Anchor>,
    /// The last link checked.
    pub last: Option<Link>,
    /// The head row's sequence and hash.
    pub head: (i64, String),
    /// This server has a chain key.
    pub keyed: bool,
    pub keyed_since: Option<i64>,
    pub checkpoint: Option<CheckpointCheck>,
    pub warnings: Vec<ChainWarning>,
    /// The whole retained chain was walked (no range asked).
    pub complete: bool,
}

impl Verification {
    /// Every checked link matched and the checkpoint, if any, too.
    pub fn ok(&self) -> bool {
        self.first_break.is_none() && !matches!(self.checkpoint, Some(CheckpointCheck::Mismatch(_)))
    }
}

/// Links read per round trip while verifying.
const VERIFY_BATCH: i64 = 1000;

/// Stale RUNNING records listed one by one; past this, one more warning
/// says there are more.
const MAX_STALE_LISTED: usize = 100;

#[derive(sqlx::FromRow)]
struct StoredLink {
    sequence: i64,
    execution_id: Uuid,
    link: String,
    prev_hash: String,
    hash: String,
    key_id: String,
}

/// What a link must satisfy besides matching its record.
struct LinkRules<'a> {
    keys: &'a ChainKeys,
    keyed_since: Option<i64>,
    seal_prev_hash: &'a str,
}

/// Walks the links from `from` to `to` (inclusive; `None` for the ends of
/// the retained chain), recomputing every hash from the executions rows
/// with the key each link names. Checks the seal and the anchor first (their
/// MACs), reports the first link whose hash, predecessor, key or sequence
/// does not match, then that the head agrees with the last link and that no
/// record is outside the chain. With `checkpoint` (already checked to be
/// signed by a configured key), also compares the chain with it.
pub async fn verify(
    log: &AuditLog,
    from: Option<i64>,
    to: Option<i64>,
    checkpoint: Option<&Checkpoint>,
) -> Result<Verification, AuditError> {
    let pool = log.pool();
    let keys = log.keys();
    let head: HeadRow = sqlx::query_as(concat!(
        "SELECT ",
        head_columns!(),
        " FROM pgfleet.audit_chain_head"
    ))
    .fetch_one(pool)
    .await?;
    let anchor = (head.anchor_sequence > 0).then(|| Anchor {
        sequence: head.anchor_sequence,
        hash: head.anchor_hash.clone(),
        updated_at: head.anchor_updated_at,
        newest_deleted_started_at: head.anchor_started_at,
    });
    let mut verification = Verification {
        records_checked: 0,
        executions_checked: 0,
        unkeyed_links_checked: 0,
        key_ids: BTreeSet::new(),
        first_break: None,
        anchor,
        last: None,
        head: (head.sequence, head.hash.clone()),
        keyed: keys.current().is_some(),
        keyed_since: head.keyed_since,
        checkpoint: None,
        warnings: warnings(log, &head).await?,
        complete: from.is_none() && to.is_none(),
    };
    if let Some(checkpoint) = checkpoint {
        verification.checkpoint = Some(compare_checkpoint(pool, &head, checkpoint).await?);
    }
    if let Some(broken) = check_seal_and_anchor(&head, keys) {
        verification.first_break = Some(broken);
        return Ok(verification);
    }
    let rules = LinkRules {
        keys,
        keyed_since: head.keyed_since,
        seal_prev_hash: &head.seal_prev_hash,
    };
    let anchor_sequence = head.anchor_sequence;
    let head_sequence = head.sequence;
    let start = from.unwrap_or(0).max(anchor_sequence + 1);
    let end = to.unwrap_or(head_sequence).min(head_sequence);

    // The hash the first checked link must point back to.
    let mut expected_prev = if start == anchor_sequence + 1 {
        head.anchor_hash.clone()
    } else {
        sqlx::query_scalar::<_, String>("SELECT hash FROM pgfleet.audit_chain WHERE sequence = $1")
            .bind(start - 1)
            .fetch_optional(pool)
            .await?
            .unwrap_or_default()
    };
    let mut next_sequence = start;
    while next_sequence <= end {
        let batch: Vec<StoredLink> = sqlx::query_as(
            "SELECT sequence, execution_id, link, prev_hash, hash, key_id FROM pgfleet.audit_chain \
             WHERE sequence >= $1 AND sequence <= $2 ORDER BY sequence LIMIT $3",
        )
        .bind(next_sequence)
        .bind(end)
        .bind(VERIFY_BATCH)
        .fetch_all(pool)
        .await?;
        let ids: Vec<Uuid> = batch.iter().map(|link| link.execution_id).collect();
        let records: HashMap<Uuid, ExecutionRow> = sqlx::query_as::<_, ExecutionRow>(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM pgfleet.executions e WHERE e.id = ANY($1)"
        ))
        .bind(&ids)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|row| (row.id, row))
        .collect();
        if batch.is_empty() {
            verification.first_break = Some(ChainBreak::of_head(
                next_sequence,
                format!("links {next_sequence}..={end} are missing"),
            ));
            return Ok(verification);
        }
        for link in batch {
            let record = records.get(&link.execution_id);
            if let Some(broken) = check_link(&link, record, next_sequence, &expected_prev, &rules) {
                verification.first_break = Some(broken);
                return Ok(verification);
            }
            verification.records_checked += 1;
            if link.link == LinkKind::Opened.as_str() {
                verification.executions_checked += 1;
            }
            if link.key_id.is_empty() {
                verification.unkeyed_links_checked += 1;
            } else if !verification.key_ids.contains(&link.key_id) {
                verification.key_ids.insert(link.key_id.clone());
            }
            next_sequence = link.sequence + 1;
            expected_prev = link.hash.clone();
            verification.last = Some(Link {
                sequence: link.sequence,
                hash: link.hash,
                prev_hash: link.prev_hash,
            });
        }
    }

    if to.is_none()
        && end == head_sequence
        && let Some(broken) = check_head(pool, &head, verification.last.as_ref(), rules.keys).await?
    {
        verification.first_break = Some(broken);
        return Ok(verification);
    }

    // A record written around the chain (by hand, in SQL) has no opening link.
    let outside: Option<Uuid> = sqlx::query_scalar(
        "SELECT e.id FROM pgfleet.executions e WHERE NOT EXISTS \
         (SELECT 1 FROM pgfleet.audit_chain c WHERE c.execution_id = e.id AND c.link = 'opened') \
         ORDER BY e.started_at LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    if let Some(id) = outside {
        verification.first_break = Some(ChainBreak {
            execution_id: Some(id),
            ..ChainBreak::of_head(0, "record is not in the chain (inserted outside pgfleet?)")
        });
    }
    Ok(verification)
}

/// The head row against the end of the walk: it must name the last link,
/// no link may lie past it, and, before any keyed link, it must still be
/// what the seal pinned.
async fn check_head(
    pool: &PgPool,
    head: &HeadRow,
    last: Option<&Link>,
    keys: &ChainKeys,
) -> Result<Option<ChainBreak>, AuditError> {
    if head.sequence > head.anchor_sequence && last.map(|l| &l.hash) != Some(&head.hash) {
        return Ok(Some(ChainBreak {
            expected_hash: head.hash.clone(),
            stored_hash: last.map(|l| l.hash.clone()).unwrap_or_default(),
            ..ChainBreak::of_head(
                head.sequence,
                "the chain head does not match the last link (links removed at the end?)",
            )
        }));
    }
    if head.sequence == head.anchor_sequence && head.hash != head.anchor_hash {
        return Ok(Some(ChainBreak::of_head(
            head.sequence,
            "the chain head does not match the anchor although no link is retained",
        )));
    }
    if keys.current().is_some()
        && let Some(keyed_since) = head.keyed_since
    {
        if head.sequence < keyed_since - 1 {
            return Ok(Some(ChainBreak::of_head(
                head.sequence,
                format!(
                    "the chain ends at {} before its seal at {keyed_since}: links were deleted",
                    head.sequence
                ),
            )));
        }
        if head.sequence == keyed_since - 1 && head.hash != head.seal_prev_hash {
            return Ok(Some(ChainBreak::of_head(
                head.sequence,
                "the chain head is not the hash the seal pinned: unkeyed links were rewritten",
            )));
        }
    }
    let beyond: Option<i64> =
        sqlx::query_scalar("SELECT max(sequence) FROM pgfleet.audit_chain WHERE sequence > $1")
            .bind(head.sequence)
            .fetch_one(pool)
            .await?;
    if let Some(beyond) = beyond {
        return Ok(Some(ChainBreak::of_head(
            beyond,
            format!(
                "links up to {beyond} lie past the head at {}: the head was moved back",
                head.sequence
            ),
        )));
    }
    Ok(None)
}

/// The seal's and the anchor's MACs; nothing to check them with unkeyed.
fn check_seal_and_anchor(head: &HeadRow, keys: &ChainKeys) -> Option<ChainBreak> {
    keys.current()?;
    let Some(keyed_since) = head.keyed_since else {
        return Some(ChainBreak::of_head(
            0,
            "the chain is not sealed although this server has a key (a keyed server seals it at start): \
             the seal was removed, and links may have been rewritten without the key",
        ));
    };
    match keys.find(&head.seal_key_id) {
        None => {
            return Some(ChainBreak::of_head(
                keyed_since,
                format!(
                    "the seal is signed with key {:?}, which is not configured (configured: {})",
                    head.seal_key_id,
                    keys.describe()
                ),
            ));
        }
        Some(key) if !macs_equal(&key.seal_mac(keyed_since, &head.seal_prev_hash), &head.seal_mac) => {
            return Some(ChainBreak::of_head(
                keyed_since,
                "the seal does not verify: it was moved or altered without the key",
            ));
        }
        Some(_) => {}
    }
    if head.anchor_sequence == 0 && head.anchor_hash.is_empty() {
        return None;
    }
    match keys.find(&head.anchor_key_id) {
        None if head.anchor_key_id.is_empty() => Some(ChainBreak::of_head(
            head.anchor_sequence,
            "the anchor is not signed: it was moved outside pgfleet",
        )),
        None => Some(ChainBreak::of_head(
            head.anchor_sequence,
            format!(
                "the anchor is signed with key {:?}, which is not configured (configured: {})",
                head.anchor_key_id,
                keys.describe()
            ),
        )),
        Some(key) if !anchor_verifies(head, key) => Some(ChainBreak::of_head(
            head.anchor_sequence,
            "the anchor does not verify: it was moved or altered without the key",
        )),
        Some(_) => None,
    }
}

fn check_link(
    link: &StoredLink,
    record: Option<&ExecutionRow>,
    expected_sequence: i64,
    expected_prev: &str,
    rules: &LinkRules<'_>,
) -> Option<ChainBreak> {
    let broken = |reason: String, expected_hash: String| ChainBreak {
        sequence: link.sequence,
        execution_id: Some(link.execution_id),
        reason,
        expected_hash,
        stored_hash: link.hash.clone(),
    };
    if link.sequence != expected_sequence {
        return Some(ChainBreak::of_head(
            expected_sequence,
            format!(
                "sequence gap: links {expected_sequence}..{} are missing",
                link.sequence
            ),
        ));
    }
    if link.prev_hash != expected_prev {
        return Some(broken(
            "prev_hash does not match the previous link".to_owned(),
            String::new(),
        ));
    }
    if rules.keyed_since == Some(link.sequence) && link.prev_hash != rules.seal_prev_hash {
        return Some(broken(
            "the first keyed link does not follow the hash the seal pinned: unkeyed links were rewritten"
                .to_owned(),
            String::new(),
        ));
    }
    let Some(kind) = LinkKind::parse(&link.link) else {
        return Some(broken(
            format!("unknown link kind {:?}", link.link),
            String::new(),
        ));
    };
    let Some(record) = record else {
        return Some(broken(
            "the record this link covers is missing".to_owned(),
            String::new(),
        ));
    };
    let content = record.canonical_content(kind);
    let recomputed = if link.key_id.is_empty() {
        // Only links from before the seal may be unkeyed: anything later
        // was written (or rewritten) by someone without the key.
        if rules.keys.current().is_some()
            && rules
                .keyed_since
                .is_none_or(|keyed_since| link.sequence >= keyed_since)
        {
            return Some(broken(
                format!(
                    "unkeyed link in the keyed part of the chain (keyed since {}): written without the key",
                    rules.keyed_since.unwrap_or_default()
                ),
                String::new(),
            ));
        }
        link_hash(&link.prev_hash, link.sequence, kind, &content)
    } else {
        match rules.keys.find(&link.key_id) {
            Some(key) => key.link_hash(&link.prev_hash, link.sequence, kind, &content),
            None if rules.keys.current().is_none() => {
                return Some(broken(
                    format!(
                        "linked with key {:?}, but this server has no chain key to check it",
                        link.key_id
                    ),
                    String::new(),
                ));
            }
            None => {
                return Some(broken(
                    format!(
                        "linked with key {:?}, which is not configured (configured: {}): a wrong key, \
                         or a previous key missing from audit.chain.previous_keys",
                        link.key_id,
                        rules.keys.describe()
                    ),
                    String::new(),
                ));
            }
        }
    };
    if !macs_equal(&recomputed, &link.hash) {
        return Some(broken(
            format!("hash mismatch: the record's {} content changed", kind.as_str()),
            recomputed,
        ));
    }
    None
}

/// Anchor and RUNNING flags, and running without a key.
async fn warnings(log: &AuditLog, head: &HeadRow) -> Result<Vec<ChainWarning>, AuditError> {
    let settings = log.settings();
    let mut warnings = Vec::new();
    if log.keys().current().is_none() {
        warnings.push(ChainWarning {
            kind: WarningKind::Unkeyed,
            message:
                "no audit chain key is configured (audit.chain.allow_unkeyed): links are plain SHA-256, \
                      which anyone who can write the history store can recompute"
                    .to_owned(),
            execution_id: None,
        });
    }
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(log.pool()).await?;
    if head.anchor_sequence > 0
        && let Some(newest) = head.anchor_started_at
    {
        let message = match settings.retention {
            None => Some(format!(
                "records up to sequence {} were deleted (the newest had started at {}), but audit.retention \
                 is unset: retention deletes nothing",
                head.anchor_sequence,
                newest.to_rfc3339()
            )),
            Some(age) if chrono::Duration::from_std(age).is_ok_and(|age| newest > now - age) => {
                Some(format!(
                    "records up to sequence {} were deleted, the newest of them started at {}: within \
                 audit.retention ({}), so retention would not have deleted it yet",
                    head.anchor_sequence,
                    newest.to_rfc3339(),
                    humantime::format_duration(age)
                ))
            }
            Some(_) => None,
        };
        if let Some(message) = message {
            warnings.push(ChainWarning {
                kind: WarningKind::AnchorWithinRetention,
                message,
                execution_id: None,
            });
        }
    }
    // The sweep closes RUNNING records whose server holds no lease; what it
    // should have closed and did not is either a sweep that is not running
    // or a row someone changed.
    let overdue = settings.write_timeout + settings.writer_lease;
    let stale: Vec<(Uuid, f64)> = sqlx::query_as(
        "SELECT e.id, extract(epoch FROM now() - e.started_at)::float8 FROM pgfleet.executions e \
         WHERE e.status = 'RUNNING' AND e.started_at < now() - make_interval(secs => $1) \
         AND NOT EXISTS (SELECT 1 FROM pgfleet.audit_writers w WHERE w.id = e.writer_id \
         AND w.heartbeat_at > now() - make_interval(secs => $2)) \
         ORDER BY e.started_at LIMIT $3",
    )
    .bind(overdue.as_secs_f64())
    .bind(settings.writer_lease.as_secs_f64())
    .bind(i64::try_from(MAX_STALE_LISTED + 1).unwrap_or(i64::MAX))
    .fetch_all(log.pool())
    .await?;
    for (index, (id, age_secs)) in stale.into_iter().enumerate() {
        if index == MAX_STALE_LISTED {
            warnings.push(ChainWarning {
                kind: WarningKind::StaleRunning,
                message: format!("more than {MAX_STALE_LISTED} records are RUNNING past their time"),
                execution_id: None,
            });
            break;
        }
        warnings.push(ChainWarning {
            kind: WarningKind::StaleRunning,
            message: format!(
                "still RUNNING {age_secs:.0}s after it started, past audit.write_timeout + audit.writer_lease \
                 ({}), and its server holds no lease: the sweep that closes it as INTERRUPTED is not \
                 running, or the row was altered",
                humantime::format_duration(overdue)
            ),
            execution_id: Some(id),
        });
    }
    Ok(warnings)
}

/// Compares a (verified) checkpoint with the chain: the seal is where it
/// was, the anchor has not moved back, the chain still reaches the
/// checkpoint's head and that link still has the signed hash.
async fn compare_checkpoint(
    pool: &PgPool,
    head: &HeadRow,
    checkpoint: &Checkpoint,
) -> Result<CheckpointCheck, AuditError> {
    let mismatch = |reason: String| Ok(CheckpointCheck::Mismatch(reason));
    if checkpoint.keyed_since > 0 && head.keyed_since != Some(checkpoint.keyed_since) {
        return mismatch(format!(
            "the seal moved: keyed since {} in the checkpoint, {} now",
            checkpoint.keyed_since,
            head.keyed_since
                .map_or_else(|| "never".to_owned(), |since| since.to_string())
        ));
    }
    if head.anchor_sequence < checkpoint.anchor_sequence {
        return mismatch(format!(
            "the anchor moved back from {} in the checkpoint to {}",
            checkpoint.anchor_sequence, head.anchor_sequence
        ));
    }
    if head.anchor_sequence == checkpoint.anchor_sequence && head.anchor_hash != checkpoint.anchor_hash {
        return mismatch(format!(
            "the anchor at {} has another hash than in the checkpoint",
            head.anchor_sequence
        ));
    }
    if head.sequence < checkpoint.head_sequence {
        return mismatch(format!(
            "the chain ends at {} but the checkpoint's head is {}: the newest records were deleted \
             and the head moved back",
            head.sequence, checkpoint.head_sequence
        ));
    }
    if checkpoint.head_sequence <= checkpoint.anchor_sequence {
        // Nothing was retained when it was signed: its anchor was its head.
        return Ok(CheckpointCheck::Matched);
    }
    if head.anchor_sequence >= checkpoint.head_sequence {
        if head.anchor_sequence == checkpoint.head_sequence && head.anchor_hash != checkpoint.head_hash {
            return mismatch(format!(
                "the anchor at the checkpoint's head {} has another hash",
                checkpoint.head_sequence
            ));
        }
        return Ok(CheckpointCheck::PastRetention);
    }
    let stored: Option<String> =
        sqlx::query_scalar("SELECT hash FROM pgfleet.audit_chain WHERE sequence = $1")
            .bind(checkpoint.head_sequence)
            .fetch_optional(pool)
            .await?;
    match stored {
        None => mismatch(format!(
            "link {} (the checkpoint's head) is missing",
            checkpoint.head_sequence
        )),
        Some(hash) if hash != checkpoint.head_hash => mismatch(format!(
            "link {} no longer has the checkpoint's hash: the chain was rewritten from there or before",
            checkpoint.head_sequence
        )),
        Some(_) => Ok(CheckpointCheck::Matched),
    }
}

/// Signs a checkpoint of the current head with the current key, after
/// checking that the head, its link, the seal and the anchor verify (a
/// checkpoint must never certify a head someone forged).
pub async fn checkpoint(log: &AuditLog) -> Result<Checkpoint, AuditError> {
    let keys = log.keys();
    let key = keys.current().ok_or(AuditError::Unkeyed)?;
    let pool = log.pool();
    let head: HeadRow = sqlx::query_as(concat!(
        "SELECT ",
        head_columns!(),
        " FROM pgfleet.audit_chain_head"
    ))
    .fetch_one(pool)
    .await?;
    if let Some(broken) = check_seal_and_anchor(&head, keys) {
        return Err(AuditError::HeadUnverified(broken.reason));
    }
    if head.sequence > head.anchor_sequence {
        let link: Option<StoredLink> = sqlx::query_as(
            "SELECT sequence, execution_id, link, prev_hash, hash, key_id FROM pgfleet.audit_chain \
             WHERE sequence = $1",
        )
        .bind(head.sequence)
        .fetch_optional(pool)
        .await?;
        let Some(link) = link else {
            return Err(AuditError::HeadUnverified(format!(
                "link {} is missing",
                head.sequence
            )));
        };
        if link.hash != head.hash {
            return Err(AuditError::HeadUnverified(format!(
                "the head row does not match link {}",
                head.sequence
            )));
        }
        let record: Option<ExecutionRow> = sqlx::query_as(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM pgfleet.executions e WHERE e.id = $1"
        ))
        .bind(link.execution_id)
        .fetch_optional(pool)
        .await?;
        let rules = LinkRules {
            keys,
            keyed_since: head.keyed_since,
            seal_prev_hash: &head.seal_prev_hash,
        };
        if let Some(broken) = check_link(&link, record.as_ref(), link.sequence, &link.prev_hash, &rules) {
            return Err(AuditError::HeadUnverified(broken.reason));
        }
    } else if head.hash != head.anchor_hash {
        return Err(AuditError::HeadUnverified(
            "the head does not match the anchor".to_owned(),
        ));
    }
    Ok(Checkpoint::sign(
        key,
        (head.sequence, head.hash),
        (head.anchor_sequence, head.anchor_hash),
        head.keyed_since.unwrap_or(0),
        Utc::now(),
    ))
}
