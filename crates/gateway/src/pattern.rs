//! ALB wildcard patterns: `*` matches any run of characters (also none), `?` exactly one
//! character, everything else itself. There is no escape: a pattern cannot match a literal `*`
//! or `?` only. This module does no I/O and cannot fail once a pattern is compiled.

/// The longest pattern accepted, in characters (ALB's limit).
pub const MAX_PATTERN_LEN: usize = 128;

/// How a pattern compares letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// `A` and `a` differ (path patterns).
    Sensitive,
    /// ASCII letters match either case (host, header and query patterns).
    Insensitive,
}

/// A checked wildcard pattern.
#[derive(Clone, Debug)]
pub struct Pattern {
    /// The pattern as written, for error messages and debugging.
    source: String,
    /// The pattern as matched: lower-cased when the comparison ignores case.
    bytes: Vec<u8>,
    /// Whether the input is lower-cased before comparison.
    case: Case,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the pattern is empty")]
    Empty,
    #[error("the pattern is {0} characters long; at most {MAX_PATTERN_LEN} are allowed")]
    TooLong(usize),
    #[error("the pattern contains {0:?}, which cannot occur in this part of a request")]
    BadChar(char),
    #[error("a path pattern must start with `/`, `*` or `?`")]
    NotAPath,
}

/// What characters a pattern may contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The path of a URL: visible ASCII, starting with `/` or a wildcard.
    Path,
    /// A host name: letters, digits, `-`, `.` and wildcards.
    Host,
    /// A header or query value: any characters but control characters.
    Value,
}

impl Pattern {
    /// Checks `source` for a condition of `kind` and prepares it for matching.
    pub fn new(source: &str, kind: Kind, case: Case) -> Result<Pattern, PatternError> {
        let chars = source.chars().count();
        if chars == 0 {
            return Err(PatternError::Empty);
        }
        if chars > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong(chars));
        }
        let allowed = |c: char| match kind {
            Kind::Path => c.is_ascii_graphic(),
            Kind::Host => c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*' | '?'),
            Kind::Value => !c.is_control(),
        };
        if let Some(bad) = source.chars().find(|&c| !allowed(c)) {
            return Err(PatternError::BadChar(bad));
        }
        if kind == Kind::Path && !source.starts_with(['/', '*', '?']) {
            return Err(PatternError::NotAPath);
        }
        let bytes = match case {
            Case::Sensitive => source.as_bytes().to_vec(),
            Case::Insensitive => source.to_ascii_lowercase().into_bytes(),
        };
        Ok(Pattern {
            source: source.to_owned(),
            bytes,
            case,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `input` matches the pattern.
    ///
    /// The classic greedy matcher with one backtracking point (the last `*`): linear in the
    /// input for patterns with at most one `*`, and at most `O(input × pattern)` otherwise, so
    /// a hostile input cannot make it slow.
    pub fn matches(&self, input: &str) -> bool {
        let input = input.as_bytes();
        let pat = &self.bytes[..];
        let fold = self.case == Case::Insensitive;
        let (mut i, mut p) = (0usize, 0usize);
        // Where the last `*` was in the pattern, and where in the input it started to match.
        let mut star: Option<(usize, usize)> = None;
        while i < input.len() {
            if p < pat.len() {
                match pat[p] {
                    b'*' => {
                        star = Some((p, i));
                        p += 1;
                        continue;
                    }
                    b'?' => {
                        i += utf8_len(input[i]);
                        p += 1;
                        continue;
                    }
                    c => {
                        let got = if fold {
                            input[i].to_ascii_lowercase()
                        } else {
                            input[i]
                        };
                        if got == c {
                            i += 1;
                            p += 1;
                            continue;
                        }
                    }
                }
            }
            // A mismatch: let the last `*` take one more character, or fail without one.
            match star {
                Some((sp, si)) => {
                    let next = si + utf8_len(input[si]);
                    star = Some((sp, next));
                    i = next;
                    p = sp + 1;
                }
                None => return false,
            }
        }
        pat[p..].iter().all(|&c| c == b'*')
    }
}

/// The length of the UTF-8 sequence that starts with `first` (1 for a stray continuation
/// byte, so the matcher always moves on).
fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, case: Case, input: &str, expect: bool) {
        let p = Pattern::new(pattern, Kind::Value, case).expect("test patterns are valid");
        assert_eq!(
            p.matches(input),
            expect,
            "pattern {pattern:?} against {input:?}"
        );
    }

    #[test]
    fn literals_and_wildcards() {
        use Case::*;
        check("/api", Sensitive, "/api", true);
        check("/api", Sensitive, "/api/", false);
        check("/api", Sensitive, "/API", false);
        check("/api*", Sensitive, "/api", true);
        check("/api*", Sensitive, "/api/v1/x", true);
        check("/api/*", Sensitive, "/api", false);
        check("*", Sensitive, "", true);
        check("*", Sensitive, "anything at all", true);
        check("/v?/x", Sensitive, "/v1/x", true);
        check("/v?/x", Sensitive, "/v/x", false);
        check("/v?/x", Sensitive, "/v12/x", false);
        check("*.example.com", Insensitive, "API.Example.COM", true);
        check("*.example.com", Insensitive, "example.com", false);
        check("a*b*c", Sensitive, "aXXbYYbZZc", true);
        check("a*b*c", Sensitive, "aXXbYYbZZ", false);
        check("*a", Sensitive, "bbbbba", true);
        check("??", Sensitive, "é!", true);
        check("?", Sensitive, "é", true);
        check("**", Sensitive, "", true);
    }

    #[test]
    fn refuses_bad_patterns() {
        assert_eq!(
            Pattern::new("", Kind::Path, Case::Sensitive).unwrap_err(),
            PatternError::Empty
        );
        assert_eq!(
            Pattern::new("api/*", Kind::Path, Case::Sensitive).unwrap_err(),
            PatternError::NotAPath
        );
        assert_eq!(
            Pattern::new("/a b", Kind::Path, Case::Sensitive).unwrap_err(),
            PatternError::BadChar(' ')
        );
        assert_eq!(
            Pattern::new("exa_mple.com", Kind::Host, Case::Insensitive).unwrap_err(),
            PatternError::BadChar('_')
        );
        assert_eq!(
            Pattern::new("a\nb", Kind::Value, Case::Insensitive).unwrap_err(),
            PatternError::BadChar('\n')
        );
        let long = format!("/{}", "a".repeat(MAX_PATTERN_LEN));
        assert!(matches!(
            Pattern::new(&long, Kind::Path, Case::Sensitive),
            Err(PatternError::TooLong(_))
        ));
    }

    #[test]
    fn hostile_inputs_stay_fast_and_do_not_panic() {
        let p = Pattern::new("*a*a*a*a*a*a*b", Kind::Value, Case::Sensitive).unwrap();
        let input = "a".repeat(100_000);
        let start = std::time::Instant::now();
        assert!(!p.matches(&input));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        // Non-ASCII, stray continuation bytes never split a character badly.
        let q = Pattern::new("?*?", Kind::Value, Case::Insensitive).unwrap();
        for s in ["", "é", "éé", "\u{10FFFF}x", "日本語"] {
            let _ = q.matches(s);
        }
    }
}
