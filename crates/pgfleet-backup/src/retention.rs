//! What a policy keeps: a backup is kept when any rule keeps it (the newest
//! N, everything younger than D, the newest of each of the last N days,
//! ISO weeks or months, all in UTC); with no rule, everything is kept.

use std::collections::HashSet;

use chrono::{DateTime, Datelike as _, Utc};
use uuid::Uuid;

use crate::policy::Retention;

/// The ids among `backups` (one target's successful backups, any order) that
/// `rules` no longer keep at `now`.
pub fn expired(backups: &[(Uuid, DateTime<Utc>)], rules: &Retention, now: DateTime<Utc>) -> Vec<Uuid> {
    if rules.is_empty() {
        return Vec::new();
    }
    let mut newest_first = backups.to_vec();
    newest_first.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let mut kept: HashSet<Uuid> = HashSet::new();
    if let Some(n) = rules.keep_last {
        kept.extend(newest_first.iter().take(n as usize).map(|(id, _)| *id));
    }
    if let Some(secs) = rules.keep_within_secs {
        let horizon = now - chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000));
        kept.extend(
            newest_first
                .iter()
                .filter(|(_, at)| *at > horizon)
                .map(|(id, _)| *id),
        );
    }
    let mut keep_per_period = |count: Option<u32>, period: &dyn Fn(DateTime<Utc>) -> (i32, u32)| {
        let Some(count) = count else { return };
        let mut seen: Vec<(i32, u32)> = Vec::new();
        for (id, at) in &newest_first {
            let key = period(*at);
            if seen.contains(&key) {
                continue;
            }
            if seen.len() == count as usize {
                break;
            }
            seen.push(key);
            kept.insert(*id);
        }
    };
    keep_per_period(rules.keep_daily, &|at| (at.year(), at.ordinal()));
    keep_per_period(rules.keep_weekly, &|at| {
        let week = at.iso_week();
        (week.year(), week.week())
    });
    keep_per_period(rules.keep_monthly, &|at| (at.year(), at.month()));
    newest_first
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| !kept.contains(id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn backups() -> Vec<(Uuid, DateTime<Utc>)> {
        [
            "2026-12-04T10:00:00Z",
            "2026-12-04T02:00:00Z",
            "2026-12-03T02:00:00Z",
            "2026-12-02T02:00:00Z",
            "2026-11-20T02:00:00Z",
            "2026-10-01T02:00:00Z",
        ]
        .iter()
        .enumerate()
        .map(|(i, t)| (Uuid::from_u128(i as u128 + 1), at(t)))
        .collect()
    }

    #[test]
    fn each_rule_keeps_its_share_and_the_rest_expires() {
        let now = at("2026-12-04T12:00:00Z");
        let ids = |ns: &[u128]| ns.iter().map(|n| Uuid::from_u128(*n)).collect::<Vec<_>>();
        let cases: Vec<(&str, Retention, Vec<Uuid>)> = vec![
            ("no rule keeps all", Retention::default(), vec![]),
            (
                "keep_last 2",
                Retention {
                    keep_last: Some(2),
                    ..Retention::default()
                },
                ids(&[3, 4, 5, 6]),
            ),
            (
                "keep_within 1 day",
                Retention {
                    keep_within_secs: Some(86_400),
                    ..Retention::default()
                },
                ids(&[3, 4, 5, 6]),
            ),
            (
                "keep_daily 2: newest of Dec 4 and Dec 3",
                Retention {
                    keep_daily: Some(2),
                    ..Retention::default()
                },
                ids(&[2, 4, 5, 6]),
            ),
            (
                "keep_monthly 2 or keep_last 1",
                Retention {
                    keep_monthly: Some(2),
                    keep_last: Some(1),
                    ..Retention::default()
                },
                ids(&[2, 3, 4, 6]),
            ),
        ];
        for (name, rules, expected) in cases {
            assert_eq!(expired(&backups(), &rules, now), expected, "case {name}");
        }
    }
}
