//! The HTTP connection manager: what the listeners hand every `http_connection_manager` filter
//! chain's connection to ([`HttpConnection`]).
//!
//! * [`ConnectionManager::compile`] compiles every route table of a configuration, the named ones
//!   (`routes`, reached through `rds.routeConfigName`) and those inline in a listener's
//!   `routeConfig` (inbound `inbound|9080||`), with this pod's labels (for `sourceLabels`). A
//!   table that does not compile (a bad regex...) refuses the whole configuration, naming the
//!   table and field; the previous configuration keeps serving. The result is kept in the
//!   snapshot (`Snapshot::http`).
//! * [`ConnectionManager::serve`] runs [`serve_connection_with_drain`] on the connection with the
//!   route table of its filter chain and the snapshot's clusters ([`ClusterUpstreams`]). A
//!   connection keeps the routes and clusters of the configuration it was accepted on; new connections
//!   get the new configuration. An `rds` name without a table answers every request
//!   `404 NR`, as Envoy does before the table arrives.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::listener::{HttpConnectionManager, NetworkFilter};
use rustmesh_xds::route::RouteConfiguration;

use crate::access_log::Sink;
use crate::cluster::Clusters;
use crate::drain;
use crate::http::upstreams::ClusterUpstreams;
use crate::http::{
    Authorizer, ConnAuthz, HttpContext, HttpSettings, Rng, RouteTable, serve_connection_draining,
    serve_connection_with_drain,
};
use crate::metrics::{Destinations, Metrics as IstioMetrics, Reporter, WorkloadInfo};
use crate::peer::OwnMetadata;
use crate::pool::PassthroughPools;
use crate::socket::{ClientAddr, OrigDstAddr};
use crate::{Error, Result};

/// Everything the HTTP connection manager gets for one connection whose filter chain is
/// `http_connection_manager`: the connection keeps the routes and clusters of the
/// configuration it was accepted on until it ends.
pub struct HttpConnection {
    /// The accepted downstream connection (TLS already terminated when the chain does it).
    /// Bytes looked at by the sniffer were only peeked: they are all still unread.
    pub stream: crate::transport::Io,
    /// This workload's SPIFFE id, while it holds a certificate (metrics' principals).
    pub own_identity: Option<String>,
    /// The chain's `http_connection_manager` configuration.
    pub hcm: Arc<HttpConnectionManager>,
    /// Its access logs, compiled.
    pub access_logs: crate::access_log::AccessLogs,
    /// Its tracing, compiled (`None`: the chain does not trace).
    pub tracer: Option<Arc<crate::trace::Tracer>>,
    /// The SNI the client sent, if it spoke TLS (`%REQUESTED_SERVER_NAME%`).
    pub requested_server_name: Option<Arc<str>>,
    /// The chain's route table ([`CompiledRoutes::table`]); `None` when the configuration has
    /// no table of the `rds` name (every request gets `404 NR`).
    pub routes: Option<Arc<RouteTable>>,
    /// The cluster manager's table of the connection's configuration.
    pub clusters: Clusters,
    /// Cluster → service of the connection's configuration, for Istio's metrics.
    pub destinations: Arc<Destinations>,
    /// `source` (outbound, 15001) or `destination` (inbound, 15006), for Istio's metrics.
    pub reporter: Reporter,
    /// Where the client was going (before capture).
    pub orig_dst: OrigDstAddr,
    /// Who the client is.
    pub client: ClientAddr,
    /// Resolves when the sidecar starts draining (SIGTERM): finish in-flight requests, stop
    /// keep-alive (`Connection: close`, HTTP/2 GOAWAY). Holding it delays the exit.
    pub drain: drain::Watch,
    /// The AuthorizationPolicies each request is checked against (inbound, when some apply to
    /// this pod).
    pub authz: Option<ConnAuthz>,
    /// The client's address, when requests to ORIGINAL_DST clusters leave from it (TPROXY
    /// inbound, [`crate::dial::ClusterDialer::with_original_source`]).
    pub original_source: Option<std::net::IpAddr>,
    /// Whether draining (SIGTERM) closes the connection after its request in flight: inbound
    /// (Istio drains a sidecar's inbound listeners only) and every connection of a router.
    /// Otherwise it is served until the drain closes.
    pub graceful_drain: bool,
    /// Resolves when a new configuration no longer serves this connection's chain as it was
    /// (its connection manager changed: access logs, tracing, metrics, routes' name): the
    /// connection then finishes its request in flight and closes (HTTP/1.1 `Connection:
    /// close`, HTTP/2 GOAWAY), so the client's next connection gets the new settings, as
    /// Envoy drains the connections of a changed listener.
    pub chain_changed: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

/// Resolves when either does.
async fn first(a: impl std::future::Future<Output = ()>, b: impl std::future::Future<Output = ()>) {
    tokio::select! {
        () = a => {}
        () = b => {}
    }
}

/// The route tables of one configuration.
#[derive(Debug, Default)]
pub struct CompiledRoutes {
    /// Named tables (`routes`), by name.
    named: HashMap<String, Arc<RouteTable>>,
    /// Inline tables, by name; several only when differently defined tables share a name.
    inline: HashMap<String, Vec<(RouteConfiguration, Arc<RouteTable>)>>,
}

impl CompiledRoutes {
    /// The table a connection manager uses.
    pub fn table(&self, hcm: &HttpConnectionManager) -> Option<Arc<RouteTable>> {
        if let Some(rc) = &hcm.route_config {
            let found = self.inline.get(&rc.name)?;
            return match found.as_slice() {
                [(_, t)] => Some(t.clone()),
                many => many.iter().find(|(c, _)| c == rc).map(|(_, t)| t.clone()),
            };
        }
        let name = &hcm.rds.as_ref()?.route_config_name;
        self.named.get(name).cloned()
    }

    /// Names of the compiled tables (named, then inline), for logs and tests.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.named.keys().cloned().collect();
        v.extend(self.inline.keys().cloned());
        v.sort();
        v
    }
}

/// Compiles the route tables of `config` for a pod with `labels`.
pub fn compile_routes(
    config: &ProxyConfig,
    labels: &BTreeMap<String, String>,
) -> Result<CompiledRoutes> {
    let fail = |path: String, e: crate::http::RouteError| Error::ConfigCompile {
        field: format!("{path}.{}", e.field),
        message: format!("route table {:?}: {}", e.table, e.message),
    };
    let mut out = CompiledRoutes::default();
    for (i, rc) in config.routes.iter().enumerate() {
        let t = RouteTable::compile(rc, labels).map_err(|e| fail(format!("routes[{i}]"), e))?;
        out.named.insert(rc.name.clone(), Arc::new(t));
    }
    for (li, l) in config.listeners.iter().enumerate() {
        let chains = l
            .filter_chains
            .iter()
            .enumerate()
            .map(|(ci, c)| (format!("listeners[{li}].filterChains[{ci}]"), c))
            .chain(
                l.default_filter_chain
                    .iter()
                    .map(|c| (format!("listeners[{li}].defaultFilterChain"), c)),
            );
        for (path, chain) in chains {
            for (fi, f) in chain.filters.iter().enumerate() {
                let NetworkFilter::HttpConnectionManager(h) = f else {
                    continue;
                };
                let Some(rc) = &h.route_config else {
                    continue;
                };
                let slot = out.inline.entry(rc.name.clone()).or_default();
                if slot.iter().any(|(c, _)| c == rc) {
                    continue;
                }
                let t = RouteTable::compile(rc, labels).map_err(|e| {
                    fail(format!("{path}.filters[{fi}].typedConfig.routeConfig"), e)
                })?;
                slot.push((rc.clone(), Arc::new(t)));
            }
        }
    }
    Ok(out)
}

/// The sidecar's HTTP connection manager.
pub struct ConnectionManager {
    istio: Arc<IstioMetrics>,
    workload: Arc<WorkloadInfo>,
    settings: Arc<HttpSettings>,
    rng: Arc<Rng>,
    access_log: Sink,
    passthrough: Arc<PassthroughPools>,
    own_metadata: Arc<OwnMetadata>,
    /// This pod in spans.
    trace_local: Arc<crate::trace::Local>,
}

impl ConnectionManager {
    /// A connection manager recording Istio's metrics into `istio` for `workload` (whose labels
    /// also drive `sourceLabels` matches).
    pub fn new(istio: Arc<IstioMetrics>, workload: Arc<WorkloadInfo>) -> Self {
        ConnectionManager {
            istio,
            own_metadata: Arc::new(OwnMetadata::of(&workload, None)),
            trace_local: Arc::new(crate::trace::Local::of(&workload, None, None)),
            workload,
            settings: Arc::new(HttpSettings::default()),
            rng: Arc::new(Rng::from_entropy()),
            access_log: Sink::stdio(),
            passthrough: Arc::new(PassthroughPools::default()),
        }
    }

    /// The pod's address, for the node id sent in the metadata exchange
    /// (`x-envoy-peer-metadata-id`, see [`crate::peer`]).
    pub fn with_instance_ip(mut self, ip: Option<std::net::IpAddr>) -> Self {
        self.own_metadata = Arc::new(OwnMetadata::of(&self.workload, ip));
        self.trace_local = Arc::new(crate::trace::Local::of(
            &self.workload,
            self.own_metadata.node_id(),
            ip,
        ));
        self
    }

    /// Access-log lines (when a connection manager has `accessLog`) go to `log`.
    pub fn with_access_log(mut self, log: Sink) -> Self {
        self.access_log = log;
        self
    }

    /// This sidecar's metadata for the exchange (TCP proxies send its preface too).
    pub fn own_metadata(&self) -> &OwnMetadata {
        &self.own_metadata
    }

    /// Where access-log lines go (TCP proxies write there too).
    pub fn access_log_sink(&self) -> &Sink {
        &self.access_log
    }

    /// Server limits other than the defaults.
    pub fn with_settings(mut self, settings: HttpSettings) -> Self {
        self.settings = Arc::new(settings);
        self
    }
}

impl Default for ConnectionManager {
    /// A connection manager with a metrics registry of its own and no pod labels (tests).
    fn default() -> Self {
        ConnectionManager::new(
            Arc::new(IstioMetrics::new()),
            Arc::new(WorkloadInfo::default()),
        )
    }
}

impl ConnectionManager {
    /// Compiles the HTTP side of a new configuration (its route tables, with this pod's
    /// labels). An error refuses the whole configuration (the previous one keeps serving),
    /// naming the table and field. The result is kept in the snapshot.
    pub fn compile(&self, config: &ProxyConfig) -> Result<CompiledRoutes> {
        compile_routes(config, &self.workload.labels)
    }

    /// This pod's labels (which policies and `sourceLabels` apply to it).
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.workload.labels
    }

    /// Serves one connection until it ends.
    pub async fn serve(&self, conn: HttpConnection) -> io::Result<()> {
        let HttpConnection {
            stream,
            hcm,
            access_logs,
            tracer,
            requested_server_name,
            routes,
            clusters,
            destinations,
            reporter,
            orig_dst,
            client,
            drain,
            own_identity,
            authz,
            original_source,
            graceful_drain,
            chain_changed,
        } = conn;
        let peer_identity = stream.peer_identity();
        let authz = authz.map(|given| {
            let attrs = crate::authz::Connection::new(
                peer_identity.as_ref(),
                client.0,
                orig_dst.0,
                stream.sni(),
            );
            Arc::new(Authorizer::new(given, attrs))
        });
        let client_cert_details = match reporter {
            Reporter::Destination => stream
                .client_cert_details(own_identity.as_deref())
                .and_then(|v| http::HeaderValue::from_str(&v).ok()),
            Reporter::Source => None,
        };
        let table = routes.unwrap_or_else(|| {
            let name = hcm
                .rds
                .as_ref()
                .map(|r| r.route_config_name.clone())
                .unwrap_or_default();
            let empty = RouteConfiguration {
                name,
                ..Default::default()
            };
            Arc::new(
                RouteTable::compile(&empty, &self.workload.labels)
                    .expect("an empty route table compiles"),
            )
        });
        let ctx = HttpContext {
            routes: Arc::new(ArcSwap::new(table)),
            upstreams: ClusterUpstreams::new(clusters, self.passthrough.clone())
                .with_original_source(original_source),
            metrics: self.istio.clone(),
            workload: self.workload.clone(),
            own_metadata: self.own_metadata.clone(),
            destinations,
            reporter,
            peer: client.0,
            local: orig_dst.0,
            settings: self.settings.clone(),
            rng: self.rng.clone(),
            access_log: self.access_log.clone(),
            access_logs,
            peer_identity,
            own_identity,
            client_cert_details,
            authz,
            requested_server_name,
            metric_settings: crate::metrics::ChainMetrics::of(
                &hcm.disabled_metrics,
                &hcm.tag_overrides,
            ),
            trace: tracer.map(|tracer| crate::trace::ConnTracing {
                tracer,
                local: self.trace_local.clone(),
            }),
        };
        // As Envoy does for every accepted socket: a response's head and body are separate
        // writes, and Nagle would hold the second until the first is acknowledged.
        let _ = stream.set_nodelay(true);
        // Istio drains only the inbound listeners on SIGTERM (`drain_listeners?inboundonly`):
        // inbound connections close after their request in flight (one accepted during the
        // drain serves one request), outbound ones serve the app until the drain closes.
        // A router's connections drain as inbound ones (`drain_listeners?graceful`).
        let result = match graceful_drain {
            true if drain.is_draining() => serve_connection_draining(stream, ctx).await,
            true => {
                serve_connection_with_drain(stream, ctx, first(drain.signaled(), chain_changed))
                    .await
            }
            false => {
                serve_connection_with_drain(stream, ctx, first(drain.closed(), chain_changed)).await
            }
        };
        drop(drain);
        result.map_err(|e| io::Error::other(e.to_string()))
    }
}
