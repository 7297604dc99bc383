//! The global transaction ids of atomic executions' prepared transactions:
//! `pgfleet:<execution id>:<target index>`. The prefix is how recovery finds
//! pgfleet's own prepared transactions and leaves every other one alone; the
//! execution id leads to the decision, the index to the target in the
//! execution's record. Only a UUID and an integer: safe to write into
//! `PREPARE TRANSACTION '…'` (which takes no parameter), and far below
//! PostgreSQL's 200-byte limit.

use uuid::Uuid;

/// What every pgfleet gid starts with.
pub const PREFIX: &str = "pgfleet:";

/// The gid of target `index` of `execution`.
pub fn gid(execution: Uuid, index: usize) -> String {
    format!("{PREFIX}{execution}:{index}")
}

/// The execution and target index of a pgfleet gid; `None` for any other
/// gid (another tool's, or one that merely starts like pgfleet's).
pub fn parse(gid: &str) -> Option<(Uuid, usize)> {
    let rest = gid.strip_prefix(PREFIX)?;
    let (execution, index) = rest.split_once(':')?;
    let execution = Uuid::parse_str(execution).ok()?;
    // Only the canonical forms `gid` writes: no sign, no leading zeros.
    if index.is_empty()
        || (index.len() > 1 && index.starts_with('0'))
        || !index.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let index = index.parse().ok()?;
    (self::gid(execution, index) == gid).then_some((execution, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gid_parses_back_and_foreign_ones_do_not() {
        let execution = Uuid::now_v7();
        assert_eq!(parse(&gid(execution, 0)), Some((execution, 0)));
        assert_eq!(parse(&gid(execution, 12)), Some((execution, 12)));
        let canonical = execution.to_string();
        for (case, foreign) in [
            ("another tool", "xa-1234".to_owned()),
            ("prefix only", "pgfleet:".to_owned()),
            ("no index", format!("pgfleet:{canonical}")),
            ("empty index", format!("pgfleet:{canonical}:")),
            ("signed index", format!("pgfleet:{canonical}:+1")),
            ("leading zero", format!("pgfleet:{canonical}:01")),
            ("not a uuid", "pgfleet:not-a-uuid:1".to_owned()),
            (
                "upper-case uuid",
                format!("pgfleet:{}:1", canonical.to_uppercase()),
            ),
            ("trailing text", format!("pgfleet:{canonical}:1:x")),
            ("other case prefix", format!("PGFLEET:{canonical}:1")),
        ] {
            assert_eq!(parse(&foreign), None, "{case}: {foreign}");
        }
    }
}
