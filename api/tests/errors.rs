//! Bad documents: every error names the field and the line, and one bad object never hides others.

use rustmesh_api::{Error, load, load_all};

/// The single field error of a load that must fail, as (field, line, message).
fn only_error(text: &str) -> (String, Option<usize>, String) {
    let err = load(text).expect_err("document should be refused");
    let fields = err.field_errors();
    assert_eq!(fields.len(), 1, "expected one finding, got: {err}");
    (
        fields[0].field.clone(),
        fields[0].line,
        fields[0].message.clone(),
    )
}

const HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  namespace: bookinfo\n";

#[test]
fn wrong_type_names_field_and_line() {
    let text = format!(
        "{HEAD}spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination:\n        host: reviews\n      weight: ninety\n"
    );
    let (field, line, msg) = only_error(&text);
    assert_eq!(field, "spec.http[0].route[0].weight");
    assert_eq!(line, Some(12));
    assert!(msg.contains("invalid type"), "{msg}");
    // The Display form carries all of it for a terminal user.
    let shown = load(&text).unwrap_err().to_string();
    assert!(
        shown.contains("document 1 (VirtualService bookinfo/reviews)")
            && shown.contains("line 12")
            && shown.contains("weight"),
        "{shown}"
    );
}

#[test]
fn typo_in_a_field_name_is_refused_not_dropped() {
    let text = format!(
        "{HEAD}spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination:\n        host: reviews\n      wieght: 90\n"
    );
    let (field, line, msg) = only_error(&text);
    assert_eq!(field, "spec.http[0].route[0].wieght");
    assert_eq!(line, Some(12));
    assert!(msg.contains("unknown field `wieght`"), "{msg}");
}

#[test]
fn unknown_top_level_and_metadata_fields_are_refused() {
    let (field, line, _) = only_error(&format!("{HEAD}specs:\n  hosts: [reviews]\n"));
    assert_eq!((field.as_str(), line), ("specs", Some(6)));
    let text = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: x\n  lables:\n    a: b\nspec:\n  egress:\n  - hosts: [\"./*\"]\n";
    let (field, line, _) = only_error(text);
    assert_eq!((field.as_str(), line), ("metadata.lables", Some(5)));
}

#[test]
fn string_match_is_one_of() {
    let text = format!(
        "{HEAD}spec:\n  hosts: [reviews]\n  http:\n  - match:\n    - uri:\n        exact: /a\n        prefix: /b\n    route:\n    - destination:\n        host: reviews\n"
    );
    let (field, line, _) = only_error(&text);
    assert!(field.starts_with("spec.http[0].match[0].uri"), "{field}");
    assert_eq!(line, Some(10));
}

#[test]
fn bad_duration_names_field() {
    let text = format!(
        "{HEAD}spec:\n  hosts: [reviews]\n  http:\n  - timeout: 10 seconds\n    route:\n    - destination:\n        host: reviews\n"
    );
    let (field, line, msg) = only_error(&text);
    assert_eq!((field.as_str(), line), ("spec.http[0].timeout", Some(9)));
    assert!(msg.contains("invalid duration"), "{msg}");
}

#[test]
fn weights_must_add_up_to_100() {
    let text = format!(
        "{HEAD}spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination:\n        host: reviews\n        subset: v1\n      weight: 90\n    - destination:\n        host: reviews\n        subset: v2\n      weight: 5\n"
    );
    let err = load(&text).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    let (field, line, msg) = only_error(&text);
    assert_eq!((field.as_str(), line), ("spec.http[0].route", Some(9)));
    assert!(msg.contains("add up to 95"), "{msg}");
}

#[test]
fn semantic_rules_each_name_their_field() {
    let cases = [
        // (spec body, field, line)
        (
            "  hosts: [reviews]\n  http:\n  - match:\n    - uri:\n        regex: \"([a-z\"\n    route:\n    - destination:\n        host: reviews\n",
            "spec.http[0].match[0].uri.regex",
            11,
        ),
        (
            "  hosts: [reviews]\n  http:\n  - route:\n    - destination:\n        host: reviews\n    redirect:\n      uri: /x\n",
            "spec.http[0]",
            9,
        ),
        (
            "  hosts: [reviews]\n  http:\n  - retries:\n      attempts: 2\n      retryOn: 5xx,sometimes\n    route:\n    - destination:\n        host: reviews\n",
            "spec.http[0].retries.retryOn",
            11,
        ),
        (
            "  hosts: [reviews]\n  http:\n  - fault:\n      abort:\n        httpStatus: 700\n    route:\n    - destination:\n        host: reviews\n",
            "spec.http[0].fault.abort.httpStatus",
            11,
        ),
        (
            "  hosts: [reviews]\n  http:\n  - route:\n    - destination:\n        host: reviews\n    mirrorPercentage:\n      value: 150\n",
            "spec.http[0].mirrorPercentage.value",
            13,
        ),
        (
            "  hosts: [reviews]\n  http:\n  - match:\n    - headers:\n        End-User:\n          exact: x\n    route:\n    - destination:\n        host: reviews\n",
            "spec.http[0].match[0].headers.End-User",
            11,
        ),
        (
            "  hosts: [\"reviews*\"]\n  http:\n  - route:\n    - destination:\n        host: reviews\n",
            "spec.hosts[0]",
            7,
        ),
        // Delegation: one level only (a VirtualService without hosts is a delegate)...
        (
            "  http:\n  - delegate:\n      name: deeper\n",
            "spec.http[0].delegate",
            8,
        ),
        // ... which carries http routes only ...
        (
            "  tcp:\n  - route:\n    - destination:\n        host: reviews\n",
            "spec.tcp",
            7,
        ),
        // ... and a root names it properly.
        (
            "  hosts: [reviews]\n  http:\n  - delegate:\n      name: reviews-routes\n      namespace: Bad_NS\n",
            "spec.http[0].delegate.namespace",
            11,
        ),
    ];
    for (body, field, line) in cases {
        let text = format!("{HEAD}spec:\n{body}");
        let (f, l, msg) = only_error(&text);
        assert_eq!(
            (f.as_str(), l),
            (field, Some(line)),
            "for:\n{body}\nmessage: {msg}"
        );
    }
}

#[test]
fn destination_rule_and_sidecar_rules() {
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: reviews\n  subsets:\n  - name: v1\n  - name: v1\n";
    let (f, l, msg) = only_error(dr);
    assert_eq!((f.as_str(), l), ("spec.subsets[1].name", Some(9)));
    assert!(msg.contains("defined twice"), "{msg}");

    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n        httpHeaderName: x\n        useSourceIp: true\n";
    let (f, l, _) = only_error(dr);
    assert_eq!(
        (f.as_str(), l),
        ("spec.trafficPolicy.loadBalancer.consistentHash", Some(9))
    );

    // Envoy's limits on the consistent-hash table sizes, each naming its field.
    let ch = |body: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n        httpHeaderName: x\n{body}"
        )
    };
    let (f, l, msg) = only_error(&ch("        maglev:\n          tableSize: 65536\n"));
    assert_eq!(
        (f.as_str(), l),
        (
            "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
            Some(12)
        )
    );
    assert!(msg.contains("65536") && msg.contains("prime"), "{msg}");
    let (f, _, msg) = only_error(&ch("        maglev:\n          tableSize: 5000077\n"));
    assert_eq!(
        f,
        "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize"
    );
    assert!(msg.contains("5000011"), "{msg}");
    let (f, l, msg) = only_error(&ch(
        "        ringHash:\n          minimumRingSize: 8388609\n",
    ));
    assert_eq!(
        (f.as_str(), l),
        (
            "spec.trafficPolicy.loadBalancer.consistentHash.ringHash.minimumRingSize",
            Some(12)
        )
    );
    assert!(msg.contains("8388608"), "{msg}");
    let (f, _, _) = only_error(&ch("        minimumRingSize: 9000000\n"));
    assert_eq!(
        f,
        "spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize"
    );
    for ok in [
        "        maglev:\n          tableSize: 65537\n",
        "        maglev:\n          tableSize: 5000011\n",
        "        maglev: {}\n",
        "        ringHash:\n          minimumRingSize: 8388608\n",
        "        minimumRingSize: 1024\n",
    ] {
        assert!(load(&ch(ok)).is_ok(), "{ok}");
    }

    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      simple: FASTEST\n";
    let (f, l, msg) = only_error(dr);
    assert_eq!(
        (f.as_str(), l),
        ("spec.trafficPolicy.loadBalancer.simple", Some(9))
    );
    assert!(
        msg.contains("FASTEST") && msg.contains("LEAST_REQUEST"),
        "{msg}"
    );

    let sc = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: s\nspec:\n  egress:\n  - hosts:\n    - reviews.default.svc.cluster.local\n";
    let (f, l, msg) = only_error(sc);
    assert_eq!((f.as_str(), l), ("spec.egress[0].hosts[0]", Some(8)));
    assert!(msg.contains("namespace/dnsName"), "{msg}");

    let sc = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: s\nspec:\n  outboundTrafficPolicy:\n    mode: DENY_ALL\n";
    let (f, l, _) = only_error(sc);
    assert_eq!(
        (f.as_str(), l),
        ("spec.outboundTrafficPolicy.mode", Some(7))
    );
}

/// A Sidecar ingress `defaultEndpoint`: Istio's four forms parse; a Unix socket, and an instance
/// endpoint on another port than the listener's, are refused naming the field (rustmesh cannot
/// deliver them), never rendered as something else.
#[test]
fn sidecar_default_endpoints_rustmesh_cannot_deliver_are_refused() {
    use rustmesh_api::sidecar::DefaultEndpoint;
    assert_eq!(
        DefaultEndpoint::parse("127.0.0.1:8080"),
        Some(DefaultEndpoint::Loopback(
            "127.0.0.1".parse().unwrap(),
            8080
        ))
    );
    assert_eq!(
        DefaultEndpoint::parse("[::1]:8080"),
        Some(DefaultEndpoint::Loopback("::1".parse().unwrap(), 8080))
    );
    assert_eq!(
        DefaultEndpoint::parse("[::]:80"),
        Some(DefaultEndpoint::Instance(80))
    );
    assert_eq!(DefaultEndpoint::parse("10.0.0.1:80"), None);
    assert_eq!(DefaultEndpoint::parse("127.0.0.1:0"), None);
    let sidecar = |ep: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: s\nspec:\n  ingress:\n  - port:\n      number: 9080\n      protocol: HTTP\n    defaultEndpoint: \"{ep}\"\n"
        )
    };
    for ok in ["127.0.0.1:8080", "0.0.0.0:9080", "[::]:9080", "[::1]:7000"] {
        load(&sidecar(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    let (f, _, msg) = only_error(&sidecar("unix:///var/run/app.sock"));
    assert_eq!(f, "spec.ingress[0].defaultEndpoint");
    assert!(msg.contains("not implemented"), "{msg}");
    let (f, _, msg) = only_error(&sidecar("0.0.0.0:8080"));
    assert_eq!(f, "spec.ingress[0].defaultEndpoint");
    assert!(msg.contains("127.0.0.1:8080"), "{msg}");
}

#[test]
fn kind_version_and_syntax_errors() {
    let (f, l, msg) = only_error(
        "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata:\n  name: x\nspec: {}\n",
    );
    assert_eq!((f.as_str(), l), ("apiVersion", Some(1)));
    assert!(msg.contains("v1beta1"), "{msg}");
    let (f, l, _) = only_error(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata:\n  name: x\nspec: {}\n",
    );
    assert_eq!((f.as_str(), l), ("kind", Some(2)));
    let (f, _, _) =
        only_error("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {}\nspec: {}\n");
    assert_eq!(f, "metadata.name");
    let (f, l, _) = only_error(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: x\n   bad: indent\n",
    );
    assert_eq!((f.as_str(), l), ("", Some(5)));
}

#[test]
fn one_bad_document_does_not_hide_the_good_ones() {
    let good = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: ok\nspec:\n  host: reviews\n";
    let bad = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: bad\nspec:\n  hots: reviews\n";
    let text = format!("{good}---\n{bad}---\n{good}");
    let results = load_all(&text);
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok() && results[2].is_ok());
    let err = results[1].as_ref().unwrap_err();
    let f = err.field_errors()[0];
    // Lines count from the start of the stream, so they point into the right document.
    assert_eq!((f.field.as_str(), f.line), ("spec.hots", Some(13)));
    assert!(
        err.to_string()
            .starts_with("document 2 (DestinationRule bad)"),
        "{err}"
    );
}

#[test]
fn json_input_is_read_too() {
    let text = r#"{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"r"},"spec":{"hosts":["r"],"http":[{"route":[{"destination":{"host":"r"}}]}]}}"#;
    assert_eq!(load(text).unwrap().len(), 1);
}

/// A VirtualService with one http route per regex (`uri: {regex: ...}`).
fn routes_with_uri_regexes(regexes: &[&str]) -> String {
    let mut text = format!("{HEAD}spec:\n  hosts: [reviews]\n  http:\n");
    for re in regexes {
        text.push_str(&format!(
            "  - match:\n    - uri:\n        regex: '{re}'\n    route:\n    - destination:\n        host: reviews\n"
        ));
    }
    text
}

#[test]
fn a_regex_bomb_is_refused_naming_the_field() {
    // `\w{60}` (Unicode word characters) compiles to megabytes; 300 of them took a sidecar to 1 GB.
    let (field, line, msg) = only_error(&routes_with_uri_regexes(&[r"\w{60}"]));
    assert_eq!(
        (field.as_str(), line),
        ("spec.http[0].match[0].uri.regex", Some(11))
    );
    assert!(
        msg.contains(r#"regex "\\w{60}" compiles to more than 524288 bytes"#),
        "{msg}"
    );

    let err = load(&routes_with_uri_regexes(&[r"\w{60}"; 300])).unwrap_err();
    let fields = err.field_errors();
    assert_eq!(fields.len(), 300, "{err}");
    assert_eq!(fields[299].field, "spec.http[299].match[0].uri.regex");

    let text = format!(
        "{HEAD}spec:\n  hosts: [reviews]\n  http:\n  - match:\n    - headers:\n        x-id:\n          regex: '\\w{{60}}'\n    rewrite:\n      uriRegexRewrite:\n        match: '\\w{{60}}'\n        rewrite: /\n    route:\n    - destination:\n        host: reviews\n"
    );
    let err = load(&text).unwrap_err();
    let fields: Vec<_> = err.field_errors().iter().map(|f| f.field.clone()).collect();
    assert_eq!(
        fields,
        [
            "spec.http[0].match[0].headers.x-id.regex",
            "spec.http[0].rewrite.uriRegexRewrite.match"
        ],
        "{err}"
    );
}

#[test]
fn an_objects_regexes_cannot_add_up_past_the_budget() {
    use rustmesh_xds::regex::{Anchor, CONFIG_SIZE_BUDGET, compile};
    let medium = "[a-z]{4000}";
    let size = compile(medium, Anchor::Whole).unwrap().size;
    let fit = CONFIG_SIZE_BUDGET / size;
    load(&routes_with_uri_regexes(&vec![medium; fit])).expect("within the budget");

    let err = load(&routes_with_uri_regexes(&vec![medium; fit + 1])).unwrap_err();
    let fields = err.field_errors();
    assert_eq!(fields.len(), 1, "{err}");
    assert_eq!(
        fields[0].field,
        format!("spec.http[{fit}].match[0].uri.regex")
    );
    assert!(
        fields[0]
            .message
            .contains("brings the regexes of this object to")
            && fields[0]
                .message
                .contains("over the budget of 16777216 bytes"),
        "{}",
        fields[0].message
    );
}

#[test]
fn istio_documented_regexes_are_accepted() {
    // From Istio's VirtualService reference, tasks and samples.
    let text = format!(
        "{HEAD}spec:\n  hosts: [reviews]\n  http:\n  - match:\n    - uri:\n        regex: '^/api/v[0-9]+/.*'\n    - uri:\n        regex: '.*\\.jpg'\n    - headers:\n        cookie:\n          regex: '^(.*?;)?(user=jason)(;.*)?$'\n        end-user:\n          regex: '^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$'\n    rewrite:\n      uriRegexRewrite:\n        match: '^/service/([^/]+)(/.*)$'\n        rewrite: '/\\2/instance/\\1'\n    route:\n    - destination:\n        host: reviews\n"
    );
    load(&text).unwrap_or_else(|e| panic!("{e}"));
}
