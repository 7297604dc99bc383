//! Statement ranges from the scanner's tokens alone, for texts that do not
//! parse: semicolons outside parentheses, and outside `BEGIN … END` /
//! `CASE … END` in `CREATE [OR REPLACE] FUNCTION|PROCEDURE` (psql's rule).
//! Nothing here searches for an error position, so the error search
//! ([`crate::cursor`]) can use it without recursing.

use std::ops::Range;

use pg_query::protobuf::Token as Kind;

use crate::engine::{self, Token};

pub(crate) fn significant(tokens: Vec<Token>) -> Vec<Token> {
    tokens
        .into_iter()
        .filter(|t| !matches!(t.kind, Kind::SqlComment | Kind::CComment))
        .collect()
}

/// Statement ranges of a text the scanner reads whole; `None` when it
/// cannot. For the error search, which must not recurse into
/// [`crate::split`]'s `token_ranges`: that locates a scan error through the error search.
pub(crate) fn scanned_ranges(sql: &str) -> Option<Vec<Range<usize>>> {
    engine::scan(sql)
        .ok()
        .map(|tokens| split_tokens(&significant(tokens)).0)
}

/// Splits significant tokens into statements; also says whether the last
/// statement was still open (not terminated by a semicolon).
pub(crate) fn split_tokens(tokens: &[Token]) -> (Vec<Range<usize>>, bool) {
    let mut ranges = Vec::new();
    let mut current: Option<Range<usize>> = None;
    let mut head: Vec<Kind> = Vec::with_capacity(4);
    let mut paren_depth = 0usize;
    let mut block_depth = 0usize;
    for token in tokens {
        if token.kind == Kind::Ascii59 && paren_depth == 0 && block_depth == 0 {
            ranges.extend(current.take());
            continue;
        }
        match current.as_mut() {
            Some(range) => range.end = token.end,
            None => {
                current = Some(token.start..token.end);
                head.clear();
                paren_depth = 0;
                block_depth = 0;
            }
        }
        let is_first = head.is_empty();
        if head.len() < 4 {
            head.push(token.kind);
        }
        match token.kind {
            Kind::Ascii40 => paren_depth += 1,
            Kind::Ascii41 => paren_depth = paren_depth.saturating_sub(1),
            Kind::BeginP | Kind::Case if !is_first && paren_depth == 0 && defines_routine(&head) => {
                block_depth += 1
            }
            Kind::EndP if block_depth > 0 => block_depth -= 1,
            _ => {}
        }
    }
    let open = current.is_some();
    ranges.extend(current);
    (ranges, open)
}

/// `CREATE [OR REPLACE] FUNCTION|PROCEDURE`: the statements whose bodies may be
/// `BEGIN ATOMIC … END` blocks holding semicolons.
fn defines_routine(head: &[Kind]) -> bool {
    let routine = |k: Option<&Kind>| matches!(k, Some(Kind::Function | Kind::Procedure));
    head.first() == Some(&Kind::Create)
        && (routine(head.get(1))
            || (head.get(1) == Some(&Kind::Or)
                && head.get(2) == Some(&Kind::Replace)
                && routine(head.get(3))))
}
