//! The `$name` placeholder lexer.
//!
//! User SQL (a scope or an action) may refer to declared parameters as `$name`. We never paste
//! values into SQL: instead we find every `$name` the way the Postgres scanner would see the
//! text, and rewrite it to a positional `$n` that is bound as an SPI argument. A `$name` inside a
//! string literal, a quoted identifier, a comment or a dollar-quoted body is not a parameter.
//!
//! The lexer also reports what the rest of the engine needs to embed a fragment safely: top-level
//! semicolons, unbalanced parentheses, unterminated literals and the bare words (for telling a
//! `SET ...` action from `DELETE` and from a full statement).

use std::collections::BTreeMap;

/// A `$name` occurrence: byte range in the source and the name without the `$`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub name: String,
    pub start: usize,
    pub end: usize,
}

/// A bare word (keyword or unquoted identifier) outside literals and comments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub start: usize,
    pub end: usize,
    /// Parenthesis depth at which the word appears (0 = top level).
    pub depth: u32,
}

/// What the lexer found in a fragment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    pub placeholders: Vec<Placeholder>,
    pub words: Vec<Word>,
    /// Byte offsets of `;` at parenthesis depth 0.
    pub semicolons: Vec<usize>,
    /// True when anything other than words, whitespace, comments and `;` appears.
    pub has_other_tokens: bool,
    /// Byte offset just past the last significant (non-space, non-comment, non-`;`) token.
    pub significant_end: usize,
}

/// Why a fragment cannot be embedded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LexError {
    #[error("unterminated quoted string starting at offset {0}")]
    UnterminatedString(usize),
    #[error("unterminated quoted identifier starting at offset {0}")]
    UnterminatedIdentifier(usize),
    #[error("unterminated /* comment starting at offset {0}")]
    UnterminatedComment(usize),
    #[error("unterminated dollar-quoted string starting at offset {0}")]
    UnterminatedDollarQuote(usize),
    #[error("positional parameter {text} at offset {pos} is not allowed")]
    PositionalParameter { text: String, pos: usize },
    #[error("unbalanced parentheses")]
    UnbalancedParentheses,
}

/// Postgres treats bytes >= 0x80 as identifier characters; so do we (per char, which is the same
/// thing for UTF-8 input).
fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

fn is_ident_cont(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == '$'
}

/// Characters allowed in a `$name` or a dollar-quote tag (no `$`).
fn is_tag_cont(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// Scan `sql` the way the Postgres lexer would (with `standard_conforming_strings = on`).
pub fn scan(sql: &str) -> Result<Scan, LexError> {
    let chars: Vec<(usize, char)> = sql.char_indices().collect();
    let n = chars.len();
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let offset = |i: usize| chars.get(i).map(|&(o, _)| o).unwrap_or(sql.len());

    let mut out = Scan::default();
    let mut depth: i64 = 0;
    let mut i = 0;
    while i < n {
        let c = chars[i].1;
        let start = offset(i);
        match c {
            c if c.is_whitespace() => {
                i += 1;
            }
            '-' if at(i + 1) == Some('-') => {
                while i < n && chars[i].1 != '\n' {
                    i += 1;
                }
            }
            '/' if at(i + 1) == Some('*') => {
                // Comments nest in Postgres.
                let mut level = 1;
                i += 2;
                while level > 0 {
                    match (at(i), at(i + 1)) {
                        (None, _) => return Err(LexError::UnterminatedComment(start)),
                        (Some('/'), Some('*')) => {
                            level += 1;
                            i += 2;
                        }
                        (Some('*'), Some('/')) => {
                            level -= 1;
                            i += 2;
                        }
                        _ => i += 1,
                    }
                }
            }
            '\'' => {
                // E'...' strings take backslash escapes; the prefix was consumed as a word.
                let escapes = i > 0
                    && matches!(at(i - 1), Some('e') | Some('E'))
                    && (i < 2 || !at(i - 2).is_some_and(is_ident_cont));
                i += 1;
                loop {
                    match at(i) {
                        None => return Err(LexError::UnterminatedString(start)),
                        Some('\\') if escapes => i += 2,
                        Some('\'') if at(i + 1) == Some('\'') => i += 2,
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                out.has_other_tokens = true;
                out.significant_end = offset(i);
            }
            '"' => {
                i += 1;
                loop {
                    match at(i) {
                        None => return Err(LexError::UnterminatedIdentifier(start)),
                        Some('"') if at(i + 1) == Some('"') => i += 2,
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                out.has_other_tokens = true;
                out.significant_end = offset(i);
            }
            '$' => {
                i = scan_dollar(sql, &chars, i, &mut out)?;
                out.significant_end = offset(i);
            }
            c if is_ident_start(c) => {
                let mut j = i + 1;
                while j < n && is_ident_cont(chars[j].1) {
                    j += 1;
                }
                // A word directly followed by a quote is a string prefix (E'', B'', X'', U&'').
                out.words.push(Word {
                    text: sql[start..offset(j)].to_string(),
                    start,
                    end: offset(j),
                    depth: depth.max(0) as u32,
                });
                i = j;
                out.significant_end = offset(i);
            }
            c if c.is_ascii_digit() => {
                // Numbers (including 1.5e3) never contain `$`; consume digits and identifier
                // characters so `1e5` is not taken apart.
                while i < n && (is_ident_cont(chars[i].1) || chars[i].1 == '.') {
                    i += 1;
                }
                out.has_other_tokens = true;
                out.significant_end = offset(i);
            }
            ';' => {
                if depth == 0 {
                    out.semicolons.push(start);
                }
                i += 1;
            }
            '(' | ')' => {
                depth += if c == '(' { 1 } else { -1 };
                if depth < 0 {
                    return Err(LexError::UnbalancedParentheses);
                }
                out.has_other_tokens = true;
                i += 1;
                out.significant_end = offset(i);
            }
            _ => {
                out.has_other_tokens = true;
                i += 1;
                out.significant_end = offset(i);
            }
        }
    }
    if depth != 0 {
        return Err(LexError::UnbalancedParentheses);
    }
    Ok(out)
}

/// Handle a `$` at `chars[i]`: a positional parameter (refused), a dollar quote, or `$name`.
fn scan_dollar(
    sql: &str,
    chars: &[(usize, char)],
    i: usize,
    out: &mut Scan,
) -> Result<usize, LexError> {
    let n = chars.len();
    let offset = |k: usize| chars.get(k).map(|&(o, _)| o).unwrap_or(sql.len());
    let start = offset(i);
    out.has_other_tokens = true;
    match chars.get(i + 1).map(|&(_, c)| c) {
        Some(d) if d.is_ascii_digit() => {
            let mut j = i + 1;
            while j < n && chars[j].1.is_ascii_digit() {
                j += 1;
            }
            Err(LexError::PositionalParameter {
                text: sql[start..offset(j)].to_string(),
                pos: start,
            })
        }
        Some('$') => close_dollar_quote(sql, chars, i, i + 2, "$$"),
        Some(c) if is_ident_start(c) => {
            let mut j = i + 1;
            while j < n && is_tag_cont(chars[j].1) {
                j += 1;
            }
            if j < n && chars[j].1 == '$' {
                // `$tag$` opens a dollar-quoted string.
                let tag = &sql[start..offset(j + 1)];
                close_dollar_quote(sql, chars, i, j + 1, tag)
            } else {
                out.placeholders.push(Placeholder {
                    name: sql[offset(i + 1)..offset(j)].to_string(),
                    start,
                    end: offset(j),
                });
                Ok(j)
            }
        }
        // A lone `$` is left for Postgres to reject.
        _ => Ok(i + 1),
    }
}

fn close_dollar_quote(
    sql: &str,
    chars: &[(usize, char)],
    open: usize,
    body: usize,
    tag: &str,
) -> Result<usize, LexError> {
    let body_off = chars.get(body).map(|&(o, _)| o).unwrap_or(sql.len());
    match sql[body_off..].find(tag) {
        Some(rel) => {
            let end_off = body_off + rel + tag.len();
            Ok(chars
                .iter()
                .position(|&(o, _)| o >= end_off)
                .unwrap_or(chars.len()))
        }
        None => Err(LexError::UnterminatedDollarQuote(chars[open].0)),
    }
}

/// Replace each `$name` in `sql` by `$n`, where `n` comes from `positions`.
/// Returns the unknown names (in order of appearance, deduplicated) as an error.
pub fn rewrite(
    sql: &str,
    scan: &Scan,
    positions: &BTreeMap<String, usize>,
) -> Result<String, Vec<String>> {
    let mut unknown: Vec<String> = Vec::new();
    let mut out = String::with_capacity(sql.len());
    let mut last = 0;
    for p in &scan.placeholders {
        match positions.get(&p.name) {
            Some(n) => {
                out.push_str(&sql[last..p.start]);
                out.push('$');
                out.push_str(&n.to_string());
                last = p.end;
            }
            None => {
                if !unknown.contains(&p.name) {
                    unknown.push(p.name.clone());
                }
            }
        }
    }
    if !unknown.is_empty() {
        return Err(unknown);
    }
    out.push_str(&sql[last..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sql: &str) -> Vec<String> {
        scan(sql)
            .unwrap()
            .placeholders
            .into_iter()
            .map(|p| p.name)
            .collect()
    }

    #[test]
    fn finds_plain_placeholders() {
        assert_eq!(names("age = $age AND d = $domain"), vec!["age", "domain"]);
        assert_eq!(names("x = $a::int"), vec!["a"]);
        assert_eq!(names("($age IS NULL OR age = $age)"), vec!["age", "age"]);
    }

    #[test]
    fn ignores_literals_comments_and_quotes() {
        assert!(names("note = '$age'").is_empty());
        assert!(names("note = 'it''s $age'").is_empty());
        assert!(names("note = E'\\' $age'").is_empty());
        assert!(names("\"$age\" = 1").is_empty());
        assert!(names("x = 1 -- $age\n").is_empty());
        assert!(names("x = 1 /* $age /* nested $b */ still $c */").is_empty());
        assert!(names("x = $$ $age $$").is_empty());
        assert!(names("x = $q$ $age $$ $q$").is_empty());
        assert_eq!(names("x = $q$ $age $q$ AND y = $b"), vec!["b"]);
    }

    #[test]
    fn dollar_inside_identifier_is_not_a_parameter() {
        assert!(names("abc$def = 1").is_empty());
    }

    #[test]
    fn unicode_is_handled() {
        assert_eq!(names("naïve = $名前 AND 'é$x' = 'y'"), vec!["名前"]);
    }

    #[test]
    fn refuses_positional_parameters() {
        assert!(matches!(
            scan("age = $1"),
            Err(LexError::PositionalParameter { .. })
        ));
        // ...but not inside a literal.
        assert!(scan("note = '$1'").is_ok());
    }

    #[test]
    fn reports_unterminated_tokens() {
        assert!(matches!(
            scan("x = 'abc"),
            Err(LexError::UnterminatedString(4))
        ));
        assert!(matches!(
            scan("x = \"abc"),
            Err(LexError::UnterminatedIdentifier(_))
        ));
        assert!(matches!(
            scan("x /* abc"),
            Err(LexError::UnterminatedComment(_))
        ));
        assert!(matches!(
            scan("x = $a$ abc"),
            Err(LexError::UnterminatedDollarQuote(_))
        ));
        assert!(matches!(
            scan("(x = 1"),
            Err(LexError::UnbalancedParentheses)
        ));
        assert!(matches!(
            scan("x = 1) OR (true"),
            Err(LexError::UnbalancedParentheses)
        ));
    }

    #[test]
    fn records_top_level_semicolons_and_words() {
        let s = scan("SET a = 1; DROP TABLE t").unwrap();
        assert_eq!(s.semicolons, vec![9]);
        let words: Vec<_> = s.words.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(words, vec!["SET", "a", "DROP", "TABLE", "t"]);
        let s = scan("DELETE ; ").unwrap();
        assert!(!s.has_other_tokens);
        assert_eq!(s.significant_end, 6);
    }

    #[test]
    fn rewrites_to_positions() {
        let sql = "age = $age AND '$age' <> $dom::text";
        let s = scan(sql).unwrap();
        let pos = BTreeMap::from([("age".to_string(), 1), ("dom".to_string(), 2)]);
        assert_eq!(
            rewrite(sql, &s, &pos).unwrap(),
            "age = $1 AND '$age' <> $2::text"
        );
        let pos = BTreeMap::from([("age".to_string(), 1)]);
        assert_eq!(rewrite(sql, &s, &pos).unwrap_err(), vec!["dom".to_string()]);
    }

    /// Property test (no extra crate): random SQL built from every token kind the lexer must
    /// understand, with the placeholders we put in known; the lexer must find exactly those.
    mod property {
        use super::*;

        struct Rng(u64);
        impl Rng {
            fn next(&mut self) -> u64 {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0
            }
            fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
                &items[(self.next() % items.len() as u64) as usize]
            }
        }

        const NAMES: &[&str] = &["age", "a", "_x1", "since", "dom", "名前", "naïve", "tag"];
        const NOISE: &[&str] = &[
            "$age", "$1", "$$", "$tag$", "$", "--", "/*", "*/", "'", "''", "\"", "\\", ";",
            "::int", "é", "😀", "\n", "$a$", "E'", "(", ")",
        ];

        /// Random text for inside a literal or comment (never closing it).
        fn filler(r: &mut Rng, forbid: &[&str]) -> String {
            let mut out = String::new();
            for _ in 0..(r.next() % 5) {
                let piece = *r.pick(NOISE);
                out.push_str(piece);
                out.push(' ');
            }
            for f in forbid {
                out = out.replace(f, " ");
            }
            out
        }

        /// One fragment and the placeholder names it holds.
        fn piece(r: &mut Rng, depth: u32) -> (String, Vec<String>) {
            match r.next() % 14 {
                0 | 1 => {
                    let n = r.pick(NAMES).to_string();
                    (format!("${n}"), vec![n])
                }
                2 => (
                    r.pick(&["age", "email", "x_1", "naïve", "名前", "abc$def"])
                        .to_string(),
                    vec![],
                ),
                3 => (
                    r.pick(&["=", "<>", "+", "::int", "::text[]", ",", "1.5e3", "42"])
                        .to_string(),
                    vec![],
                ),
                4 => (format!("'{}'", filler(r, &["'", "\\"])), vec![]),
                5 => (format!("E'{}\\' x'", filler(r, &["'", "\\"])), vec![]),
                6 => (
                    format!("\"{}\"", filler(r, &["\""]).replace('"', "")),
                    vec![],
                ),
                7 => (
                    format!("-- {}\n", filler(r, &["\n"]).replace('\n', " ")),
                    vec![],
                ),
                8 => {
                    let inner = filler(r, &["/*", "*/"]).replace("*/", "").replace("/*", "");
                    (
                        format!("/* {inner} /* nested {inner} */ {inner} */"),
                        vec![],
                    )
                }
                9 => (format!("$$ {} $$", filler(r, &["$$"])), vec![]),
                10 => {
                    let body = filler(r, &["$q$"]).replace("$q$", "");
                    (format!("$q$ {body} $$ $t$ {body} $q$"), vec![])
                }
                11 if depth < 3 => {
                    let (inner, names) = fragment(r, depth + 1);
                    (format!("({inner})"), names)
                }
                12 => (";".to_string(), vec![]),
                _ => ("x".to_string(), vec![]),
            }
        }

        fn fragment(r: &mut Rng, depth: u32) -> (String, Vec<String>) {
            let mut sql = String::new();
            let mut names = Vec::new();
            for _ in 0..(1 + r.next() % 8) {
                let (p, n) = piece(r, depth);
                sql.push_str(&p);
                sql.push(' ');
                names.extend(n);
            }
            (sql, names)
        }

        #[test]
        fn finds_exactly_the_placeholders_that_were_put_in() {
            let mut r = Rng(0x9E37_79B9_7F4A_7C15);
            for case in 0..20_000 {
                let (sql, expected) = fragment(&mut r, 0);
                let scan = scan(&sql).unwrap_or_else(|e| panic!("case {case}: {e} in {sql:?}"));
                let found: Vec<String> = scan.placeholders.iter().map(|p| p.name.clone()).collect();
                assert_eq!(found, expected, "case {case}: {sql:?}");
                for p in &scan.placeholders {
                    assert_eq!(&sql[p.start..p.end], format!("${}", p.name));
                }
                // Rewriting replaces exactly those occurrences and nothing else.
                let positions: BTreeMap<String, usize> = NAMES
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.to_string(), i + 1))
                    .collect();
                let rewritten = rewrite(&sql, &scan, &positions).unwrap();
                let mut manual = sql.clone();
                for p in scan.placeholders.iter().rev() {
                    manual.replace_range(p.start..p.end, &format!("${}", positions[&p.name]));
                }
                assert_eq!(rewritten, manual);
            }
        }

        #[test]
        fn never_panics_on_arbitrary_text() {
            let mut r = Rng(12345);
            let alphabet: Vec<char> = "$'\"\\-/*();:eE_a1 \né😀名".chars().collect();
            for _ in 0..50_000 {
                let len = (r.next() % 24) as usize;
                let text: String = (0..len).map(|_| *r.pick(&alphabet)).collect();
                // Ok or a LexError; offsets always on char boundaries.
                if let Ok(s) = scan(&text) {
                    for p in &s.placeholders {
                        assert!(text.is_char_boundary(p.start) && text.is_char_boundary(p.end));
                    }
                    for w in &s.words {
                        assert!(text.is_char_boundary(w.start) && text.is_char_boundary(w.end));
                    }
                    assert!(text.is_char_boundary(s.significant_end));
                }
            }
        }
    }
}
