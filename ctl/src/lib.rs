//! `rustmeshctl`: istioctl-style views of a rustmesh sidecar.
//!
//! `rustmeshctl proxy-config (pc) listeners|routes|clusters|endpoints|secret|all|config-dump`
//! reads a proxy's configuration (the `rustmesh-xds` [`ProxyConfig`] it serves, and for `secret`
//! its certificates from `/certs`) and prints the tables
//! `istioctl proxy-config` prints, same columns, same alignment, same texts. The configuration
//! comes from the proxy's admin API (directly with `--admin-url`, or through a port-forward to a
//! pod), or from a file. The table code is pure: [`render`] turns what was read into text.
//! `rustmeshctl proxy-config log` shows or changes a sidecar's log levels ([`logging`]), and
//! `rustmeshctl proxy-status` whether each sidecar serves what the operator wrote ([`status`]).
//! `rustmeshctl x authz check` lists the AuthorizationPolicy objects a sidecar applies to its pod
//! ([`authz`]), as `istioctl x authz check` does.
#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod cli;
pub mod clusters;
pub mod endpoints;
pub mod error;
pub mod fetch;
pub mod listeners;
pub mod logging;
pub mod routes;
pub mod secrets;
pub mod status;
pub mod table;

pub use error::Error;
pub use rustmesh_xds::ProxyConfig;

use cli::{Command, DumpOutput, Output, ProxyConfigArgs, SourceArgs, View};
use fetch::{AdminUrl, Fetched, KubeOptions, PodRef, Source, Want};
use serde::Serialize;
use std::io::Write;

/// Runs a parsed command line, writing the result to `out`.
pub async fn run(cli: cli::Cli, out: &mut dyn Write) -> Result<(), Error> {
    match cli.command {
        Command::ProxyConfig(args) => proxy_config(args, out).await,
        Command::ProxyStatus(args) => status::run(args, out).await,
        Command::Experimental(x) => match x.command {
            cli::Experimental::Authz(a) => match a.command {
                cli::Authz::Check(args) => authz_check(args, out).await,
            },
        },
    }
}

/// `x authz check`: the policies the sidecar applies to its pod.
async fn authz_check(args: cli::AuthzCheckArgs, out: &mut dyn Write) -> Result<(), Error> {
    let source = source(&args.source, args.pod.as_deref())?;
    let labels = match (&args.labels, &source) {
        (Some(_), Source::Pod(_)) => {
            return Err(Error::Usage(
                "--labels is for --admin-url and --file: a pod's own labels are read from the API"
                    .into(),
            ));
        }
        (Some(text), _) => Some(authz::parse_labels(text).map_err(Error::Usage)?),
        (None, _) => None,
    };
    let kube = KubeOptions {
        kubeconfig: args.source.kubeconfig.clone(),
        context: args.source.context.clone(),
    };
    let fetched = fetch::fetch(&source, &kube, Want::default(), args.source.timeout).await?;
    let labels = labels.or(fetched.labels.clone());
    write_out(out, &authz::render(&fetched.config, labels.as_ref()))
}

pub(crate) fn write_out(out: &mut dyn Write, text: &str) -> Result<(), Error> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // `| head` closing the pipe is not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Output(e.to_string())),
        _ => Ok(()),
    }
}

async fn proxy_config(args: ProxyConfigArgs, out: &mut dyn Write) -> Result<(), Error> {
    let source = source(&args.source, args.view.pod())?;
    let kube = KubeOptions {
        kubeconfig: args.source.kubeconfig.clone(),
        context: args.source.context.clone(),
    };
    if let View::Log(a) = &args.view {
        return log(&source, &kube, a, args.source.timeout, out).await;
    }
    let fetched = fetch::fetch(&source, &kube, wants(&args.view), args.source.timeout).await?;
    let text = render(&args.view, &fetched)?;
    write_out(out, &text)
}

/// `proxy-config log`: one `POST /logging` (with the `--level` query, or none to list), its
/// answer printed under the pod's name as istioctl does.
async fn log(
    source: &Source,
    kube: &KubeOptions,
    args: &cli::LogArgs,
    timeout: std::time::Duration,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let path = match &args.level {
        Some(specs) => logging::query(&specs.0),
        None => logging::LOGGING_PATH.to_string(),
    };
    let bodies = fetch::call(source, kube, &[fetch::Call::post(path)], timeout).await?;
    let body = bodies.concat();
    let text = match source {
        Source::Pod(p) => match &p.namespace {
            Some(ns) => format!("{}.{ns}:\n{body}", p.name),
            None => format!("{}:\n{body}", p.name),
        },
        _ => body,
    };
    write_out(out, &text)
}

/// Exactly one of a pod, `--admin-url` and `--file`.
pub fn source(args: &SourceArgs, pod: Option<&str>) -> Result<Source, Error> {
    match (pod, &args.admin_url, &args.file) {
        (Some(p), None, None) => Ok(Source::Pod(PodRef::parse(p, args.namespace.as_deref())?)),
        (None, Some(url), None) => Ok(Source::Admin(AdminUrl::parse(url)?)),
        (None, None, Some(file)) => Ok(Source::File(file.clone())),
        (None, None, None) => Err(Error::Usage(
            "say which proxy to read: give a pod name, --admin-url URL or --file FILE".into(),
        )),
        _ => Err(Error::Usage(
            "give only one of a pod name, --admin-url and --file".into(),
        )),
    }
}

/// What the view needs besides the configuration: endpoint health (from
/// `/clusters?format=json`), certificates (from `/certs`).
pub fn wants(view: &View) -> Want {
    Want {
        clusters: match view {
            View::Endpoints(_) => true,
            View::All(a) => a.output == Output::Short,
            _ => false,
        },
        certs: matches!(view, View::Secret(_)),
    }
}

/// JSON as istioctl prints it (four-space indentation), with a final newline.
fn json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    value
        .serialize(&mut ser)
        .expect("configuration always serialises");
    buf.push(b'\n');
    String::from_utf8(buf).expect("serde_json writes UTF-8")
}

fn yaml<T: Serialize + ?Sized>(value: &T) -> String {
    serde_norway::to_string(value).expect("configuration always serialises")
}

fn structured<T: Serialize + ?Sized>(output: Output, value: &T) -> Option<String> {
    match output {
        Output::Short => None,
        Output::Json => Some(json(value)),
        Output::Yaml => Some(yaml(value)),
    }
}

/// The text a view prints for what was read.
pub fn render(view: &View, fetched: &Fetched) -> Result<String, Error> {
    let config = &fetched.config;
    Ok(match view {
        View::Listeners(a) => {
            let filter = listeners::ListenerFilter {
                address: a.address.clone(),
                port: a.port,
                kind: a.kind,
            };
            structured(a.output, &listeners::select(config, &filter))
                .unwrap_or_else(|| listeners::table(config, &filter, a.verbose).render())
        }
        View::Routes(a) => {
            let filter = routes::RouteFilter {
                name: a.name.clone(),
            };
            structured(a.output, &routes::select(config, &filter))
                .unwrap_or_else(|| routes::table(config, &filter, a.verbose).render())
        }
        View::Clusters(a) => {
            let filter = clusters::ClusterFilter {
                fqdn: a.fqdn.clone(),
                port: a.port,
                subset: a.subset.clone(),
                direction: a.direction.map(Into::into),
            };
            structured(a.output, &clusters::select(config, &filter))
                .unwrap_or_else(|| clusters::table(config, &filter).render())
        }
        View::Endpoints(a) => {
            let filter = endpoints::EndpointFilter {
                address: a.address.clone(),
                port: a.port,
                cluster: a.cluster.clone(),
                status: a.status.clone(),
            };
            let live = live_clusters(fetched);
            structured(a.output, &endpoints::select(&live, &filter))
                .unwrap_or_else(|| endpoints::table(&live, &filter).render())
        }
        View::Secret(a) => {
            let certs = fetched.certs.clone().unwrap_or_default();
            structured(a.output, &certs)
                .unwrap_or_else(|| secrets::render(&certs, std::time::SystemTime::now()))
        }
        View::All(a) => structured(a.output, config).unwrap_or_else(|| all(fetched)),
        View::ConfigDump(a) => match a.output {
            DumpOutput::Json => json(config),
            DumpOutput::Yaml => yaml(config),
        },
        View::Log(_) => {
            return Err(Error::Usage(
                "log shows the proxy's log levels, not its configuration: run it against a \
                 pod or --admin-url"
                    .into(),
            ));
        }
    })
}

fn live_clusters(fetched: &Fetched) -> admin::Clusters {
    fetched
        .clusters
        .clone()
        .unwrap_or_else(|| admin::Clusters::from_config(&fetched.config))
}

/// `all`: clusters, listeners, routes and endpoints, separated by blank lines (istioctl's order).
pub fn all(fetched: &Fetched) -> String {
    let config = &fetched.config;
    [
        clusters::table(config, &Default::default()).render(),
        listeners::table(config, &Default::default(), true).render(),
        routes::table(config, &Default::default(), true).render(),
        endpoints::table(&live_clusters(fetched), &Default::default()).render(),
    ]
    .join("\n")
}
