//! Command-line flags (each also readable from the environment).

use crate::controller::{CaSettings, EndpointsSource, Settings};
use crate::error::Error;
use crate::index::MeshConfig;
use crate::leader::LeaseConfig;
use clap::Parser;
use rustmesh_api::sidecar::OutboundTrafficPolicyMode;
use rustmesh_xds::identity::DEFAULT_TRUST_DOMAIN;
use rustmesh_xds::well_known::{DEFAULT_DOMAIN_SUFFIX, DEFAULT_ROOT_NAMESPACE};
use std::net::SocketAddr;
use std::time::Duration;

/// The rustmesh control plane: renders each injected namespace's proxy configuration.
#[derive(Clone, Debug, Parser)]
#[command(name = "operator", version)]
pub struct Args {
    /// The mesh root namespace: its Sidecar without workloadSelector is every namespace's default.
    #[arg(long, env = "ROOT_NAMESPACE", default_value = DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,
    /// The cluster's DNS domain.
    #[arg(long, env = "DOMAIN_SUFFIX", default_value = DEFAULT_DOMAIN_SUFFIX)]
    pub domain_suffix: String,
    /// This cluster's id (Istio's `CLUSTER_ID`; the injector's `clusterId` must match): the
    /// `destination_cluster` of the endpoints' workloads.
    #[arg(long, env = "CLUSTER_ID", default_value = crate::index::DEFAULT_CLUSTER_ID)]
    pub cluster_id: String,
    /// Istio's meshConfig `accessLogFile`: `/dev/stdout` (or `/dev/stderr`) turns every
    /// sidecar's access log on; empty: off.
    #[arg(long, env = "ACCESS_LOG_FILE", default_value = "")]
    pub access_log_file: String,
    /// meshConfig `accessLogEncoding`: `TEXT` or `JSON`.
    #[arg(long, env = "ACCESS_LOG_ENCODING", default_value = "TEXT")]
    pub access_log_encoding: String,
    /// meshConfig `accessLogFormat` (Envoy's command operators); empty: Istio's default for
    /// the encoding.
    #[arg(long, env = "ACCESS_LOG_FORMAT", default_value = "")]
    pub access_log_format: String,
    /// Istio's meshConfig `extensionProviders`, as a JSON list (`zipkin`, `opentelemetry`,
    /// `envoyFileAccessLog`, `prometheus`); other kinds are refused by name.
    #[arg(long, env = "EXTENSION_PROVIDERS", default_value = "")]
    pub extension_providers: String,
    /// meshConfig `defaultProviders.tracing`: the tracing provider every sidecar reports to
    /// (empty: no tracing).
    #[arg(long, env = "DEFAULT_TRACING_PROVIDERS", default_value = "")]
    pub default_tracing_providers: String,
    /// meshConfig `defaultProviders.accessLogging`: the access log providers of a Telemetry
    /// `accessLogging` rule naming none, and of every workload when set (empty: none).
    #[arg(long, env = "DEFAULT_ACCESS_LOG_PROVIDERS", default_value = "")]
    pub default_access_log_providers: String,
    /// meshConfig `defaultProviders.metrics` (Istio's default: prometheus): the metrics
    /// providers of a Telemetry `metrics` rule naming none; without a prometheus provider here
    /// or in a Telemetry, sidecars record no Istio metric.
    #[arg(long, env = "DEFAULT_METRICS_PROVIDERS", default_value = "prometheus")]
    pub default_metrics_providers: String,
    /// meshConfig `enableTracing` (Istio's default: true); false turns tracing off whatever
    /// the providers.
    #[arg(long, env = "ENABLE_TRACING", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_tracing: bool,
    /// istiod's `PILOT_TRACE_SAMPLING`: the percentage of requests without a sampling decision
    /// that are traced.
    #[arg(long, env = "PILOT_TRACE_SAMPLING", default_value_t = 1.0)]
    pub trace_sampling: f64,
    /// Mesh-wide outboundTrafficPolicy: ALLOW_ANY or REGISTRY_ONLY (a Sidecar may override it).
    #[arg(long, env = "OUTBOUND_TRAFFIC_POLICY", default_value = "ALLOW_ANY")]
    pub outbound_traffic_policy: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:15014")]
    pub metrics_addr: SocketAddr,
    /// Quiet period after a change before re-rendering (milliseconds).
    #[arg(long, env = "DEBOUNCE_MS", default_value_t = 100)]
    pub debounce_ms: u64,
    /// Longest a change waits for a re-render while changes keep coming (milliseconds).
    #[arg(long, env = "DEBOUNCE_MAX_MS", default_value_t = 1000)]
    pub debounce_max_ms: u64,
    /// Run without leader election (a single replica).
    #[arg(long, env = "NO_LEADER_ELECTION")]
    pub no_leader_election: bool,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = DEFAULT_ROOT_NAMESPACE)]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "rustmesh-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Lease duration in seconds: how long a dead leader blocks the other replica.
    #[arg(long, env = "LEASE_DURATION_SECS", default_value_t = 15)]
    pub lease_duration_secs: u64,
    /// Where endpoints come from: `auto` (EndpointSlices when the API server serves
    /// discovery.k8s.io/v1, else Endpoints), `endpointslices` or `endpoints`.
    #[arg(long, env = "ENDPOINTS_SOURCE", default_value = "auto")]
    pub endpoints_source: String,
    /// Run the mesh CA (Istio's `ENABLE_CA_SERVER`): sign workload certificates and publish the
    /// root as `istio-ca-root-cert` in every namespace.
    #[arg(long, env = "ENABLE_CA_SERVER", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_ca_server: bool,
    /// Where the CA's gRPC+TLS service listens.
    #[arg(long, env = "CA_LISTEN_ADDR", default_value = "0.0.0.0:15012")]
    pub ca_listen_addr: SocketAddr,
    /// Most connections the CA serves at once; more are closed as they are accepted (and
    /// counted in `rustmesh_ca_connections_refused_total`).
    #[arg(long, env = "CA_MAX_CONNECTIONS", default_value_t = crate::ca::service::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub ca_max_connections: usize,
    /// The mesh trust domain (SPIFFE ids `spiffe://<trust domain>/ns/<ns>/sa/<sa>`).
    #[arg(long, env = "TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Istio's `meshConfig.enableAutoMtls`: with the CA, outbound traffic to a pod carrying
    /// `security.istio.io/tlsMode: istio` is mutual TLS without a DestinationRule.
    #[arg(long, env = "ENABLE_AUTO_MTLS", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_auto_mtls: bool,
    /// DNS names of the CA's serving certificate (comma-separated); default: `istiod` and
    /// `rustmesh-operator` Services in the root namespace.
    #[arg(long, env = "CA_DNS_NAMES", value_delimiter = ',')]
    pub ca_dns_names: Vec<String>,
    /// This control plane's revision (Istio's `istio.io/rev`): only namespaces and pods that
    /// select it get configuration from this operator; `default` also serves
    /// `istio-injection=enabled` and pods labelled `sidecar.istio.io/inject: "true"`.
    #[arg(long, env = "REVISION", default_value = crate::index::DEFAULT_REVISION)]
    pub revision: String,
}

impl Args {
    /// Checks the flags and turns them into settings.
    /// The mesh's access log from `--access-log-file`, `--access-log-encoding` and
    /// `--access-log-format`, compiled once here so a bad format stops the operator at start,
    /// naming the flag, instead of every sidecar refusing its configuration.
    fn access_log(&self) -> Result<Option<rustmesh_xds::access_log::AccessLog>, Error> {
        use rustmesh_xds::access_log::{AccessLog, Encoding};
        let encoding = match self.access_log_encoding.to_ascii_uppercase().as_str() {
            "TEXT" => Encoding::Text,
            "JSON" => Encoding::Json,
            other => {
                return Err(Error::Flag {
                    flag: "access-log-encoding",
                    message: format!("{other:?} is not TEXT or JSON"),
                });
            }
        };
        if self.access_log_file.is_empty() {
            if !self.access_log_format.is_empty() || encoding != Encoding::Text {
                return Err(Error::Flag {
                    flag: "access-log-file",
                    message: "empty (access logs off), yet --access-log-encoding or \
                              --access-log-format is set: set the file (/dev/stdout) or unset them"
                        .into(),
                });
            }
            return Ok(None);
        }
        let log = AccessLog {
            filter: None,
            path: self.access_log_file.clone(),
            encoding,
            format: (!self.access_log_format.is_empty()).then(|| self.access_log_format.clone()),
        };
        log.compile().map_err(|e| Error::Flag {
            flag: if log.format.is_some() {
                "access-log-format"
            } else {
                "access-log-file"
            },
            message: e.to_string(),
        })?;
        Ok(Some(log))
    }

    pub fn settings(&self) -> Result<Settings, Error> {
        let outbound_policy = match self.outbound_traffic_policy.to_ascii_uppercase().as_str() {
            "ALLOW_ANY" => OutboundTrafficPolicyMode::AllowAny,
            "REGISTRY_ONLY" => OutboundTrafficPolicyMode::RegistryOnly,
            other => {
                return Err(Error::Flag {
                    flag: "outbound-traffic-policy",
                    message: format!("{other:?} is not ALLOW_ANY or REGISTRY_ONLY"),
                });
            }
        };
        if self.root_namespace.is_empty() {
            return Err(Error::Flag {
                flag: "root-namespace",
                message: "must not be empty".into(),
            });
        }
        if self.debounce_ms == 0 || self.debounce_max_ms < self.debounce_ms {
            return Err(Error::Flag {
                flag: "debounce-max-ms",
                message: format!(
                    "{} must be at least --debounce-ms {} (and both above 0)",
                    self.debounce_max_ms, self.debounce_ms
                ),
            });
        }
        if self.lease_duration_secs < 3 {
            return Err(Error::Flag {
                flag: "lease-duration-secs",
                message: "must be at least 3".into(),
            });
        }
        let access_log = self.access_log()?;
        let (tracing, telemetry) = crate::providers::Providers::parse(&self.extension_providers)
            .and_then(|p| {
                Ok((
                    p.default_tracing(
                        self.enable_tracing,
                        &self.default_tracing_providers,
                        self.trace_sampling,
                    )?,
                    p.telemetry(
                        &self.default_tracing_providers,
                        &self.default_access_log_providers,
                        &self.default_metrics_providers,
                        self.trace_sampling,
                    )?,
                ))
            })
            .map_err(|e| Error::Flag {
                flag: match &e {
                    crate::providers::ProvidersError::Sampling(_) => "trace-sampling",
                    crate::providers::ProvidersError::UnknownDefault(_)
                    | crate::providers::ProvidersError::NotTracing(_)
                    | crate::providers::ProvidersError::Several(_) => "default-tracing-providers",
                    crate::providers::ProvidersError::Defaults(m)
                        if m.contains("accessLogging") =>
                    {
                        "default-access-log-providers"
                    }
                    crate::providers::ProvidersError::Defaults(m) if m.contains("metrics") => {
                        "default-metrics-providers"
                    }
                    _ => "extension-providers",
                },
                message: e.to_string(),
            })?;
        let endpoints_source = match self.endpoints_source.to_ascii_lowercase().as_str() {
            "auto" => EndpointsSource::Auto,
            "endpointslices" => EndpointsSource::EndpointSlices,
            "endpoints" => EndpointsSource::Endpoints,
            other => {
                return Err(Error::Flag {
                    flag: "endpoints-source",
                    message: format!("{other:?} is not auto, endpointslices or endpoints"),
                });
            }
        };
        let identity = self
            .identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("operator-{}", std::process::id()));
        let duration = Duration::from_secs(self.lease_duration_secs);
        let label_value = !self.revision.is_empty()
            && self.revision.len() <= 63
            && self
                .revision
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && self.revision.as_bytes()[0].is_ascii_alphanumeric()
            && self.revision.as_bytes()[self.revision.len() - 1].is_ascii_alphanumeric();
        if !label_value {
            return Err(Error::Flag {
                flag: "revision",
                message: format!(
                    "{:?} is not a label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)",
                    self.revision
                ),
            });
        }
        let ca = if self.enable_ca_server {
            // The trust domain must make valid SPIFFE ids.
            rustmesh_xds::identity::SpiffeId::new(&self.trust_domain, "ns", "sa").map_err(|e| {
                Error::Flag {
                    flag: "trust-domain",
                    message: e.to_string(),
                }
            })?;
            let ns = &self.root_namespace;
            let dns_names = if self.ca_dns_names.is_empty() {
                ["istiod", "rustmesh-operator"]
                    .iter()
                    .flat_map(|svc| {
                        [
                            format!("{svc}.{ns}.svc"),
                            format!("{svc}.{ns}.svc.{}", self.domain_suffix),
                        ]
                    })
                    .collect()
            } else {
                self.ca_dns_names.clone()
            };
            Some(CaSettings {
                addr: self.ca_listen_addr,
                max_connections: self.ca_max_connections,
                trust_domain: self.trust_domain.clone(),
                dns_names,
            })
        } else {
            None
        };
        Ok(Settings {
            mesh: MeshConfig {
                root_namespace: self.root_namespace.clone(),
                domain_suffix: self.domain_suffix.clone(),
                outbound_policy,
                ca_host: ca.as_ref().and_then(|ca| {
                    let fqdn_suffix = format!(".svc.{}", self.domain_suffix);
                    ca.dns_names
                        .iter()
                        .find(|n| n.ends_with(&fqdn_suffix))
                        .cloned()
                }),
                trust_domain: self.trust_domain.clone(),
                auto_mtls: self.enable_auto_mtls,
                revision: self.revision.clone(),
                cluster_id: self.cluster_id.clone(),
                access_log,
                tracing,
                telemetry,
            },
            metrics_addr: self.metrics_addr,
            debounce_quiet: Duration::from_millis(self.debounce_ms),
            debounce_max: Duration::from_millis(self.debounce_max_ms),
            lease: (!self.no_leader_election).then(|| LeaseConfig {
                namespace: self.lease_namespace.clone(),
                name: self.lease_name.clone(),
                identity: identity.clone(),
                duration,
                renew_every: duration / 3,
            }),
            identity,
            endpoints_source,
            ca,
        })
    }
}

/// Runs the operator with these flags.
pub async fn run(args: Args) -> Result<(), Error> {
    let settings = args.settings()?;
    // Every connection (metrics, CA) costs a descriptor: the soft limit up to the hard one.
    rustmesh_xds::serve::raise_fd_limit_logged();
    crate::controller::run(settings).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_flags_are_istios_mesh_settings_checked_at_start() {
        let settings = |args: &[&str]| {
            let mut argv = vec!["operator"];
            argv.extend_from_slice(args);
            Args::try_parse_from(argv).unwrap().settings()
        };
        let zipkin = r#"[{"name": "zipkin", "zipkin": {"service": "zipkin.istio-system.svc.cluster.local", "port": 9411}}]"#;
        // Providers alone trace nothing (Istio needs a default provider or a Telemetry).
        assert_eq!(settings(&[]).unwrap().mesh.tracing, None);
        assert_eq!(
            settings(&["--extension-providers", zipkin])
                .unwrap()
                .mesh
                .tracing,
            None
        );
        let on = settings(&[
            "--extension-providers",
            zipkin,
            "--default-tracing-providers",
            "zipkin",
            "--trace-sampling",
            "100",
        ])
        .unwrap()
        .mesh
        .tracing
        .unwrap();
        assert_eq!((on.provider.port, on.random_sampling), (9411, 100.0));
        let off = settings(&[
            "--extension-providers",
            zipkin,
            "--default-tracing-providers",
            "zipkin",
            "--enable-tracing",
            "false",
        ])
        .unwrap();
        assert_eq!(off.mesh.tracing, None);
        for (args, flag) in [
            (
                &["--default-tracing-providers", "jaeger"][..],
                "--default-tracing-providers",
            ),
            (
                &["--extension-providers", "[{]"][..],
                "--extension-providers",
            ),
            (
                &[
                    "--extension-providers",
                    zipkin,
                    "--default-tracing-providers",
                    "zipkin",
                    "--trace-sampling",
                    "100.5",
                ][..],
                "--trace-sampling",
            ),
        ] {
            let e = settings(args).unwrap_err().to_string();
            assert!(e.starts_with(&format!("flag {flag}:")), "{args:?}: {e}");
        }
    }

    #[test]
    fn access_log_flags_are_istios_mesh_settings_checked_at_start() {
        let settings = |args: &[&str]| {
            let mut argv = vec!["operator"];
            argv.extend_from_slice(args);
            Args::try_parse_from(argv).unwrap().settings()
        };
        // Off by default, as Istio's default install.
        assert_eq!(settings(&[]).unwrap().mesh.access_log, None);
        let on = settings(&["--access-log-file", "/dev/stdout"]).unwrap();
        let log = on.mesh.access_log.unwrap();
        assert_eq!((log.path.as_str(), log.format), ("/dev/stdout", None));
        let json = settings(&[
            "--access-log-file",
            "/dev/stderr",
            "--access-log-encoding",
            "json",
        ])
        .unwrap();
        assert_eq!(
            json.mesh.access_log.unwrap().encoding,
            rustmesh_xds::access_log::Encoding::Json
        );
        // Response trailers (gRPC's status and message) are logged as Envoy logs them.
        let trailers = settings(&[
            "--access-log-file",
            "/dev/stdout",
            "--access-log-format",
            "%TRAILER(GRPC-STATUS)% %TRAILER(GRPC-MESSAGE):20%",
        ])
        .unwrap();
        assert!(trailers.mesh.access_log.is_some());
        for (args, flag, names) in [
            (
                &["--access-log-file", "/var/log/access.log"][..],
                "--access-log-file",
                "/var/log/access.log",
            ),
            (
                &[
                    "--access-log-file",
                    "/dev/stdout",
                    "--access-log-format",
                    "%NOPE%",
                ],
                "--access-log-format",
                "NOPE",
            ),
            (
                &[
                    "--access-log-file",
                    "/dev/stdout",
                    "--access-log-format",
                    "%TRAILER(x):-1%",
                ],
                "--access-log-format",
                "TRAILER",
            ),
            (
                &[
                    "--access-log-file",
                    "/dev/stdout",
                    "--access-log-encoding",
                    "YAML",
                ],
                "--access-log-encoding",
                "YAML",
            ),
            // A format without a file would do nothing: refused.
            (
                &["--access-log-format", "%PROTOCOL%"],
                "--access-log-file",
                "access-log-format",
            ),
        ] {
            let e = settings(args).unwrap_err().to_string();
            assert!(e.contains(flag) && e.contains(names), "{args:?}: {e}");
        }
    }

    #[test]
    fn flags_are_checked_and_named() {
        let ok = Args::try_parse_from(["operator", "--identity", "op-0"]).unwrap();
        let s = ok.settings().unwrap();
        assert_eq!(s.mesh.root_namespace, "istio-system");
        assert_eq!(s.mesh.outbound_policy, OutboundTrafficPolicyMode::AllowAny);
        assert_eq!(s.lease.as_ref().unwrap().identity, "op-0");
        assert_eq!(
            s.lease.as_ref().unwrap().renew_every,
            Duration::from_secs(5)
        );
        let bad = Args::try_parse_from(["operator", "--outbound-traffic-policy", "DENY"]).unwrap();
        let e = bad.settings().unwrap_err().to_string();
        assert!(e.contains("--outbound-traffic-policy"), "{e}");
        let single = Args::try_parse_from([
            "operator",
            "--no-leader-election",
            "--outbound-traffic-policy",
            "registry_only",
        ])
        .unwrap()
        .settings()
        .unwrap();
        assert!(single.lease.is_none());
        let ca = s.ca.as_ref().expect("the CA runs by default");
        assert_eq!(ca.trust_domain, "cluster.local");
        assert_eq!(ca.addr.port(), 15012);
        assert!(
            ca.dns_names
                .contains(&"istiod.istio-system.svc".to_string())
        );
        assert_eq!(s.mesh.trust_domain, "cluster.local");
        assert!(s.mesh.auto_mtls, "auto mTLS is on by default, as in Istio");
        let off = Args::try_parse_from(["operator", "--enable-auto-mtls", "false"]).unwrap();
        assert!(!off.settings().unwrap().mesh.auto_mtls);
        let no_ca = Args::try_parse_from(["operator", "--enable-ca-server", "false"]).unwrap();
        assert!(no_ca.settings().unwrap().ca.is_none());
        let e = Args::try_parse_from(["operator", "--trust-domain", "Bad/Domain"])
            .unwrap()
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--trust-domain"), "{e}");
        assert_eq!(single.endpoints_source, EndpointsSource::Auto);
        let e = Args::try_parse_from(["operator", "--endpoints-source", "slices"])
            .unwrap()
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--endpoints-source"), "{e}");
        assert_eq!(
            single.mesh.outbound_policy,
            OutboundTrafficPolicyMode::RegistryOnly
        );
    }
}
