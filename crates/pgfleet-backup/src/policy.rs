//! Backup policies: which targets, when (cron, in UTC or a named time
//! zone), how (format, compression level), how long backups are kept, and
//! when a target counts as DEGRADED (`max_age`).

use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgfleet_registry::{Registry, Target};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::BackupError;

/// Longest policy name.
pub const MAX_NAME_LEN: usize = 100;
/// zstd levels a policy may ask for (the library's own range, without the
/// negative "fast" levels).
pub const COMPRESSION_LEVELS: std::ops::RangeInclusive<i32> = 1..=22;
/// zstd's default level: a good ratio at several hundred MB/s.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

/// Which targets a policy (or an on-demand run) backs up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetSelection {
    /// `database` on every cloud that has it.
    AllClouds { database: String },
    /// `database` on one cloud.
    Cloud { cloud: String, database: String },
    /// An explicit list of `(cloud, database)`.
    Targets { targets: Vec<TargetName> },
}

/// A target as stored in a policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TargetName {
    pub cloud: String,
    pub database: String,
}

impl From<&Target> for TargetName {
    fn from(target: &Target) -> Self {
        Self {
            cloud: target.cloud.clone(),
            database: target.database.clone(),
        }
    }
}

impl TargetSelection {
    /// The configured targets selected now; `field` names the selection in
    /// the request for errors. A selection that matches nothing is invalid.
    pub fn resolve(&self, registry: &Registry, field: &str) -> Result<Vec<Target>, BackupError> {
        let known = registry.targets();
        let targets: Vec<Target> = match self {
            TargetSelection::AllClouds { database } => registry.targets_for_database(database),
            TargetSelection::Cloud { cloud, database } => {
                let target = Target::new(cloud.clone(), database.clone());
                known.iter().filter(|t| **t == target).cloned().collect()
            }
            TargetSelection::Targets { targets } => {
                let mut resolved = Vec::new();
                for (index, name) in targets.iter().enumerate() {
                    let target = Target::new(name.cloud.clone(), name.database.clone());
                    if !known.contains(&target) {
                        return Err(BackupError::invalid(
                            format!("{field}.targets[{index}]"),
                            format!("no configured target {target}"),
                        ));
                    }
                    if !resolved.contains(&target) {
                        resolved.push(target);
                    }
                }
                resolved
            }
        };
        if targets.is_empty() {
            return Err(BackupError::invalid(field, "selects no configured target"));
        }
        Ok(targets)
    }
}

/// The dump format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DumpFormat {
    /// `pg_dump --format=custom`: restored with `pg_restore`, listable.
    #[default]
    Custom,
    /// Plain SQL: restored with `psql`.
    Plain,
}

impl DumpFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DumpFormat::Custom => "CUSTOM",
            DumpFormat::Plain => "PLAIN",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "CUSTOM" => Some(DumpFormat::Custom),
            "PLAIN" => Some(DumpFormat::Plain),
            _ => None,
        }
    }

    /// The file extension of the raw dump.
    pub fn extension(self) -> &'static str {
        match self {
            DumpFormat::Custom => "dump",
            DumpFormat::Plain => "sql",
        }
    }
}

/// What a policy keeps after each successful backup, per target. A backup
/// is kept when any rule keeps it; with no rule at all, everything is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// The newest N.
    #[serde(default)]
    pub keep_last: Option<u32>,
    /// Everything younger than this (seconds).
    #[serde(default)]
    pub keep_within_secs: Option<u64>,
    /// The newest backup of each of the last N days (UTC).
    #[serde(default)]
    pub keep_daily: Option<u32>,
    /// The newest backup of each of the last N ISO weeks.
    #[serde(default)]
    pub keep_weekly: Option<u32>,
    /// The newest backup of each of the last N months.
    #[serde(default)]
    pub keep_monthly: Option<u32>,
}

impl Retention {
    pub fn is_empty(&self) -> bool {
        *self == Retention::default()
    }
}

/// A backup policy as requested and stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySpec {
    pub name: String,
    pub targets: TargetSelection,
    /// Cron expression (5 fields, or 6 with seconds first); `None`: on
    /// demand only.
    #[serde(default)]
    pub schedule: Option<String>,
    /// IANA time zone the schedule is read in (`UTC` by default).
    #[serde(default = "utc")]
    pub time_zone: String,
    #[serde(default)]
    pub format: DumpFormat,
    #[serde(default = "default_level")]
    pub compression_level: i32,
    #[serde(default)]
    pub retention: Retention,
    /// A target without a successful backup this recent is DEGRADED.
    #[serde(default)]
    pub max_age_secs: Option<u64>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn utc() -> String {
    "UTC".to_owned()
}
fn default_level() -> i32 {
    DEFAULT_COMPRESSION_LEVEL
}
fn yes() -> bool {
    true
}

impl PolicySpec {
    /// Checks every field but the targets' existence (see
    /// [`TargetSelection::resolve`]); `prefix` is the request's name of the
    /// policy (`policy.`).
    pub fn check(&self, prefix: &str) -> Result<(), BackupError> {
        let field = |name: &str| format!("{prefix}{name}");
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_NAME_LEN
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err(BackupError::invalid(
                field("name"),
                format!("1 to {MAX_NAME_LEN} of [A-Za-z0-9._-]"),
            ));
        }
        check_selection(&self.targets, &field("targets"))?;
        if let Some(schedule) = &self.schedule {
            parse_schedule(schedule).map_err(|reason| BackupError::invalid(field("schedule"), reason))?;
        }
        parse_time_zone(&self.time_zone)
            .map_err(|reason| BackupError::invalid(field("time_zone"), reason))?;
        if !COMPRESSION_LEVELS.contains(&self.compression_level) {
            return Err(BackupError::invalid(
                field("compression_level"),
                format!(
                    "between {} and {}",
                    COMPRESSION_LEVELS.start(),
                    COMPRESSION_LEVELS.end()
                ),
            ));
        }
        let counts = [
            ("retention.keep_last", self.retention.keep_last),
            ("retention.keep_daily", self.retention.keep_daily),
            ("retention.keep_weekly", self.retention.keep_weekly),
            ("retention.keep_monthly", self.retention.keep_monthly),
        ];
        for (name, count) in counts {
            if count == Some(0) {
                return Err(BackupError::invalid(field(name), "at least 1 when set"));
            }
        }
        if self.retention.keep_within_secs == Some(0) {
            return Err(BackupError::invalid(
                field("retention.keep_within"),
                "at least 1 second when set",
            ));
        }
        if self.max_age_secs.is_some_and(|secs| secs < 60) {
            return Err(BackupError::invalid(
                field("max_age"),
                "at least 1 minute when set",
            ));
        }
        Ok(())
    }

    /// The next scheduled time strictly after `after`; `None` when the
    /// policy has no schedule or is disabled.
    pub fn next_run_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if !self.enabled {
            return None;
        }
        let cron = parse_schedule(self.schedule.as_deref()?).ok()?;
        let zone = parse_time_zone(&self.time_zone).ok()?;
        let local = after.with_timezone(&zone);
        cron.find_next_occurrence(&local, false)
            .ok()
            .map(|next| next.with_timezone(&Utc))
    }

    pub fn max_age(&self) -> Option<Duration> {
        self.max_age_secs.map(Duration::from_secs)
    }
}

fn check_selection(selection: &TargetSelection, field: &str) -> Result<(), BackupError> {
    let nonempty = |value: &str, name: &str| {
        if value.is_empty() {
            Err(BackupError::invalid(format!("{field}.{name}"), "required"))
        } else {
            Ok(())
        }
    };
    match selection {
        TargetSelection::AllClouds { database } => nonempty(database, "database"),
        TargetSelection::Cloud { cloud, database } => {
            nonempty(cloud, "cloud")?;
            nonempty(database, "database")
        }
        TargetSelection::Targets { targets } => {
            if targets.is_empty() {
                return Err(BackupError::invalid(
                    format!("{field}.targets"),
                    "at least one target",
                ));
            }
            Ok(())
        }
    }
}

/// A cron expression: 5 fields (minute first) or 6 (seconds first), or a
/// nickname (`@daily`).
pub fn parse_schedule(text: &str) -> Result<croner::Cron, String> {
    // The default parser: seconds optional, years optional.
    croner::parser::CronParser::new()
        .parse(text)
        .map_err(|error| format!("not a cron expression: {error}"))
}

/// An IANA time zone name (`Europe/Paris`, `UTC`).
pub fn parse_time_zone(text: &str) -> Result<chrono_tz::Tz, String> {
    chrono_tz::Tz::from_str(text).map_err(|_| format!("{text:?} is not an IANA time zone name"))
}

/// A stored policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub id: Uuid,
    pub spec: PolicySpec,
    pub revision: i64,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub next_run_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PolicySpec {
        PolicySpec {
            name: "nightly".to_owned(),
            targets: TargetSelection::AllClouds {
                database: "app".to_owned(),
            },
            schedule: Some("30 2 * * *".to_owned()),
            time_zone: "Europe/Paris".to_owned(),
            format: DumpFormat::Custom,
            compression_level: 3,
            retention: Retention::default(),
            max_age_secs: None,
            enabled: true,
        }
    }

    /// One change to a valid spec.
    type Change = Box<dyn Fn(&mut PolicySpec)>;

    #[test]
    fn field_checks_name_the_field() {
        let cases: Vec<(&str, Change, Option<&str>)> = vec![
            ("valid", Box::new(|_| {}), None),
            ("empty name", Box::new(|s| s.name.clear()), Some("policy.name")),
            (
                "slash in name",
                Box::new(|s| s.name = "a/b".into()),
                Some("policy.name"),
            ),
            (
                "bad cron",
                Box::new(|s| s.schedule = Some("every day".into())),
                Some("policy.schedule"),
            ),
            (
                "bad zone",
                Box::new(|s| s.time_zone = "Mars/Base".into()),
                Some("policy.time_zone"),
            ),
            (
                "level 0",
                Box::new(|s| s.compression_level = 0),
                Some("policy.compression_level"),
            ),
            (
                "level 23",
                Box::new(|s| s.compression_level = 23),
                Some("policy.compression_level"),
            ),
            (
                "keep_last 0",
                Box::new(|s| s.retention.keep_last = Some(0)),
                Some("policy.retention.keep_last"),
            ),
            (
                "max_age 1s",
                Box::new(|s| s.max_age_secs = Some(1)),
                Some("policy.max_age"),
            ),
            (
                "empty database",
                Box::new(|s| {
                    s.targets = TargetSelection::AllClouds {
                        database: String::new(),
                    }
                }),
                Some("policy.targets.database"),
            ),
        ];
        for (name, change, expected) in cases {
            let mut spec = spec();
            change(&mut spec);
            match (spec.check("policy."), expected) {
                (Ok(()), None) => {}
                (Err(BackupError::Invalid { field, .. }), Some(expected)) => {
                    assert_eq!(field, expected, "case {name}");
                }
                (other, expected) => panic!("case {name}: {other:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn the_schedule_is_read_in_the_policys_time_zone() {
        let after = DateTime::parse_from_rfc3339("2026-07-01T00:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        // 02:30 in Paris (UTC+2 in July) is 00:30 UTC.
        let next = spec().next_run_after(after).map(|t| t.to_rfc3339());
        assert_eq!(next.as_deref(), Some("2026-07-01T00:30:00+00:00"));
        let mut disabled = spec();
        disabled.enabled = false;
        assert_eq!(disabled.next_run_after(after), None);
    }
}
