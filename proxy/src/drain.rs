//! Graceful shutdown in two phases, as Istio's agent drives Envoy (linkerd2-proxy's `drain`
//! pattern for the plumbing).
//!
//! 1. **Draining** ([`Signal::start`], on SIGTERM): readiness turns 503 ([`Flag`]); inbound HTTP
//!    connections finish the request in flight and close (`Connection: close`, h2 GOAWAY), as
//!    Envoy's `drain_listeners?inboundonly&graceful` does. Both capture listeners **keep
//!    accepting** and outbound connections keep working: an app's own shutdown calls through the
//!    sidecar succeed, and a caller that has not yet seen the endpoint removed is still served.
//!    A router (gateway) drains all its listeners so: its HTTP connections close after their
//!    request too (`drain_listeners?graceful`), its bound listeners keep accepting.
//! 2. **Closing** ([`Signal::close`], when the termination drain duration ends, or with
//!    `EXIT_ON_ZERO_ACTIVE_CONNECTIONS` once no connection is left): listeners stop accepting,
//!    every HTTP connection shuts down, and the process exits.
//!
//! Listeners, connections and background tasks each hold a [`Watch`]; connections accepted by
//! the capture listeners also hold a [`Connection`], so [`Signal::connections`] is Envoy's
//! `downstream_cx_active` summed over the data listeners (what Istio's agent polls).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// Where a drain is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    Draining,
    Closing,
}

struct Inner {
    phase: watch::Sender<Phase>,
    watches: AtomicUsize,
    connections: AtomicUsize,
    idle: Notify,
}

/// Starts a drain, closes it, and waits for it to finish.
pub struct Signal {
    inner: Arc<Inner>,
}

/// Held by whatever must see the drain: listeners, connections, background tasks.
pub struct Watch {
    inner: Arc<Inner>,
}

/// Held by each connection a data listener accepted, for [`Signal::connections`].
pub struct Connection {
    inner: Arc<Inner>,
}

/// Whether draining has started, without holding anything up (for readiness answers).
#[derive(Clone)]
pub struct Flag {
    phase: watch::Receiver<Phase>,
}

/// How long a drain lasts before it closes (Istio's agent, `terminate()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Serve for `terminationDrainDuration`, then close, whatever is still open (Istio's
    /// default: the app may still make calls through the sidecar while it shuts down).
    For(Duration),
    /// `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`: serve for at least `minimum`
    /// (`MINIMUM_DRAIN_DURATION`), then close as soon as no data connection is open, checking
    /// every [`ACTIVE_CONNECTION_CHECK`]. Nothing else bounds it: kubelet's
    /// `terminationGracePeriodSeconds` does, as in Istio.
    UntilIdle {
        /// Served before the first check.
        minimum: Duration,
    },
}

/// How often [`Plan::UntilIdle`] looks at the open connections (Istio's
/// `activeConnectionCheckDelay`).
pub const ACTIVE_CONNECTION_CHECK: Duration = Duration::from_secs(1);

/// A new drain signal and its first watch.
pub fn channel() -> (Signal, Watch) {
    let (phase, _) = watch::channel(Phase::Serving);
    let inner = Arc::new(Inner {
        phase,
        watches: AtomicUsize::new(1),
        connections: AtomicUsize::new(0),
        idle: Notify::new(),
    });
    (
        Signal {
            inner: inner.clone(),
        },
        Watch { inner },
    )
}

impl Signal {
    /// Starts draining: every [`Watch::signaled`] resolves; listeners keep accepting.
    pub fn start(&self) {
        self.starter().start();
    }

    /// Ends the drain: every [`Watch::closed`] (and [`Watch::signaled`]) resolves; listeners stop
    /// accepting and connections shut down.
    pub fn close(&self) {
        self.inner.phase.send_replace(Phase::Closing);
    }

    /// Whether [`Signal::start`] (or [`Signal::close`]) was called.
    pub fn is_draining(&self) -> bool {
        *self.inner.phase.borrow() >= Phase::Draining
    }

    /// A [`Starter`]: starts this drain from elsewhere (the status port's `POST /drain`).
    pub fn starter(&self) -> Starter {
        Starter {
            inner: self.inner.clone(),
        }
    }

    /// A [`Flag`] that follows this signal.
    pub fn flag(&self) -> Flag {
        Flag {
            phase: self.inner.phase.subscribe(),
        }
    }

    /// How many watches are still held.
    pub fn watches(&self) -> usize {
        self.inner.watches.load(Ordering::Acquire)
    }

    /// How many connections accepted by the data listeners are open.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::Acquire)
    }

    /// Drains by `plan`: [`Signal::start`], wait, [`Signal::close`]. Returns how many data
    /// connections were still open at the close.
    pub async fn terminate(&self, plan: Plan) -> usize {
        self.start();
        match plan {
            Plan::For(duration) => tokio::time::sleep(duration).await,
            Plan::UntilIdle { minimum } => {
                tokio::time::sleep(minimum).await;
                loop {
                    let open = self.connections();
                    if open == 0 {
                        break;
                    }
                    tracing::info!(open, "draining: waiting for the active connections to end");
                    tokio::time::sleep(ACTIVE_CONNECTION_CHECK).await;
                }
            }
        }
        self.close();
        self.connections()
    }

    /// Resolves when every watch has been dropped.
    pub async fn drained(&self) {
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.watches() == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Watch {
    /// Resolves once draining has started (at once if it already has).
    pub async fn signaled(&self) {
        self.reached(Phase::Draining).await;
    }

    /// Resolves once the drain is closing: stop accepting, shut connections down.
    pub async fn closed(&self) {
        self.reached(Phase::Closing).await;
    }

    async fn reached(&self, phase: Phase) {
        let mut rx = self.inner.phase.subscribe();
        let _ = rx.wait_for(|p| *p >= phase).await;
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.inner.phase.borrow() >= Phase::Draining
    }

    /// Counts a connection until the returned guard is dropped.
    pub fn connection(&self) -> Connection {
        self.inner.connections.fetch_add(1, Ordering::AcqRel);
        Connection {
            inner: self.inner.clone(),
        }
    }
}

impl Clone for Watch {
    fn clone(&self) -> Self {
        self.inner.watches.fetch_add(1, Ordering::AcqRel);
        Watch {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.inner.watches.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.inner.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts a drain (as [`Signal::start`]) without owning it: the drain's end stays with the
/// [`Signal`] (SIGTERM or `/quitquitquit`).
#[derive(Clone)]
pub struct Starter {
    inner: Arc<Inner>,
}

impl Starter {
    /// Starts draining: not ready, inbound connections close after their request; the
    /// listeners keep serving.
    pub fn start(&self) {
        self.inner.phase.send_if_modified(|p| {
            let was = *p;
            *p = (*p).max(Phase::Draining);
            *p != was
        });
    }
}

impl std::fmt::Debug for Starter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("drain::Starter")
    }
}

impl Flag {
    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() >= Phase::Draining
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn drained_waits_for_every_watch() {
        let (signal, watch) = channel();
        let flag = signal.flag();
        let conn = watch.clone();
        let listener = tokio::spawn(async move {
            watch.closed().await;
            // The listener stops and drops its watch.
        });
        assert!(!flag.is_draining());
        signal.close();
        assert!(flag.is_draining() && conn.is_draining());
        listener.await.unwrap();
        assert_eq!(signal.watches(), 1);
        let waiting = tokio::time::timeout(Duration::from_millis(20), signal.drained()).await;
        assert!(waiting.is_err(), "a connection is still open");
        drop(conn);
        tokio::time::timeout(Duration::from_secs(20), signal.drained())
            .await
            .expect("drained once the last watch is gone");
    }

    #[tokio::test]
    async fn signaled_after_start_resolves_at_once() {
        let (signal, watch) = channel();
        signal.start();
        tokio::time::timeout(Duration::from_secs(20), watch.signaled())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn draining_is_not_closing() {
        let (signal, watch) = channel();
        signal.start();
        assert!(watch.is_draining());
        let closed = tokio::time::timeout(Duration::from_millis(20), watch.closed()).await;
        assert!(
            closed.is_err(),
            "draining alone does not close the listeners"
        );
        signal.close();
        tokio::time::timeout(Duration::from_secs(20), watch.closed())
            .await
            .expect("closed after close()");
        // Starting again after closing does not reopen anything.
        signal.start();
        tokio::time::timeout(Duration::from_secs(20), watch.closed())
            .await
            .expect("still closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_drain_serves_its_whole_duration_even_when_idle() {
        let (signal, watch) = channel();
        let started = tokio::time::Instant::now();
        let open = signal.terminate(Plan::For(Duration::from_secs(5))).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(open, 0);
        assert!(
            tokio::time::timeout(Duration::ZERO, watch.closed())
                .await
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_drain_closes_with_connections_still_open() {
        let (signal, watch) = channel();
        let _conn = watch.connection();
        let open = signal.terminate(Plan::For(Duration::from_secs(5))).await;
        assert_eq!(open, 1, "closed on time, the open connection is cut");
    }

    #[tokio::test(start_paused = true)]
    async fn until_idle_waits_the_minimum_then_for_the_last_connection() {
        let (signal, watch) = channel();
        let conn = watch.connection();
        let started = tokio::time::Instant::now();
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(12_500)).await;
            drop(conn);
        });
        let minimum = Duration::from_secs(5);
        let open = signal.terminate(Plan::UntilIdle { minimum }).await;
        closer.await.unwrap();
        assert_eq!(open, 0);
        // Checked at 5 s, 6 s, ... 12 s (still open), 13 s (gone).
        assert_eq!(started.elapsed(), Duration::from_secs(13));
        assert!(signal.is_draining());
        assert!(
            tokio::time::timeout(Duration::ZERO, watch.closed())
                .await
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn until_idle_with_nothing_open_closes_after_the_minimum() {
        let (signal, _watch) = channel();
        let started = tokio::time::Instant::now();
        signal
            .terminate(Plan::UntilIdle {
                minimum: Duration::from_secs(5),
            })
            .await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[test]
    fn connections_are_counted_while_their_guards_live() {
        let (signal, watch) = channel();
        assert_eq!(signal.connections(), 0);
        let a = watch.connection();
        let b = watch.connection();
        assert_eq!(signal.connections(), 2);
        drop(a);
        assert_eq!(signal.connections(), 1);
        drop(b);
        assert_eq!(signal.connections(), 0);
        assert_eq!(signal.watches(), 1, "connections are not watches");
    }
}
