//! Maps a field path (`spec.http[0].route[1].weight`) to the line it sits on in a YAML stream,
//! so every error can say where to look.

use granit_parser::{Event, Parser};
use std::collections::HashMap;

/// Line (1-based) of every node of every document of a YAML stream, keyed by document index
/// (0-based) and field path in the same notation the errors use.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<(usize, String), usize>,
}

enum Frame {
    Map {
        path: String,
        key: Option<(String, usize)>,
    },
    Seq {
        path: String,
        index: usize,
    },
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl LineIndex {
    /// Indexes `text`. A stream that does not parse yields an index of what came before the fault.
    pub fn new(text: &str) -> Self {
        let mut index = LineIndex::default();
        let mut doc: Option<usize> = None;
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let line = span.start.line();
            match event {
                Event::DocumentStart(..) => {
                    doc = Some(doc.map_or(0, |d| d + 1));
                    stack.clear();
                }
                Event::Scalar(value, ..) => {
                    // A scalar in key position only names the next value.
                    if let Some(Frame::Map { key, .. }) = stack.last_mut()
                        && key.is_none()
                    {
                        *key = Some((value.into_owned(), line));
                        continue;
                    }
                    if let Some((path, at)) = index.value_path(&mut stack) {
                        index.record(doc, path, at.unwrap_or(line));
                    }
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let (path, at) = index.value_path(&mut stack).unwrap_or_default();
                    index.record(doc, path.clone(), at.unwrap_or(line));
                    stack.push(if matches!(event, Event::MappingStart(..)) {
                        Frame::Map { path, key: None }
                    } else {
                        Frame::Seq { path, index: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::Alias(..) => {
                    let _ = index.value_path(&mut stack);
                }
                _ => {}
            }
        }
        index
    }

    /// The path of the value that starts now, advancing the parent container past it, and the
    /// line of its key when it has one (an error about a field points at the field's name).
    fn value_path(&self, stack: &mut [Frame]) -> Option<(String, Option<usize>)> {
        match stack.last_mut() {
            None => Some((String::new(), None)),
            Some(Frame::Map { path, key }) => key
                .take()
                .map(|(k, line)| (child_path(path, &k), Some(line))),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some((p, None))
            }
        }
    }

    fn record(&mut self, doc: Option<usize>, path: String, line: usize) {
        if let Some(doc) = doc {
            self.lines.entry((doc, path)).or_insert(line);
        }
    }

    /// The line of `path` in document `doc`, or of its closest ancestor that exists.
    pub fn line_of(&self, doc: usize, path: &str) -> Option<usize> {
        let mut p = path.to_string();
        loop {
            if let Some(line) = self.lines.get(&(doc, p.clone())) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lines_of_nested_fields_across_documents() {
        let text = "a: 1\n---\nspec:\n  http:\n  - route:\n    - weight: 90\n    - weight: 10\n";
        let idx = LineIndex::new(text);
        assert_eq!(idx.line_of(0, "a"), Some(1));
        assert_eq!(idx.line_of(1, "spec.http[0].route[0].weight"), Some(6));
        assert_eq!(idx.line_of(1, "spec.http[0].route[1].weight"), Some(7));
        // Missing leaf: falls back to the closest ancestor.
        assert_eq!(idx.line_of(1, "spec.http[0].route[1].destination"), Some(7));
        assert_eq!(idx.line_of(1, "spec.http[0]"), Some(5));
    }
}
