//! Issue #18, as Istio's injector renders a pod: the `proxyMetadata` variables the capture step
//! reads reach `istio-init` (bad values refuse the pod, never a pod whose `istio-init` fails),
//! `readiness.status.sidecar.istio.io/applicationPorts` is checked and reported, and a native
//! sidecar gets Istio's `preStop` drain hook. Each test APPLIES the returned JSON Patch to the
//! submitted pod (`tests/fixtures/bare-pod.json`) and asserts on the result.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Container, Pod};
use rustmesh_webhook::settings::NativeSidecars;
use rustmesh_webhook::{InjectionSettings, Outcome, review_body};
use serde_json::{Value, json};

fn no_namespace(_: &str) -> Option<BTreeMap<String, String>> {
    None
}

/// The bare pod's review with these annotations.
fn bare_pod_with(annotations: &[(&str, &str)]) -> Value {
    let path = format!(
        "{}/tests/fixtures/bare-pod.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    for (k, v) in annotations {
        doc["request"]["object"]["metadata"]["annotations"][*k] = json!(v);
    }
    doc
}

/// Reviews the document: the outcome and the `response` object.
fn review(doc: &Value, settings: &InjectionSettings) -> (Outcome, Value) {
    let body = serde_json::to_vec(doc).unwrap();
    let out = review_body(&body, settings, &no_namespace).expect("a review answers");
    (out.outcome, out.review["response"].clone())
}

/// The injected pod (the patch applied to the submitted one) and the response.
fn inject(annotations: &[(&str, &str)], settings: &InjectionSettings) -> (Pod, Value) {
    let doc = bare_pod_with(annotations);
    let (outcome, resp) = review(&doc, settings);
    assert_eq!(outcome, Outcome::Injected, "{resp}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().expect("a patch"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut object = doc["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).expect("the patch applies");
    (serde_json::from_value(object).unwrap(), resp)
}

/// The refusal's message; nothing is patched.
fn refused(annotations: &[(&str, &str)], settings: &InjectionSettings) -> String {
    let (outcome, resp) = review(&bare_pod_with(annotations), settings);
    assert_eq!(outcome, Outcome::Refused, "{resp}");
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(resp.get("patch").is_none(), "{resp}");
    resp["status"]["message"].as_str().unwrap().to_owned()
}

fn warnings(resp: &Value) -> Vec<String> {
    resp["warnings"]
        .as_array()
        .map(|w| w.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn container<'a>(list: &'a [Container], name: &str) -> &'a Container {
    list.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env(c: &Container) -> BTreeMap<String, String> {
    c.env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect()
}

fn init_and_proxy(pod: &Pod) -> (Container, Container) {
    let spec = pod.spec.as_ref().unwrap();
    let inits = spec.init_containers.as_deref().unwrap();
    let proxy = spec
        .containers
        .iter()
        .chain(inits)
        .find(|c| c.name == "istio-proxy")
        .expect("istio-proxy")
        .clone();
    (container(inits, "istio-init").clone(), proxy)
}

/// Istio copies every `proxyMetadata` entry into `istio-init`'s environment (and
/// `istio-proxy`'s): the capture step's variables now get there, the mesh's under the pod's.
#[test]
fn capture_variables_of_proxy_metadata_reach_istio_init() {
    let mesh = InjectionSettings {
        proxy_metadata: [
            ("INVALID_DROP".to_owned(), "true".to_owned()),
            (
                "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE".to_owned(),
                "1001".to_owned(),
            ),
        ]
        .into(),
        ..InjectionSettings::default()
    };
    let config = "proxyMetadata:\n  ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR: 127.0.0.1/8\n  \
                  CAPTURE_ALL_DNS: \"true\"\n  EXIT_ON_ZERO_ACTIVE_CONNECTIONS: \"true\"\n";
    let (pod, resp) = inject(&[("proxy.istio.io/config", config)], &mesh);
    assert!(resp.get("warnings").is_none(), "{resp}");
    let (init, proxy) = init_and_proxy(&pod);
    let want: BTreeMap<String, String> = [
        ("CAPTURE_ALL_DNS", "true"),
        ("INVALID_DROP", "true"),
        ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/8"),
        ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "1001"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(env(&init), want, "the capture step's keys, and only them");
    let proxy_env = env(&proxy);
    for (k, v) in &want {
        assert_eq!(
            proxy_env.get(k),
            Some(v),
            "{k} on istio-proxy too, as Istio's template"
        );
    }
    assert_eq!(proxy_env["EXIT_ON_ZERO_ACTIVE_CONNECTIONS"], "true");
}

/// A value `istio-iptables` would refuse refuses the pod, naming the key, in Istio's error-list
/// format, rather than admitting a pod whose `istio-init` can only fail.
#[test]
fn a_bad_capture_variable_refuses_the_pod() {
    let message = refused(
        &[(
            "proxy.istio.io/config",
            "proxyMetadata: {INVALID_DROP: \"on\", ISTIO_OUTBOUND_OWNER_GROUPS: \"java\"}",
        )],
        &InjectionSettings::default(),
    );
    assert!(message.starts_with("2 errors occurred:\n\t* "), "{message}");
    for why in [
        "proxyMetadata INVALID_DROP is \"on\", not true or false",
        "proxyMetadata ISTIO_OUTBOUND_OWNER_GROUPS is \"java\", not a comma-separated list of \
         numeric gids or of the groups the proxy image has (root, istio-proxy, nonroot, nogroup)",
    ] {
        assert!(
            message.contains(&format!(
                "* invalid value 'proxyMetadata: {{INVALID_DROP: \"on\", \
                 ISTIO_OUTBOUND_OWNER_GROUPS: \"java\"}}' for annotation \
                 'proxy.istio.io/config': {why}"
            )),
            "{why}: {message}"
        );
    }
    // Istio variables rustmesh implements nowhere are still named and dropped, not passed.
    let (pod, resp) = inject(
        &[(
            "proxy.istio.io/config",
            "proxyMetadata: {IPTABLES_TRACE_LOGGING: \"true\"}",
        )],
        &InjectionSettings::default(),
    );
    let (init, _) = init_and_proxy(&pod);
    assert!(init.env.is_none(), "{:?}", init.env);
    assert!(
        warnings(&resp)
            .iter()
            .any(|w| w.contains("proxyMetadata IPTABLES_TRACE_LOGGING is not implemented")),
        "{resp}"
    );
}

/// `readiness.status.sidecar.istio.io/applicationPorts`: checked as Istio's injector checked it
/// (`*` or a port list), and reported as having no effect when valid.
#[test]
fn application_ports_are_checked_and_reported() {
    let (pod, resp) = inject(
        &[(
            "readiness.status.sidecar.istio.io/applicationPorts",
            "8080,9090",
        )],
        &InjectionSettings::default(),
    );
    assert_eq!(
        warnings(&resp),
        [
            "rustmesh-webhook: annotation readiness.status.sidecar.istio.io/applicationPorts has no effect: the \
          sidecar is ready once its configuration has arrived, whatever the app's ports (as \
          Istio's agent, which no longer reads it)"
        ]
    );
    // Nothing of it reaches the pod: the probe is the usual one.
    let (_, proxy) = init_and_proxy(&pod);
    let probe = proxy.readiness_probe.expect("a readiness probe");
    assert_eq!(
        probe.http_get.unwrap().path.as_deref(),
        Some("/healthz/ready")
    );
    assert!(!serde_json::to_string(&proxy.args).unwrap().contains("8080"));

    let message = refused(
        &[(
            "readiness.status.sidecar.istio.io/applicationPorts",
            "8080,http",
        )],
        &InjectionSettings::default(),
    );
    assert_eq!(
        message,
        "1 error occurred:\n\t* invalid value '8080,http' for annotation \
         'readiness.status.sidecar.istio.io/applicationPorts': readinessApplicationPorts \
         invalid: failed parsing port 'http': \"http\" is not a port number (0-65535)\n\n"
    );
}

fn pre_stop(c: &Container) -> Option<Vec<String>> {
    c.lifecycle
        .as_ref()?
        .pre_stop
        .as_ref()?
        .exec
        .as_ref()?
        .command
        .clone()
}

/// As Istio's template: a native sidecar's `preStop` asks it to drain on its status port
/// (`pilot-agent request --debug-port=<port> POST drain`; rustmesh: `proxy request`).
#[test]
fn a_native_sidecar_drains_on_pre_stop() {
    let native = InjectionSettings {
        native_sidecars: NativeSidecars::On,
        ..InjectionSettings::default()
    };
    let (pod, _) = inject(&[], &native);
    let (_, proxy) = init_and_proxy(&pod);
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"), "native");
    assert_eq!(
        pre_stop(&proxy).unwrap(),
        ["proxy", "request", "--debug-port=15020", "POST", "drain"]
    );
    assert!(proxy.lifecycle.as_ref().unwrap().post_start.is_none());

    // The pod's status port.
    let (pod, _) = inject(&[("status.sidecar.istio.io/port", "16020")], &native);
    assert_eq!(
        pre_stop(&init_and_proxy(&pod).1).unwrap(),
        ["proxy", "request", "--debug-port=16020", "POST", "drain"]
    );
    // No status port: nothing serves /drain, so no hook (SIGTERM drains).
    let (pod, _) = inject(&[("status.sidecar.istio.io/port", "0")], &native);
    assert_eq!(pre_stop(&init_and_proxy(&pod).1), None);

    // A sidecar container keeps Istio's behaviour: no preStop.
    let (pod, _) = inject(&[], &InjectionSettings::default());
    let (_, proxy) = init_and_proxy(&pod);
    assert!(proxy.restart_policy.is_none());
    assert_eq!(pre_stop(&proxy), None);
}
