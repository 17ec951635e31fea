//! `proxy-config routes`: one row per route of every virtual host of every route table, as
//! istioctl prints them.
//!
//! The route tables are those of `routes` (what RDS serves), then the inline ones of the
//! listeners' HTTP filters, one per filter in listener order (Envoy lists inline tables as
//! "static" route configurations, so istioctl shows them too, the same table once per filter).
//!
//! Rules (istioctl's `configdump/route.go`):
//! - columns `NAME VHOST NAME DOMAINS MATCH VIRTUAL SERVICE` (padding 5);
//! - routes to `PassthroughCluster` (the `allow_any` catch-all) are left out; a virtual host
//!   without routes shows `/*` and `404`;
//! - DOMAINS: the host names without `:port`, minus the long forms that shorten to another listed
//!   name (`x.ns.svc.cluster.local` and `x.ns.svc` when `x.ns` is listed); the first two, then
//!   `+ N more...`;
//! - MATCH: `/*` for prefix `/`, `/api*` for a prefix, the exact path, `regex <re>`;
//! - VIRTUAL SERVICE: the route's `virtualService` (`reviews.default`), empty when none;
//! - route tables in document order, except that neighbouring tables with numeric names
//!   (`80`, `9080`) are put in numeric order (what istioctl's sort yields on such lists).

use crate::listeners::describe_route_match;
use crate::table::{Table, WIDE_PADDING};
use rustmesh_xds::ProxyConfig;
use rustmesh_xds::listener::NetworkFilter;
use rustmesh_xds::names::PASSTHROUGH_CLUSTER;
use rustmesh_xds::route::{Route, RouteConfiguration};
use std::collections::HashSet;

/// Which route tables to show.
#[derive(Clone, Debug, Default)]
pub struct RouteFilter {
    /// Exact route table name (`9080`, `inbound|9080||`).
    pub name: Option<String>,
}

impl RouteFilter {
    pub fn matches(&self, r: &RouteConfiguration) -> bool {
        self.name.as_ref().is_none_or(|n| *n == r.name)
    }
}

/// The route tables the filter selects, in table order (what `-o json` prints).
pub fn select<'a>(config: &'a ProxyConfig, filter: &RouteFilter) -> Vec<&'a RouteConfiguration> {
    sorted(config)
        .into_iter()
        .filter(|r| filter.matches(r))
        .collect()
}

/// The inline route tables of the listeners' HTTP filters, in listener and chain order.
fn inline_tables(config: &ProxyConfig) -> impl Iterator<Item = &RouteConfiguration> {
    config
        .listeners
        .iter()
        .flat_map(|l| {
            l.filter_chains
                .iter()
                .chain(l.default_filter_chain.as_ref())
        })
        .flat_map(|c| c.filters.iter())
        .filter_map(|f| match f {
            NetworkFilter::HttpConnectionManager(h) => h.route_config.as_ref(),
            NetworkFilter::TcpProxy(_) => None,
        })
}

/// RDS tables then inline ones, with each run of numerically named tables sorted by number.
fn sorted(config: &ProxyConfig) -> Vec<&RouteConfiguration> {
    let mut out: Vec<&RouteConfiguration> =
        config.routes.iter().chain(inline_tables(config)).collect();
    let number = |r: &RouteConfiguration| r.name.parse::<u64>().ok();
    let mut start = 0;
    while start < out.len() {
        if number(out[start]).is_none() {
            start += 1;
            continue;
        }
        let mut end = start;
        while end < out.len() && number(out[end]).is_some() {
            end += 1;
        }
        out[start..end].sort_by_key(|r| number(r));
        start = end;
    }
    out
}

fn is_passthrough(r: &Route) -> bool {
    r.route
        .as_ref()
        .and_then(|a| a.cluster.as_deref())
        .is_some_and(|c| c == PASSTHROUGH_CLUSTER)
}

/// The DOMAINS column.
pub fn describe_domains(domains: &[String]) -> String {
    match domains {
        [] => return String::new(),
        [one] => return one.clone(),
        _ => {}
    }
    const SHOWN: usize = 2;
    let without_port: Vec<&str> = domains
        .iter()
        .map(String::as_str)
        .filter(|d| match d.matches(':').count() {
            0 => true,
            // `[fd00:10:96::7fc7]` is kept, `[fd00:10:96::7fc7]:80` and `host:80` are not.
            n if n > 2 => d.ends_with(']'),
            _ => false,
        })
        .collect();
    let listed: HashSet<&str> = without_port.iter().copied().collect();
    let shortens = |h: &str, suffix: &str| {
        h.strip_suffix(suffix)
            .is_some_and(|short| listed.contains(short))
    };
    let kept: Vec<&str> = without_port
        .iter()
        .copied()
        .filter(|h| !shortens(h, ".svc.cluster.local") && !shortens(h, ".svc"))
        .collect();
    if kept.len() > SHOWN {
        format!(
            "{} + {} more...",
            kept[..SHOWN].join(", "),
            kept.len() - SHOWN
        )
    } else {
        kept.join(", ")
    }
}

/// The route table: `NAME VHOST NAME DOMAINS MATCH VIRTUAL SERVICE`, or `NAME VIRTUAL HOSTS`
/// when not verbose.
pub fn table(config: &ProxyConfig, filter: &RouteFilter, verbose: bool) -> Table {
    let tables = select(config, filter);
    if !verbose {
        let mut t = Table::new(WIDE_PADDING, &["NAME", "VIRTUAL HOSTS"]);
        for rc in tables {
            t.row(vec![rc.name.clone(), rc.virtual_hosts.len().to_string()]);
        }
        return t;
    }
    let mut t = Table::new(
        WIDE_PADDING,
        &["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"],
    );
    for rc in tables {
        for vh in &rc.virtual_hosts {
            let domains = describe_domains(&vh.domains);
            for r in vh.routes.iter().filter(|r| !is_passthrough(r)) {
                t.row(vec![
                    rc.name.clone(),
                    vh.name.clone(),
                    domains.clone(),
                    describe_route_match(&r.match_),
                    r.virtual_service.clone().unwrap_or_default(),
                ]);
            }
            if vh.routes.is_empty() {
                t.row(vec![
                    rc.name.clone(),
                    vh.name.clone(),
                    domains.clone(),
                    "/*".into(),
                    "404".into(),
                ]);
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn domains_as_istioctl_shortens_them() {
        // Seed 004: nginx in `test`, seen from `test`.
        let nginx = strings(&[
            "nginx.test.svc.cluster.local",
            "nginx.test.svc.cluster.local:80",
            "nginx",
            "nginx:80",
            "nginx.test.svc",
            "nginx.test.svc:80",
            "nginx.test",
            "nginx.test:80",
            "10.102.168.134",
            "10.102.168.134:80",
        ]);
        assert_eq!(describe_domains(&nginx), "nginx, nginx.test + 1 more...");
        assert_eq!(describe_domains(&strings(&["*"])), "*");
        assert_eq!(describe_domains(&[]), "");
        assert_eq!(describe_domains(&strings(&["a.b", "a.b:80"])), "a.b");
        assert_eq!(
            describe_domains(&strings(&[
                "[fd00:10:96::7fc7]",
                "[fd00:10:96::7fc7]:80",
                "x"
            ])),
            "[fd00:10:96::7fc7], x"
        );
    }

    #[test]
    fn numeric_runs_are_sorted_between_named_tables() {
        let config = ProxyConfig {
            routes: ["9080", "80", "b:1", "15010", "443", "a:2"]
                .iter()
                .map(|n| RouteConfiguration {
                    name: n.to_string(),
                    virtual_hosts: vec![],
                })
                .collect(),
            ..Default::default()
        };
        let names: Vec<&str> = select(&config, &RouteFilter::default())
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["80", "9080", "b:1", "443", "15010", "a:2"]);
    }
}
