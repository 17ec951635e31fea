//! Property tests of the handler over arbitrary bodies and mutated real reviews (a small
//! deterministic generator, quickcheck-style, no extra dependency). Properties:
//!
//! 1. `review_body` never panics and always returns: either `Err` (→ 400) or a response.
//! 2. A response echoes the request's uid and allows the pod, unless it refuses it for the
//!    annotations Istio validates (`Outcome::Refused`: `allowed: false`, code 400, a message naming an
//!    annotation in Istio's words, no patch).
//! 3. A returned patch applies cleanly to the submitted object and yields a valid Pod with
//!    exactly one `istio-proxy`, which has no request above its limit.
//! 4. Re-reviewing the patched pod returns no patch (idempotence: injecting again strips the
//!    previous injection and renders the same pod).
//! 5. Through the HTTP router, every body gets 200, 400 or 413.
//!
//! Seeds are fixed so a failure reproduces; set `FUZZ_ITERATIONS` to run longer.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use rustmesh_webhook::server::{AppState, router};
use rustmesh_webhook::settings::NativeSidecars;
use rustmesh_webhook::{InjectionSettings, Outcome, review_body};
use serde_json::{Map, Value, json};

/// SplitMix64: tiny, deterministic, good enough to drive a fuzzer.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn iterations(default: usize) -> usize {
    std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "request",
    "uid",
    "object",
    "metadata",
    "spec",
    "containers",
    "initContainers",
    "volumes",
    "name",
    "labels",
    "annotations",
    "operation",
    "hostNetwork",
    "ports",
    "containerPort",
    "image",
    "generateName",
    "namespace",
];

const STRINGS: &[&str] = &[
    "",
    "Pod",
    "v1",
    "AdmissionReview",
    "admission.k8s.io/v1",
    "admission.k8s.io/v1beta1",
    "CREATE",
    "UPDATE",
    "true",
    "false",
    "*",
    "enabled",
    "istio-proxy",
    "istio-init",
    "10.0.0.0/8",
    "100m",
    "1Gi",
    "-1",
    "~1/~0",
    "a/b~c",
    "héllo ✓",
    "\u{0}",
    "{\"holdApplicationUntilProxyStarts\": true}",
    "holdApplicationUntilProxyStarts: yes",
    "{\"concurrency\": 2}",
    "concurrency: -3",
    "99999999999999999999",
];

const ANNOTATION_KEYS: &[&str] = &[
    "sidecar.istio.io/inject",
    "sidecar.istio.io/status",
    "sidecar.istio.io/proxyCPU",
    "sidecar.istio.io/proxyMemory",
    "sidecar.istio.io/proxyCPULimit",
    "sidecar.istio.io/proxyMemoryLimit",
    "traffic.sidecar.istio.io/includeOutboundIPRanges",
    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "traffic.sidecar.istio.io/includeInboundPorts",
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "traffic.sidecar.istio.io/excludeOutboundPorts",
    "traffic.sidecar.istio.io/includeOutboundPorts",
    "traffic.sidecar.istio.io/excludeInterfaces",
    "traffic.sidecar.istio.io/kubevirtInterfaces",
    "istio.io/reroute-virtual-interfaces",
    "sidecar.istio.io/interceptionMode",
    "proxy.istio.io/config",
    "istio.io/rev",
    "kubectl.kubernetes.io/default-container",
    "sidecar.istio.io/proxyImage",
    "sidecar.istio.io/userVolume",
    "sidecar.istio.io/userVolumeMount",
    "status.sidecar.istio.io/port",
    "readiness.status.sidecar.istio.io/initialDelaySeconds",
    "readiness.status.sidecar.istio.io/periodSeconds",
    "readiness.status.sidecar.istio.io/failureThreshold",
    "readiness.status.sidecar.istio.io/applicationPorts",
    "prometheus.istio.io/merge-metrics",
    "prometheus.io/scrape",
    "prometheus.io/port",
    "prometheus.io/path",
    "prometheus_io/port",
    "inject.istio.io/templates",
    "sidecar.istio.io/nativeSidecar",
    "proxy.istio.io/overrides",
    "sidecar.istio.io/rewriteAppHTTPProbers",
    "weird/~key",
];

const ANNOTATION_VALUES: &[&str] = &[
    "",
    "true",
    "false",
    "yes",
    "*",
    "10.0.0.0/8,fd00::/8",
    "10.0.0/8",
    "10.1.2.3",
    "80,",
    "eth0,net1",
    "averyveryverylongname",
    "REDIRECT",
    "TPROXY",
    "NONE",
    "proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"false\"}",
    "proxyMetadata: {INVALID_DROP: \"on\", ISTIO_OUTBOUND_OWNER_GROUPS: \"0\"}",
    "proxyMetadata: {ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE: istio-proxy, CAPTURE_ALL_DNS: \"1\"}",
    "8080,*",
    "1.2.3.4/99",
    "80,443",
    "0",
    "65536",
    "http",
    "100m",
    "1.5Gi",
    "lots",
    "1e3",
    "{}",
    "[",
    "holdApplicationUntilProxyStarts: true",
    "holdApplicationUntilProxyStarts: 7",
    "concurrency: 4",
    "concurrency: 1e9",
    "proxyMetadata: &m {A: b}\ncopy: *m",
    // An alias bomb: 10^5 scalars, refused by the annotation's node limit.
    "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n\
     c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n\
     e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]",
    "canary",
    "default",
    "✓✓✓",
    "15020",
    "16020",
    "8080",
    "/metrics",
    "2147483648",
    "registry.local/proxy:1",
    "{\"certs\": {\"emptyDir\": {}}}",
    "{\"certs\": {\"mountPath\": \"/certs\"}}",
    "{\"certs\": {\"secret\": {\"secretNam\": \"x\"}}}",
    "gateway",
    "sidecar",
    "sidecar,gateway",
    "grpc-agent",
    "{\"containers\":[{\"name\":\"istio-proxy\",\"env\":[{\"name\":\"X\",\"value\":\"1\"}]}]}",
    "{\"initContainers\":[{\"name\":\"istio-init\",\"resources\":{\"limits\":{\"cpu\":\"1\"}}}]}",
    "{\"containers\":[{\"name\":\"other\"}]}",
    "{\"containers\":\"x\"}",
    // A status as rustmesh writes it, and one of Istio's.
    "{\"initContainers\":[\"istio-init\"],\"containers\":[\"istio-proxy\"],\"volumes\":[\"istio-envoy\",\"istio-podinfo\",\"rustmesh-proxy-config\"],\"imagePullSecrets\":null,\"revision\":\"default\"}",
    "{\"initContainers\":[\"istio-validation\"],\"containers\":[\"istio-proxy\"],\"volumes\":[\"workload-socket\",\"istio-envoy\"],\"imagePullSecrets\":null,\"revision\":\"1-22\"}",
];

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let kinds = if depth == 0 { 5 } else { 7 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(50)),
        2 => match rng.below(4) {
            0 => json!(rng.next() as i64),
            1 => json!(rng.below(70_000)),
            2 => json!((rng.next() % 1000) as f64 / 7.0),
            _ => json!(-1),
        },
        3 => Value::String(rng.pick(STRINGS).to_string()),
        4 => {
            let len = rng.below(40);
            Value::String(
                (0..len)
                    .map(|_| (rng.below(95) as u8 + 32) as char)
                    .collect(),
            )
        }
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.below(5) {
                m.insert(rng.pick(KEYS).to_string(), random_value(rng, depth - 1));
            }
            Value::Object(m)
        }
    }
}

/// All paths (as token lists) of a JSON document.
fn paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(k.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(i.to_string());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = v;
    for t in path {
        cur = match cur {
            Value::Object(m) => m.get_mut(t)?,
            Value::Array(a) => a.get_mut(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// One random structural mutation of a review document.
fn mutate(rng: &mut Rng, doc: &mut Value) {
    let mut all = Vec::new();
    paths(doc, &mut Vec::new(), &mut all);
    let path = rng.pick(&all).clone();
    match rng.below(7) {
        // Replace a node with something random.
        0 | 1 => {
            if let Some(node) = at_mut(doc, &path) {
                *node = random_value(rng, 3);
            }
        }
        // Delete a node.
        2 => {
            if let Some((last, parent)) = path.split_last() {
                match at_mut(doc, parent) {
                    Some(Value::Object(m)) => {
                        m.remove(last);
                    }
                    Some(Value::Array(a)) => {
                        if let Ok(i) = last.parse::<usize>()
                            && i < a.len()
                        {
                            a.remove(i);
                        }
                    }
                    _ => {}
                }
            }
        }
        // Duplicate an array element (duplicate container/volume names).
        3 => {
            if let Some(Value::Array(a)) = at_mut(doc, &path)
                && let Some(first) = a.first().cloned()
            {
                a.push(first);
            }
        }
        // Set a pod label or annotation we read.
        4 | 5 => {
            let field = if rng.chance(50) {
                "annotations"
            } else {
                "labels"
            };
            let key = rng.pick(ANNOTATION_KEYS).to_string();
            let value = rng.pick(ANNOTATION_VALUES).to_string();
            if let Some(Value::Object(meta)) = doc
                .pointer_mut("/request/object/metadata")
                .filter(|m| m.is_object())
            {
                let map = meta.entry(field).or_insert_with(|| json!({}));
                if let Value::Object(map) = map {
                    map.insert(key, Value::String(value));
                } else {
                    *map = json!({ key: value });
                }
            }
        }
        // Give the pod its own istio-proxy or istio-init (an overlay of the injected one).
        6 if rng.chance(50) => {
            let (list, name) = if rng.chance(50) {
                ("containers", "istio-proxy")
            } else {
                ("initContainers", "istio-init")
            };
            let mut own = json!({"name": name, "image": rng.pick(&["auto", "", "mine/proxy:1"])});
            if rng.chance(50) {
                own["resources"] = json!({"limits": {"cpu": rng.pick(&["1", "100m", "3"])},
                                          "requests": {"memory": rng.pick(&["64Mi", "2Gi"])}});
            }
            if rng.chance(30) {
                own["securityContext"] = json!({"runAsUser": rng.pick(&[0, 1000, 1337])});
            }
            if rng.chance(30) {
                own["env"] =
                    json!([{"name": "POD_NAME", "value": "x"}, {"name": "EXTRA", "value": "y"}]);
            }
            if let Some(Value::Object(spec)) = doc.pointer_mut("/request/object/spec") {
                match spec.entry(list).or_insert_with(|| json!([])) {
                    Value::Array(items) => items.push(own),
                    other => *other = json!([own]),
                }
            }
        }
        // Flip the pod's hostNetwork or a container's ports.
        _ => {
            if let Some(Value::Object(spec)) = doc.pointer_mut("/request/object/spec") {
                spec.insert("hostNetwork".into(), random_value(rng, 1));
            }
        }
    }
}

fn fixtures() -> Vec<(String, Value)> {
    let dir = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let v = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 10);
    out
}

fn no_ns(_: &str) -> Option<BTreeMap<String, String>> {
    None
}

/// Checks properties 1-4 for one body; returns whether a patch was produced.
fn check(body: &[u8], settings: &InjectionSettings, context: &str) -> bool {
    let Ok(out) = review_body(body, settings, &no_ns) else {
        return false;
    };
    let sent: Value = serde_json::from_slice(body).expect("Ok implies JSON");
    let resp = &out.review["response"];
    assert_eq!(resp["uid"], sent["request"]["uid"], "{context}");
    if out.outcome == Outcome::Refused {
        assert_eq!(resp["allowed"], false, "{context}");
        assert_eq!(resp["status"]["code"], 400, "{context}");
        let message = resp["status"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(" error")
                && (message.contains("for annotation '")
                    || message.contains("of the pod, merged onto the injected one")),
            "{context}: {message}"
        );
        assert!(resp.get("patch").is_none(), "{context}");
        return false;
    }
    assert_eq!(resp["allowed"], true, "{context}");
    assert_eq!(out.review["apiVersion"], sent["apiVersion"], "{context}");
    let Some(b64) = resp.get("patch") else {
        return false;
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut object = sent["request"]["object"].clone();
    json_patch::patch(&mut object, &patch)
        .unwrap_or_else(|e| panic!("{context}: patch does not apply: {e}\n{object}"));
    let pod: Pod = serde_json::from_value(object.clone())
        .unwrap_or_else(|e| panic!("{context}: patched pod does not parse: {e}"));
    // Exactly one istio-proxy, a container or a native sidecar.
    let spec = pod.spec.as_ref().unwrap();
    let all: Vec<&k8s_openapi::api::core::v1::Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    assert_eq!(
        all.iter().filter(|c| c.name == "istio-proxy").count(),
        1,
        "{context}"
    );
    // No request above its limit: the API server would refuse the pod.
    for c in all {
        let Some(r) = &c.resources else { continue };
        for resource in ["cpu", "memory"] {
            let get = |m: &Option<BTreeMap<String, Quantity>>| {
                rustmesh_webhook::values::parse_quantity(&m.as_ref()?.get(resource)?.0).ok()
            };
            if c.name == "istio-proxy"
                && let (Some(req), Some(lim)) = (get(&r.requests), get(&r.limits))
            {
                assert!(
                    req.cmp_value(&lim) != std::cmp::Ordering::Greater,
                    "{context}: {resource} request above limit"
                );
            }
        }
    }

    let mut again = sent.clone();
    again["request"]["object"] = object;
    let out2 = review_body(&serde_json::to_vec(&again).unwrap(), settings, &no_ns).unwrap();
    assert!(
        out2.review["response"].get("patch").is_none(),
        "{context}: injected twice"
    );
    true
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut rng = Rng(1);
    let settings = InjectionSettings::default();
    for i in 0..iterations(3000) {
        let len = rng.below(600);
        let body: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        check(&body, &settings, &format!("bytes #{i}"));
    }
    // Pathological nesting: refused by the JSON parser's depth limit, not a stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(review_body(deep.as_bytes(), &settings, &no_ns).is_err());
    let deep_obj = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","object":{}{}}}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    assert!(review_body(deep_obj.as_bytes(), &settings, &no_ns).is_err());
}

#[test]
fn arbitrary_json_never_panics() {
    let mut rng = Rng(2);
    let settings = InjectionSettings::default();
    for i in 0..iterations(3000) {
        let mut v = random_value(&mut rng, 5);
        // Often wrap it as a plausible review so that deeper code is reached.
        if rng.chance(70) {
            v = json!({
                "apiVersion": if rng.chance(50) { "admission.k8s.io/v1" } else { "admission.k8s.io/v1beta1" },
                "kind": "AdmissionReview",
                "request": if rng.chance(80) {
                    json!({"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                           "resource": {"group": "", "version": "v1", "resource": "pods"},
                           "operation": "CREATE", "userInfo": {}, "object": v})
                } else { v },
            });
        }
        check(
            &serde_json::to_vec(&v).unwrap(),
            &settings,
            &format!("json #{i}: {v}"),
        );
    }
}

#[test]
fn mutated_real_reviews_keep_the_properties() {
    let mut rng = Rng(3);
    let fixtures = fixtures();
    let native = InjectionSettings {
        native_sidecars: NativeSidecars::On,
        ..InjectionSettings::default()
    };
    let all_settings = [InjectionSettings::default(), native];
    let mut patched = 0;
    for i in 0..iterations(3000) {
        let (name, original) = rng.pick(&fixtures);
        let mut doc = original.clone();
        for _ in 0..=rng.below(3) {
            mutate(&mut rng, &mut doc);
        }
        let settings = rng.pick(&all_settings);
        let body = serde_json::to_vec(&doc).unwrap();
        if check(&body, settings, &format!("mutation #{i} of {name}: {doc}")) {
            patched += 1;
        }
        // Also byte-level damage of the same document.
        if rng.chance(20) && !body.is_empty() {
            let mut damaged = body.clone();
            let at = rng.below(damaged.len());
            if rng.chance(50) {
                damaged.truncate(at);
            } else {
                damaged[at] = rng.next() as u8;
            }
            check(&damaged, settings, &format!("damaged #{i} of {name}"));
        }
    }
    // The generator must actually reach the injection path, or the properties say little.
    assert!(patched > iterations(3000) / 10, "only {patched} injected");
}

#[tokio::test]
async fn the_http_router_always_answers_200_400_or_413() {
    use axum::body::Body;
    use tower::ServiceExt;

    let mut rng = Rng(4);
    let mut state = AppState::new(InjectionSettings::default());
    state.max_body_bytes = 64 * 1024;
    let app = router(state);
    let fixtures = fixtures();
    for i in 0..iterations(500) {
        let body: Vec<u8> = match rng.below(4) {
            0 => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
            1 => vec![b'x'; 64 * 1024 + 1 + rng.below(1000)],
            _ => {
                let (_, original) = rng.pick(&fixtures);
                let mut doc = original.clone();
                mutate(&mut rng, &mut doc);
                serde_json::to_vec(&doc).unwrap()
            }
        };
        let req = http::Request::builder()
            .method("POST")
            .uri("/inject")
            .body(Body::from(body))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        assert!(matches!(status, 200 | 400 | 413), "#{i}: {status}");
    }
}
