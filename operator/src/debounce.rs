//! Debouncing of changes: a burst of watch events becomes one re-render. A batch is flushed once
//! no change arrived for `quiet`, or at the latest `max` after its first change, so a steady
//! trickle of events cannot postpone a write forever. Pure (time is passed in) and unit-tested.

use crate::index::ObjKey;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// What is waiting to be re-rendered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub namespaces: BTreeSet<String>,
    pub statuses: bool,
    /// When the batch started (its first note; a retry may be noted in the future).
    pub since: Option<Instant>,
    /// When the first watched change of the batch arrived, for the change→write latency metric
    /// (`None`: only retries and full re-checks, which no watched change caused).
    pub changed_at: Option<Instant>,
    /// When every change of the batch was an Endpoints change: those services (the batch may
    /// then be rendered incrementally, [`crate::renderer`]).
    pub endpoints_only: Option<BTreeSet<ObjKey>>,
}

/// Collects changes until they are due.
#[derive(Clone, Debug)]
pub struct Debouncer {
    quiet: Duration,
    max: Duration,
    batch: Batch,
    last: Option<Instant>,
}

impl Debouncer {
    pub fn new(quiet: Duration, max: Duration) -> Self {
        Debouncer {
            quiet,
            max: max.max(quiet),
            batch: Batch::default(),
            last: None,
        }
    }

    /// Records work that needs a full render of the namespaces and that no watched change
    /// caused (a retry, possibly due in the future; a full re-check).
    pub fn note(
        &mut self,
        namespaces: impl IntoIterator<Item = String>,
        statuses: bool,
        now: Instant,
    ) {
        self.add(namespaces, statuses, None, now, false);
    }

    /// Records a watched change; `endpoints_only`: it was only the Endpoints of these services.
    pub fn note_change(
        &mut self,
        namespaces: impl IntoIterator<Item = String>,
        statuses: bool,
        endpoints_only: Option<BTreeSet<ObjKey>>,
        now: Instant,
    ) {
        self.add(namespaces, statuses, endpoints_only, now, true);
    }

    fn add(
        &mut self,
        namespaces: impl IntoIterator<Item = String>,
        statuses: bool,
        endpoints_only: Option<BTreeSet<ObjKey>>,
        now: Instant,
        watched: bool,
    ) {
        let before = self.batch.namespaces.len();
        self.batch.namespaces.extend(namespaces);
        let grew = self.batch.namespaces.len() > before || (statuses && !self.batch.statuses);
        self.batch.statuses |= statuses;
        if !grew && self.batch.since.is_none() {
            return;
        }
        let first = self.batch.since.is_none();
        self.batch.endpoints_only = match (first, self.batch.endpoints_only.take(), endpoints_only)
        {
            (true, _, e) => e,
            (false, Some(mut pending), Some(e)) => {
                pending.extend(e);
                Some(pending)
            }
            _ => None,
        };
        self.batch.since.get_or_insert(now);
        if watched {
            self.batch.changed_at = Some(self.batch.changed_at.map_or(now, |t| t.min(now)));
        }
        self.last = Some(now);
    }

    /// When the pending batch becomes due; `None` when nothing is pending.
    pub fn deadline(&self) -> Option<Instant> {
        let since = self.batch.since?;
        let last = self.last.unwrap_or(since);
        Some((last + self.quiet).min(since + self.max))
    }

    /// Takes the batch if it is due at `now`.
    pub fn take_due(&mut self, now: Instant) -> Option<Batch> {
        if self.deadline()? <= now {
            self.last = None;
            Some(std::mem::take(&mut self.batch))
        } else {
            None
        }
    }

    /// Whether anything is pending.
    pub fn pending(&self) -> bool {
        self.batch.since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_burst_becomes_one_batch_after_the_quiet_period() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debouncer::new(ms(100), ms(1000));
        assert_eq!(d.deadline(), None);
        d.note(ns(&["a"]), false, t0);
        d.note(ns(&["b"]), true, t0 + ms(50));
        assert_eq!(
            d.take_due(t0 + ms(120)),
            None,
            "still inside the quiet period"
        );
        let b = d.take_due(t0 + ms(150)).expect("due");
        assert_eq!(
            b.namespaces.into_iter().collect::<Vec<_>>(),
            ns(&["a", "b"])
        );
        assert!(b.statuses);
        assert_eq!(b.since, Some(t0));
        assert!(!d.pending());
        assert_eq!(d.take_due(t0 + ms(10_000)), None);
    }

    #[test]
    fn a_steady_trickle_is_flushed_at_the_maximum_delay() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debouncer::new(ms(100), ms(300));
        for i in 0..10 {
            d.note(ns(&[&format!("n{i}")]), false, t0 + ms(i * 50));
        }
        assert_eq!(d.deadline(), Some(t0 + ms(300)));
        assert!(d.take_due(t0 + ms(300)).is_some());
    }

    #[test]
    fn a_retry_noted_in_the_future_waits_until_then() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debouncer::new(ms(100), ms(1000));
        d.note(ns(&["a"]), false, t0 + ms(2000));
        assert_eq!(d.take_due(t0 + ms(1000)), None);
        let b = d.take_due(t0 + ms(2100)).unwrap();
        assert_eq!(b.changed_at, None, "a retry is no watched change");
        // A watched change flushed with a retry keeps its own time for the latency metric.
        d.note(ns(&["a"]), false, t0 + ms(4000));
        d.note_change(ns(&["b"]), false, None, t0 + ms(3000));
        let b = d.take_due(t0 + ms(4100)).unwrap();
        assert_eq!(b.changed_at, Some(t0 + ms(3000)));
    }

    #[test]
    fn a_batch_is_endpoints_only_while_every_change_is() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let key = |n: &str| ObjKey::new("shop", n);
        let mut d = Debouncer::new(ms(10), ms(100));
        d.note_change(ns(&["a", "b"]), false, Some([key("x")].into()), t0);
        d.note_change(ns(&["a"]), false, Some([key("y")].into()), t0);
        let b = d.take_due(t0 + ms(20)).unwrap();
        assert_eq!(b.endpoints_only, Some([key("x"), key("y")].into()));
        // Any other change in the batch, even to a namespace already in it, makes it full.
        d.note_change(ns(&["a"]), false, Some([key("x")].into()), t0);
        d.note(ns(&["a"]), false, t0);
        assert_eq!(d.take_due(t0 + ms(20)).unwrap().endpoints_only, None);
        d.note(ns(&["a"]), false, t0);
        d.note_change(ns(&["a"]), false, Some([key("x")].into()), t0);
        assert_eq!(d.take_due(t0 + ms(20)).unwrap().endpoints_only, None);
        // A fresh batch after a full one starts over.
        d.note_change(ns(&["a"]), false, Some([key("z")].into()), t0);
        assert_eq!(
            d.take_due(t0 + ms(20)).unwrap().endpoints_only,
            Some([key("z")].into())
        );
    }

    #[test]
    fn nothing_new_starts_no_batch() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::from_millis(10), Duration::from_millis(10));
        d.note(Vec::new(), false, t0);
        assert!(!d.pending());
    }
}
