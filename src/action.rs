//! The three forms of an action, and the checks that make a user fragment safe to embed.
//!
//! 1. `SET <assignments>`: an UPDATE of the batch's rows that match the scope.
//! 2. `DELETE`: a DELETE of those rows.
//! 3. Any other single statement, reading the batch's rows from a relation named `drip_batch`.

use crate::error::{DripError, DripResult};
use crate::placeholders::{self, LexError, Scan};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionKind {
    /// `SET ...` (the text starts with the SET keyword).
    Set,
    /// A bare `DELETE`.
    Delete,
    /// A full statement; `with_at` is the byte offset just past a leading `WITH [RECURSIVE]`,
    /// where our `drip_batch` CTE is spliced in.
    Statement { with_at: Option<usize> },
}

impl ActionKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ActionKind::Set => "set",
            ActionKind::Delete => "delete",
            ActionKind::Statement { .. } => "statement",
        }
    }
}

/// A lexed, single-statement fragment with any trailing `;` removed.
#[derive(Debug, Clone)]
pub struct Fragment {
    pub text: String,
    pub scan: Scan,
}

/// Lex a fragment, refuse positional parameters, unterminated tokens and more than one
/// statement, and drop a trailing semicolon.
pub fn fragment(what: &'static str, text: &str) -> DripResult<Fragment> {
    let scan = placeholders::scan(text).map_err(|e| match e {
        LexError::PositionalParameter { text, .. } => DripError::PositionalParameter { what, text },
        other => DripError::BadSql {
            what,
            message: other.to_string(),
            sqlstate: pgrx::PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
        },
    })?;
    if scan.semicolons.iter().any(|&s| s < scan.significant_end) {
        return Err(DripError::MultipleStatements { what });
    }
    let text = text[..scan.significant_end].to_string();
    // Re-scan the trimmed text so offsets match it exactly.
    let scan = placeholders::scan(&text).map_err(|e| DripError::Internal(e.to_string()))?;
    if scan.words.is_empty() && !scan.has_other_tokens {
        return Err(DripError::BadSql {
            what,
            message: "it is empty".into(),
            sqlstate: pgrx::PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
        });
    }
    Ok(Fragment { text, scan })
}

/// Decide which form an action has.
pub fn classify(action: &Fragment) -> DripResult<ActionKind> {
    let words = &action.scan.words;
    let first = match words.first() {
        Some(w) if w.start == first_significant(&action.text) => w.text.to_ascii_lowercase(),
        _ => {
            return Err(DripError::BadAction(
                "action must start with a keyword".into(),
            ))
        }
    };
    match first.as_str() {
        "set" => Ok(ActionKind::Set),
        "delete" if words.len() == 1 && !action.scan.has_other_tokens => Ok(ActionKind::Delete),
        "with" => {
            let mut end = words[0].end;
            if let Some(w) = words.get(1) {
                if w.text.eq_ignore_ascii_case("recursive") {
                    end = w.end;
                }
            }
            Ok(ActionKind::Statement { with_at: Some(end) })
        }
        "select" | "insert" | "update" | "delete" | "values" | "merge" => {
            Ok(ActionKind::Statement { with_at: None })
        }
        other => Err(DripError::BadAction(format!(
            "action cannot start with \"{other}\""
        ))),
    }
}

/// Offset of the first character that is not whitespace or a comment.
fn first_significant(text: &str) -> usize {
    let mut rest = text;
    loop {
        let trimmed = rest.trim_start();
        if let Some(after) = trimmed.strip_prefix("--") {
            rest = after.split_once('\n').map(|(_, r)| r).unwrap_or("");
        } else if trimmed.starts_with("/*") {
            // Nested comments: count levels.
            let bytes = trimmed.as_bytes();
            let (mut i, mut level) = (2, 1);
            while i + 1 < bytes.len() && level > 0 {
                if &bytes[i..i + 2] == b"/*" {
                    level += 1;
                    i += 2;
                } else if &bytes[i..i + 2] == b"*/" {
                    level -= 1;
                    i += 2;
                } else {
                    i += 1;
                }
            }
            rest = &trimmed[i.min(trimmed.len())..];
        } else {
            return text.len() - trimmed.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(s: &str) -> DripResult<ActionKind> {
        classify(&fragment("action", s)?)
    }

    #[test]
    fn classifies_the_three_forms() {
        assert_eq!(kind("SET email = lower(email)").unwrap(), ActionKind::Set);
        assert_eq!(kind("  set n = n + 1;").unwrap(), ActionKind::Set);
        assert_eq!(kind("DELETE").unwrap(), ActionKind::Delete);
        assert_eq!(kind("delete ;").unwrap(), ActionKind::Delete);
        assert_eq!(
            kind("INSERT INTO audit SELECT id FROM drip_batch").unwrap(),
            ActionKind::Statement { with_at: None }
        );
        assert_eq!(
            kind("DELETE FROM t USING drip_batch b WHERE t.id = b.id").unwrap(),
            ActionKind::Statement { with_at: None }
        );
        assert_eq!(
            kind("/* c */ WITH x AS (SELECT 1) SELECT * FROM x, drip_batch").unwrap(),
            ActionKind::Statement { with_at: Some(12) }
        );
        assert_eq!(
            kind("with recursive x AS (SELECT 1) SELECT 1").unwrap(),
            ActionKind::Statement { with_at: Some(14) }
        );
    }

    #[test]
    fn refuses_bad_actions() {
        assert!(matches!(
            kind("SET a = 1; DROP TABLE t"),
            Err(DripError::MultipleStatements { .. })
        ));
        assert!(matches!(kind("VACUUM t"), Err(DripError::BadAction(_))));
        assert!(matches!(kind("(SELECT 1)"), Err(DripError::BadAction(_))));
        assert!(matches!(kind(""), Err(DripError::BadSql { .. })));
        assert!(matches!(
            kind("SET a = $1"),
            Err(DripError::PositionalParameter { .. })
        ));
        assert!(matches!(kind("SET a = 'x"), Err(DripError::BadSql { .. })));
    }

    #[test]
    fn trailing_semicolon_and_comment_are_trimmed() {
        let f = fragment("action", "SET a = 1 ; -- done\n").unwrap();
        assert_eq!(f.text, "SET a = 1");
    }
}
