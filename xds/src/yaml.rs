//! Reading YAML (or JSON) that someone else wrote, with bounds on what it may expand to.
//!
//! YAML lets a node be named once (an anchor, `&a`) and reused any number of times (an alias,
//! `*a`). Each use is a full copy once deserialised, so a few kilobytes of aliases of aliases (a
//! "billion laughs" document) expand to billions of nodes. Every reader of user YAML in the
//! project (the webhook's `proxy.istio.io/config` annotation and settings file, `rustmesh-api`'s
//! Istio documents) goes through [`from_str`] or [`documents`], which refuse, before building
//! anything, input that is:
//!
//! - longer than [`Limits::max_bytes`] (checked before parsing);
//! - nested deeper than [`Limits::max_depth`] sequences and mappings;
//! - more than [`Limits::max_nodes`] nodes once every alias is expanded;
//! - more than [`Limits::max_text_bytes`] bytes of scalar text once every alias is expanded.
//!
//! How: the parser is `serde_norway`'s own. A first pass deserialises each document into a
//! visitor that builds nothing and counts every node it is shown (`serde_norway` replays an
//! anchor's nodes at each alias, so the count is the expanded size), stopping at the first limit;
//! only a document that stays within every limit is deserialised again into a
//! [`serde_norway::Value`]. The work of a refused document is therefore bounded by the limits,
//! not by what it would expand to. (`serde_norway`'s own guards, a fixed depth of 128 and alias
//! jumps up to 100 times the events of a document, still allow millions of expanded nodes from a
//! few kilobytes.)
//!
//! Errors name the limit and its value; the caller names the input (annotation, file, document).

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use std::fmt;

/// What a YAML input may expand to. Every document of a stream shares one budget of nodes and
/// text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Length of the input text, checked before parsing.
    pub max_bytes: usize,
    /// Sequences and mappings nested in one another (a top-level mapping is depth 1).
    pub max_depth: usize,
    /// Nodes (scalars, sequences, mappings, keys included) with every alias expanded.
    pub max_nodes: usize,
    /// Bytes of scalar text (keys included) with every alias expanded.
    pub max_text_bytes: usize,
}

impl Limits {
    /// The `proxy.istio.io/config` annotation. Kubernetes allows 256 KiB for all of a pod's
    /// annotations; an Istio `ProxyConfig` is a few hundred bytes. A document without aliases that
    /// fits in `max_bytes` never reaches the node or text limit.
    pub const ANNOTATION: Limits = Limits {
        max_bytes: 64 * 1024,
        max_depth: 32,
        max_nodes: 64 * 1024,
        max_text_bytes: 256 * 1024,
    };

    /// A settings file (the webhook's ConfigMap: at most 1 MiB in Kubernetes).
    pub const SETTINGS: Limits = Limits {
        max_bytes: 1024 * 1024,
        max_depth: 32,
        max_nodes: 1024 * 1024,
        max_text_bytes: 4 * 1024 * 1024,
    };

    /// A stream of Kubernetes manifests (`istio-validate`, `rustmesh_api::load_all`): the limits
    /// apply to the whole stream. A VirtualService is a few hundred nodes, so a million nodes is
    /// thousands of objects; the text may expand to twice the stream's length.
    pub const MANIFESTS: Limits = Limits {
        max_bytes: 16 * 1024 * 1024,
        max_depth: 64,
        max_nodes: 1024 * 1024,
        max_text_bytes: 32 * 1024 * 1024,
    };
}

impl Limits {
    /// The length check alone, for a caller that reads the text in another way first.
    pub fn check_len(&self, text: &str) -> Result<(), YamlError> {
        if text.len() > self.max_bytes {
            return Err(YamlError::TooLarge {
                len: text.len(),
                max: self.max_bytes,
            });
        }
        Ok(())
    }
}

/// Why a YAML input was refused.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("{len} bytes is over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("nested deeper than the limit of {max} levels")]
    TooDeep { max: usize, line: Option<usize> },
    #[error(
        "expands to more than the limit of {max} nodes (each alias counts its anchor's nodes again)"
    )]
    TooManyNodes { max: usize, line: Option<usize> },
    #[error(
        "expands to more than the limit of {max} bytes of text (each alias counts its anchor's \
         text again)"
    )]
    TooMuchText { max: usize, line: Option<usize> },
    /// Not YAML, or YAML `serde_norway` refuses (its message names the position).
    #[error(transparent)]
    Syntax(#[from] serde_norway::Error),
}

impl YamlError {
    /// The 1-based line where the input went wrong, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            YamlError::TooLarge { .. } => None,
            YamlError::TooDeep { line, .. }
            | YamlError::TooManyNodes { line, .. }
            | YamlError::TooMuchText { line, .. } => *line,
            YamlError::Syntax(e) => e.location().map(|l| l.line()),
        }
    }

    /// Whether a limit (rather than the syntax) refused the input.
    pub fn is_limit(&self) -> bool {
        !matches!(self, YamlError::Syntax(_))
    }
}

/// Parses one document (an empty input is [`serde_norway::Value::Null`]). More than one document
/// is an error, as with `serde_norway::from_str`.
pub fn from_str(text: &str, limits: &Limits) -> Result<serde_norway::Value, YamlError> {
    limits.check_len(text)?;
    let mut budget = Budget::new(limits);
    budget.check(serde_norway::Deserializer::from_str(text))?;
    Ok(serde_norway::from_str(text)?)
}

/// Every document of a YAML stream, in order, under one budget. The iterator ends after the first
/// error: once a stream is refused, what follows is not trusted.
pub fn documents<'a>(text: &'a str, limits: &Limits) -> Documents<'a> {
    let fits = limits.check_len(text);
    let walk = || {
        fits.is_ok()
            .then(|| serde_norway::Deserializer::from_str(text))
    };
    Documents {
        budget: Budget::new(limits),
        counted: walk(),
        values: walk(),
        pending: fits.err(),
    }
}

/// The iterator of [`documents`]. Two `serde_norway` iterators walk the stream in step: the
/// first counts a document, the second builds it.
pub struct Documents<'a> {
    budget: Budget,
    counted: Option<serde_norway::Deserializer<'a>>,
    values: Option<serde_norway::Deserializer<'a>>,
    pending: Option<YamlError>,
}

impl Iterator for Documents<'_> {
    type Item = Result<serde_norway::Value, YamlError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending.take() {
            return Some(Err(e));
        }
        let counted = self.counted.as_mut()?.next()?;
        let value = self.values.as_mut()?.next();
        let result = self.budget.check(counted).and_then(|()| match value {
            Some(doc) => Ok(serde_norway::Value::deserialize(doc)?),
            // Unreachable: both walk the same text.
            None => Err(YamlError::Syntax(de::Error::custom("document vanished"))),
        });
        if result.is_err() {
            self.counted = None;
            self.values = None;
        }
        Some(result)
    }
}

/// Which limit the counting pass hit.
#[derive(Debug, Clone, Copy)]
enum Exceeded {
    Depth,
    Nodes,
    Text,
}

/// The nodes and text counted so far across a stream.
#[derive(Debug)]
struct Budget {
    limits: Limits,
    nodes: usize,
    text: usize,
    exceeded: Option<Exceeded>,
}

impl Budget {
    fn new(limits: &Limits) -> Self {
        Budget {
            limits: *limits,
            nodes: 0,
            text: 0,
            exceeded: None,
        }
    }

    /// Counts one document; `Ok` when it stays within the limits.
    fn check<'de, D>(&mut self, doc: D) -> Result<(), YamlError>
    where
        D: de::Deserializer<'de, Error = serde_norway::Error>,
    {
        let result = Count {
            budget: self,
            depth: 0,
        }
        .deserialize(doc);
        match (result, self.exceeded) {
            (Ok(()), _) => Ok(()),
            (Err(e), None) => Err(YamlError::Syntax(e)),
            (Err(e), Some(which)) => {
                let line = e.location().map(|l| l.line());
                let l = &self.limits;
                Err(match which {
                    Exceeded::Depth => YamlError::TooDeep {
                        max: l.max_depth,
                        line,
                    },
                    Exceeded::Nodes => YamlError::TooManyNodes {
                        max: l.max_nodes,
                        line,
                    },
                    Exceeded::Text => YamlError::TooMuchText {
                        max: l.max_text_bytes,
                        line,
                    },
                })
            }
        }
    }

    fn node<E: de::Error>(&mut self, text: usize) -> Result<(), E> {
        self.nodes += 1;
        self.text = self.text.saturating_add(text);
        if self.nodes > self.limits.max_nodes {
            return Err(self.exceed(Exceeded::Nodes));
        }
        if self.text > self.limits.max_text_bytes {
            return Err(self.exceed(Exceeded::Text));
        }
        Ok(())
    }

    fn exceed<E: de::Error>(&mut self, which: Exceeded) -> E {
        self.exceeded = Some(which);
        E::custom(format!("YAML limit exceeded: {which:?}"))
    }
}

/// A visitor that builds nothing: it counts the node it is shown and, through itself as a seed,
/// every node below.
struct Count<'b> {
    budget: &'b mut Budget,
    /// Collections enclosing this node.
    depth: usize,
}

impl Count<'_> {
    fn child(&mut self) -> Count<'_> {
        Count {
            budget: self.budget,
            depth: self.depth + 1,
        }
    }

    fn enter<E: de::Error>(&mut self) -> Result<(), E> {
        self.budget.node(0)?;
        if self.depth + 1 > self.budget.limits.max_depth {
            return Err(self.budget.exceed(Exceeded::Depth));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Count<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Count<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.budget.node(0)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.budget.node(0)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.budget.node(0)
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.budget.node(0)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.budget.node(0)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.budget.node(0)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.budget.node(s.len())
    }

    fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<(), E> {
        self.budget.node(b.len())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.budget.node(0)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.budget.node(0)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.enter()?;
        while seq.next_element_seed(self.child())?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.enter()?;
        while map.next_key_seed(self.child())?.is_some() {
            map.next_value_seed(self.child())?;
        }
        Ok(())
    }

    /// A tagged node (`!Tag value`): the tag's text, then the value.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        let (tag, contents) = data.variant_seed(TagLen)?;
        self.budget.text = self.budget.text.saturating_add(tag);
        contents.newtype_variant_seed(self)
    }
}

/// Reads a tag for its length only.
struct TagLen;

impl<'de> DeserializeSeed<'de> for TagLen {
    type Value = usize;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for TagLen {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML tag")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<usize, E> {
        Ok(s.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_norway::Value;

    const SMALL: Limits = Limits {
        max_bytes: 4096,
        max_depth: 8,
        max_nodes: 1000,
        max_text_bytes: 10_000,
    };

    /// `levels` anchors, each a list of `width` aliases of the previous: `width^levels` scalars.
    fn bomb(levels: usize, width: usize) -> String {
        let mut s = format!("a0: &a0 [{}]\n", vec!["x"; width].join(", "));
        for l in 1..levels {
            let refs = vec![format!("*a{}", l - 1); width].join(", ");
            s.push_str(&format!("a{l}: &a{l} [{refs}]\n"));
        }
        s
    }

    #[test]
    fn plain_yaml_and_json_and_a_few_anchors_read_as_serde_norway_reads_them() {
        for text in [
            "",
            "a: 1\nb: [x, y]\nc: {d: true}\n",
            r#"{"a": [1, 2.5, null], "b": "s"}"#,
            "base: &base {app: web, tier: 1}\nx: *base\ny: *base\nz: !Tag [1]\n",
        ] {
            let ours = from_str(text, &SMALL).unwrap();
            let theirs: Value = serde_norway::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn an_alias_bomb_is_refused_naming_the_node_limit() {
        // 10^4 scalars from a few hundred bytes; serde_norway alone accepts it.
        let text = bomb(4, 10);
        assert!(serde_norway::from_str::<Value>(&text).is_ok());
        let err = from_str(&text, &SMALL).unwrap_err();
        assert!(
            matches!(err, YamlError::TooManyNodes { max: 1000, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("1000 nodes"), "{err}");
        assert!(err.line().is_some());
    }

    #[test]
    fn aliases_of_a_long_string_are_refused_naming_the_text_limit() {
        let text = format!(
            "s: &s {}\nl: [{}]\n",
            "x".repeat(1000),
            vec!["*s"; 20].join(", ")
        );
        let err = from_str(&text, &SMALL).unwrap_err();
        assert!(
            matches!(err, YamlError::TooMuchText { max: 10_000, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("bytes of text"), "{err}");
    }

    #[test]
    fn depth_is_refused_naming_the_limit_before_serde_norway_s_own() {
        let ok = format!("{}{}", "[".repeat(8), "]".repeat(8));
        assert!(from_str(&ok, &SMALL).is_ok());
        let deep = format!("{}{}", "[".repeat(9), "]".repeat(9));
        let err = from_str(&deep, &SMALL).unwrap_err();
        assert!(matches!(err, YamlError::TooDeep { max: 8, .. }), "{err:?}");
        assert!(err.to_string().contains("8 levels"), "{err}");
    }

    #[test]
    fn length_is_checked_before_parsing() {
        // Not even YAML: the length alone refuses it.
        let text = "[".repeat(5000);
        let err = from_str(&text, &SMALL).unwrap_err();
        assert!(
            matches!(
                err,
                YamlError::TooLarge {
                    len: 5000,
                    max: 4096
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn syntax_errors_are_serde_norway_s_with_their_line() {
        let err = from_str("a: 1\nb: [\n", &SMALL).unwrap_err();
        assert!(!err.is_limit());
        assert!(err.line().is_some(), "{err}");
    }

    #[test]
    fn documents_share_one_budget_and_stop_at_the_first_refusal() {
        // Each document alone is within the budget; together they are not.
        let doc = format!("l: [{}]\n", vec!["x"; 300].join(","));
        let text = [doc.as_str(); 5].join("---\n");
        let out: Vec<_> = documents(&text, &SMALL).collect();
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(out[..3].iter().all(Result::is_ok));
        assert!(matches!(out[3], Err(YamlError::TooManyNodes { .. })));
        let values: Vec<Value> = documents("a: 1\n---\n---\nb: 2\n", &SMALL)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(values.len(), 3);
        assert_eq!(values[1], Value::Null);
    }

    #[test]
    fn a_too_long_stream_is_one_error() {
        let text = "a: 1\n".repeat(1000);
        let out: Vec<_> = documents(&text, &SMALL).collect();
        assert!(matches!(out[..], [Err(YamlError::TooLarge { .. })]));
    }

    proptest::proptest! {
        /// Any bomb shape is either read whole (and then within the limits) or refused by a limit.
        #[test]
        fn bombs_never_exceed_the_limits(levels in 1usize..6, width in 1usize..12) {
            let text = bomb(levels, width);
            // The top mapping, then per level a key and the anchor's list: N(0) = 1 + width,
            // N(l) = 1 + width * N(l - 1).
            let mut n = 0;
            let mut expanded = 1;
            for l in 0..levels {
                n = if l == 0 { 1 + width } else { 1 + width * n };
                expanded += 1 + n;
            }
            match from_str(&text, &SMALL) {
                Ok(v) => {
                    proptest::prop_assert!(expanded <= SMALL.max_nodes);
                    proptest::prop_assert_eq!(v, serde_norway::from_str::<Value>(&text).unwrap());
                }
                Err(e) => {
                    proptest::prop_assert!(e.is_limit(), "{}", e);
                    proptest::prop_assert!(expanded > SMALL.max_nodes, "{} {}", expanded, e);
                }
            }
        }

        /// Arbitrary text never panics and never yields more than the limits allow.
        #[test]
        fn arbitrary_text_is_read_or_refused(text in "[\\[\\]{}&*a-c:, \\n-]{0,200}") {
            let _ = from_str(&text, &SMALL);
            let _ = documents(&text, &SMALL).count();
        }
    }
}
