//! The order in which the targets of a fleet database are migrated, and when
//! a rollout stops. Generic over how a target is reached and what a target's
//! run returns, so the server plugs in its registry pools and audit trail.

use std::collections::BTreeMap;
use std::future::Future;

use futures::future::join_all;

/// How a rollout walks the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RolloutPolicy {
    /// Every target at the same time.
    #[default]
    AllAtOnce,
    /// Canary: the targets of the first target's cloud (at the same time),
    /// then, only if all of them succeeded, every other target at once.
    OneCloudThenRest,
    /// One target after another, in the order given.
    OneByOne,
}

/// A rollout's policy and failure handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RolloutOptions {
    pub policy: RolloutPolicy,
    /// Start no further target once one failed. Targets already running are
    /// never cancelled (a migration is not interrupted half-way), so this
    /// changes nothing for `AllAtOnce`; `OneCloudThenRest` always stops after
    /// a failed canary.
    pub stop_on_first_failure: bool,
}

/// Why a target was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRun {
    /// A target of the canary cloud failed.
    CanaryFailed,
    /// An earlier target failed and `stop_on_first_failure` is set.
    EarlierFailure,
}

/// What happened on one target.
#[derive(Debug)]
pub enum TargetOutcome<R, E> {
    Done(R),
    Failed(E),
    NotRun(NotRun),
}

impl<R, E> TargetOutcome<R, E> {
    pub fn is_done(&self) -> bool {
        matches!(self, TargetOutcome::Done(_))
    }
}

/// Every target with its outcome, in the order given.
#[derive(Debug)]
pub struct RolloutReport<T, R, E> {
    pub outcomes: Vec<(T, TargetOutcome<R, E>)>,
}

impl<T, R, E> RolloutReport<T, R, E> {
    /// Every target ran and succeeded.
    pub fn all_done(&self) -> bool {
        self.outcomes.iter().all(|(_, outcome)| outcome.is_done())
    }

    /// The outcome of the first target equal to `target`.
    pub fn outcome(&self, target: &T) -> Option<&TargetOutcome<R, E>>
    where
        T: PartialEq,
    {
        self.outcomes.iter().find(|(t, _)| t == target).map(|(_, o)| o)
    }
}

/// Runs `run` on `targets` following `options`; `cloud_of` names a target's
/// cloud (for `OneCloudThenRest`, the first target's cloud is the canary).
/// A failed target never stops a running one; see [`RolloutOptions`].
pub async fn rollout<T, R, E, Fut>(
    targets: Vec<T>,
    options: RolloutOptions,
    cloud_of: impl Fn(&T) -> &str,
    mut run: impl FnMut(&T) -> Fut,
) -> RolloutReport<T, R, E>
where
    Fut: Future<Output = Result<R, E>>,
{
    let mut outcomes: BTreeMap<usize, TargetOutcome<R, E>> = BTreeMap::new();
    let waves: Vec<Vec<usize>> = match options.policy {
        RolloutPolicy::AllAtOnce => vec![(0..targets.len()).collect()],
        RolloutPolicy::OneByOne => (0..targets.len()).map(|i| vec![i]).collect(),
        RolloutPolicy::OneCloudThenRest => {
            let canary = targets.first().map(|t| cloud_of(t).to_owned());
            let (first, rest): (Vec<usize>, Vec<usize>) =
                (0..targets.len()).partition(|&i| canary.as_deref() == Some(cloud_of(&targets[i])));
            vec![first, rest]
        }
    };
    let mut stop: Option<NotRun> = None;
    for (wave_index, wave) in waves.into_iter().enumerate() {
        if let Some(reason) = stop {
            for index in wave {
                outcomes.insert(index, TargetOutcome::NotRun(reason));
            }
            continue;
        }
        let results = join_all(wave.iter().map(|&index| run(&targets[index]))).await;
        let mut failed = false;
        for (index, result) in wave.into_iter().zip(results) {
            failed |= result.is_err();
            outcomes.insert(
                index,
                match result {
                    Ok(done) => TargetOutcome::Done(done),
                    Err(error) => TargetOutcome::Failed(error),
                },
            );
        }
        if failed {
            if options.policy == RolloutPolicy::OneCloudThenRest && wave_index == 0 {
                stop = Some(NotRun::CanaryFailed);
            } else if options.stop_on_first_failure {
                stop = Some(NotRun::EarlierFailure);
            }
        }
    }
    RolloutReport {
        outcomes: targets.into_iter().zip(outcomes.into_values()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[allow(clippy::type_complexity)]
    /// Targets are (cloud, name, fails); returns the names run, in order, and the outcomes.
    fn run_with(
        policy: RolloutPolicy,
        stop: bool,
        targets: &[(&'static str, &'static str, bool)],
    ) -> (Vec<&'static str>, Vec<&'static str>) {
        let ran = RefCell::new(Vec::new());
        let report = futures::executor::block_on(rollout(
            targets.to_vec(),
            RolloutOptions {
                policy,
                stop_on_first_failure: stop,
            },
            |t| t.0,
            |t| {
                ran.borrow_mut().push(t.1);
                let fails = t.2;
                async move { if fails { Err(()) } else { Ok(()) } }
            },
        ));
        let outcomes = report
            .outcomes
            .iter()
            .map(|(_, o)| match o {
                TargetOutcome::Done(()) => "done",
                TargetOutcome::Failed(()) => "failed",
                TargetOutcome::NotRun(NotRun::CanaryFailed) => "canary",
                TargetOutcome::NotRun(NotRun::EarlierFailure) => "stopped",
            })
            .collect();
        (ran.into_inner(), outcomes)
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn policies() {
        use RolloutPolicy::*;
        let fleet = [
            ("aws", "a1", false),
            ("gcp", "g1", true),
            ("aws", "a2", false),
            ("az", "z1", false),
        ];
        let canary_fails = [
            ("aws", "a1", false),
            ("gcp", "g1", false),
            ("aws", "a2", true),
            ("az", "z1", false),
        ];
        let cases: &[(&str, RolloutPolicy, bool, &[(&str, &str, bool)], &[&str], &[&str])] = &[
            (
                "all at once runs all",
                AllAtOnce,
                true,
                &fleet,
                &["a1", "g1", "a2", "z1"],
                &["done", "failed", "done", "done"],
            ),
            (
                "canary passes",
                OneCloudThenRest,
                false,
                &fleet,
                &["a1", "a2", "g1", "z1"],
                &["done", "failed", "done", "done"],
            ),
            (
                "canary fails",
                OneCloudThenRest,
                false,
                &canary_fails,
                &["a1", "a2"],
                &["done", "canary", "failed", "canary"],
            ),
            (
                "one by one goes on",
                OneByOne,
                false,
                &fleet,
                &["a1", "g1", "a2", "z1"],
                &["done", "failed", "done", "done"],
            ),
            (
                "one by one stops",
                OneByOne,
                true,
                &fleet,
                &["a1", "g1"],
                &["done", "failed", "stopped", "stopped"],
            ),
        ];
        for (name, policy, stop, targets, want_ran, want_outcomes) in cases {
            let (ran, outcomes) = run_with(*policy, *stop, targets);
            assert_eq!(ran, *want_ran, "case {name}: order");
            assert_eq!(outcomes, *want_outcomes, "case {name}: outcomes");
        }
    }
}
