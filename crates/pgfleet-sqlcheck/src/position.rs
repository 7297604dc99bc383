//! Byte offsets turned into the line and column a person reads in an editor.

use serde::Serialize;

/// A place in the SQL text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct SourcePosition {
    /// Byte offset into the text (always on a UTF-8 character boundary).
    pub offset: usize,
    /// 1-based line; `\n`, `\r\n` and a lone `\r` each end a line.
    pub line: usize,
    /// 1-based column counted in Unicode characters (a tab counts as one).
    pub column: usize,
}

impl SourcePosition {
    /// The position of `offset` in `text` (moved back to a character
    /// boundary, clamped to the end). For one offset; many offsets of one
    /// text are cheaper through a line index.
    pub fn locate(text: &str, offset: usize) -> Self {
        LineIndex::new(text).position(offset)
    }
}

/// Line starts of one text, so many offsets can be converted cheaply.
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset where each line starts; the first is always 0.
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let bytes = text.as_bytes();
        let mut line_starts = vec![0];
        for (i, &b) in bytes.iter().enumerate() {
            let ends_line = b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n'));
            if ends_line {
                line_starts.push(i + 1);
            }
        }
        Self { text, line_starts }
    }

    /// The position of `offset`, moved back to a character boundary and clamped
    /// to the end of the text if it points inside a character or past the end.
    pub(crate) fn position(&self, offset: usize) -> SourcePosition {
        let offset = floor_char_boundary(self.text, offset);
        let line_index = self
            .line_starts
            .partition_point(|&start| start <= offset)
            .saturating_sub(1);
        let line_start = self.line_starts.get(line_index).copied().unwrap_or(0);
        let column = self.text.get(line_start..offset).map_or(0, |s| s.chars().count()) + 1;
        SourcePosition {
            offset,
            line: line_index + 1,
            column,
        }
    }
}

/// The largest character boundary at or before `offset` (clamped to the text).
pub(crate) fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// The smallest character boundary at or after `offset` (clamped to the text).
pub(crate) fn ceil_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset += 1;
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns() {
        let cases: &[(&str, &str, usize, (usize, usize))] = &[
            ("start of text", "SELECT 1", 0, (1, 1)),
            ("same line", "SELECT 1", 7, (1, 8)),
            ("second line", "SELECT\n1", 7, (2, 1)),
            ("crlf counts once", "a\r\nb", 3, (2, 1)),
            ("lone cr ends a line", "a\rb", 2, (2, 1)),
            ("non-ASCII counted in characters", "é ü x", 6, (1, 5)),
            ("end of text", "ab\n", 3, (2, 1)),
            ("inside a character moves back", "é", 1, (1, 1)),
            ("past the end is clamped", "ab", 10, (1, 3)),
        ];
        for (name, text, offset, (line, column)) in cases {
            let p = LineIndex::new(text).position(*offset);
            assert_eq!((p.line, p.column), (*line, *column), "case {name}");
        }
    }
}
