//! The hash chain: appending a link in commit order, and verifying it.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::AuditError;
use super::record::{ExecutionRow, LinkKind, execution_columns, link_hash};

/// A stored link.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Link {
    pub sequence: i64,
    pub hash: String,
    pub prev_hash: String,
}

/// Appends the `link` of `row` to the chain inside the caller's
/// transaction. The head row's lock is held until that transaction ends, so
/// appends from every replica are serialized and sequence order is commit
/// order, without gaps.
pub async fn append(
    connection: &mut PgConnection,
    row: &ExecutionRow,
    link: LinkKind,
) -> Result<Link, AuditError> {
    let (head_sequence, head_hash): (i64, String) =
        sqlx::query_as("SELECT sequence, hash FROM pgfleet.audit_chain_head FOR UPDATE")
            .fetch_one(&mut *connection)
            .await?;
    let sequence = head_sequence + 1;
    let hash = link_hash(&head_hash, sequence, link, &row.canonical_content(link));
    sqlx::query(
        "INSERT INTO pgfleet.audit_chain (sequence, execution_id, link, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(sequence)
    .bind(row.id)
    .bind(link.as_str())
    .bind(&head_hash)
    .bind(&hash)
    .execute(&mut *connection)
    .await?;
    sqlx::query("UPDATE pgfleet.audit_chain_head SET sequence = $1, hash = $2")
        .bind(sequence)
        .bind(&hash)
        .execute(&mut *connection)
        .await?;
    Ok(Link {
        sequence,
        hash,
        prev_hash: head_hash,
    })
}

/// Where retention cut the chain.
#[derive(Debug, Clone)]
pub struct Anchor {
    pub sequence: i64,
    pub hash: String,
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
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

/// The result of walking (part of) the chain.
#[derive(Debug, Clone)]
pub struct Verification {
    pub records_checked: u64,
    pub first_break: Option<ChainBreak>,
    pub anchor: Option<Anchor>,
    pub last: Option<Link>,
}

/// Links read per round trip while verifying.
const VERIFY_BATCH: i64 = 1000;

#[derive(sqlx::FromRow)]
struct StoredLink {
    sequence: i64,
    execution_id: Uuid,
    link: String,
    prev_hash: String,
    hash: String,
}

/// Walks the links from `from` to `to` (inclusive; `None` for the ends of
/// the retained chain), recomputing every hash from the executions rows.
/// Reports the first link whose hash, predecessor or sequence does not
/// match, then checks that no record is outside the chain and that the
/// head agrees with the last link (which catches a truncated tail).
pub async fn verify(pool: &PgPool, from: Option<i64>, to: Option<i64>) -> Result<Verification, AuditError> {
    let (head_sequence, head_hash, anchor_sequence, anchor_hash, anchor_updated_at): (
        i64,
        String,
        i64,
        String,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = sqlx::query_as(
        "SELECT sequence, hash, anchor_sequence, anchor_hash, anchor_updated_at FROM pgfleet.audit_chain_head",
    )
    .fetch_one(pool)
    .await?;
    let anchor = (anchor_sequence > 0).then(|| Anchor {
        sequence: anchor_sequence,
        hash: anchor_hash.clone(),
        updated_at: anchor_updated_at,
    });
    let start = from.unwrap_or(0).max(anchor_sequence + 1);
    let end = to.unwrap_or(head_sequence).min(head_sequence);

    // The hash the first checked link must point back to.
    let mut expected_prev = if start == anchor_sequence + 1 {
        anchor_hash
    } else {
        sqlx::query_scalar::<_, String>("SELECT hash FROM pgfleet.audit_chain WHERE sequence = $1")
            .bind(start - 1)
            .fetch_optional(pool)
            .await?
            .unwrap_or_default()
    };
    let mut verification = Verification {
        records_checked: 0,
        first_break: None,
        anchor,
        last: None,
    };
    let mut next_sequence = start;
    while next_sequence <= end {
        let batch: Vec<StoredLink> = sqlx::query_as(
            "SELECT sequence, execution_id, link, prev_hash, hash FROM pgfleet.audit_chain \
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
            verification.first_break = Some(ChainBreak {
                sequence: next_sequence,
                execution_id: None,
                reason: format!("links {next_sequence}..={end} are missing"),
                expected_hash: String::new(),
                stored_hash: String::new(),
            });
            return Ok(verification);
        }
        for link in batch {
            let record = records.get(&link.execution_id);
            if let Some(broken) = check_link(&link, record, next_sequence, &expected_prev) {
                verification.first_break = Some(broken);
                return Ok(verification);
            }
            verification.records_checked += 1;
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
        && verification.last.as_ref().map(|l| &l.hash) != Some(&head_hash)
        && head_sequence > anchor_sequence
    {
        verification.first_break = Some(ChainBreak {
            sequence: head_sequence,
            execution_id: None,
            reason: "the chain head does not match the last link (links removed at the end?)".to_owned(),
            expected_hash: head_hash,
            stored_hash: verification
                .last
                .as_ref()
                .map(|l| l.hash.clone())
                .unwrap_or_default(),
        });
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
            sequence: 0,
            execution_id: Some(id),
            reason: "record is not in the chain (inserted outside pgfleet?)".to_owned(),
            expected_hash: String::new(),
            stored_hash: String::new(),
        });
    }
    Ok(verification)
}

fn check_link(
    link: &StoredLink,
    record: Option<&ExecutionRow>,
    expected_sequence: i64,
    expected_prev: &str,
) -> Option<ChainBreak> {
    let broken = |reason: String, expected_hash: String| ChainBreak {
        sequence: link.sequence,
        execution_id: Some(link.execution_id),
        reason,
        expected_hash,
        stored_hash: link.hash.clone(),
    };
    if link.sequence != expected_sequence {
        return Some(ChainBreak {
            sequence: expected_sequence,
            execution_id: None,
            reason: format!(
                "sequence gap: links {expected_sequence}..{} are missing",
                link.sequence
            ),
            expected_hash: String::new(),
            stored_hash: String::new(),
        });
    }
    if link.prev_hash != expected_prev {
        return Some(broken(
            "prev_hash does not match the previous link".to_owned(),
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
    let recomputed = link_hash(
        &link.prev_hash,
        link.sequence,
        kind,
        &record.canonical_content(kind),
    );
    if recomputed != link.hash {
        return Some(broken(
            format!("hash mismatch: the record's {} content changed", kind.as_str()),
            recomputed,
        ));
    }
    None
}
