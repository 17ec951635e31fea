//! Column alignment the way istioctl prints its tables (Go's `text/tabwriter` with `minwidth 0`,
//! `padchar ' '`, no flags): every cell but the last of a line is padded with spaces to the width
//! of the widest cell of its column plus `padding`; the last cell is written as is. A padded cell
//! followed by an empty last cell therefore leaves trailing spaces, exactly as istioctl does.
//!
//! istioctl uses padding 1 for listeners and 5 for routes, clusters and endpoints.

/// Padding of the listener table.
pub const LISTENER_PADDING: usize = 1;
/// Padding of the route, cluster and endpoint tables.
pub const WIDE_PADDING: usize = 5;

/// Rows of cells, rendered all at once so columns line up.
#[derive(Debug, Clone)]
pub struct Table {
    padding: usize,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first row is `header`.
    pub fn new(padding: usize, header: &[&str]) -> Self {
        Table {
            padding,
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Number of rows, header included.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The aligned text, one line per row, each ending in `\n`.
    pub fn render(&self) -> String {
        // Widths in characters (tabwriter counts UTF-8 runes), per column; the last cell of each
        // row is not part of a column.
        let mut widths: Vec<usize> = Vec::new();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
                let w = cell.chars().count() + self.padding;
                match widths.get_mut(i) {
                    Some(max) => *max = (*max).max(w),
                    None => widths.push(w),
                }
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let last = row.len().saturating_sub(1);
            for (i, cell) in row.iter().enumerate() {
                out.push_str(cell);
                if i < last {
                    let pad = widths[i] - cell.chars().count();
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_all_but_the_last_cell() {
        let mut t = Table::new(1, &["ADDRESSES", "PORT", "MATCH", "DESTINATION"]);
        t.row(vec![
            "0.0.0.0".into(),
            "15001".into(),
            "ALL".into(),
            "PassthroughCluster".into(),
        ]);
        t.row(vec![
            "0.0.0.0".into(),
            "15001".into(),
            "Addr: *:15001".into(),
            "Non-HTTP/Non-TCP".into(),
        ]);
        // Seed 004, `--port 15001`.
        assert_eq!(
            t.render(),
            "ADDRESSES PORT  MATCH         DESTINATION\n\
             0.0.0.0   15001 ALL           PassthroughCluster\n\
             0.0.0.0   15001 Addr: *:15001 Non-HTTP/Non-TCP\n"
        );
    }

    #[test]
    fn empty_last_cell_leaves_the_padding_of_the_cell_before() {
        let mut t = Table::new(5, &["NAME", "MATCH", "VIRTUAL SERVICE"]);
        t.row(vec!["80".into(), "/*".into(), String::new()]);
        assert_eq!(
            t.render(),
            "NAME     MATCH     VIRTUAL SERVICE\n80       /*        \n"
        );
    }

    #[test]
    fn widths_count_characters_not_bytes() {
        let mut t = Table::new(1, &["A", "B"]);
        t.row(vec!["é".into(), "x".into()]);
        assert_eq!(t.render(), "A B\né x\n");
    }
}
