//! Graceful shutdown (linkerd2-proxy's `drain` pattern): a [`Signal`] that starts draining and
//! waits until every [`Watch`] is gone.
//!
//! Listeners and connections each hold a [`Watch`]. On SIGTERM the sidecar calls
//! [`Signal::start`]: listeners see [`Watch::signaled`] and stop accepting (dropping their
//! watches), HTTP connections stop keep-alive, TCP connections simply run to their end. Then
//! [`Signal::drained`] resolves once the last watch is dropped, and the sidecar exits (or the
//! drain timeout cuts the rest).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

struct Inner {
    draining: watch::Sender<bool>,
    watches: AtomicUsize,
    idle: Notify,
}

/// Starts a drain and waits for it to finish.
pub struct Signal {
    inner: Arc<Inner>,
}

/// Held by whatever must finish before the process exits.
pub struct Watch {
    inner: Arc<Inner>,
}

/// Whether draining has started, without holding anything up (for readiness answers).
#[derive(Clone)]
pub struct Flag {
    draining: watch::Receiver<bool>,
}

/// A new drain signal and its first watch.
pub fn channel() -> (Signal, Watch) {
    let (draining, _) = watch::channel(false);
    let inner = Arc::new(Inner {
        draining,
        watches: AtomicUsize::new(1),
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
    /// Starts draining: every [`Watch::signaled`] resolves.
    pub fn start(&self) {
        self.inner.draining.send_replace(true);
    }

    /// Whether [`Signal::start`] was called.
    pub fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// A [`Flag`] that follows this signal.
    pub fn flag(&self) -> Flag {
        Flag {
            draining: self.inner.draining.subscribe(),
        }
    }

    /// How many watches are still held.
    pub fn watches(&self) -> usize {
        self.inner.watches.load(Ordering::Acquire)
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
        let mut rx = self.inner.draining.subscribe();
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
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

impl Flag {
    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
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
            watch.signaled().await;
            // The listener stops and drops its watch.
        });
        assert!(!flag.is_draining());
        signal.start();
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
}
