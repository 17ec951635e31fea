//! The one way a regex from configuration is compiled, with limits on what it may cost: used by
//! `rustmesh-api`'s validation (and so the operator's status conditions), by the proxy
//! configuration's own validation ([`crate::ProxyConfig::validate`]) and by the proxy's route
//! compilation.
//!
//! RE2, which Envoy uses, refuses a regex whose "program size" is over a limit (Envoy's
//! `re2.max_program_size.error_level`, default 100; Istio raises it to 32768 instructions). The
//! `regex` crate has the same rule in bytes: [`::regex::RegexBuilder::size_limit`] bounds the
//! compiled program and `dfa_size_limit` the lazy DFA's cache. Its Perl classes are Unicode
//! (`\w` is every letter of every script, where RE2's `\w` is `[0-9A-Za-z_]`), so `\w{60}`
//! compiles to megabytes: 300 such routes took a sidecar from 21 MB to 1 GB. Here:
//!
//! - one pattern may compile to at most [`PATTERN_SIZE_LIMIT`] bytes and its lazy DFA may cache
//!   at most [`DFA_SIZE_LIMIT`] bytes ([`compile`]);
//! - all the patterns of one configuration (one VirtualService in the operator, one
//!   `ProxyConfig` in the proxy) may compile to at most [`CONFIG_SIZE_BUDGET`] bytes together
//!   ([`RegexBudget`]), so many allowed patterns cannot add up to the same memory.
//!
//! The size counted is the heap of the compiled regex (`regex_automata::meta::Regex::memory_usage`,
//! the engine under the `regex` crate: forward and reverse programs, one-pass DFA; the lazy
//! DFA's caches, bounded by [`DFA_SIZE_LIMIT`], come on top while matching). For scale: the
//! regexes of Istio's documentation and samples compile to 3-8 KB; one Unicode `\w` to 57 KB,
//! `\w{8}` to 450 KB, `\w{60}` to 3.4 MB (what each of those 300 routes cost the sidecar);
//! `[0-9A-Za-z_]{60}`, what RE2 means by `\w{60}`, to a few KB. So the per-pattern limit
//! (512 KiB) takes every documented regex with a wide margin and refuses the bomb, and the
//! budget (16 MiB) holds thousands of ordinary regex routes.

use ::regex::{Regex, RegexBuilder};

/// The most one pattern may compile to, in bytes: the heap of the compiled regex (its forward and
/// reverse programs and one-pass DFA), also the `regex` crate's `size_limit` for each program.
pub const PATTERN_SIZE_LIMIT: usize = 512 * 1024;

/// The most one pattern's lazy DFA may cache, in bytes (the `regex` crate's `dfa_size_limit`;
/// the crate's default is 2 MiB). A pattern that needs more falls back to slower engines.
pub const DFA_SIZE_LIMIT: usize = 256 * 1024;

/// The most all the patterns of one configuration may compile to together, in bytes.
pub const CONFIG_SIZE_BUDGET: usize = 16 * 1024 * 1024;

/// How much of the value a pattern must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// The whole value (Envoy's `safe_regex` matchers): compiled as `^(?:re)$`.
    Whole,
    /// Anywhere in the value (rewrites' patterns).
    Search,
}

/// Why a pattern was refused. The caller names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegexError {
    /// Not RE2 syntax the `regex` crate accepts.
    #[error("invalid regex {pattern}: {reason}")]
    Syntax { pattern: String, reason: String },
    /// Compiles to more than [`PATTERN_SIZE_LIMIT`].
    #[error(
        "regex {pattern} compiles to more than {limit} bytes, the limit for one pattern \
         (Unicode classes are large: \\w, \\d, \\s and . match every script; \
         an ASCII class such as [0-9A-Za-z_] is far smaller)"
    )]
    TooBig { pattern: String, limit: usize },
    /// Fits alone, but the configuration's patterns together exceed the budget.
    #[error(
        "regex {pattern} ({size} bytes compiled) brings the regexes of this {scope} to \
         {total} bytes, over the budget of {budget} bytes for all of them together"
    )]
    OverBudget {
        pattern: String,
        size: usize,
        total: usize,
        budget: usize,
        scope: &'static str,
    },
}

/// A compiled pattern and the bytes it counts against a [`RegexBudget`].
#[derive(Clone, Debug)]
pub struct Compiled {
    pub regex: Regex,
    pub size: usize,
}

/// Compiles `pattern` within [`PATTERN_SIZE_LIMIT`] and [`DFA_SIZE_LIMIT`].
pub fn compile(pattern: &str, anchor: Anchor) -> Result<Compiled, RegexError> {
    compile_within(pattern, anchor, PATTERN_SIZE_LIMIT)
}

/// [`compile`] with another per-pattern limit (tests, and callers with a tighter budget).
pub fn compile_within(pattern: &str, anchor: Anchor, limit: usize) -> Result<Compiled, RegexError> {
    let full = match anchor {
        Anchor::Whole => format!("^(?:{pattern})$"),
        Anchor::Search => pattern.to_string(),
    };
    let regex = RegexBuilder::new(&full)
        .size_limit(limit)
        .dfa_size_limit(DFA_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            ::regex::Error::CompiledTooBig(limit) => RegexError::TooBig {
                pattern: shown(pattern),
                limit,
            },
            other => RegexError::Syntax {
                pattern: shown(pattern),
                reason: last_line(&other.to_string()),
            },
        })?;
    // The same regex built by the engine underneath the `regex` crate (same limits), whose heap
    // is measured: the `regex` crate does not report it.
    let config = regex_automata::meta::Config::new()
        .nfa_size_limit(Some(limit))
        .onepass_size_limit(Some(limit))
        .hybrid_cache_capacity(DFA_SIZE_LIMIT);
    let too_big = || RegexError::TooBig {
        pattern: shown(pattern),
        limit,
    };
    let size = regex_automata::meta::Regex::builder()
        .configure(config)
        .build(&full)
        .map_err(|_| too_big())?
        .memory_usage();
    if size > limit {
        return Err(too_big());
    }
    Ok(Compiled { regex, size })
}

/// The patterns of one configuration, counted against [`CONFIG_SIZE_BUDGET`].
#[derive(Clone, Debug)]
pub struct RegexBudget {
    used: usize,
    budget: usize,
    scope: &'static str,
}

impl RegexBudget {
    /// A budget of [`CONFIG_SIZE_BUDGET`] for the patterns of one `scope` ("VirtualService",
    /// "proxy configuration"), named in the error.
    pub fn new(scope: &'static str) -> Self {
        Self::with_budget(scope, CONFIG_SIZE_BUDGET)
    }

    pub fn with_budget(scope: &'static str, budget: usize) -> Self {
        RegexBudget {
            used: 0,
            budget,
            scope,
        }
    }

    /// Compiles `pattern` ([`compile`]) and counts it; refused when the total would pass the
    /// budget (the pattern is then not counted, so later findings stay about their own size).
    pub fn compile(&mut self, pattern: &str, anchor: Anchor) -> Result<Regex, RegexError> {
        let c = compile(pattern, anchor)?;
        let total = self.used.saturating_add(c.size);
        if total > self.budget {
            return Err(RegexError::OverBudget {
                pattern: shown(pattern),
                size: c.size,
                total,
                budget: self.budget,
                scope: self.scope,
            });
        }
        self.used = total;
        Ok(c.regex)
    }

    /// Bytes counted so far.
    pub fn used(&self) -> usize {
        self.used
    }
}

/// The pattern quoted for a message, cut at 100 characters (a refused pattern can be huge).
fn shown(pattern: &str) -> String {
    const MAX: usize = 100;
    match pattern.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}... ({} bytes)", &pattern[..cut], pattern.len()),
        None => format!("{pattern:?}"),
    }
}

/// The last non-empty line of the `regex` crate's multi-line syntax error (the reason).
fn last_line(msg: &str) -> String {
    msg.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(msg)
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regexes from Istio's documentation, samples and tests, and the kinds users write.
    pub(crate) const ISTIO_EXAMPLES: &[&str] = &[
        "^/api/v[0-9]+/.*",
        r".*\.jpg",
        r"^(.*?;)?(user=jason)(;.*)?$",
        "^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$",
        r"^/v[0-9]+/.*",
        "/productpage|/login|/logout",
        "^/static/.*",
        r"^/api/v1/products/\d+$",
        r"^/users/\w+/profile$",
        r".*\.(css|js|png|jpg|gif|svg)$",
        "(?i)^bearer .+",
        r"^[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}$",
        "^(GET|POST|PUT|DELETE)$",
        r"^/reviews/\d+(/.*)?$",
        r"\w{8}",
        "^/path/to/(.*)$",
    ];

    #[test]
    fn istio_examples_compile_within_the_limits() {
        for re in ISTIO_EXAMPLES {
            for anchor in [Anchor::Whole, Anchor::Search] {
                let c = compile(re, anchor).unwrap_or_else(|e| panic!("{re}: {e}"));
                assert!(c.size < PATTERN_SIZE_LIMIT, "{re}: {} bytes", c.size);
            }
        }
    }

    #[test]
    fn a_unicode_class_repeated_sixty_times_is_too_big() {
        let err = compile(r"\w{60}", Anchor::Whole).unwrap_err();
        assert!(
            matches!(&err, RegexError::TooBig { limit, .. } if *limit == PATTERN_SIZE_LIMIT),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains(r#"regex "\\w{60}" compiles to more than"#),
            "{err}"
        );
        // The ASCII spelling of the same intent is small.
        assert!(compile("[0-9A-Za-z_]{60}", Anchor::Whole).is_ok());
    }

    #[test]
    fn syntax_errors_keep_their_one_line_reason() {
        let err = compile("((", Anchor::Search).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid regex "((": error: unclosed group"#,
        );
    }

    #[test]
    fn many_allowed_patterns_cannot_add_up_past_the_budget() {
        let one = compile("[a-z]{100}", Anchor::Whole).unwrap().size;
        let mut budget = RegexBudget::with_budget("test", one * 3);
        for _ in 0..3 {
            budget.compile("[a-z]{100}", Anchor::Whole).unwrap();
        }
        let err = budget.compile("[a-z]{100}", Anchor::Whole).unwrap_err();
        assert!(
            matches!(err, RegexError::OverBudget { total, budget, .. } if total == one * 4 && budget == one * 3),
            "{err:?}"
        );
        assert_eq!(budget.used(), one * 3, "a refused pattern is not counted");
    }

    #[test]
    fn a_huge_pattern_is_cut_in_the_message() {
        let pattern = "a".repeat(100_000) + "((";
        let msg = compile(&pattern, Anchor::Search).unwrap_err().to_string();
        assert!(msg.len() < 400, "{msg}");
        assert!(msg.contains("(100002 bytes)"), "{msg}");
    }
}
