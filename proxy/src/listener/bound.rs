//! Router mode's listeners (`proxy run --type router`, Istio's `pilot-agent proxy router`): a
//! gateway captures no traffic, it binds the listeners of its configuration itself, every one
//! with `bindToPort` true and `useOriginalDst` false (`0.0.0.0_8080` for a `Gateway` server on
//! 8080). A [`BoundListener`] binds in `new()` and accepts in `run()`; the [`Router`] follows
//! the configuration and keeps the set of bound sockets equal to what the current snapshot
//! asks for, by the pure [`plan`]:
//!
//! - a listener new in the configuration is bound; one whose address is already bound keeps its
//!   socket (no gap while a configuration changes, even if its name changed);
//! - a listener gone from the configuration stops accepting (its socket closes, the kernel
//!   refuses new connections) while the connections it accepted finish, as Envoy drains a
//!   removed listener (an HTTP connection closes after its request once its chain is gone,
//!   [`super::dispatch`]);
//! - a listener that cannot be bound (port in use, a port below
//!   `net.ipv4.ip_unprivileged_port_start` for uid 1337) is logged naming the listener and
//!   address, counted (`rustmesh_listener_bind_failures`), shown with its error in the admin
//!   `/listeners?format=json` ([`BindStatus`]), and tried again with the next configuration;
//!   the others serve.
//!
//! A connection accepted on a bound listener goes through the capture listeners' path
//! ([`super::dispatch`]): its destination is the socket's local address; it reports as Istio's
//! gateways do, on the outbound side (`reporter="source"`), and the pod's AuthorizationPolicies
//! and JWT rules apply as Istio applies a gateway's ([`Shared::router`]). Drain applies as to
//! the capture listeners: accepting goes on while draining and stops when the drain closes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::Shared;
use crate::drain;
use crate::metrics::Reporter;
use crate::socket::{ClientAddr, OrigDstAddr};
use crate::stats::Refusal;

/// What [`plan`] says to do with the listeners of a new configuration.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Listeners to bind now (name, address), in configuration order.
    pub bind: Vec<(String, SocketAddr)>,
    /// Listeners whose address is already bound: they keep their socket (name, address).
    pub keep: Vec<(String, SocketAddr)>,
    /// Bound addresses no listener has any more: stop accepting there.
    pub unbind: Vec<SocketAddr>,
    /// Listeners not bound because an earlier listener of the configuration has the same
    /// address (name, address, the earlier one's name).
    pub duplicates: Vec<(String, SocketAddr, String)>,
}

/// What to bind, keep and close for the listeners `wanted` (name, address, in configuration
/// order) when the addresses `bound` are bound now. A pure function: the [`Router`] acts on it.
pub fn plan(wanted: &[(String, SocketAddr)], bound: &BTreeSet<SocketAddr>) -> Plan {
    let mut out = Plan::default();
    let mut taken: Vec<(&str, SocketAddr)> = Vec::new();
    for (name, addr) in wanted {
        if let Some((first, _)) = taken.iter().find(|(_, a)| a == addr) {
            out.duplicates
                .push((name.clone(), *addr, (*first).to_string()));
            continue;
        }
        taken.push((name.as_str(), *addr));
        if bound.contains(addr) {
            out.keep.push((name.clone(), *addr));
        } else {
            out.bind.push((name.clone(), *addr));
        }
    }
    out.unbind = bound
        .iter()
        .filter(|a| !taken.iter().any(|(_, t)| t == *a))
        .copied()
        .collect();
    out
}

/// One listener's state, as the admin `/listeners` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerState {
    /// The listener's name (`0.0.0.0_8080`).
    pub name: String,
    /// Its configured address.
    pub address: SocketAddr,
    /// The sockets bound for it (`0.0.0.0:8080`, and `[::]:8080` when the host has IPv6);
    /// empty when binding failed.
    pub local: Vec<SocketAddr>,
    /// Why it could not be bound (it is tried again with the next configuration).
    pub error: Option<String>,
}

/// The router's listeners now, shared with the admin API: what is bound, and what failed.
#[derive(Clone, Default)]
pub struct BindStatus(Arc<Mutex<Vec<ListenerState>>>);

impl BindStatus {
    /// The listeners, in configuration order.
    pub fn get(&self) -> Vec<ListenerState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, states: Vec<ListenerState>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = states;
    }
}

/// A listener of the configuration bound on its own address: [`BoundListener::new`] binds,
/// [`BoundListener::run`] accepts.
pub struct BoundListener {
    name: String,
    address: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
    shared: Arc<Shared>,
}

impl BoundListener {
    /// Binds listener `name` on `address` (and on `[::]` too for `0.0.0.0`, when the host has
    /// IPv6, as the capture listeners). The error names the listener and the address.
    pub fn new(
        name: &str,
        address: SocketAddr,
        shared: Arc<Shared>,
    ) -> std::result::Result<Self, String> {
        let sockets = super::bind("bound listener", address, false).map_err(|e| {
            let cause = match &e {
                crate::Error::Bind { addr, source, .. } => format!("{addr}: {source}"),
                other => other.to_string(),
            };
            let hint = if address.port() < 1024 {
                " (a port below 1024 needs the pod's net.ipv4.ip_unprivileged_port_start \
                 sysctl at or below it: the proxy runs as uid 1337 without capabilities)"
            } else {
                ""
            };
            format!("listener {name} ({address}): could not listen on {cause}{hint}")
        })?;
        Ok(BoundListener {
            name: name.to_string(),
            address,
            sockets,
            shared,
        })
    }

    /// The bound addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// Accepts until `stop` changes or its sender is dropped (the listener left the
    /// configuration) or the drain closes; each connection is served by [`serve`] on its own
    /// task. The sockets close when this returns.
    pub async fn run(self, drain: drain::Watch, stop: watch::Receiver<()>) {
        let BoundListener {
            name,
            address,
            sockets,
            shared,
        } = self;
        let mut tasks = tokio::task::JoinSet::new();
        for socket in sockets {
            let listener = match TcpListener::from_std(socket) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(listener = %name, "cannot register the listening socket: {e}");
                    continue;
                }
            };
            let (drain, shared, name) = (drain.clone(), shared.clone(), name.clone());
            let mut stop = stop.clone();
            tasks.spawn(async move {
                let local = listener.local_addr().ok();
                loop {
                    tokio::select! {
                        biased;
                        () = drain.closed() => break,
                        _ = stop.changed() => break,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => {
                                let shared = shared.clone();
                                let drain = drain.clone();
                                let active = drain.connection();
                                tokio::spawn(async move {
                                    let _active = active;
                                    serve(&shared, address, stream, drain).await
                                });
                            }
                            Err(e) => {
                                // EMFILE and friends: back off a little instead of spinning.
                                tracing::warn!(listener = %name, ?local, "accept failed: {e}");
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            }
                        },
                    }
                }
                tracing::info!(listener = %name, ?local, "stopped accepting");
            });
        }
        drop((drain, stop));
        while tasks.join_next().await.is_some() {}
    }
}

/// Handles one connection accepted on the socket bound for `address`: the current
/// configuration's listener there takes it ([`super::dispatch`]), with the socket's local
/// address as its destination, reporting on the outbound side as Istio's gateways do.
pub async fn serve(shared: &Shared, address: SocketAddr, stream: TcpStream, drain: drain::Watch) {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (local, peer) = match (stream.local_addr(), stream.peer_addr()) {
        (Ok(l), Ok(p)) => (canonical(l), canonical(p)),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(%address, "connection lost before it was served: {e}");
            return;
        }
    };
    let Some(snapshot) = shared.store.load() else {
        return;
    };
    let Some(listener) = snapshot.bound_listener(address).cloned() else {
        // The configuration dropped the listener between the accept and now.
        let name = address.to_string();
        shared.metrics.refused(&name, Refusal::NoListener);
        tracing::debug!(%address, client = %peer, "the configuration has no listener here any more: connection closed");
        return;
    };
    super::dispatch(
        shared,
        Reporter::Source,
        snapshot,
        listener,
        stream,
        OrigDstAddr(local),
        ClientAddr(peer),
        drain,
    )
    .await
}

/// An open listener: its name now, its sockets' addresses, and the sender whose drop stops it.
struct Open {
    name: String,
    local: Vec<SocketAddr>,
    _stop: watch::Sender<()>,
}

/// Router mode: follows the configuration and binds its listeners ([`plan`]).
pub struct Router {
    shared: Arc<Shared>,
    status: BindStatus,
}

impl Router {
    /// A router serving the configuration of `shared.store`, reporting into `status`.
    pub fn new(shared: Arc<Shared>, status: BindStatus) -> Self {
        Router { shared, status }
    }

    /// Binds the listeners of each configuration as it comes, until the drain closes; then
    /// every listener stops accepting.
    pub async fn run(self, drain: drain::Watch) {
        let mut open: std::collections::BTreeMap<SocketAddr, Open> = Default::default();
        let mut seen = None;
        loop {
            let snapshot = tokio::select! {
                s = self.shared.store.changed(seen.as_ref()) => s,
                () = drain.closed() => break,
            };
            let wanted: Vec<(String, SocketAddr)> = snapshot
                .bound
                .iter()
                .map(|l| (l.name.clone(), l.address))
                .collect();
            self.apply(&wanted, &mut open, &drain);
            seen = Some(snapshot);
        }
        // Dropping the stop senders ends every accept loop (they also see the drain).
        drop(open);
    }

    fn apply(
        &self,
        wanted: &[(String, SocketAddr)],
        open: &mut std::collections::BTreeMap<SocketAddr, Open>,
        drain: &drain::Watch,
    ) {
        let bound: BTreeSet<SocketAddr> = open.keys().copied().collect();
        let plan = plan(wanted, &bound);
        for addr in &plan.unbind {
            if let Some(o) = open.remove(addr) {
                tracing::info!(listener = %o.name, address = %addr,
                    "listener removed from the configuration: no longer accepting; its open connections finish");
            }
        }
        let mut errors: Vec<(String, SocketAddr, String)> = Vec::new();
        for (name, addr) in &plan.keep {
            if let Some(o) = open.get_mut(addr)
                && o.name != *name
            {
                tracing::info!(from = %o.name, to = %name, address = %addr, "listener renamed: its socket is kept");
                o.name = name.clone();
            }
        }
        for (name, addr) in &plan.bind {
            match BoundListener::new(name, *addr, self.shared.clone()) {
                Ok(l) => {
                    let local = l.local_addrs();
                    tracing::info!(listener = %name, address = %addr, ?local, "listener bound");
                    let (stop, stopped) = watch::channel(());
                    tokio::spawn(l.run(drain.clone(), stopped));
                    open.insert(
                        *addr,
                        Open {
                            name: name.clone(),
                            local,
                            _stop: stop,
                        },
                    );
                }
                Err(e) => errors.push((name.clone(), *addr, e)),
            }
        }
        for (name, addr, first) in &plan.duplicates {
            errors.push((
                name.clone(),
                *addr,
                format!("listener {name} ({addr}): listener {first} already has this address"),
            ));
        }
        for (name, _, e) in &errors {
            self.shared.metrics.bind_failed(name);
            tracing::error!(listener = %name, "{e}; tried again with the next configuration, the other listeners serve");
        }
        let states = wanted
            .iter()
            .map(|(name, addr)| {
                let error = errors
                    .iter()
                    .find(|(n, a, _)| n == name && a == addr)
                    .map(|(_, _, e)| e.clone());
                let local = match (&error, open.get(addr)) {
                    (None, Some(o)) => o.local.clone(),
                    _ => Vec::new(),
                };
                ListenerState {
                    name: name.clone(),
                    address: *addr,
                    local,
                    error,
                }
            })
            .collect();
        self.status.set(states);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn w(list: &[(&str, &str)]) -> Vec<(String, SocketAddr)> {
        list.iter().map(|(n, s)| (n.to_string(), a(s))).collect()
    }

    #[test]
    fn the_plan_binds_new_keeps_bound_and_closes_removed_listeners() {
        let bound: BTreeSet<SocketAddr> = [a("0.0.0.0:8080"), a("0.0.0.0:9090")].into();
        let p = plan(
            &w(&[
                ("0.0.0.0_8080", "0.0.0.0:8080"),
                ("0.0.0.0_8443", "0.0.0.0:8443"),
            ]),
            &bound,
        );
        assert_eq!(p.bind, w(&[("0.0.0.0_8443", "0.0.0.0:8443")]));
        assert_eq!(p.keep, w(&[("0.0.0.0_8080", "0.0.0.0:8080")]));
        assert_eq!(p.unbind, [a("0.0.0.0:9090")]);
        assert!(p.duplicates.is_empty());

        // Nothing bound yet: everything is bound, in configuration order.
        let p = plan(
            &w(&[("b", "127.0.0.1:2"), ("a", "127.0.0.1:1")]),
            &BTreeSet::new(),
        );
        assert_eq!(p.bind, w(&[("b", "127.0.0.1:2"), ("a", "127.0.0.1:1")]));
        assert!(p.keep.is_empty() && p.unbind.is_empty());

        // An empty configuration closes everything.
        let p = plan(&[], &bound);
        assert_eq!(p.unbind, [a("0.0.0.0:8080"), a("0.0.0.0:9090")]);
        assert!(p.bind.is_empty() && p.keep.is_empty());
    }

    #[test]
    fn a_renamed_listener_keeps_its_socket_and_a_second_one_on_an_address_is_a_duplicate() {
        let bound: BTreeSet<SocketAddr> = [a("0.0.0.0:8080")].into();
        let p = plan(
            &w(&[("renamed", "0.0.0.0:8080"), ("again", "0.0.0.0:8080")]),
            &bound,
        );
        assert_eq!(p.keep, w(&[("renamed", "0.0.0.0:8080")]));
        assert!(p.bind.is_empty() && p.unbind.is_empty());
        assert_eq!(
            p.duplicates,
            [(
                "again".to_string(),
                a("0.0.0.0:8080"),
                "renamed".to_string()
            )]
        );
        // The duplicate's address stays bound for the first one.
        let p = plan(
            &w(&[("x", "0.0.0.0:1"), ("y", "0.0.0.0:1")]),
            &BTreeSet::new(),
        );
        assert_eq!(p.bind, w(&[("x", "0.0.0.0:1")]));
        assert_eq!(p.duplicates.len(), 1);
    }
}
