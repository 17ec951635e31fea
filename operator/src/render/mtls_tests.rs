//! Tests of the mutual TLS the renderer writes when the mesh has a CA: Istio's PERMISSIVE
//! inbound chains, auto mTLS and DestinationRule `tls` on outbound clusters, endpoint metadata,
//! and that nothing of it appears without a CA.

use super::*;
use crate::configmap::{config_map, render, render_namespace};
use crate::fixtures::{bookinfo, endpoints, istio, pod_as, workload};
use crate::index::{Affects, Object, PodInfo};
use crate::renderer::{RenderPath, Renderer};
use rustmesh_xds::cluster::ClusterLoadAssignment;
use rustmesh_xds::tls::{
    ALPN_ISTIO_ALL, ALPN_ISTIO_HTTP, ALPN_ISTIO_TCP, MATCH_TLS_MODE_DISABLED, MATCH_TLS_MODE_ISTIO,
    TLS_MODE_LABEL, UpstreamTlsContext, UpstreamTransportSocket,
};

const CA: &str = "istiod.istio-system.svc.cluster.local";
const REVIEWS: &str = "reviews.default.svc.cluster.local";

fn rendered(index: &Index, scope: &Scope) -> ProxyConfig {
    let c = render(index, scope);
    if let Err(e) = c.validate() {
        panic!("render of {scope} does not validate: {e}\n{}", c.to_json());
    }
    c
}

/// Bookinfo with a CA, a TCP service `db` (port 3306) in `default`, the pods of reviews v1
/// and v2 under two service accounts (v3 `default`, no sidecar label).
fn mesh() -> Index {
    let mut index = bookinfo();
    index.mesh.ca_host = Some(CA.to_string());
    workload(
        &mut index,
        "default",
        "db",
        Some("10.96.10.9"),
        &[("tcp-mysql", 3306, 3306)],
        &[("db-0", "10.244.0.40", &[("app", "db")])],
    );
    let sidecar = (TLS_MODE_LABEL, "istio");
    pod_as(
        &mut index,
        "default",
        "reviews-v1-1",
        Some("bookinfo-reviews"),
        &[("app", "reviews"), ("version", "v1"), sidecar],
    );
    pod_as(
        &mut index,
        "default",
        "reviews-v2-1",
        Some("reviews-v2"),
        &[("app", "reviews"), ("version", "v2"), sidecar],
    );
    index
}

fn with_dr(mut index: Index, yaml: &str) -> Index {
    istio(&mut index, yaml);
    index
}

fn alpn(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `(transportProtocol, applicationProtocols, terminates TLS, destination)` of the chains of
/// virtualInbound for `port` (`None`: the passthrough chains).
fn inbound_chains(c: &ProxyConfig, port: Option<u16>) -> Vec<(Option<String>, Vec<String>, bool)> {
    c.listener(VIRTUAL_INBOUND)
        .unwrap()
        .filter_chains
        .iter()
        .filter(|fc| {
            fc.filter_chain_match.destination_port == port
                && (port.is_some() || !fc.filter_chain_match.prefix_ranges.is_empty())
        })
        .map(|fc| {
            (
                fc.filter_chain_match.transport_protocol.clone(),
                fc.filter_chain_match.application_protocols.clone(),
                fc.transport_socket.is_some(),
            )
        })
        .collect()
}

fn downstream_alpn(fc: &FilterChain) -> Vec<String> {
    match &fc.transport_socket {
        Some(DownstreamTransportSocket::Tls(t)) => {
            assert!(t.require_client_certificate);
            assert!(t.common_tls_context.expected_sans().is_empty());
            t.common_tls_context.alpn_protocols.clone()
        }
        None => panic!("chain {:?} terminates no TLS", fc.name),
    }
}

#[test]
fn inbound_ports_get_istios_permissive_chains() {
    let c = rendered(&mesh(), &Scope::namespace("default"));
    let some = |s: &str| Some(s.to_string());
    // HTTP port: mTLS HTTP, mTLS TCP, plain HTTP, plain TCP, the app's own TLS.
    assert_eq!(
        inbound_chains(&c, Some(9080)),
        vec![
            (some("tls"), alpn(&ALPN_ISTIO_HTTP), true),
            (some("tls"), alpn(&ALPN_ISTIO_TCP), true),
            (some("raw_buffer"), alpn(&HTTP_PROTOCOLS), false),
            (some("raw_buffer"), vec![], false),
            (some("tls"), vec![], false),
        ]
    );
    let vi = c.listener(VIRTUAL_INBOUND).unwrap();
    let port = |p: u16| {
        vi.filter_chains
            .iter()
            .filter(move |fc| fc.filter_chain_match.destination_port == Some(p))
            .collect::<Vec<_>>()
    };
    let http = port(9080);
    assert!(
        http.iter()
            .all(|fc| fc.name.as_deref() == Some("0.0.0.0_9080"))
    );
    assert_eq!(downstream_alpn(http[0]), alpn(&["h2", "http/1.1"]));
    assert_eq!(downstream_alpn(http[1]), alpn(&ALPN_ISTIO_TCP));
    // The mTLS HTTP chain serves exactly what the plain one does.
    assert_eq!(http[0].filters, http[2].filters);
    assert!(matches!(
        http[0].filters[0],
        NetworkFilter::HttpConnectionManager(_)
    ));
    assert_eq!(http[1].filters, http[3].filters);
    // TCP port: mTLS TCP for every Istio ALPN, plain TCP, the app's own TLS.
    assert_eq!(
        inbound_chains(&c, Some(3306)),
        vec![
            (some("tls"), alpn(&ALPN_ISTIO_ALL), true),
            (some("raw_buffer"), vec![], false),
            (some("tls"), vec![], false),
        ]
    );
    let tcp = port(3306);
    assert_eq!(downstream_alpn(tcp[0]), alpn(&ALPN_ISTIO_TCP));
    assert!(tcp.windows(2).all(|w| w[0].filters == w[1].filters));
    assert!(matches!(tcp[0].filters[0], NetworkFilter::TcpProxy(_)));
}

#[test]
fn the_inbound_passthrough_has_an_mtls_twin() {
    let c = rendered(&mesh(), &Scope::namespace("default"));
    let some = |s: &str| Some(s.to_string());
    assert_eq!(
        inbound_chains(&c, None),
        vec![
            (some("tls"), alpn(&ALPN_ISTIO_ALL), true),
            (some("raw_buffer"), vec![], false),
            (some("tls"), vec![], false),
        ]
    );
    let vi = c.listener(VIRTUAL_INBOUND).unwrap();
    let twin = vi
        .filter_chains
        .iter()
        .find(|fc| fc.name.as_deref() == Some(VIRTUAL_INBOUND) && fc.transport_socket.is_some())
        .unwrap();
    assert_eq!(downstream_alpn(twin), alpn(&ALPN_ISTIO_TCP));
    match &twin.filters[0] {
        NetworkFilter::TcpProxy(t) => {
            assert_eq!(t.cluster.as_deref(), Some(INBOUND_PASSTHROUGH_CLUSTER_V4))
        }
        other => panic!("{other:?}"),
    }
}

fn matches_of<'c>(
    c: &'c ProxyConfig,
    cluster: &str,
) -> &'c [rustmesh_xds::tls::TransportSocketMatch] {
    &c.cluster(cluster)
        .unwrap_or_else(|| panic!("cluster {cluster} missing"))
        .transport_socket_matches
}

fn tls_of<'c>(c: &'c ProxyConfig, cluster: &str) -> Option<&'c UpstreamTlsContext> {
    c.cluster(cluster)
        .unwrap_or_else(|| panic!("cluster {cluster} missing"))
        .transport_socket
        .as_ref()
        .and_then(UpstreamTransportSocket::tls)
}

#[test]
fn outbound_clusters_get_auto_mtls_with_the_service_accounts_behind_them() {
    let c = rendered(
        &with_dr(
            mesh(),
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n",
        ),
        &Scope::namespace("default"),
    );
    let sans = vec![
        "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
        "spiffe://cluster.local/ns/default/sa/default",
        "spiffe://cluster.local/ns/default/sa/reviews-v2",
    ];
    for (cluster, subset) in [
        (format!("outbound|9080||{REVIEWS}"), ""),
        (format!("outbound|9080|v1|{REVIEWS}"), "v1"),
    ] {
        let m = matches_of(&c, &cluster);
        assert_eq!(m.len(), 2, "{cluster}");
        assert_eq!(m[0].name, MATCH_TLS_MODE_ISTIO);
        assert_eq!(m[1].name, MATCH_TLS_MODE_DISABLED);
        let tls = m[0].transport_socket.tls().unwrap();
        assert_eq!(
            tls.sni.as_deref(),
            Some(format!("outbound_.9080_.{subset}_.{REVIEWS}").as_str())
        );
        assert_eq!(tls.common_tls_context.alpn_protocols, alpn(&ALPN_ISTIO_TCP));
        // Every service account of the port's pods (not only the subset's), sorted, once.
        assert_eq!(tls.common_tls_context.expected_sans(), sans, "{cluster}");
        assert!(m[1].transport_socket.tls().is_none());
        assert!(c.cluster(&cluster).unwrap().transport_socket.is_none());
    }
    // The static clusters and the inbound ones get nothing.
    for cl in &c.clusters {
        if !cl.name.starts_with("outbound|") {
            assert!(cl.transport_socket.is_none() && cl.transport_socket_matches.is_empty());
        }
    }
}

fn tls_modes(c: &ClusterLoadAssignment) -> Vec<(String, bool)> {
    c.lb_endpoints()
        .map(|e| {
            (
                e.endpoint.address.socket_addr().unwrap().ip().to_string(),
                e.transport_socket_match()
                    .and_then(|m| m.get("tlsMode"))
                    .is_some_and(|v| v == "istio"),
            )
        })
        .collect()
}

#[test]
fn only_endpoints_of_pods_with_a_sidecar_carry_the_tls_mode() {
    let index = mesh();
    let c = rendered(&index, &Scope::namespace("default"));
    let name = format!("outbound|9080||{REVIEWS}");
    let la = c.load_assignment(c.cluster(&name).unwrap()).unwrap();
    assert_eq!(
        tls_modes(la),
        vec![
            ("10.244.0.32".to_string(), true),
            ("10.244.0.33".to_string(), true),
            ("10.244.0.34".to_string(), false),
        ]
    );
    // The incremental path's assignment is the same.
    let (_, recipes) = render_parts(&MeshView::new(&index), &Scope::namespace("default"));
    let recipe = recipes[REVIEWS].iter().find(|r| r.cluster == name).unwrap();
    let svc = MeshView::new(&index).registry.get(REVIEWS).cloned();
    assert_eq!(&recipe.assignment(svc.as_ref()), la);
}

#[test]
fn destination_rule_tls_at_every_level_as_istio_merges_it() {
    let index = with_dr(
        mesh(),
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      tls: {mode: DISABLE}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      portLevelSettings:
      - port: {number: 9080}
        tls: {mode: ISTIO_MUTUAL, sni: reviews.example, subjectAltNames: ["spiffe://cluster.local/ns/default/sa/reviews-v2"]}
  - name: v3
    labels: {version: v3}
    trafficPolicy:
      tls: {mode: SIMPLE, caCertificates: /etc/reviews/ca.pem, caCrl: /etc/reviews/ca.crl, subjectAltNames: [reviews.example.com]}
  - name: v4
    labels: {version: v4}
    trafficPolicy:
      tls: {mode: MUTUAL, clientCertificate: /etc/c.pem, privateKey: /etc/k.pem, sni: legacy.example.com}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: default}
spec:
  host: db
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 3306}
      tls: {mode: DISABLE}
"#,
    );
    let c = rendered(&index, &Scope::namespace("default"));
    // Top level ISTIO_MUTUAL: one TLS socket, the defaults, no matches.
    let top = tls_of(&c, &format!("outbound|9080||{REVIEWS}")).expect("ISTIO_MUTUAL");
    assert_eq!(
        top.sni.as_deref(),
        Some(format!("outbound_.9080_._.{REVIEWS}").as_str())
    );
    assert_eq!(top.common_tls_context.expected_sans().len(), 3);
    assert!(matches_of(&c, &format!("outbound|9080||{REVIEWS}")).is_empty());
    // A subset's DISABLE: plain, no auto mTLS either.
    let v1 = format!("outbound|9080|v1|{REVIEWS}");
    assert!(tls_of(&c, &v1).is_none() && matches_of(&c, &v1).is_empty());
    // A subset's port-level ISTIO_MUTUAL with its own sni and subjectAltNames.
    let v2 = tls_of(&c, &format!("outbound|9080|v2|{REVIEWS}")).expect("ISTIO_MUTUAL");
    assert_eq!(v2.sni.as_deref(), Some("reviews.example"));
    assert_eq!(
        v2.common_tls_context.expected_sans(),
        vec!["spiffe://cluster.local/ns/default/sa/reviews-v2"]
    );
    // SIMPLE: TLS to a server outside the mesh, SNI the host, verified against the file,
    // the server one of the subjectAltNames; Istio's SDS names for files.
    let v3 = tls_of(&c, &format!("outbound|9080|v3|{REVIEWS}")).expect("SIMPLE");
    assert_eq!(v3.sni.as_deref(), Some(REVIEWS));
    assert!(v3.common_tls_context.alpn_protocols.is_empty());
    assert!(
        v3.common_tls_context
            .tls_certificate_sds_secret_configs
            .is_empty()
    );
    let roots = v3
        .common_tls_context
        .combined_validation_context
        .as_ref()
        .unwrap();
    assert_eq!(
        roots.validation_context_sds_secret_config.name,
        "file-root:/etc/reviews/ca.pem"
    );
    // caCrl: Envoy's crl file beside the roots.
    assert_eq!(
        roots.default_validation_context.crl,
        Some(rustmesh_xds::tls::DataSource::file("/etc/reviews/ca.crl"))
    );
    assert_eq!(
        v3.common_tls_context.expected_sans(),
        vec!["reviews.example.com"]
    );
    // MUTUAL: its client certificate and key, its sni, the system roots.
    let v4 = tls_of(&c, &format!("outbound|9080|v4|{REVIEWS}")).expect("MUTUAL");
    assert_eq!(v4.sni.as_deref(), Some("legacy.example.com"));
    assert_eq!(
        v4.common_tls_context.tls_certificate_sds_secret_configs[0].name,
        "file-cert:/etc/c.pem~/etc/k.pem"
    );
    assert_eq!(
        v4.common_tls_context
            .combined_validation_context
            .as_ref()
            .unwrap()
            .validation_context_sds_secret_config
            .name,
        "file-root:system"
    );
    let view = MeshView::new(&index);
    let verdict = &view.validation.verdicts[&(
        crate::index::Kind::DestinationRule,
        ObjKey::new("default", "reviews"),
    )];
    assert!(
        verdict.accepted && verdict.findings.is_empty(),
        "{:?}",
        verdict.findings
    );
    // A top-level port-level DISABLE replaces the top-level ISTIO_MUTUAL for that port.
    let db = "outbound|3306||db.default.svc.cluster.local";
    assert!(tls_of(&c, db).is_none() && matches_of(&c, db).is_empty());
}

#[test]
fn a_credential_name_is_the_secret_for_selected_workloads_only() {
    // Istio's rule: a sidecar uses credentialName when the DestinationRule selects it.
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: db, namespace: default}\nspec:\n  host: db\n  workloadSelector: {matchLabels: {app: productpage}}\n  trafficPolicy:\n    tls: {mode: MUTUAL, credentialName: db-client, sni: db.example.com}\n";
    let sidecar = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: productpage, namespace: default}\nspec:\n  workloadSelector: {labels: {app: productpage}}\n  egress: [{hosts: [\"./*\"]}]\n";
    let index = with_dr(with_dr(mesh(), dr), sidecar);
    let db = "outbound|3306||db.default.svc.cluster.local";
    let c = rendered(&index, &Scope::sidecar("default", "productpage"));
    let tls = tls_of(&c, db).expect("MUTUAL from the Secret");
    assert_eq!(tls.sni.as_deref(), Some("db.example.com"));
    assert_eq!(
        tls.common_tls_context.tls_certificate_sds_secret_configs[0].name,
        "kubernetes://db-client"
    );
    assert_eq!(
        tls.common_tls_context
            .combined_validation_context
            .as_ref()
            .unwrap()
            .validation_context_sds_secret_config
            .name,
        "kubernetes://db-client-cacert"
    );
    // The namespace's other workloads are not selected: auto mTLS as before.
    let c = rendered(&index, &Scope::namespace("default"));
    assert!(tls_of(&c, db).is_none());
    assert_eq!(matches_of(&c, db).len(), 2);
}

#[test]
fn simple_originates_tls_without_a_mesh_ca_too() {
    let mut index = with_dr(
        mesh(),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: db, namespace: default}\nspec:\n  host: db\n  trafficPolicy:\n    tls: {mode: SIMPLE, insecureSkipVerify: true}\n",
    );
    index.mesh.ca_host = None;
    let c = rendered(&index, &Scope::namespace("default"));
    let db = tls_of(&c, "outbound|3306||db.default.svc.cluster.local").expect("SIMPLE");
    assert_eq!(db.sni.as_deref(), Some("db.default.svc.cluster.local"));
    // insecureSkipVerify: no validation context, as Envoy reads it.
    assert!(db.common_tls_context.combined_validation_context.is_none());
}

#[test]
fn without_auto_mtls_only_istio_mutual_originates_tls() {
    let mut index = with_dr(
        mesh(),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: db, namespace: default}\nspec:\n  host: db\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n",
    );
    index.mesh.auto_mtls = false;
    let c = rendered(&index, &Scope::namespace("default"));
    assert!(
        c.clusters
            .iter()
            .all(|cl| cl.transport_socket_matches.is_empty())
    );
    let db = tls_of(&c, "outbound|3306||db.default.svc.cluster.local").expect("ISTIO_MUTUAL");
    assert_eq!(
        db.common_tls_context.expected_sans(),
        vec!["spiffe://cluster.local/ns/default/sa/default"]
    );
    // The inbound side still terminates mTLS (clients may have auto mTLS on).
    assert!(!inbound_chains(&c, Some(9080)).is_empty());
    assert!(inbound_chains(&c, Some(9080))[0].2);
}

#[test]
fn the_trust_domain_names_the_expected_identities() {
    let mut index = mesh();
    index.mesh.trust_domain = "example.org".into();
    let c = rendered(&index, &Scope::namespace("default"));
    let m = matches_of(&c, "outbound|3306||db.default.svc.cluster.local");
    assert_eq!(
        m[0].transport_socket
            .tls()
            .unwrap()
            .common_tls_context
            .expected_sans(),
        vec!["spiffe://example.org/ns/default/sa/default"]
    );
}

#[test]
fn without_a_ca_nothing_changes() {
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n";
    let mut with_labels = with_dr(mesh(), dr);
    with_labels.mesh.ca_host = None;
    let c = rendered(&with_labels, &Scope::namespace("default"));
    assert!(
        c.clusters
            .iter()
            .all(|cl| cl.transport_socket.is_none() && cl.transport_socket_matches.is_empty())
    );
    assert!(
        c.listeners
            .iter()
            .flat_map(|l| &l.filter_chains)
            .all(|fc| fc.transport_socket.is_none())
    );
    assert!(
        c.endpoints
            .iter()
            .flat_map(|la| la.lb_endpoints())
            .all(|e| e.metadata.is_none())
    );
    // Byte for byte what the same mesh renders without sidecar labels and service accounts
    // (what the operator rendered before it knew about either).
    let mut plain = with_dr(bookinfo(), dr);
    workload(
        &mut plain,
        "default",
        "db",
        Some("10.96.10.9"),
        &[("tcp-mysql", 3306, 3306)],
        &[("db-0", "10.244.0.40", &[("app", "db")])],
    );
    assert_eq!(
        c.to_json(),
        rendered(&plain, &Scope::namespace("default")).to_json()
    );
    // The passthrough is the single chain it always was.
    assert_eq!(inbound_chains(&c, None), vec![(None, vec![], false)]);
    assert_eq!(inbound_chains(&c, Some(3306)), vec![(None, vec![], false)]);
}

/// Renders every namespace `affects` names, as the controller does for a batch.
fn render_batch(r: &mut Renderer, index: &Index, affects: &Affects) -> Vec<RenderPath> {
    let mut plan = r.plan(index, affects.endpoints_only.as_ref());
    let mut view = None;
    let mut paths = Vec::new();
    for ns in affects
        .namespaces
        .iter()
        .filter(|n| index.is_mesh_namespace(n))
    {
        paths.push(r.render(&mut plan, index, &mut view, ns).unwrap().1);
    }
    paths
}

fn assert_same_as_full(r: &Renderer, index: &Index) {
    let view = MeshView::new(index);
    for ns in index.injected_namespaces() {
        let full = config_map(&render_namespace(&view, ns).unwrap());
        let last = config_map(r.last(ns).unwrap());
        assert_eq!(last.data, full.data, "{ns}");
        assert_eq!(last.binary_data, full.binary_data, "{ns}");
    }
}

#[test]
fn a_new_service_account_behind_a_service_re_renders_its_clusters() {
    let mut index = mesh();
    // Pods an endpoint change may bring in: one under a known account, one under a new one.
    let sidecar = [("app", "db"), (TLS_MODE_LABEL, "istio")];
    pod_as(&mut index, "default", "db-1", None, &sidecar);
    pod_as(&mut index, "default", "db-2", Some("db-admin"), &sidecar);
    let mut r = Renderer::default();
    let all = Affects::full(
        index.injected_namespaces().map(str::to_string).collect(),
        true,
    );
    assert_eq!(render_batch(&mut r, &index, &all), vec![RenderPath::Full]);
    let ready = |pods: &[(&'static str, &'static str)]| {
        Object::Endpoints(Box::new(endpoints(
            "default",
            "db",
            pods,
            &[("tcp-mysql", 3306)],
        )))
    };
    // db-1 (service account `default`, as db-0): the same identities, endpoints only.
    let a = index.apply(ready(&[("10.244.0.40", "db-0"), ("10.244.0.41", "db-1")]));
    assert!(a.endpoints_only.is_some());
    assert_eq!(
        render_batch(&mut r, &index, &a),
        vec![RenderPath::Endpoints]
    );
    assert_same_as_full(&r, &index);
    // db-2 (`db-admin`): the clusters' expected identities change: a full render.
    let a = index.apply(ready(&[
        ("10.244.0.40", "db-0"),
        ("10.244.0.41", "db-1"),
        ("10.244.0.42", "db-2"),
    ]));
    assert!(a.endpoints_only.is_some());
    assert_eq!(render_batch(&mut r, &index, &a), vec![RenderPath::Full]);
    assert_same_as_full(&r, &index);
    let view = MeshView::new(&index);
    let c = render_view_of(&view);
    let sans = matches_of(&c, "outbound|3306||db.default.svc.cluster.local")[0]
        .transport_socket
        .tls()
        .unwrap()
        .common_tls_context
        .expected_sans()
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    assert_eq!(
        sans,
        vec![
            "spiffe://cluster.local/ns/default/sa/db-admin",
            "spiffe://cluster.local/ns/default/sa/default"
        ]
    );
    // And the new pod's endpoint carries the tlsMode metadata on the incremental path too.
    let a = index.apply(ready(&[("10.244.0.41", "db-1"), ("10.244.0.42", "db-2")]));
    // db-0 leaves; db-1 and db-2 remain: accounts {default, db-admin}: unchanged.
    assert_eq!(
        render_batch(&mut r, &index, &a),
        vec![RenderPath::Endpoints]
    );
    assert_same_as_full(&r, &index);
}

fn render_view_of(view: &MeshView<'_>) -> ProxyConfig {
    crate::configmap::render_view(view, &Scope::namespace("default"))
}

#[test]
fn a_thousand_services_under_mutual_tls_still_fit_in_a_configmap() {
    // As configmap's thousand-services test, with the CA, a sidecar in every pod and a service
    // account per service: every cluster carries its matches and identity, every endpoint its
    // metadata.
    let mut index = Index::default();
    index.mesh.ca_host = Some(CA.to_string());
    crate::fixtures::namespace(&mut index, "mesh", true);
    for i in 0..1000u32 {
        let name = format!("svc-{i:04}");
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        let pods: Vec<(String, String)> = (0..10u32)
            .map(|j| {
                let n = i * 10 + j;
                (
                    format!("{name}-{j}"),
                    format!("10.{}.{}.{}", 100 + n / 65536, (n / 256) % 256, n % 256),
                )
            })
            .collect();
        let labels = [("app", "x"), (TLS_MODE_LABEL, "istio")];
        let pod_refs: Vec<crate::fixtures::PodSpec<'_>> = pods
            .iter()
            .map(|(p, ip)| (p.as_str(), ip.as_str(), &labels[..]))
            .collect();
        workload(
            &mut index,
            "mesh",
            &name,
            Some(&ip),
            &[("http", 9080, 9080)],
            &pod_refs,
        );
        for (p, _) in &pods {
            pod_as(&mut index, "mesh", p, Some(&name), &labels);
        }
    }
    let view = MeshView::new(&index);
    let r = render_namespace(&view, "mesh").unwrap();
    let config = r.scopes[rustmesh_xds::scope::DEFAULT_SCOPE_KEY]
        .config()
        .unwrap();
    let cl = config
        .cluster("outbound|9080||svc-0007.mesh.svc.cluster.local")
        .unwrap();
    assert_eq!(
        cl.transport_socket_matches[0]
            .transport_socket
            .tls()
            .unwrap()
            .common_tls_context
            .expected_sans(),
        vec!["spiffe://cluster.local/ns/mesh/sa/svc-0007"]
    );
    let cm = serde_json::to_vec(&config_map(&r)).unwrap().len();
    assert!(cm < 1 << 20, "ConfigMap is {cm} bytes, over 1 MiB");
    eprintln!("1000 services x 10 endpoints under mutual TLS: ConfigMap {cm} B");
}

#[test]
fn auto_mtls_sends_plain_text_to_a_namespace_whose_policy_disables_mtls() {
    let pa = |ns: &str, mode: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: {ns}, creationTimestamp: \"2024-01-01T00:00:00Z\", generation: 1}}\nspec:\n  mtls: {{mode: {mode}}}\n"
        )
    };
    let reviews = format!("outbound|9080||{REVIEWS}");
    let auto =
        |index: &Index| matches_of(&rendered(index, &Scope::namespace("default")), &reviews).len();
    assert_eq!(auto(&mesh()), 2, "auto mTLS by default");
    // Istio's rule: a destination namespace (or the mesh) in DISABLE gets plain text.
    assert_eq!(auto(&with_dr(mesh(), &pa("default", "DISABLE"))), 0);
    assert_eq!(auto(&with_dr(mesh(), &pa("istio-system", "DISABLE"))), 0);
    // STRICT or PERMISSIVE keep auto mTLS; a namespace's PERMISSIVE wins over the mesh's DISABLE.
    assert_eq!(auto(&with_dr(mesh(), &pa("default", "STRICT"))), 2);
    let both = with_dr(
        with_dr(mesh(), &pa("istio-system", "DISABLE")),
        &pa("default", "PERMISSIVE"),
    );
    assert_eq!(auto(&both), 2);
}

/// Istio's endpoint metadata `istio.workload` (`name;namespace;canonical service;canonical
/// revision;cluster`): the client sidecar's fallback for the `destination_*` labels. Only
/// endpoints whose pod is known carry it; the canonical labels the injector set win over
/// `app`/`version`, which are the fallbacks.
#[test]
fn endpoints_of_known_pods_name_their_workload_as_istio_does() {
    let mut index = mesh();
    index.mesh.cluster_id = "east".to_string();
    for (name, labels) in [
        (
            "reviews-v1-1",
            vec![
                ("app", "reviews"),
                ("version", "v1"),
                (
                    rustmesh_xds::well_known::LABEL_CANONICAL_NAME,
                    "reviews-canon",
                ),
            ],
        ),
        ("reviews-v2-1", vec![("app", "reviews"), ("version", "v2")]),
    ] {
        index.apply(Object::Pod {
            key: ObjKey::new("default", name),
            pod: PodInfo::new(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                None,
            )
            .with_workload(Some(name.trim_end_matches("-1").to_string())),
        });
    }
    let c = rendered(&index, &Scope::namespace("default"));
    let name = format!("outbound|9080||{REVIEWS}");
    let la = c.load_assignment(c.cluster(&name).unwrap()).unwrap();
    let workloads: Vec<Option<String>> = la
        .lb_endpoints()
        .map(|e| e.workload().map(|w| w.to_value()))
        .collect();
    assert_eq!(
        workloads,
        vec![
            Some("reviews-v1;default;reviews-canon;v1;east".to_string()),
            Some("reviews-v2;default;reviews;v2;east".to_string()),
            // A pod the index has no workload for (as before a pod watch event).
            None,
        ]
    );
    // The incremental path's assignment is the same.
    let (_, recipes) = render_parts(&MeshView::new(&index), &Scope::namespace("default"));
    let recipe = recipes[REVIEWS].iter().find(|r| r.cluster == name).unwrap();
    let svc = MeshView::new(&index).registry.get(REVIEWS).cloned();
    assert_eq!(&recipe.assignment(svc.as_ref()), la);
}
