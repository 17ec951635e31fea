//! Command line: `rustmeshctl proxy-config (pc) <view> [POD] [flags]`, shaped like
//! `istioctl proxy-config`.

use crate::listeners::ListenerType;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use rustmesh_xds::names::Direction;
use std::path::PathBuf;
use std::time::Duration;

/// rustmeshctl: look inside rustmesh sidecars the way `istioctl` looks inside Istio's.
#[derive(Debug, Parser)]
#[command(name = "rustmeshctl", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a sidecar's listeners, routes, clusters, endpoints and certificates (as `istioctl
    /// proxy-config`).
    #[command(name = "proxy-config", visible_alias = "pc")]
    ProxyConfig(ProxyConfigArgs),
    /// Whether each sidecar serves the configuration the operator wrote for it (NAME CLUSTER
    /// CDS LDS EDS RDS SERVING WRITTEN VERSION), as `istioctl proxy-status`.
    #[command(name = "proxy-status", visible_alias = "ps")]
    ProxyStatus(ProxyStatusArgs),
    /// Experimental views (as `istioctl experimental`).
    #[command(name = "experimental", visible_alias = "x")]
    Experimental(ExperimentalArgs),
}

#[derive(Debug, Args)]
pub struct ExperimentalArgs {
    #[command(subcommand)]
    pub command: Experimental,
}

#[derive(Debug, Subcommand)]
pub enum Experimental {
    /// Authorization views.
    Authz(AuthzArgs),
}

#[derive(Debug, Args)]
pub struct AuthzArgs {
    #[command(subcommand)]
    pub command: Authz,
}

#[derive(Debug, Subcommand)]
pub enum Authz {
    /// The AuthorizationPolicy objects a sidecar enforces (ACTION AuthorizationPolicy RULES), as
    /// `istioctl x authz check`.
    Check(AuthzCheckArgs),
}

#[derive(Debug, Args)]
pub struct AuthzCheckArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// `<pod>[.<namespace>]`.
    pub pod: Option<String>,
    /// The workload's labels (`app=x,version=v1`) when reading --admin-url or --file; a pod's
    /// own are read from the API.
    #[arg(long, value_name = "LABELS")]
    pub labels: Option<String>,
}

#[derive(Debug, Args)]
pub struct ProxyStatusArgs {
    /// One pod, as `<pod>[.<namespace>]` (default: every injected, running pod).
    pub pod: Option<String>,
    /// Only this namespace (default: every namespace; for POD, the kubeconfig context's).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// How long to wait for the API server and each proxy (`500ms`, `10s`, `1m`).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ProxyConfigArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(subcommand)]
    pub view: View,
}

/// Where to read the proxy from: a pod (`<pod>[.<namespace>]`), `--admin-url` or `--file`.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Namespace of the pod (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// Read a proxy's admin API directly, e.g. http://127.0.0.1:15000 (a proxy outside Kubernetes,
    /// or one you port-forwarded yourself).
    #[arg(long, global = true, value_name = "URL")]
    pub admin_url: Option<String>,

    /// Read a configuration document (a saved /config_dump) from disk.
    #[arg(short = 'f', long, global = true, value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context to use.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    /// How long to wait for the API server and the proxy (`500ms`, `10s`, `1m`).
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d: rustmesh_xds::Duration = s.parse().map_err(|e| format!("{e}"))?;
    let d = d.as_std();
    if d.is_zero() {
        return Err("must be longer than 0s".into());
    }
    Ok(d)
}

/// Table (`short`, the default) or the selected configuration as JSON or YAML.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Short,
    Json,
    Yaml,
}

/// Format of `config-dump`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DumpOutput {
    #[default]
    Json,
    Yaml,
}

/// `--direction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    Inbound,
    Outbound,
}

impl From<DirectionArg> for Direction {
    fn from(d: DirectionArg) -> Self {
        match d {
            DirectionArg::Inbound => Direction::Inbound,
            DirectionArg::Outbound => Direction::Outbound,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum View {
    /// Listeners: one row per filter chain (ADDRESSES PORT MATCH DESTINATION).
    #[command(visible_aliases = ["listener", "l"])]
    Listeners(ListenersArgs),
    /// Route tables: one row per route (NAME VHOST NAME DOMAINS MATCH VIRTUAL SERVICE).
    #[command(visible_aliases = ["route", "r"])]
    Routes(RoutesArgs),
    /// Clusters (SERVICE FQDN PORT SUBSET DIRECTION TYPE DESTINATION RULE).
    #[command(visible_aliases = ["cluster", "c"])]
    Clusters(ClustersArgs),
    /// Endpoints and their live health (ENDPOINT STATUS OUTLIER CHECK CLUSTER).
    #[command(visible_aliases = ["endpoint", "ep"])]
    Endpoints(EndpointsArgs),
    /// The sidecar's certificates, from its admin API's /certs (RESOURCE NAME TYPE STATUS VALID
    /// CERT SERIAL NUMBER NOT AFTER NOT BEFORE); not available with --file.
    #[command(visible_aliases = ["secrets", "s"])]
    Secret(SecretArgs),
    /// Clusters, listeners, routes and endpoints, one table after the other.
    All(AllArgs),
    /// The whole configuration the proxy is serving.
    #[command(name = "config-dump")]
    ConfigDump(DumpArgs),
    /// The sidecar's log levels; `--level` changes them (as `istioctl proxy-config log`).
    #[command(visible_alias = "o")]
    Log(LogArgs),
}

impl View {
    /// The POD argument of whichever view.
    pub fn pod(&self) -> Option<&str> {
        match self {
            View::Listeners(a) => a.pod.as_deref(),
            View::Routes(a) => a.pod.as_deref(),
            View::Clusters(a) => a.pod.as_deref(),
            View::Endpoints(a) => a.pod.as_deref(),
            View::Secret(a) => a.pod.as_deref(),
            View::All(a) => a.pod.as_deref(),
            View::ConfigDump(a) => a.pod.as_deref(),
            View::Log(a) => a.pod.as_deref(),
        }
    }
}

#[derive(Debug, Args)]
pub struct ListenersArgs {
    /// Pod, as `<pod>[.<namespace>]`.
    pub pod: Option<String>,
    /// Only listeners on this port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only listeners with this address (e.g. 0.0.0.0, 10.96.0.10).
    #[arg(long)]
    pub address: Option<String>,
    /// Only inbound or outbound listeners, or (as istioctl) HTTP, TCP or HTTP+TCP ones.
    #[arg(long = "type", value_name = "TYPE", value_parser = clap::value_parser!(ListenerType))]
    pub kind: Option<ListenerType>,
    /// `short`: the table; `json`, `yaml`: the selected configuration.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
    /// MATCH and DESTINATION columns (`--verbose=false`: one TYPE column per listener).
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub verbose: bool,
}

#[derive(Debug, Args)]
pub struct RoutesArgs {
    /// Pod, as `<pod>[.<namespace>]`.
    pub pod: Option<String>,
    /// Only the route table with this name (e.g. 9080).
    #[arg(long)]
    pub name: Option<String>,
    /// `short`: the table; `json`, `yaml`: the selected configuration.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
    /// One row per route (`--verbose=false`: route tables and their virtual host count).
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub verbose: bool,
}

#[derive(Debug, Args)]
pub struct ClustersArgs {
    /// Pod, as `<pod>[.<namespace>]`.
    pub pod: Option<String>,
    /// Only clusters whose name contains this (e.g. reviews.default.svc.cluster.local).
    #[arg(long)]
    pub fqdn: Option<String>,
    /// Only clusters of this port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only clusters of this subset (e.g. v1).
    #[arg(long)]
    pub subset: Option<String>,
    /// Only inbound or outbound clusters.
    #[arg(long, value_enum)]
    pub direction: Option<DirectionArg>,
    /// `short`: the table; `json`, `yaml`: the selected configuration.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct EndpointsArgs {
    /// Pod, as `<pod>[.<namespace>]`.
    pub pod: Option<String>,
    /// Only endpoints of this cluster (whole name, e.g. 'outbound|9080||reviews.default.svc.cluster.local').
    #[arg(long)]
    pub cluster: Option<String>,
    /// Only endpoints with this address.
    #[arg(long)]
    pub address: Option<String>,
    /// Only endpoints on this port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only endpoints with this status (healthy, unhealthy, draining, timeout, degraded, unknown).
    #[arg(long, value_parser = crate::endpoints::parse_status)]
    pub status: Option<String>,
    /// `short`: the table; `json`, `yaml`: the selected configuration.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct SecretArgs {
    /// Pod, as `<pod>[.<namespace>]`.
    pub pod: Option<String>,
    /// `short`: the table; `json`, `yaml`: the proxy's /certs document.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct AllArgs {
    /// Pod, as `<pod>[.<namespace>]`.
    pub pod: Option<String>,
    /// `short`: the four tables; `json`, `yaml`: the whole configuration.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Pod, as `<pod>[.<namespace>]`.
    pub pod: Option<String>,
    /// `[<logger>:]<level>,...`: a bare level for every logger, `<logger>:<level>` for one
    /// (e.g. `http:debug,info`); levels: trace, debug, info, warning, error, critical, off.
    #[arg(long, value_name = "LEVELS", value_parser = parse_levels)]
    pub level: Option<Levels>,
}

/// `--level`'s entries (a newtype: clap reads an `Option<Vec<_>>` as a repeated flag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Levels(pub Vec<crate::logging::LevelSpec>);

fn parse_levels(s: &str) -> Result<Levels, String> {
    crate::logging::parse_levels(s).map(Levels)
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Pod, as `<pod>[.<namespace>]`.
    pub pod: Option<String>,
    /// `json` or `yaml`.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: DumpOutput,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn pc_alias_and_flags_after_the_view() {
        let cli = Cli::try_parse_from([
            "rustmeshctl",
            "pc",
            "listener",
            "productpage-v1.default",
            "--port",
            "9080",
            "-n",
            "default",
            "--type",
            "outbound",
            "-o",
            "json",
        ])
        .unwrap();
        let Command::ProxyConfig(pc) = cli.command else {
            panic!("not proxy-config")
        };
        assert_eq!(pc.source.namespace.as_deref(), Some("default"));
        let View::Listeners(l) = pc.view else {
            panic!("not listeners")
        };
        assert_eq!(l.port, Some(9080));
        assert_eq!(l.kind, Some(ListenerType::Outbound));
        assert_eq!(l.output, Output::Json);
        assert!(l.verbose);
    }

    #[test]
    fn secret_and_its_aliases() {
        for alias in ["secret", "secrets", "s"] {
            let cli =
                Cli::try_parse_from(["rustmeshctl", "pc", alias, "productpage", "-o", "yaml"])
                    .unwrap();
            let Command::ProxyConfig(pc) = cli.command else {
                panic!("not proxy-config")
            };
            let View::Secret(s) = pc.view else {
                panic!("{alias} is not secret")
            };
            assert_eq!(s.pod.as_deref(), Some("productpage"));
            assert_eq!(s.output, Output::Yaml);
        }
    }

    #[test]
    fn x_authz_check_reads_a_pod_or_labels() {
        let cli = Cli::try_parse_from([
            "rustmeshctl",
            "x",
            "authz",
            "check",
            "ratings-v1-x",
            "-n",
            "foo",
        ])
        .unwrap();
        let Command::Experimental(x) = cli.command else {
            panic!("not experimental")
        };
        let Experimental::Authz(a) = x.command;
        let Authz::Check(c) = a.command;
        assert_eq!(c.pod.as_deref(), Some("ratings-v1-x"));
        assert_eq!(c.source.namespace.as_deref(), Some("foo"));
        let cli = Cli::try_parse_from([
            "rustmeshctl",
            "experimental",
            "authz",
            "check",
            "-f",
            "c.json",
            "--labels",
            "app=r",
        ])
        .unwrap();
        let Command::Experimental(x) = cli.command else {
            panic!("not experimental")
        };
        let Experimental::Authz(a) = x.command;
        let Authz::Check(c) = a.command;
        assert_eq!(c.labels.as_deref(), Some("app=r"));
    }

    #[test]
    fn log_and_istioctl_level_lists() {
        let cli = Cli::try_parse_from([
            "rustmeshctl",
            "proxy-config",
            "log",
            "productpage-v1-1",
            "-n",
            "default",
            "--level",
            "http:debug,info",
        ])
        .unwrap();
        let Command::ProxyConfig(pc) = cli.command else {
            panic!("not proxy-config")
        };
        assert_eq!(pc.source.namespace.as_deref(), Some("default"));
        let View::Log(l) = pc.view else {
            panic!("not log")
        };
        assert_eq!(l.pod.as_deref(), Some("productpage-v1-1"));
        let specs = l.level.unwrap();
        assert_eq!(
            crate::logging::query(&specs.0),
            "/logging?level=info&http=debug"
        );
        let e = Cli::try_parse_from(["rustmeshctl", "pc", "log", "p", "--level", "http:loud"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--level") && e.contains("\"loud\""), "{e}");
    }

    #[test]
    fn proxy_status_one_pod_or_all() {
        let cli = Cli::try_parse_from(["rustmeshctl", "proxy-status"]).unwrap();
        let Command::ProxyStatus(ps) = cli.command else {
            panic!("not proxy-status")
        };
        assert_eq!((ps.pod, ps.namespace), (None, None));
        let cli = Cli::try_parse_from(["rustmeshctl", "ps", "web-1.shop"]).unwrap();
        let Command::ProxyStatus(ps) = cli.command else {
            panic!("not proxy-status")
        };
        assert_eq!(ps.pod.as_deref(), Some("web-1.shop"));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = Cli::try_parse_from(["rustmeshctl", "pc", "l", "--type", "udp"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--type") && e.contains("inbound, outbound"),
            "{e}"
        );
        let e = Cli::try_parse_from(["rustmeshctl", "pc", "ep", "--status", "sick"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--status"), "{e}");
        let e = Cli::try_parse_from(["rustmeshctl", "pc", "c", "--timeout", "soon"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--timeout"), "{e}");
    }
}
