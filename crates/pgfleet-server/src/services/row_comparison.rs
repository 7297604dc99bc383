//! `ExecuteRequest.compare`: each statement's rows on every target set
//! against the first target's (the reference), as the rows stream past.
//!
//! Rows are compared by their wire encoding (`Row`'s protobuf bytes), which
//! is exact: two rows are equal when every cell has the same kind and
//! value as PostgreSQL returned it. With key columns a row is identified by
//! its key and reported as missing, extra or changed; without, rows are
//! compared whole as multisets (a row that differs in one value is then one
//! missing and one extra). Only statements that return columns are
//! compared. What is held per target and statement is bounded by
//! `query.max_rows_per_statement` rows and the response byte budget; past
//! either the comparison says it is incomplete rather than grow.

use std::collections::{BTreeMap, HashMap};

use pgfleet_engine::RequestError;
use pgfleet_engine::query::{Column, TargetEvent};
use pgfleet_proto::pgfleet::v1 as pb;
use pgfleet_registry::Target;
use prost::Message as _;

use super::convert;

/// Samples per kind of difference and target when the request says 0.
const DEFAULT_SAMPLES: u32 = 10;
/// The most samples a request may ask for.
const MAX_SAMPLES: u32 = 1_000;

/// What a request asked to compare, checked.
#[derive(Debug)]
pub(super) struct ComparisonSpec {
    key_columns: Vec<String>,
    max_samples: usize,
}

impl ComparisonSpec {
    /// The request's `compare`, checked against the number of targets the
    /// scope resolved to; none when the request did not ask.
    pub(super) fn from_wire(
        spec: Option<pb::RowComparisonSpec>,
        targets: usize,
    ) -> Result<Option<Self>, RequestError> {
        let Some(spec) = spec else {
            return Ok(None);
        };
        if targets < 2 {
            return Err(RequestError::invalid(
                "compare",
                format!("comparing needs two or more targets; the scope resolves to {targets}"),
            ));
        }
        for (index, column) in spec.key_columns.iter().enumerate() {
            if column.is_empty() {
                return Err(RequestError::invalid(
                    format!("compare.key_columns[{index}]"),
                    "must not be empty",
                ));
            }
            if spec.key_columns[..index].contains(column) {
                return Err(RequestError::invalid(
                    format!("compare.key_columns[{index}]"),
                    format!("\"{column}\" is named twice"),
                ));
            }
        }
        let max_samples = match spec.max_samples {
            0 => DEFAULT_SAMPLES,
            n if n > MAX_SAMPLES => {
                return Err(RequestError::invalid(
                    "compare.max_samples",
                    format!("at most {MAX_SAMPLES}, got {n}"),
                ));
            }
            n => n,
        };
        Ok(Some(Self {
            key_columns: spec.key_columns,
            max_samples: max_samples as usize,
        }))
    }
}

/// The rows of one statement on one target, as far as they are held.
struct Side {
    /// Each column's name and type, as compared between targets.
    columns: Vec<String>,
    /// Where the key columns are in `columns`; the error names the missing
    /// one.
    key_positions: Result<Vec<usize>, String>,
    /// Key mode: key bytes → (arrival order, row bytes).
    keyed: HashMap<Vec<u8>, (u64, Vec<u8>)>,
    /// Whole-row mode: row bytes → (first arrival, count).
    whole: HashMap<Vec<u8>, (u64, u64)>,
    /// The first key seen twice, if any (the key does not identify rows).
    duplicate_key: bool,
    rows: u64,
    bytes: u64,
    /// Rows were left out: truncated by the row limit or past what is held.
    incomplete: bool,
}

/// Rows seen so far, per statement and target; [`Self::finish`] compares
/// them.
pub(super) struct RowComparison {
    spec: ComparisonSpec,
    max_rows: u64,
    max_bytes: u64,
    targets: usize,
    statements: BTreeMap<u32, Vec<Option<Side>>>,
    failed: Vec<bool>,
}

impl RowComparison {
    pub(super) fn new(spec: ComparisonSpec, targets: usize, max_rows: u64, max_bytes: u64) -> Self {
        Self {
            spec,
            max_rows,
            max_bytes,
            targets,
            statements: BTreeMap::new(),
            failed: vec![false; targets],
        }
    }

    fn side(&mut self, target: usize, statement: u32) -> Option<&mut Side> {
        let targets = self.targets;
        self.statements
            .entry(statement)
            .or_insert_with(|| (0..targets).map(|_| None).collect())
            .get_mut(target)?
            .as_mut()
    }

    /// Takes in what a target's event says about its rows; the events are
    /// then sent on unchanged.
    pub(super) fn see(&mut self, target: usize, event: &TargetEvent<pb::Row>) {
        match event {
            TargetEvent::Started { .. } => {}
            TargetEvent::Header { statement, columns } => self.header(target, *statement, columns),
            TargetEvent::Rows { statement, rows } => self.rows(target, *statement, rows),
            TargetEvent::StatementDone(done) => {
                if let Some(side) = self.side(target, done.index) {
                    // Rows past the row limit were not sent.
                    side.incomplete |= done.truncated;
                }
            }
            TargetEvent::Finished(outcome) => {
                // A failed target is not compared: its rows were rolled
                // back or cut short.
                if let Some(failed) = self.failed.get_mut(target) {
                    *failed = !outcome.success;
                }
            }
        }
    }

    /// A statement's columns on a target (its result starts).
    fn header(&mut self, target: usize, statement: u32, columns: &[Column]) {
        let key_positions = self
            .spec
            .key_columns
            .iter()
            .map(|key| {
                columns
                    .iter()
                    .position(|column| &column.name == key)
                    .ok_or_else(|| format!("the key column \"{key}\" is not in the result"))
            })
            .collect();
        let targets = self.targets;
        let sides = self
            .statements
            .entry(statement)
            .or_insert_with(|| (0..targets).map(|_| None).collect());
        if let Some(slot) = sides.get_mut(target) {
            *slot = Some(Side {
                columns: columns
                    .iter()
                    .map(|column| format!("{} {}", column.name, column.type_name))
                    .collect(),
                key_positions,
                keyed: HashMap::new(),
                whole: HashMap::new(),
                duplicate_key: false,
                rows: 0,
                bytes: 0,
                incomplete: false,
            });
        }
    }

    /// Rows of a statement on a target, in order.
    fn rows(&mut self, target: usize, statement: u32, rows: &[pb::Row]) {
        let (max_rows, max_bytes) = (self.max_rows, self.max_bytes);
        let Some(side) = self.side(target, statement) else {
            return;
        };
        for row in rows {
            let encoded = row.encode_to_vec();
            if side.incomplete || side.rows >= max_rows || side.bytes + encoded.len() as u64 > max_bytes {
                side.incomplete = true;
                return;
            }
            let order = side.rows;
            side.rows += 1;
            side.bytes += encoded.len() as u64;
            match &side.key_positions {
                Ok(positions) if !positions.is_empty() => {
                    let key = pb::Row {
                        cells: positions
                            .iter()
                            .filter_map(|&position| row.cells.get(position).cloned())
                            .collect(),
                    }
                    .encode_to_vec();
                    side.bytes += key.len() as u64;
                    if side.keyed.insert(key, (order, encoded)).is_some() {
                        side.duplicate_key = true;
                    }
                }
                Ok(_) => {
                    side.whole.entry(encoded).or_insert((order, 0)).1 += 1;
                }
                // Nothing to compare by; `finish` says why.
                Err(_) => {}
            }
        }
    }

    /// One comparison per statement that returned columns on the reference
    /// target, in statement order.
    pub(super) fn finish(self, targets: &[Target]) -> Vec<pb::ResultComparison> {
        let Some(reference_target) = targets.first() else {
            return Vec::new();
        };
        let mut comparisons = Vec::new();
        for (statement, sides) in &self.statements {
            let Some(Some(reference)) = sides.first() else {
                continue;
            };
            if reference.columns.is_empty() {
                continue;
            }
            let divergences = (1..self.targets)
                .map(|index| {
                    let target = targets.get(index).map(convert::target);
                    let side = sides.get(index).and_then(Option::as_ref);
                    match self.not_compared(reference, side, index) {
                        Some(reason) => pb::RowDivergence {
                            target,
                            not_compared: reason,
                            ..Default::default()
                        },
                        None => {
                            let side = side.unwrap_or(reference);
                            pb::RowDivergence {
                                target,
                                ..diverge(reference, side, self.spec.max_samples)
                            }
                        }
                    }
                })
                .collect();
            comparisons.push(pb::ResultComparison {
                statement_index: *statement,
                reference: Some(convert::target(reference_target)),
                reference_rows: reference.rows,
                targets: divergences,
            });
        }
        comparisons
    }

    /// Why target `index`'s rows cannot be set against the reference's.
    fn not_compared(&self, reference: &Side, side: Option<&Side>, index: usize) -> Option<String> {
        if self.failed.first().copied().unwrap_or(true) {
            return Some("the reference target failed".to_owned());
        }
        if self.failed.get(index).copied().unwrap_or(true) {
            return Some("this target failed".to_owned());
        }
        let Some(side) = side else {
            return Some("the statement returned no result on this target".to_owned());
        };
        if reference.columns != side.columns {
            return Some(format!(
                "the columns differ: ({}) on the reference, ({}) here",
                reference.columns.join(", "),
                side.columns.join(", ")
            ));
        }
        if let Err(missing) = &reference.key_positions {
            return Some(missing.clone());
        }
        if reference.duplicate_key {
            return Some("the key columns are not unique on the reference".to_owned());
        }
        if side.duplicate_key {
            return Some("the key columns are not unique on this target".to_owned());
        }
        None
    }
}

/// Counts and samples of what differs between two sides with the same
/// columns.
fn diverge(reference: &Side, side: &Side, max_samples: usize) -> pb::RowDivergence {
    let mut missing: Vec<(u64, &[u8])> = Vec::new();
    let mut extra: Vec<(u64, &[u8])> = Vec::new();
    let mut changed: Vec<(u64, &[u8])> = Vec::new();
    let (mut missing_count, mut extra_count) = (0_u64, 0_u64);
    if reference.keyed.is_empty() && side.keyed.is_empty() {
        for (row, &(order, count)) in &reference.whole {
            let there = side.whole.get(row).map_or(0, |&(_, count)| count);
            if count > there {
                missing_count += count - there;
                missing.push((order, row));
            }
        }
        for (row, &(order, count)) in &side.whole {
            let here = reference.whole.get(row).map_or(0, |&(_, count)| count);
            if count > here {
                extra_count += count - here;
                extra.push((order, row));
            }
        }
    } else {
        for (key, (order, row)) in &reference.keyed {
            match side.keyed.get(key) {
                None => missing.push((*order, key)),
                Some((_, other)) if other != row => changed.push((*order, key)),
                Some(_) => {}
            }
        }
        for (key, (order, _)) in &side.keyed {
            if !reference.keyed.contains_key(key) {
                extra.push((*order, key));
            }
        }
        missing_count = missing.len() as u64;
        extra_count = extra.len() as u64;
    }
    let changed_count = changed.len() as u64;
    pb::RowDivergence {
        target: None,
        not_compared: String::new(),
        agrees: missing_count == 0 && extra_count == 0 && changed_count == 0,
        rows: side.rows,
        missing: missing_count,
        extra: extra_count,
        changed: changed_count,
        missing_samples: samples(missing, max_samples),
        extra_samples: samples(extra, max_samples),
        changed_samples: samples(changed, max_samples),
        incomplete: reference.incomplete || side.incomplete,
    }
}

/// The first `max` differences in result order, decoded back into rows.
fn samples(mut found: Vec<(u64, &[u8])>, max: usize) -> Vec<pb::Row> {
    found.sort_unstable_by_key(|&(order, _)| order);
    found
        .into_iter()
        .take(max)
        .filter_map(|(_, bytes)| pb::Row::decode(bytes).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(value: i64) -> pb::Cell {
        pb::Cell {
            kind: Some(pb::cell::Kind::IntValue(value)),
        }
    }

    fn text(value: &str) -> pb::Cell {
        pb::Cell {
            kind: Some(pb::cell::Kind::TextValue(value.to_owned())),
        }
    }

    fn row(id: i64, name: &str) -> pb::Row {
        pb::Row {
            cells: vec![int(id), text(name)],
        }
    }

    fn columns() -> Vec<Column> {
        ["id", "name"]
            .into_iter()
            .map(|name| Column {
                name: name.to_owned(),
                type_oid: 0,
                type_name: "t".to_owned(),
            })
            .collect()
    }

    fn targets() -> Vec<Target> {
        ["aws", "gcp"]
            .into_iter()
            .map(|cloud| Target {
                cloud: cloud.to_owned(),
                database: "db".to_owned(),
            })
            .collect()
    }

    /// The events of one target that ran one statement returning `rows`.
    fn feed(comparison: &mut RowComparison, target: usize, rows: &[pb::Row], success: bool) {
        let events = [
            TargetEvent::Header {
                statement: 0,
                columns: columns(),
            },
            TargetEvent::Rows {
                statement: 0,
                rows: rows.to_vec(),
            },
            TargetEvent::StatementDone(pgfleet_engine::query::StatementOutcome {
                index: 0,
                command_tag: format!("SELECT {}", rows.len()),
                rows_affected: rows.len() as u64,
                duration: std::time::Duration::ZERO,
                truncated: false,
            }),
            TargetEvent::Finished(Box::new(pgfleet_engine::query::TargetOutcome {
                success,
                error: None,
                duration: std::time::Duration::ZERO,
                failed_statement_index: None,
                outcome_unknown: false,
                replica: String::new(),
                skipped_replicas: Vec::new(),
                rows: rows.len() as u64,
            })),
        ];
        for event in &events {
            comparison.see(target, event);
        }
    }

    fn compare(key: &[&str], reference: &[pb::Row], other: &[pb::Row]) -> pb::RowDivergence {
        let spec = ComparisonSpec::from_wire(
            Some(pb::RowComparisonSpec {
                key_columns: key.iter().map(|k| (*k).to_owned()).collect(),
                max_samples: 0,
            }),
            2,
        )
        .expect("valid")
        .expect("asked");
        let mut comparison = RowComparison::new(spec, 2, 1_000, 1 << 20);
        feed(&mut comparison, 0, reference, true);
        feed(&mut comparison, 1, other, true);
        let mut result = comparison.finish(&targets());
        assert_eq!(result.len(), 1);
        result.remove(0).targets.remove(0)
    }

    #[test]
    fn keyed_rows_are_missing_extra_or_changed() {
        let divergence = compare(
            &["id"],
            &[row(1, "a"), row(2, "b"), row(3, "c")],
            &[row(1, "a"), row(3, "C"), row(4, "d")],
        );
        assert_eq!(
            (divergence.missing, divergence.extra, divergence.changed),
            (1, 1, 1)
        );
        assert!(!divergence.agrees);
        assert_eq!(divergence.missing_samples, vec![pb::Row { cells: vec![int(2)] }]);
        assert_eq!(divergence.extra_samples, vec![pb::Row { cells: vec![int(4)] }]);
        assert_eq!(divergence.changed_samples, vec![pb::Row { cells: vec![int(3)] }]);
    }

    #[test]
    fn whole_rows_compare_as_multisets_in_any_order() {
        let same = compare(
            &[],
            &[row(1, "a"), row(1, "a"), row(2, "b")],
            &[row(2, "b"), row(1, "a"), row(1, "a")],
        );
        assert!(same.agrees, "{same:?}");
        let differ = compare(&[], &[row(1, "a"), row(1, "a")], &[row(1, "a"), row(1, "b")]);
        assert_eq!((differ.missing, differ.extra, differ.changed), (1, 1, 0));
        assert_eq!(differ.missing_samples, vec![row(1, "a")]);
        assert_eq!(differ.extra_samples, vec![row(1, "b")]);
    }

    #[test]
    fn a_duplicate_or_absent_key_is_not_compared() {
        let duplicate = compare(&["name"], &[row(1, "a"), row(2, "a")], &[row(1, "a")]);
        assert_eq!(
            duplicate.not_compared,
            "the key columns are not unique on the reference"
        );
        let absent = compare(&["nope"], &[row(1, "a")], &[row(1, "a")]);
        assert_eq!(
            absent.not_compared,
            "the key column \"nope\" is not in the result"
        );
    }

    #[test]
    fn past_the_row_cap_the_comparison_is_incomplete() {
        let spec = ComparisonSpec::from_wire(Some(pb::RowComparisonSpec::default()), 2)
            .expect("valid")
            .expect("asked");
        let mut comparison = RowComparison::new(spec, 2, 1, 1 << 20);
        for target in 0..2 {
            feed(&mut comparison, target, &[row(1, "a"), row(2, "b")], true);
        }
        let result = comparison.finish(&targets());
        assert!(result[0].targets[0].incomplete);
        assert_eq!(result[0].targets[0].rows, 1);
    }

    #[test]
    fn a_failed_target_is_not_compared() {
        let spec = ComparisonSpec::from_wire(Some(pb::RowComparisonSpec::default()), 2)
            .expect("valid")
            .expect("asked");
        let mut comparison = RowComparison::new(spec, 2, 1_000, 1 << 20);
        feed(&mut comparison, 0, &[row(1, "a")], true);
        feed(&mut comparison, 1, &[row(2, "b")], false);
        let result = comparison.finish(&targets());
        let divergence = &result[0].targets[0];
        assert_eq!(divergence.not_compared, "this target failed");
        assert!(!divergence.agrees);
        assert_eq!(divergence.target.clone().unwrap_or_default().cloud, "gcp");
    }

    #[test]
    fn bad_specs_name_their_field() {
        let one_target = ComparisonSpec::from_wire(Some(pb::RowComparisonSpec::default()), 1);
        assert!(matches!(one_target, Err(RequestError::InvalidArgument { field, .. }) if field == "compare"));
        let twice = ComparisonSpec::from_wire(
            Some(pb::RowComparisonSpec {
                key_columns: vec!["id".to_owned(), "id".to_owned()],
                max_samples: 0,
            }),
            2,
        );
        assert!(
            matches!(twice, Err(RequestError::InvalidArgument { field, .. }) if field == "compare.key_columns[1]")
        );
        let many = ComparisonSpec::from_wire(
            Some(pb::RowComparisonSpec {
                key_columns: Vec::new(),
                max_samples: 5_000,
            }),
            2,
        );
        assert!(
            matches!(many, Err(RequestError::InvalidArgument { field, .. }) if field == "compare.max_samples")
        );
    }
}
