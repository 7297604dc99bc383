//! Option lists (`(ANALYZE, FORMAT json)`, `WITH (…)`) read the way
//! PostgreSQL reads them, in one place.
//!
//! PostgreSQL applies options in order, so the last of two `ANALYZE`s wins;
//! a check that reads the first one can be told the opposite of what runs.
//! Rather than imitate each command's rule for repeats, a repeated option is
//! refused, and so is a name the command does not know (PostgreSQL would
//! refuse it when it runs). Boolean values follow `defGetBoolean`: no value,
//! `true`/`on`/`1` are true, `false`/`off`/`0` false, anything else refused.

use crate::tree::{Node, Tree};

/// An option list this crate will not guess about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OptionError {
    pub(crate) message: String,
    /// Byte offset of the option in the whole text, when the parser gave one.
    pub(crate) offset: Option<usize>,
}

/// The options of one statement, each name once.
pub(crate) struct Options<'t> {
    command: &'static str,
    items: Vec<(String, &'t Node)>,
}

impl<'t> Options<'t> {
    /// Reads `list`, refusing repeated names and, when `known` is given,
    /// names outside it. `command` names the statement in messages.
    pub(crate) fn read(
        list: &'t [Tree],
        command: &'static str,
        known: Option<&[&str]>,
    ) -> Result<Self, OptionError> {
        let mut items: Vec<(String, &'t Node)> = Vec::new();
        for option in list
            .iter()
            .filter_map(Tree::as_node)
            .filter(|o| o.kind == "DefElem")
        {
            let name = option.text("defname").unwrap_or_default().to_lowercase();
            let offset = offset_of(option);
            if known.is_some_and(|known| !known.contains(&name.as_str())) {
                return Err(OptionError {
                    message: format!(
                        "unknown {command} option {}; known options: {}",
                        name.to_uppercase(),
                        known.unwrap_or_default().join(", ").to_uppercase()
                    ),
                    offset,
                });
            }
            if items.iter().any(|(seen, _)| *seen == name) {
                return Err(OptionError {
                    message: format!(
                        "{command} option {} is given more than once; PostgreSQL would apply the last one, so pgfleet refuses to guess: give it once",
                        name.to_uppercase()
                    ),
                    offset,
                });
            }
            items.push((name, option));
        }
        Ok(Self { command, items })
    }

    /// Whether `name` is present, whatever its value.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.items.iter().any(|(seen, _)| seen == name)
    }

    /// The boolean value of `name`, `None` when absent.
    pub(crate) fn boolean(&self, name: &str) -> Result<Option<bool>, OptionError> {
        let Some((_, option)) = self.items.iter().find(|(seen, _)| seen == name) else {
            return Ok(None);
        };
        def_get_boolean(option).map(Some).ok_or_else(|| OptionError {
            message: format!(
                "{} option {} requires a Boolean value (true, false, on, off, 1 or 0)",
                self.command,
                name.to_uppercase()
            ),
            offset: offset_of(option),
        })
    }

    /// Reads every option of `names` that is present as a boolean, so an
    /// invalid value is refused here rather than when it runs.
    pub(crate) fn check_booleans(&self, names: &[&str]) -> Result<(), OptionError> {
        names.iter().try_for_each(|name| self.boolean(name).map(drop))
    }
}

fn offset_of(option: &Node) -> Option<usize> {
    match option.field("location") {
        Tree::Int(at) => usize::try_from(*at).ok(),
        _ => None,
    }
}

/// PostgreSQL's `defGetBoolean`: `None` where PostgreSQL raises an error.
pub(crate) fn def_get_boolean(option: &Node) -> Option<bool> {
    let Some(arg) = option.field("arg").as_node() else {
        return Some(true);
    };
    match arg.kind {
        "Boolean" => Some(arg.bool("boolval")),
        "Integer" => match arg.int("ival") {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        },
        "String" => match arg.text("sval").unwrap_or_default().to_lowercase().as_str() {
            "true" | "on" => Some(true),
            "false" | "off" => Some(false),
            _ => None,
        },
        // Floats, type names, lists: defGetString gives their text, which is
        // never one of the words above.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    /// One row per EXPLAIN option list: what `analyze` reads as, or the
    /// refusal's words.
    #[test]
    fn explain_options_are_read_as_postgresql_reads_them() {
        let cases: &[(&str, Result<Option<bool>, &str>)] = &[
            ("EXPLAIN SELECT 1", Ok(None)),
            ("EXPLAIN ANALYZE SELECT 1", Ok(Some(true))),
            ("EXPLAIN (ANALYZE) SELECT 1", Ok(Some(true))),
            ("EXPLAIN (ANALYSE) SELECT 1", Ok(Some(true))),
            ("EXPLAIN (ANALYZE true) SELECT 1", Ok(Some(true))),
            ("EXPLAIN (ANALYZE on) SELECT 1", Ok(Some(true))),
            ("EXPLAIN (ANALYZE 1) SELECT 1", Ok(Some(true))),
            ("EXPLAIN (ANALYZE 'TRUE') SELECT 1", Ok(Some(true))),
            ("EXPLAIN (ANALYZE false) SELECT 1", Ok(Some(false))),
            ("EXPLAIN (ANALYZE OFF) SELECT 1", Ok(Some(false))),
            ("EXPLAIN (ANALYZE 0) SELECT 1", Ok(Some(false))),
            ("EXPLAIN (ANALYZE yes) SELECT 1", Err("requires a Boolean value")),
            ("EXPLAIN (ANALYZE 2) SELECT 1", Err("requires a Boolean value")),
            ("EXPLAIN (ANALYZE 1.0) SELECT 1", Err("requires a Boolean value")),
            (
                "EXPLAIN (ANALYZE false, ANALYZE) SELECT 1",
                Err("ANALYZE is given more than once"),
            ),
            (
                "EXPLAIN (ANALYZE, ANALYSE false) SELECT 1",
                Err("ANALYZE is given more than once"),
            ),
            (
                "EXPLAIN (COSTS off, COSTS on) SELECT 1",
                Err("COSTS is given more than once"),
            ),
            (
                "EXPLAIN (ANALYZE, SPEED) SELECT 1",
                Err("unknown EXPLAIN option SPEED"),
            ),
            (
                "EXPLAIN (VERBOSE maybe) SELECT 1",
                Err("VERBOSE requires a Boolean value"),
            ),
            ("EXPLAIN (FORMAT json, ANALYZE false) SELECT 1", Ok(Some(false))),
        ];
        for (sql, expected) in cases {
            let analysis = crate::analyze(sql);
            match (expected, analysis) {
                (Ok(analyze), Ok(analysis)) => {
                    let statement = &analysis.statements[0];
                    let ran = statement
                        .notes
                        .iter()
                        .any(|n| n.starts_with("EXPLAIN ANALYZE runs"));
                    assert_eq!(ran, *analyze == Some(true), "{sql}: {:?}", statement.notes);
                }
                (Err(words), Err(error)) => {
                    assert!(error.message().contains(words), "{sql}: {error}");
                    assert!(error.position().is_some(), "{sql}: no position");
                }
                (expected, got) => panic!("{sql}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn a_refused_option_is_located_at_the_repeat() {
        let error = crate::analyze("SELECT 1;\nEXPLAIN (ANALYZE false, ANALYZE) DELETE FROM t")
            .expect_err("a repeated option is refused");
        let at = error.position().expect("a position");
        assert_eq!((at.line, at.column), (2, 25), "{error}");
    }

    #[test]
    fn other_option_lists_refuse_repeats_too() {
        for sql in [
            "VACUUM (FULL false, FULL) t",
            "VACUUM (FULL, SPEED) t",
            "REINDEX (CONCURRENTLY false, CONCURRENTLY) TABLE t",
            "COPY t TO STDOUT (FORMAT csv, FORMAT text)",
        ] {
            assert!(crate::analyze(sql).is_err(), "{sql} was accepted");
        }
        let full = crate::analyze("VACUUM (FULL 'on') t").expect("parses");
        assert!(
            full.statements[0]
                .findings
                .iter()
                .any(|f| f.code == crate::DangerCode::VacuumFull)
        );
    }
}
