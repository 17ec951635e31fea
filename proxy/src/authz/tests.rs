//! The semantics of `rustmesh_xds::authz`, rule by rule, with Istio's documented examples
//! (<https://istio.io/latest/docs/reference/config/security/authorization-policy/>, the
//! authorization tasks), through the compiled engine; and the engine held to the reference
//! evaluator over generated rule sets and requests.

use std::collections::BTreeMap;

use http::HeaderMap;
use proptest::prelude::*;
use rustmesh_xds::authz::{Authorization, AuthzAction};
use serde_json::{Value, json};

use super::*;

fn doc(policies: Value) -> Authorization {
    serde_json::from_value(json!({ "policies": policies })).unwrap()
}

fn no_labels() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// A request: `principal` the peer's identity (None: plain text).
#[derive(Clone, Debug)]
struct Req {
    principal: Option<&'static str>,
    source: &'static str,
    port: u16,
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    sni: Option<&'static str>,
}

fn req() -> Req {
    Req {
        principal: None,
        source: "10.0.0.1",
        port: 8000,
        method: "GET",
        host: "httpbin.foo",
        path: "/",
        headers: Vec::new(),
        sni: None,
    }
}

impl Req {
    fn from(mut self, p: &'static str) -> Self {
        self.principal = Some(p);
        self
    }
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    fn path(mut self, p: &'static str) -> Self {
        self.path = p;
        self
    }
    fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    fn ip(mut self, ip: &'static str) -> Self {
        self.source = ip;
        self
    }
    fn host(mut self, h: &'static str) -> Self {
        self.host = h;
        self
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.push((k, v));
        self
    }
    fn conn(&self) -> Connection {
        let id = self.principal.map(|p| {
            format!("spiffe://{p}")
                .parse::<rustmesh_xds::identity::SpiffeId>()
                .unwrap()
        });
        Connection::new(
            id.as_ref(),
            format!("{}:40000", self.source).parse().unwrap(),
            std::net::SocketAddr::new("10.0.0.9".parse().unwrap(), self.port),
            self.sni,
        )
    }
    fn header_map(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in &self.headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }
}

/// Evaluates `r` as HTTP (`tcp` false) or TCP with both the engine and the reference, checks
/// they agree, and returns the engine's decision.
fn decide(a: &Authorization, r: &Req, tcp: bool) -> Decision {
    let conn = r.conn();
    let headers = r.header_map();
    let attrs = Attributes {
        conn: &conn,
        http: (!tcp).then_some(Request {
            host: r.host,
            method: r.method,
            path: r.path,
            headers: &headers,
            auth: None,
        }),
    };
    let compiled = Authz::compile(a, &no_labels()).unwrap();
    let reference = reference::evaluate(a, &no_labels(), &attrs);
    let got = match &compiled {
        Some(z) => z.evaluate(&attrs),
        None => Decision {
            allowed: true,
            by: None,
            rule: None,
            audit: None,
            tally: Tally::default(),
        },
    };
    assert_eq!(
        got, reference,
        "engine and reference disagree on {r:?} (tcp: {tcp})"
    );
    got
}

fn allowed(a: &Authorization, r: &Req) -> bool {
    decide(a, r, false).allowed
}

fn allowed_tcp(a: &Authorization, r: &Req) -> bool {
    decide(a, r, true).allowed
}

const SLEEP: &str = "cluster.local/ns/foo/sa/sleep";
const OTHER: &str = "cluster.local/ns/bar/sa/other";

#[test]
fn no_policy_allows_everything() {
    assert!(
        Authz::compile(&doc(json!([])), &no_labels())
            .unwrap()
            .is_none()
    );
    let a = doc(json!([{"name": "foo/only-v2", "selector": {"version": "v2"}, "rules": []}]));
    assert!(
        Authz::compile(&a, &no_labels()).unwrap().is_none(),
        "a policy selecting other pods does not apply"
    );
    assert!(allowed(&a, &req()));
}

#[test]
fn deny_all_is_an_allow_policy_without_rules() {
    // Istio's `allow-nothing`: `spec: {}`.
    let a = doc(json!([{"name": "foo/allow-nothing"}]));
    let d = decide(&a, &req().from(SLEEP), false);
    assert!(!d.allowed);
    assert_eq!((d.by, d.rule), (Some(AuthzAction::Allow), None));
    assert_eq!(
        d.tally,
        Tally {
            denied: 1,
            ..Tally::default()
        }
    );
    assert!(!allowed_tcp(&a, &req()));
    let z = Authz::compile(&a, &no_labels()).unwrap().unwrap();
    assert_eq!(
        z.denial_details(&d),
        "rbac_access_denied_matched_policy[none]"
    );
}

#[test]
fn allow_all_is_one_empty_rule() {
    // Istio's `allow-all`: `rules: [{}]`.
    let a = doc(json!([{"name": "foo/allow-all", "rules": [{}]}]));
    for r in [req(), req().from(OTHER).method("DELETE").path("/admin")] {
        assert!(allowed(&a, &r) && allowed_tcp(&a, &r));
    }
    // And a DENY policy with `{}` denies everything.
    let a = doc(json!([{"name": "foo/deny-all", "action": "DENY", "rules": [{}]}]));
    let d = decide(&a, &req(), false);
    assert!(!d.allowed);
    let z = Authz::compile(&a, &no_labels()).unwrap().unwrap();
    assert_eq!(
        z.denial_details(&d),
        "rbac_access_denied_matched_policy[ns[foo]-policy[deny-all]-rule[0]]"
    );
}

#[test]
fn allow_get_from_a_principal() {
    // The reference's first example: from the sleep service account or the `test` namespace,
    // GET on `/info*` or POST on `/data`.
    let a = doc(json!([{"name": "foo/httpbin", "rules": [{
        "from": [{"principals": ["cluster.local/ns/default/sa/sleep"]}, {"namespaces": ["test"]}],
        "to": [{"methods": ["GET"], "paths": ["/info*"]}, {"methods": ["POST"], "paths": ["/data"]}]
    }]}]));
    let sleep = "cluster.local/ns/default/sa/sleep";
    assert!(allowed(&a, &req().from(sleep).path("/info")));
    assert!(allowed(&a, &req().from(sleep).path("/info/x")));
    assert!(allowed(
        &a,
        &req()
            .from("cluster.local/ns/test/sa/any")
            .method("POST")
            .path("/data")
    ));
    assert!(!allowed(
        &a,
        &req().from(sleep).method("POST").path("/info")
    ));
    assert!(!allowed(&a, &req().from(sleep).method("GET").path("/data")));
    assert!(!allowed(&a, &req().from(OTHER).path("/info")));
    assert!(
        !allowed(&a, &req().path("/info")),
        "plain text has no principal"
    );
    let d = decide(&a, &req().from(sleep).path("/info"), false);
    assert_eq!(d.rule, Some(RuleRef { policy: 0, rule: 0 }));
    assert_eq!(d.by, Some(AuthzAction::Allow));
}

#[test]
fn deny_by_path_and_not_paths() {
    let a = doc(
        json!([{"name": "foo/deny-admin", "action": "DENY", "rules": [
        {"to": [{"paths": ["/admin", "/admin/*"]}]}]}]),
    );
    assert!(!allowed(&a, &req().path("/admin")));
    assert!(!allowed(&a, &req().path("/admin/users")));
    assert!(allowed(&a, &req().path("/administrator")));
    assert!(allowed(&a, &req().path("/")));
    // The reference's second example: deny non-GET from `dev`... and notPaths: everything but
    // `/healthz` needs a principal.
    let a = doc(
        json!([{"name": "foo/require-mtls", "action": "DENY", "rules": [
        {"from": [{"notPrincipals": ["*"]}], "to": [{"notPaths": ["/healthz"]}]}]}]),
    );
    assert!(
        allowed(&a, &req().path("/healthz")),
        "plain text may read /healthz"
    );
    assert!(
        !allowed(&a, &req().path("/data")),
        "plain text elsewhere is denied"
    );
    assert!(allowed(&a, &req().from(SLEEP).path("/data")));
}

#[test]
fn negations_and_their_absent_attributes() {
    let a = doc(json!([{"name": "foo/p", "rules": [{"from": [{"notNamespaces": ["bar"]}]}]}]));
    assert!(allowed(&a, &req().from(SLEEP)));
    assert!(!allowed(&a, &req().from(OTHER)));
    assert!(allowed(&a, &req()), "no peer: not in bar");
    // A field and its negation together: both must hold.
    let a = doc(json!([{"name": "foo/p", "rules": [{"from": [
        {"principals": ["cluster.local/ns/foo/*"], "notPrincipals": ["*/sa/admin"]}]}]}]));
    assert!(allowed(&a, &req().from(SLEEP)));
    assert!(!allowed(&a, &req().from("cluster.local/ns/foo/sa/admin")));
    assert!(!allowed(&a, &req()));
    // Request principals need a JWT, which no request has until RequestAuthentication.
    let a = doc(json!([{"name": "foo/jwt", "rules": [{"from": [{"requestPrincipals": ["*"]}]}]}]));
    assert!(!allowed(&a, &req().from(SLEEP)));
    let a = doc(json!([{"name": "foo/jwt", "action": "DENY", "rules": [
        {"from": [{"notRequestPrincipals": ["*"]}]}]}]));
    assert!(
        !allowed(&a, &req()),
        "no JWT: denied by notRequestPrincipals"
    );
    let a = doc(json!([{"name": "foo/jwt", "rules": [{"when": [
        {"key": "request.auth.claims[groups]", "notValues": ["admin"]}]}]}]));
    assert!(allowed(&a, &req()));
}

#[test]
fn when_request_headers() {
    let a = doc(json!([{"name": "foo/token", "rules": [{"when": [
        {"key": "request.headers[X-Token]", "values": ["admin", "ops*"], "notValues": ["ops-guest"]}]}]}]));
    assert!(allowed(&a, &req().header("x-token", "admin")));
    assert!(allowed(&a, &req().header("x-token", "ops-1")));
    assert!(!allowed(&a, &req().header("x-token", "ops-guest")));
    assert!(
        !allowed(&a, &req().header("x-token", "Admin")),
        "values are case-sensitive"
    );
    assert!(!allowed(&a, &req()), "absent header");
    assert!(
        !allowed(&a, &req().header("x-token", "admin").header("x-token", "x")),
        "repeated values are joined: `admin,x`"
    );
    // Presence: any non-empty value.
    let a = doc(json!([{"name": "foo/p", "rules": [{"when": [
        {"key": "request.headers[x-user]", "values": ["*"]}]}]}]));
    assert!(allowed(&a, &req().header("x-user", "a")));
    assert!(!allowed(&a, &req().header("x-user", "")));
    assert!(!allowed(&a, &req()));
}

#[test]
fn ip_blocks_and_remote_ip() {
    let a = doc(
        json!([{"name": "foo/ip", "rules": [{"from": [{"ipBlocks": ["10.0.0.0/16", "203.0.113.4"]}]}]}]),
    );
    assert!(allowed(&a, &req().ip("10.0.3.4")));
    assert!(allowed(&a, &req().ip("203.0.113.4")));
    assert!(!allowed(&a, &req().ip("203.0.113.5")));
    assert!(
        allowed_tcp(&a, &req().ip("10.0.3.4")),
        "ipBlocks work on TCP"
    );
    assert!(!allowed_tcp(&a, &req().ip("11.0.0.1")));
    // The remote address is the source: a sidecar trusts no X-Forwarded-For.
    let a = doc(
        json!([{"name": "foo/deny", "action": "DENY", "rules": [{"from": [
        {"remoteIpBlocks": ["1.2.3.4"]}]}]}]),
    );
    assert!(allowed(
        &a,
        &req().ip("10.0.0.1").header("x-forwarded-for", "1.2.3.4")
    ));
    assert!(!allowed(&a, &req().ip("1.2.3.4")));
    let a = doc(json!([{"name": "foo/w", "rules": [{"when": [
        {"key": "source.ip", "values": ["10.0.0.0/8"]},
        {"key": "destination.ip", "values": ["10.0.0.9"]},
        {"key": "remote.ip", "notValues": ["10.9.0.0/16"]}]}]}]));
    assert!(allowed(&a, &req().ip("10.1.0.1")));
    assert!(!allowed(&a, &req().ip("10.9.0.1")));
}

#[test]
fn ports_are_the_destination_port() {
    let a = doc(json!([{"name": "foo/ports", "rules": [{"to": [{"ports": [8000, 9000]}]}]}]));
    assert!(allowed(&a, &req().port(8000)) && allowed_tcp(&a, &req().port(9000)));
    assert!(!allowed(&a, &req().port(8080)) && !allowed_tcp(&a, &req().port(8080)));
    let a = doc(
        json!([{"name": "foo/ports", "action": "DENY", "rules": [{"to": [{"notPorts": [8000]}]}]}]),
    );
    assert!(allowed(&a, &req().port(8000)) && !allowed(&a, &req().port(9000)));
    let a = doc(json!([{"name": "foo/w", "rules": [{"when": [
        {"key": "destination.port", "values": ["9000"]}]}]}]));
    assert!(allowed_tcp(&a, &req().port(9000)) && !allowed_tcp(&a, &req().port(8000)));
}

#[test]
fn hosts_are_compared_without_case() {
    let a = doc(json!([{"name": "foo/deny", "action": "DENY", "rules": [
        {"to": [{"hosts": ["httpbin.foo", "*.example.com"]}]}]}]));
    assert!(!allowed(&a, &req().host("HttpBin.Foo")));
    assert!(!allowed(&a, &req().host("api.EXAMPLE.com")));
    assert!(
        allowed(&a, &req().host("httpbin.foo:8000")),
        "the port is part of the host"
    );
}

#[test]
fn path_templates() {
    let a = doc(json!([{"name": "foo/t", "rules": [{"to": [
        {"paths": ["/store/{*}/items", "/files/{**}"]}]}]}]));
    assert!(allowed(&a, &req().path("/store/123/items")));
    assert!(!allowed(&a, &req().path("/store/1/2/items")));
    assert!(allowed(&a, &req().path("/files/a/b/c.txt")));
    assert!(!allowed(&a, &req().path("/files")));
}

#[test]
fn deny_is_evaluated_before_allow() {
    let a = doc(json!([
        {"name": "foo/allow-all", "rules": [{}]},
        {"name": "foo/deny-delete", "action": "DENY", "rules": [{"to": [{"methods": ["DELETE"]}]}]},
    ]));
    assert!(allowed(&a, &req().method("GET")));
    let d = decide(&a, &req().method("DELETE"), false);
    assert!(!d.allowed);
    assert_eq!(d.by, Some(AuthzAction::Deny));
    assert_eq!(d.rule, Some(RuleRef { policy: 1, rule: 0 }));
    assert_eq!(
        d.tally,
        Tally {
            denied: 1,
            ..Tally::default()
        },
        "the ALLOW filter never ran"
    );
    let d = decide(&a, &req().method("GET"), false);
    assert_eq!(
        d.tally,
        Tally {
            allowed: 2,
            ..Tally::default()
        },
        "both filters let it through"
    );
    // ALLOW matching does not save a request DENY matches, whichever comes first.
    let a = doc(json!([
        {"name": "foo/deny-sleep", "action": "DENY", "rules": [{"from": [{"principals": [SLEEP]}]}]},
        {"name": "foo/allow-sleep", "rules": [{"from": [{"principals": [SLEEP]}]}]},
    ]));
    assert!(!allowed(&a, &req().from(SLEEP)));
    assert!(
        !allowed(&a, &req().from(OTHER)),
        "an ALLOW policy denies what it does not allow"
    );
}

#[test]
fn custom_denies_what_it_matches_first() {
    let a = doc(json!([
        {"name": "foo/deny", "action": "DENY", "rules": [{"to": [{"paths": ["/admin*"]}]}]},
        {"name": "foo/ext", "action": "CUSTOM", "rules": [{"to": [{"paths": ["/admin/*"]}]}]},
        {"name": "foo/audit", "action": "AUDIT", "rules": [{}]},
    ]));
    let d = decide(&a, &req().path("/admin/x"), false);
    assert_eq!((d.allowed, d.by), (false, Some(AuthzAction::Custom)));
    assert_eq!(d.rule, Some(RuleRef { policy: 1, rule: 0 }));
    assert_eq!(d.audit, None, "the AUDIT filter comes after CUSTOM");
    let d = decide(&a, &req().path("/admin"), false);
    assert_eq!((d.allowed, d.by), (false, Some(AuthzAction::Deny)));
    assert_eq!(d.audit, Some(RuleRef { policy: 2, rule: 0 }));
}

#[test]
fn audit_never_decides() {
    let a = doc(
        json!([{"name": "foo/audit-get", "action": "AUDIT", "rules": [
        {"to": [{"methods": ["GET"]}]}]}]),
    );
    let d = decide(&a, &req(), false);
    assert!(d.allowed);
    assert_eq!(d.audit, Some(RuleRef { policy: 0, rule: 0 }));
    assert_eq!(
        d.tally,
        Tally {
            logged: 1,
            ..Tally::default()
        }
    );
    let d = decide(&a, &req().method("POST"), false);
    assert!(d.allowed && d.audit.is_none());
    assert_eq!(
        d.tally,
        Tally {
            not_logged: 1,
            ..Tally::default()
        }
    );
}

#[test]
fn http_only_fields_on_tcp() {
    // ALLOW: a rule with an HTTP-only field never matches on TCP; the policy still applies,
    // so TCP is denied.
    let a = doc(
        json!([{"name": "foo/allow-get", "rules": [{"to": [{"methods": ["GET"], "ports": [9000]}]}]}]),
    );
    assert!(allowed(&a, &req().port(9000)));
    assert!(!allowed_tcp(&a, &req().port(9000)));
    // DENY: the HTTP-only fields are left out, the rest still has to match.
    let a = doc(json!([{"name": "foo/deny-get", "action": "DENY", "rules": [
        {"to": [{"methods": ["GET"], "ports": [9000]}]}]}]));
    assert!(!allowed_tcp(&a, &req().port(9000)));
    assert!(allowed_tcp(&a, &req().port(9001)));
    assert!(
        allowed(&a, &req().port(9000).method("POST")),
        "HTTP reads the method"
    );
    let a = doc(json!([{"name": "foo/deny-jwt", "action": "DENY", "rules": [
        {"from": [{"requestPrincipals": ["x/y"]}], "when": [{"key": "request.headers[a]", "values": ["b"]}]}]}]));
    assert!(
        !allowed_tcp(&a, &req()),
        "nothing left: the rule matches every connection"
    );
    assert!(allowed(&a, &req()));
    // AUDIT: like DENY.
    let a = doc(
        json!([{"name": "foo/audit", "action": "AUDIT", "rules": [{"to": [{"paths": ["/x"]}]}]}]),
    );
    assert_eq!(
        decide(&a, &req(), true).audit,
        Some(RuleRef { policy: 0, rule: 0 })
    );
}

#[test]
fn sni_and_source_conditions() {
    let mut r = req().from(SLEEP);
    r.sni = Some("outbound_.8000_._.httpbin.foo.svc.cluster.local");
    let a = doc(json!([{"name": "foo/sni", "rules": [{"when": [
        {"key": "connection.sni", "values": ["*.httpbin.foo.svc.cluster.local"]},
        {"key": "source.namespace", "values": ["foo"]},
        {"key": "source.principal", "values": [SLEEP]}]}]}]));
    assert!(allowed_tcp(&a, &r) && allowed(&a, &r));
    r.sni = None;
    assert!(!allowed_tcp(&a, &r));
}

#[test]
fn selectors_pick_the_policies_of_this_pod() {
    let a = doc(json!([
        {"name": "istio-system/deny-v1", "selector": {"version": "v1"}, "action": "DENY", "rules": [{}]},
        {"name": "foo/allow-all", "rules": [{}]},
    ]));
    let v1 = BTreeMap::from([("version".to_string(), "v1".to_string())]);
    let z = Authz::compile(&a, &v1).unwrap().unwrap();
    let conn = req().conn();
    let attrs = Attributes {
        conn: &conn,
        http: None,
    };
    assert!(!z.evaluate(&attrs).allowed);
    let z = Authz::compile(&a, &no_labels()).unwrap().unwrap();
    assert!(z.evaluate(&attrs).allowed);
}

#[test]
fn compile_errors_name_the_policy_and_field() {
    let a = doc(json!([
        {"name": "foo/ok", "rules": [{}]},
        {"name": "foo/bad", "rules": [{}, {"from": [{"ipBlocks": ["10.0.0.0/40"]}]}]},
    ]));
    let (field, message) = Authz::compile(&a, &no_labels()).unwrap_err();
    assert_eq!(
        field,
        "authorization.policies[1].rules[1].from[0].ipBlocks[0]"
    );
    assert!(
        message.contains("\"foo/bad\"") && message.contains("10.0.0.0/40"),
        "{message}"
    );
    let a = doc(
        json!([{"name": "foo/t", "action": "DENY", "rules": [{"to": [{"paths": ["/a/{**}/b/{*}"]}]}]}]),
    );
    let (field, _) = Authz::compile(&a, &no_labels()).unwrap_err();
    assert_eq!(field, "authorization.policies[0].rules[0].to[0].paths[0]");
    let a = doc(
        json!([{"name": "foo/w", "rules": [{"when": [{"key": "request.size", "values": ["1"]}]}]}]),
    );
    let (field, message) = Authz::compile(&a, &no_labels()).unwrap_err();
    assert_eq!(field, "authorization.policies[0].rules[0].when[0].key");
    assert!(message.contains("request.size"), "{message}");
    // A broken policy that selects other pods does not refuse this pod's configuration.
    let a = doc(
        json!([{"name": "foo/other", "selector": {"app": "x"}, "rules": [
        {"from": [{"ipBlocks": ["nope"]}]}]}]),
    );
    assert!(Authz::compile(&a, &no_labels()).unwrap().is_none());
}

#[test]
fn the_first_matching_rule_in_order_decides() {
    let a = doc(json!([
        {"name": "foo/a", "action": "DENY", "rules": [
            {"to": [{"paths": ["/x*"]}]},
            {"to": [{"paths": ["/x/1"]}]}]},
        {"name": "foo/b", "action": "DENY", "rules": [{"to": [{"ports": [8000]}]}]},
    ]));
    assert_eq!(
        decide(&a, &req().path("/x/1"), false).rule,
        Some(RuleRef { policy: 0, rule: 0 })
    );
    assert_eq!(
        decide(&a, &req().path("/y"), false).rule,
        Some(RuleRef { policy: 1, rule: 0 })
    );
    let z = Authz::compile(&a, &no_labels()).unwrap().unwrap();
    assert_eq!(
        z.rule_id(RuleRef { policy: 1, rule: 0 }),
        "ns[foo]-policy[b]-rule[0]"
    );
}

#[test]
fn a_thousand_exact_rules_are_indexed() {
    // The benchmark's policy: the TCP ports, 998 GET paths never asked for, then GET /.
    let mut rules = vec![json!({"to": [{"ports": [9000, 9001]}]})];
    rules.extend(
        (1..999)
            .map(|i| json!({"to": [{"methods": ["GET"], "paths": [format!("/api/items/{i}")]}]})),
    );
    rules.push(json!({"to": [{"methods": ["GET"], "paths": ["/"]}]}));
    let a = doc(json!([{"name": "bench/allow", "rules": rules}]));
    let z = Authz::compile(&a, &no_labels()).unwrap().unwrap();
    assert_eq!(
        z.sizes(),
        [(1000, 0), (1, 0)],
        "every rule is filed under a value"
    );
    let d = decide(&a, &req().path("/"), false);
    assert_eq!(
        d.rule,
        Some(RuleRef {
            policy: 0,
            rule: 999
        })
    );
    assert!(allowed_tcp(&a, &req().port(9000)));
    assert!(!allowed(&a, &req().path("/api/items/1").method("POST")));
}

// ---- the engine against the reference -------------------------------------------------------

const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/foo/sa/sleep",
    "cluster.local/ns/foo/sa/admin",
    "cluster.local/ns/bar/sa/sleep",
];
const PRINCIPAL_PATTERNS: &[&str] = &[
    "cluster.local/ns/foo/sa/sleep",
    "cluster.local/ns/bar/sa/sleep",
    "cluster.local/ns/foo/*",
    "*/sa/sleep",
    "*",
];
const NAMESPACES: &[&str] = &["foo", "bar", "f*", "*"];
const IPS: &[&str] = &["10.0.0.1", "10.0.1.1", "192.168.1.1"];
const BLOCKS: &[&str] = &["10.0.0.0/24", "10.0.0.0/8", "192.168.1.1", "0.0.0.0/0"];
const PORTS: &[u16] = &[80, 8000, 9000];
const METHODS: &[&str] = &["GET", "POST", "DELETE"];
const METHOD_PATTERNS: &[&str] = &["GET", "POST", "P*", "*"];
const HOSTS: &[&str] = &[
    "httpbin.foo",
    "HTTPBIN.foo",
    "api.example.com",
    "httpbin.foo:8000",
];
const HOST_PATTERNS: &[&str] = &["httpbin.foo", "*.example.com", "httpbin.*", "*"];
const PATHS: &[&str] = &[
    "/",
    "/admin",
    "/admin/users",
    "/api/v1/items",
    "/api/v1/x/items",
    "/healthz",
];
const PATH_PATTERNS: &[&str] = &[
    "/",
    "/admin",
    "/admin*",
    "/admin/*",
    "*/items",
    "/api/{*}/items",
    "/api/{**}",
    "/healthz",
    "*",
];
const HEADER_VALUES: &[&str] = &["alice", "bob", "admin"];
const HEADER_PATTERNS: &[&str] = &["alice", "bob", "a*", "*in", "*"];
const KEYS: &[&str] = &[
    "request.headers[x-user]",
    "source.ip",
    "remote.ip",
    "destination.port",
    "source.namespace",
    "source.principal",
    "connection.sni",
    "request.auth.principal",
    "request.auth.claims[groups]",
];

fn pick(list: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(list).prop_map(str::to_string)
}

fn list(of: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        3 => Just(Vec::new()),
        2 => prop::collection::vec(pick(of), 1..3),
    ]
}

fn ports() -> impl Strategy<Value = Vec<u16>> {
    prop_oneof![
        3 => Just(Vec::new()),
        1 => prop::collection::vec(prop::sample::select(PORTS), 1..3),
    ]
}

fn source() -> impl Strategy<Value = Value> {
    (
        list(PRINCIPAL_PATTERNS),
        list(PRINCIPAL_PATTERNS),
        list(&["iss/sub", "*"]),
        list(NAMESPACES),
        list(NAMESPACES),
        list(BLOCKS),
        list(BLOCKS),
        list(BLOCKS),
    )
        .prop_map(|(p, np, rp, ns, nns, ip, nip, rip)| {
            json!({"principals": p, "notPrincipals": np, "requestPrincipals": rp,
                "namespaces": ns, "notNamespaces": nns, "ipBlocks": ip, "notIpBlocks": nip,
                "remoteIpBlocks": rip})
        })
}

fn operation() -> impl Strategy<Value = Value> {
    (
        list(HOST_PATTERNS),
        list(HOST_PATTERNS),
        ports(),
        ports(),
        list(METHOD_PATTERNS),
        list(METHOD_PATTERNS),
        list(PATH_PATTERNS),
        list(PATH_PATTERNS),
    )
        .prop_map(|(h, nh, p, np, m, nm, pa, npa)| {
            json!({"hosts": h, "notHosts": nh, "ports": p, "notPorts": np, "methods": m,
                "notMethods": nm, "paths": pa, "notPaths": npa})
        })
}

fn condition() -> impl Strategy<Value = Value> {
    prop::sample::select(KEYS).prop_flat_map(|key| {
        let values: &'static [&'static str] = match key {
            "request.headers[x-user]" | "request.auth.claims[groups]" => HEADER_PATTERNS,
            "source.ip" | "remote.ip" => BLOCKS,
            "destination.port" => &["80", "8000", "9000"],
            "source.namespace" => NAMESPACES,
            "source.principal" | "request.auth.principal" => PRINCIPAL_PATTERNS,
            _ => &["*.foo", "a.foo", "*"],
        };
        (list(values), list(values)).prop_filter_map("values or notValues", move |(v, nv)| {
            (!v.is_empty() || !nv.is_empty())
                .then(|| json!({"key": key, "values": v, "notValues": nv}))
        })
    })
}

fn rule() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(source(), 0..3),
        prop::collection::vec(operation(), 0..3),
        prop::collection::vec(condition(), 0..3),
    )
        .prop_map(|(from, to, when)| json!({"from": from, "to": to, "when": when}))
}

fn authorization() -> impl Strategy<Value = Authorization> {
    let policy = (
        prop::sample::select(&["ALLOW", "DENY", "AUDIT", "CUSTOM"][..]),
        prop::collection::vec(rule(), 0..6),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(action, rules, other_pod)| {
            let mut p = json!({"name": "ns/p", "action": action, "rules": rules});
            if other_pod {
                p["selector"] = json!({"app": "other"});
            }
            p
        });
    prop::collection::vec(policy, 0..5).prop_map(|ps| {
        let ps: Vec<Value> = ps
            .into_iter()
            .enumerate()
            .map(|(i, mut p)| {
                p["name"] = json!(format!("ns/p{i}"));
                p
            })
            .collect();
        doc(json!(ps))
    })
}

#[derive(Clone, Debug)]
struct GenReq {
    principal: Option<String>,
    source: String,
    port: u16,
    method: String,
    host: String,
    path: String,
    user: Vec<String>,
    sni: Option<String>,
    jwt: Option<(String, Vec<String>)>,
    tcp: bool,
}

fn request() -> impl Strategy<Value = GenReq> {
    (
        prop::option::of(pick(PRINCIPALS)),
        pick(IPS),
        prop::sample::select(PORTS),
        pick(METHODS),
        pick(HOSTS),
        pick(PATHS),
        prop::collection::vec(pick(HEADER_VALUES), 0..3),
        prop::option::of(pick(&["a.foo", "b.bar"])),
        prop::option::of((
            pick(&["iss/sub", "iss/other"]),
            prop::collection::vec(pick(HEADER_VALUES), 0..3),
        )),
        prop::bool::ANY,
    )
        .prop_map(
            |(principal, source, port, method, host, path, user, sni, jwt, tcp)| GenReq {
                principal,
                source,
                port,
                method,
                host,
                path,
                user,
                sni,
                jwt,
                tcp,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_engine_decides_as_the_reference(a in authorization(), reqs in prop::collection::vec(request(), 1..8)) {
        let z = Authz::compile(&a, &no_labels()).expect("generated values compile");
        for r in &reqs {
            let id = r.principal.as_ref().map(|p| format!("spiffe://{p}").parse::<rustmesh_xds::identity::SpiffeId>().unwrap());
            let conn = Connection::new(
                id.as_ref(),
                format!("{}:1234", r.source).parse().unwrap(),
                std::net::SocketAddr::new("10.0.0.9".parse().unwrap(), r.port),
                r.sni.as_deref(),
            );
            let mut headers = HeaderMap::new();
            for u in &r.user {
                headers.append("x-user", u.parse().unwrap());
            }
            let auth = r.jwt.as_ref().map(|(principal, groups)| RequestAuth {
                principal: principal.clone(),
                claims: json!({"groups": groups}).as_object().unwrap().clone(),
                ..RequestAuth::default()
            });
            let attrs = Attributes {
                conn: &conn,
                http: (!r.tcp).then_some(Request {
                    host: &r.host,
                    method: &r.method,
                    path: &r.path,
                    headers: &headers,
                    auth: auth.as_ref(),
                }),
            };
            let want = reference::evaluate(&a, &no_labels(), &attrs);
            let got = z.as_ref().map_or(Decision {
                allowed: true, by: None, rule: None, audit: None, tally: Tally::default(),
            }, |z| z.evaluate(&attrs));
            prop_assert_eq!(got, want, "{:?}", r);
        }
    }
}
