//! Insights into the fleet's queries (`InsightsService`), without the wire.
//!
//! - [`slow_log`]: pgfleet's own executions slower than
//!   `insights.slow_query_threshold` on a target, kept normalized (every
//!   literal `$n`) in the history store, searched by pages, pruned by age
//!   and count.
//! - [`activity`]: `pg_stat_activity` per target with lock waits and
//!   blockers; cancelling or terminating a backend (on record first,
//!   pgfleet's own history-store connections refused).
//! - [`statements`]: `pg_stat_statements` of every copy of a database,
//!   merged by libpg_query fingerprint, with the "N× slower on X" finding.
//! - [`explain`]: one statement's plan on every copy (READ ONLY, rolled
//!   back; ANALYZE for MASTER's reads only) and where the shapes differ.
//! - [`alerts`]: `[insights.alerts]` checked against the health
//!   monitor's last probe of each member.
//! - [`recommendations`]: advice from each copy's catalogs with its
//!   evidence, and indexes one copy lacks.
//!
//! Every read on a target runs in a bounded READ ONLY transaction through
//! [`pgfleet_registry::Registry::read_only`] under the main login (the
//! statistics views hide other roles' texts from an unprivileged login);
//! query texts leave this module normalized.

pub mod activity;
pub mod alerts;
pub mod explain;
pub mod recommendations;
pub mod slow_log;
pub mod statements;

use std::time::Duration;

use pgfleet_registry::{ReadOnlyError, Target};

use crate::RequestError;
use crate::identity::Identity;
use crate::query::TargetFailure;

/// How long one statistics read may run on a target.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The copies of `database` (one cloud, or all), checked against the
/// caller's allow-list: an API key cannot tell "not configured" from "not
/// yours".
pub fn resolve_targets(
    registry: &pgfleet_registry::Registry,
    identity: &Identity,
    database: &str,
    cloud: &str,
) -> Result<Vec<Target>, RequestError> {
    if database.is_empty() {
        return Err(RequestError::invalid(
            "database",
            "must name a configured database",
        ));
    }
    let mut targets: Vec<Target> = registry
        .targets_for_database(database)
        .into_iter()
        .filter(|target| cloud.is_empty() || target.cloud == cloud)
        .collect();
    targets.sort();
    let denied = || {
        RequestError::PermissionDenied(format!(
            "{} may not reach the targets of this request (API key allow-list)",
            identity.label()
        ))
    };
    if targets.is_empty() {
        return Err(match identity.principal {
            crate::identity::Principal::ApiKey { .. } => denied(),
            _ if cloud.is_empty() => {
                RequestError::NotFound(format!("no database {database:?} is configured"))
            }
            _ => RequestError::NotFound(format!("cloud {cloud:?} has no database {database:?}")),
        });
    }
    if targets.iter().any(|target| !identity.may_access(target)) {
        return Err(denied());
    }
    Ok(targets)
}

/// A read on a target that failed, as a per-target failure.
pub(crate) fn read_failure(error: ReadOnlyError) -> TargetFailure {
    match error {
        ReadOnlyError::Acquire(error) => {
            TargetFailure::new(crate::query::FailureCode::Unavailable, error.to_string())
        }
        ReadOnlyError::Query(error) => TargetFailure::from_sqlx(&error),
    }
}

/// `text` with every literal `$n`, from the scanner (works on texts that do
/// not parse), on the blocking pool; `None` when even the scanner fails.
pub(crate) async fn without_literals(texts: Vec<String>) -> Vec<Option<String>> {
    tokio::task::spawn_blocking(move || {
        texts
            .iter()
            .map(|text| pgfleet_sqlcheck::replace_literals(text).ok())
            .collect()
    })
    .await
    .unwrap_or_default()
}
