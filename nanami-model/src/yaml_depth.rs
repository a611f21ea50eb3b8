//! The deepest flow nesting (`[`, `{`) of a YAML text, found in one linear pass
//! that splits the text into tokens exactly as libyaml's scanner does.
//!
//! libyaml (under `serde_yaml_ng`) does work proportional to the current flow
//! depth for every token, so deep nesting costs the square of its depth: 100,000
//! nested `[` take minutes. [`check`] refuses the text before the parser sees it.
//!
//! A bracket nests only where libyaml reads it as a token; inside a quoted, plain
//! or block scalar, a comment, a tag or a directive it is text, and a quote opens a
//! quoted scalar only where a token starts (`k: 5"` is the plain scalar `5"`). An
//! approximate scanner can be steered out of step with libyaml (a quote it takes
//! for an opening one hides everything up to the next quote from it, while libyaml
//! goes on nesting), so this one follows libyaml's scanner (`unsafe-libyaml`'s
//! `scanner.rs`) token for token: the same token dispatch, the same rules for where
//! plain and quoted scalars end, the same line breaks (`\r`, `\n`, `\r\n`, NEL, LS,
//! PS) and the same block indentation (the indent stack, simple keys at flow level
//! 0), which decides how far a plain or block scalar runs.
//!
//! Where libyaml reports an error it stops reading, so what this scan does past
//! that point cannot matter; it simply goes on, without ever skipping text that
//! libyaml would tokenize.

/// A candidate simple key at flow level 0 (the only level whose keys move the
/// block indentation).
#[derive(Clone, Copy)]
struct Key {
    index: u64,
    line: u64,
    column: i64,
}

/// libyaml's scanner state, as far as it decides where tokens start and end.
struct Scanner<'a> {
    text: &'a [u8],
    pos: usize,
    /// Characters read so far (a CRLF counts two), as libyaml's `mark.index`.
    index: u64,
    /// 0-based line.
    line: u64,
    /// 0-based column, in characters.
    column: i64,
    flow: usize,
    indent: i64,
    indents: Vec<i64>,
    simple_key_allowed: bool,
    key: Option<Key>,
}

/// Refuses `text` when its flow nesting goes deeper than `limit`, returning the
/// 1-based line where it does.
pub(crate) fn check(text: &str, limit: usize) -> Result<(), usize> {
    let mut s = Scanner {
        text: text.as_bytes(),
        pos: 0,
        index: 0,
        line: 0,
        column: 0,
        flow: 0,
        indent: -1,
        indents: Vec::new(),
        simple_key_allowed: true,
        key: None,
    };
    // The reader drops a byte order mark at the start without counting it.
    if s.text.starts_with(BOM) {
        s.pos = BOM.len();
    }
    s.run(limit)
}

const BOM: &[u8] = "\u{feff}".as_bytes();

fn is_alpha(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn is_uri(c: u8, verbatim: bool) -> bool {
    is_alpha(c)
        || b";/?:@&=+$.%!~*'()".contains(&c)
        || (verbatim && matches!(c, b',' | b'[' | b']'))
}

impl Scanner<'_> {
    fn at(&self, offset: usize) -> u8 {
        self.text.get(self.pos + offset).copied().unwrap_or(0)
    }

    /// The end of the text; a NUL byte counts as one (libyaml's reader refuses
    /// it, so nothing after it is ever tokenized).
    fn is_z(&self) -> bool {
        self.at(0) == 0
    }

    /// Length in bytes of the line break at `offset`, 0 when there is none.
    fn break_len(&self, offset: usize) -> usize {
        match (self.at(offset), self.at(offset + 1), self.at(offset + 2)) {
            (b'\r' | b'\n', _, _) => 1,
            (0xC2, 0x85, _) => 2,
            (0xE2, 0x80, 0xA8 | 0xA9) => 3,
            _ => 0,
        }
    }

    fn is_break(&self, offset: usize) -> bool {
        self.break_len(offset) > 0
    }

    fn is_blank(&self, offset: usize) -> bool {
        matches!(self.at(offset), b' ' | b'\t')
    }

    fn is_breakz(&self, offset: usize) -> bool {
        self.is_break(offset) || self.at(offset) == 0
    }

    fn is_blankz(&self, offset: usize) -> bool {
        self.is_blank(offset) || self.is_breakz(offset)
    }

    /// `---` or `...` at the start of a line, followed by a blank or the end.
    fn at_document_indicator(&self) -> bool {
        self.column == 0
            && (self.text[self.pos..].starts_with(b"---")
                || self.text[self.pos..].starts_with(b"..."))
            && self.is_blankz(3)
    }

    /// Moves past one character (not a line break).
    fn skip(&mut self) {
        let width = match self.at(0) {
            0 => return,
            c if c < 0x80 => 1,
            c if c >= 0xF0 => 4,
            c if c >= 0xE0 => 3,
            _ => 2,
        };
        self.pos = (self.pos + width).min(self.text.len());
        self.index += 1;
        self.column += 1;
    }

    /// Moves past one line break (a CRLF is one).
    fn skip_line(&mut self) {
        if self.at(0) == b'\r' && self.at(1) == b'\n' {
            self.pos += 2;
            self.index += 2;
        } else {
            let len = self.break_len(0);
            if len == 0 {
                return;
            }
            self.pos += len;
            self.index += 1;
        }
        self.column = 0;
        self.line += 1;
    }

    fn skip_to_break(&mut self) {
        while !self.is_breakz(0) {
            self.skip();
        }
    }

    fn roll_indent(&mut self, column: i64) {
        if self.flow == 0 && self.indent < column {
            self.indents.push(self.indent);
            self.indent = column;
        }
    }

    fn unroll_indent(&mut self, column: i64) {
        if self.flow != 0 {
            return;
        }
        while self.indent > column {
            self.indent = self.indents.pop().unwrap_or(-1);
        }
    }

    fn save_simple_key(&mut self) {
        if self.simple_key_allowed && self.flow == 0 {
            self.key = Some(Key {
                index: self.index,
                line: self.line,
                column: self.column,
            });
        }
    }

    fn remove_simple_key(&mut self) {
        if self.flow == 0 {
            self.key = None;
        }
    }

    /// A simple key stays possible on its own line, within 1024 characters.
    fn stale_simple_keys(&mut self) {
        if let Some(k) = self.key {
            if k.line < self.line || k.index + 1024 < self.index {
                self.key = None;
            }
        }
    }

    fn scan_to_next_token(&mut self) {
        loop {
            if self.column == 0 && self.text[self.pos..].starts_with(BOM) {
                self.skip();
            }
            while self.at(0) == b' '
                || ((self.flow != 0 || !self.simple_key_allowed) && self.at(0) == b'\t')
            {
                self.skip();
            }
            if self.at(0) == b'#' {
                self.skip_to_break();
            }
            if !self.is_break(0) {
                break;
            }
            self.skip_line();
            if self.flow == 0 {
                self.simple_key_allowed = true;
            }
        }
    }

    fn run(&mut self, limit: usize) -> Result<(), usize> {
        loop {
            self.scan_to_next_token();
            self.stale_simple_keys();
            self.unroll_indent(self.column);
            if self.is_z() {
                return Ok(());
            }
            let c = self.at(0);
            if self.column == 0 && c == b'%' {
                // A directive runs to the end of its line.
                self.unroll_indent(-1);
                self.remove_simple_key();
                self.simple_key_allowed = false;
                self.skip_to_break();
                continue;
            }
            if self.at_document_indicator() {
                self.unroll_indent(-1);
                self.remove_simple_key();
                self.simple_key_allowed = false;
                for _ in 0..3 {
                    self.skip();
                }
                continue;
            }
            let flow_context = self.flow != 0;
            match c {
                b'[' | b'{' => {
                    self.save_simple_key();
                    self.flow += 1;
                    if self.flow > limit {
                        return Err(usize::try_from(self.line + 1).unwrap_or(usize::MAX));
                    }
                    self.simple_key_allowed = true;
                    self.skip();
                }
                b']' | b'}' => {
                    self.remove_simple_key();
                    self.flow = self.flow.saturating_sub(1);
                    self.simple_key_allowed = false;
                    self.skip();
                }
                b',' => {
                    self.remove_simple_key();
                    self.simple_key_allowed = true;
                    self.skip();
                }
                b'-' if self.is_blankz(1) => {
                    self.roll_indent(self.column);
                    self.remove_simple_key();
                    self.simple_key_allowed = true;
                    self.skip();
                }
                b'?' if flow_context || self.is_blankz(1) => {
                    self.roll_indent(self.column);
                    self.remove_simple_key();
                    self.simple_key_allowed = !flow_context;
                    self.skip();
                }
                b':' if flow_context || self.is_blankz(1) => {
                    if flow_context {
                        self.simple_key_allowed = false;
                    } else if let Some(k) = self.key.take() {
                        self.roll_indent(k.column);
                        self.simple_key_allowed = false;
                    } else {
                        self.roll_indent(self.column);
                        self.simple_key_allowed = true;
                    }
                    self.skip();
                }
                b'*' | b'&' => {
                    self.save_simple_key();
                    self.simple_key_allowed = false;
                    self.skip();
                    while is_alpha(self.at(0)) {
                        self.skip();
                    }
                }
                b'!' => {
                    self.save_simple_key();
                    self.simple_key_allowed = false;
                    self.scan_tag();
                }
                b'|' | b'>' if !flow_context => {
                    self.remove_simple_key();
                    self.simple_key_allowed = true;
                    self.scan_block_scalar();
                }
                b'\'' | b'"' => {
                    self.save_simple_key();
                    self.simple_key_allowed = false;
                    self.scan_quoted(c);
                }
                _ if self.starts_plain_scalar() => {
                    self.save_simple_key();
                    self.simple_key_allowed = false;
                    self.scan_plain_scalar();
                }
                // libyaml: "found character that cannot start any token".
                _ => self.skip(),
            }
        }
    }

    fn starts_plain_scalar(&self) -> bool {
        let c = self.at(0);
        let indicator = b"-?:,[]{}#&*!|>'\"%@`".contains(&c);
        !(self.is_blankz(0) || indicator)
            || (c == b'-' && !self.is_blank(1))
            || (self.flow == 0 && matches!(c, b'?' | b':') && !self.is_blankz(1))
    }

    fn scan_tag(&mut self) {
        self.skip();
        let verbatim = self.at(0) == b'<';
        if verbatim {
            self.skip();
        }
        while is_uri(self.at(0), verbatim) {
            self.skip();
        }
        if verbatim && self.at(0) == b'>' {
            self.skip();
        }
    }

    fn scan_quoted(&mut self, quote: u8) {
        self.skip();
        loop {
            if self.at_document_indicator() || self.is_z() {
                return; // libyaml: an error.
            }
            while !self.is_blankz(0) {
                let c = self.at(0);
                if quote == b'\'' && c == b'\'' && self.at(1) == b'\'' {
                    self.skip();
                    self.skip();
                } else if c == quote {
                    break;
                } else if quote == b'"' && c == b'\\' && self.is_break(1) {
                    self.skip();
                    self.skip_line();
                    break;
                } else if quote == b'"' && c == b'\\' {
                    self.skip();
                    let digits = match self.at(0) {
                        b'x' => 2,
                        b'u' => 4,
                        b'U' => 8,
                        _ => 0,
                    };
                    self.skip();
                    for _ in 0..digits {
                        if !self.at(0).is_ascii_hexdigit() {
                            break;
                        }
                        self.skip();
                    }
                } else {
                    self.skip();
                }
            }
            if self.at(0) == quote {
                self.skip();
                return;
            }
            while self.is_blank(0) || self.is_break(0) {
                if self.is_blank(0) {
                    self.skip();
                } else {
                    self.skip_line();
                }
            }
        }
    }

    fn scan_plain_scalar(&mut self) {
        let indent = self.indent + 1;
        let mut leading_blanks = false;
        loop {
            if self.at_document_indicator() || self.at(0) == b'#' {
                break;
            }
            while !self.is_blankz(0) {
                let c = self.at(0);
                if self.flow != 0 && c == b':' && b",?[]{}".contains(&self.at(1)) {
                    return; // libyaml: "found unexpected ':'", an error.
                }
                if (c == b':' && self.is_blankz(1))
                    || (self.flow != 0 && matches!(c, b',' | b'[' | b']' | b'{' | b'}'))
                {
                    break;
                }
                self.skip();
            }
            if !(self.is_blank(0) || self.is_break(0)) {
                break;
            }
            while self.is_blank(0) || self.is_break(0) {
                if self.is_blank(0) {
                    self.skip();
                } else {
                    self.skip_line();
                    leading_blanks = true;
                }
            }
            if self.flow == 0 && self.column < indent {
                break;
            }
        }
        if leading_blanks {
            self.simple_key_allowed = true;
        }
    }

    fn scan_block_scalar(&mut self) {
        self.skip();
        let mut increment = 0i64;
        let c = self.at(0);
        if c == b'+' || c == b'-' {
            self.skip();
            if self.at(0).is_ascii_digit() {
                increment = i64::from(self.at(0) - b'0');
                self.skip();
            }
        } else if c.is_ascii_digit() {
            increment = i64::from(c - b'0');
            self.skip();
            if matches!(self.at(0), b'+' | b'-') {
                self.skip();
            }
        }
        if increment == 0 && c.is_ascii_digit() {
            return; // libyaml: an indentation indicator of 0 is an error.
        }
        while self.is_blank(0) {
            self.skip();
        }
        if self.at(0) == b'#' {
            self.skip_to_break();
        }
        if !self.is_breakz(0) {
            return; // libyaml: an error.
        }
        self.skip_line();
        let mut indent = if increment > 0 {
            if self.indent >= 0 {
                self.indent + increment
            } else {
                increment
            }
        } else {
            0
        };
        if !self.block_scalar_breaks(&mut indent) {
            return;
        }
        while self.column == indent && !self.is_z() {
            self.skip_to_break();
            if self.is_z() {
                return;
            }
            self.skip_line();
            if !self.block_scalar_breaks(&mut indent) {
                return;
            }
        }
    }

    /// Empty lines and indentation before a block scalar's next line; settles the
    /// indentation on the first line when no indicator gave it. `false` where
    /// libyaml reports an error.
    fn block_scalar_breaks(&mut self, indent: &mut i64) -> bool {
        let mut max_indent = 0;
        loop {
            while (*indent == 0 || self.column < *indent) && self.at(0) == b' ' {
                self.skip();
            }
            max_indent = max_indent.max(self.column);
            if (*indent == 0 || self.column < *indent) && self.at(0) == b'\t' {
                return false;
            }
            if !self.is_break(0) {
                break;
            }
            self.skip_line();
        }
        if *indent == 0 {
            *indent = max_indent.max(self.indent + 1).max(1);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn deep(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    /// Refused at depth 5 (limit 4), with `prefix` before the brackets.
    #[track_caller]
    fn refused(prefix: &str) {
        let text = format!("{prefix}{}", deep(5));
        assert!(check(&text, 4).is_err(), "{text:?} was not refused");
    }

    #[track_caller]
    fn accepted(text: &str) {
        assert_eq!(check(text, 4), Ok(()), "{text:?} was refused");
    }

    #[test]
    fn quotes_inside_plain_scalars_are_text() {
        // The #23 bypass: a quote in a plain scalar opens nothing.
        refused("k: 5\"\n");
        refused("k: -'\n");
        refused("k: a'b\"c\n");
        refused("- x\"\n- ");
        refused("k: 5\" # a comment \"\n");
        // In flow context a plain scalar ends at `,`, and a quote after the comma
        // does open a quoted scalar, which ends where libyaml ends it.
        refused("[a\"b, \"c]\"], ");
    }

    #[test]
    fn quoted_scalars_hide_brackets_and_closers_alike() {
        accepted("k: \"[[[[[[[[\"");
        accepted("k: '[[[[[[[['");
        accepted("[[[\"]]]]]]]]\"]]]");
        // Closers inside a quoted scalar do not close: depth 3 + 2 = 5.
        refused("[[[\"]]]\" ");
        refused("[[['it''s ]]]' ");
        refused("[[[\"\\\"]]]\" ");
        // A quote that only looks closed: `''` is an escaped quote.
        accepted("k: 'a'' [[[[[[ '");
        refused("k: 'a''' \n");
        // Escaped line breaks and escapes in double quotes.
        accepted("k: \"a\\\n [[[[[[\"");
        accepted("k: \"\\x5b\\u005B [[[[[[\"");
    }

    #[test]
    fn comments_end_at_every_kind_of_line_break() {
        accepted("# [[[[[[[[\n");
        refused("# comment\n");
        refused("# comment\r");
        refused("# comment\u{85}");
        refused("# comment\u{2028}");
        refused("# comment\u{2029}");
        refused("k: v # \"\n");
        // `#` glued to a plain scalar is part of it, not a comment.
        refused("k: a#\"\n");
        // `#` right after a flow indicator starts a comment.
        accepted("[]#[[[[[[\n");
    }

    #[test]
    fn block_scalars_end_where_libyaml_ends_them() {
        accepted("k: |\n  [[[[[[\n  \"\n");
        refused("k: |\n  \"\nx: ");
        refused("k: >\n  '\n\nx: ");
        refused("- |\n  \"\n- ");
        refused("a:\n  b: |\n    \"\n  c: ");
        // An indentation indicator fixes the content's indentation.
        refused("k: |1\n  \"\nx: ");
        accepted("k: |1\n  [[[[[[\n");
        // In flow context `|` is not a block scalar: here it is inside a plain one.
        refused("[a|\n\"b, c], ");
    }

    #[test]
    fn plain_scalars_continue_on_more_indented_lines_only() {
        // A continuation line is text, quotes and brackets included.
        accepted("k: a\n  [[[[[[\n");
        refused("k: a\n  \"\nx: ");
        // A line back at the key's indentation ends it.
        refused("k: a\nx: \"b\"\ny: ");
    }

    #[test]
    fn tags_anchors_and_directives_are_single_tokens() {
        refused("k: !a'b\nx: ");
        refused("k: !<tag:a,b[]>\nx: ");
        refused("k: &a-b_c 5'\nx: ");
        refused("%TAG ! tag:a'\n--- ");
        accepted("%TAG ! tag:[[[[[[\n---\n");
    }

    #[test]
    fn the_limit_is_exact() {
        assert_eq!(check(&deep(4), 4), Ok(()));
        assert_eq!(check(&deep(5), 4), Err(1));
        assert_eq!(check(&format!("a: 1\n\n{}", deep(5)), 4), Err(3));
        assert_eq!(check(&"[]".repeat(10_000), 1), Ok(()));
    }

    fn value_depth(v: &serde_yaml_ng::Value) -> usize {
        match v {
            serde_yaml_ng::Value::Sequence(items) => {
                1 + items.iter().map(value_depth).max().unwrap_or(0)
            }
            serde_yaml_ng::Value::Mapping(m) => {
                1 + m
                    .iter()
                    .map(|(k, v)| value_depth(k).max(value_depth(v)))
                    .max()
                    .unwrap_or(0)
            }
            serde_yaml_ng::Value::Tagged(t) => value_depth(&t.value),
            serde_yaml_ng::Value::Null
            | serde_yaml_ng::Value::Bool(_)
            | serde_yaml_ng::Value::Number(_)
            | serde_yaml_ng::Value::String(_) => 0,
        }
    }

    const PIECES: &[&str] = &[
        "a", "5", "k: ", ": ", ":", "- ", "-", "\"", "'", "''", "\\", "\\\"", "#", " ", "  ", "\t",
        "\n", "\r\n", "\r", "\u{85}", "\u{2028}", "|", ">", "|2", "|-", "!", "!<", "!a!", "&x",
        "*x", "?", "? ", ",", "[", "]", "{", "}", "%", "%TAG ", "---", "...", "é", "\u{feff}",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever comes before them, 100 nested brackets that libyaml reads as
        /// nesting are refused: when the scan lets a text through, libyaml does
        /// not build 100 levels from it.
        #[test]
        fn no_prefix_hides_nesting_from_the_scan(
            pieces in proptest::collection::vec(proptest::sample::select(PIECES), 0..24),
            joint in proptest::sample::select(&["\n", " ", "\nk: ", "\n- ", ", ", ""][..]),
        ) {
            let text = format!("{}{joint}{}", pieces.concat(), deep(100));
            if check(&text, 64).is_ok() {
                if let Ok(v) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) {
                    prop_assert!(value_depth(&v) < 100, "{text:?} hides its nesting");
                }
            }
        }
    }
}
