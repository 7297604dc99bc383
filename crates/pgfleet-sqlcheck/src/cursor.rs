//! Where PostgreSQL's error cursor pointed, recovered from its message
//! (`… at or near "x"`, `… at end of input`): the candidates where the quoted
//! token occurs, narrowed to whole tokens and to the first statement that
//! fails on its own.

use crate::engine;
use crate::scan;

const AT_END_OF_INPUT: &str = " at end of input";
const AT_OR_NEAR: &str = " at or near \"";

/// The byte offset PostgreSQL's error cursor pointed at, recovered from `message`.
pub(crate) fn cursor_offset(sql: &str, message: &str) -> Option<usize> {
    if message.ends_with(AT_END_OF_INPUT) {
        return Some(sql.len());
    }
    let near_start = message.find(AT_OR_NEAR)? + AT_OR_NEAR.len();
    let near_end = message.len().checked_sub(1)?;
    if !message.ends_with('"') || near_start >= near_end {
        return None;
    }
    let near = message.get(near_start..near_end)?;
    let mut candidates = occurrences(sql, near);
    if candidates.len() > 1
        && let Ok(tokens) = engine::scan(sql)
    {
        let at_token: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|c| tokens.binary_search_by_key(c, |t| t.start).is_ok())
            .collect();
        // PostgreSQL quotes the whole token: prefer candidates where a token
        // is exactly `near` (so `SELEC` is not found inside `SELECT`).
        // Tokens are sorted by start: a binary search per candidate keeps
        // this linear-logarithmic (a 400,000-token text has as many
        // candidates as tokens; a scan per candidate was quadratic).
        let whole_token: Vec<usize> = at_token
            .iter()
            .copied()
            .filter(|c| {
                tokens
                    .binary_search_by_key(c, |t| t.start)
                    .is_ok_and(|i| tokens[i].end == *c + near.len())
            })
            .collect();
        if !whole_token.is_empty() {
            candidates = whole_token;
        } else if !at_token.is_empty() {
            candidates = at_token;
        }
    }
    // The cursor is in the first statement that fails on its own (a prefix
    // of a statement that parses fails only at end of input): search there
    // only, parsing from that statement's start, so a long text costs one
    // pass over its statements plus a few parses of one statement.
    let mut from = 0;
    if candidates.len() > 1
        && let Some(ranges) = scan::scanned_ranges(sql)
        && let Some(failing) = engine::first_failing(sql, &ranges).and_then(|i| ranges.get(i))
    {
        let inside: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|c| failing.contains(c))
            .collect();
        if !inside.is_empty() {
            candidates = inside;
            from = failing.start;
        }
    }
    match candidates.as_slice() {
        [] => None,
        [only] => Some(*only),
        several => {
            let fails_here = |&candidate: &usize| {
                let prefix = sql.get(from..candidate + near.len()).unwrap_or(sql);
                engine::parse_error_message(prefix).as_deref() == Some(message)
            };
            let first = several.partition_point(|c| !fails_here(c));
            several.get(first).or(several.first()).copied()
        }
    }
}

/// Every byte offset where `needle` starts in `haystack`, overlaps included.
fn occurrences(haystack: &str, needle: &str) -> Vec<usize> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = haystack.get(from..).and_then(|rest| rest.find(needle)) {
        found.push(from + at);
        from += at + haystack[from + at..].chars().next().map_or(1, char::len_utf8);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_is_the_whole_token_not_a_prefix_of_another() {
        let sql = "SELECT 1;\nSELEC 2";
        assert_eq!(
            super::cursor_offset(sql, "syntax error at or near \"SELEC\""),
            Some(10)
        );
    }

    #[test]
    fn occurrences_overlap_and_respect_characters() {
        assert_eq!(occurrences("''''", "''"), [0, 1, 2]);
        assert_eq!(occurrences("é x é x", "x"), [3, 8]);
        assert!(occurrences("abc", "z").is_empty());
    }
}
