//! The admission review over real AdmissionReview documents (tests/fixtures/*.json).
//! Every test APPLIES the returned JSON Patch to the submitted pod and asserts on the result.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use rustmesh_webhook::settings::NativeSidecars;
use rustmesh_webhook::{InjectionSettings, Outcome, SidecarStatus, review, review_body};
use serde_json::{Value, json};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn no_namespace(_: &str) -> Option<BTreeMap<String, String>> {
    None
}

/// Runs the body through the webhook; returns the `response` object and the outcome.
fn run_doc(doc: &Value, settings: &InjectionSettings) -> (Value, Outcome) {
    let body = serde_json::to_vec(doc).unwrap();
    let out = review_body(&body, settings, &no_namespace).expect("a review answers");
    assert_eq!(out.review["kind"], "AdmissionReview");
    assert_eq!(out.review["apiVersion"], doc["apiVersion"]);
    let resp = out.review["response"].clone();
    assert_eq!(resp["uid"], doc["request"]["uid"], "uid is echoed");
    assert_eq!(resp["allowed"], true, "the webhook never denies");
    (resp, out.outcome)
}

fn patch_of(resp: &Value) -> Option<json_patch::Patch> {
    let b64 = resp.get("patch")?.as_str().expect("patch is base64 text");
    assert_eq!(resp["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    Some(serde_json::from_slice(&bytes).expect("patch is an RFC 6902 document"))
}

/// Applies the response's patch to the request's object.
fn apply(doc: &Value, resp: &Value) -> Value {
    let mut object = doc["request"]["object"].clone();
    let patch = patch_of(resp).expect("a patch");
    json_patch::patch(&mut object, &patch).expect("the patch applies to the submitted pod");
    object
}

fn injected(name: &str, settings: &InjectionSettings) -> (Pod, Value) {
    let doc = fixture(name);
    let (resp, outcome) = run_doc(&doc, settings);
    assert_eq!(outcome, Outcome::Injected, "{name}: {resp}");
    let pod_json = apply(&doc, &resp);
    let pod: Pod = serde_json::from_value(pod_json).expect("the result is a valid pod");
    (pod, resp)
}

fn untouched(name: &str, settings: &InjectionSettings) -> Value {
    let doc = fixture(name);
    let (resp, _) = run_doc(&doc, settings);
    assert!(
        resp.get("patch").is_none(),
        "{name} must not be patched: {resp}"
    );
    resp
}

fn defaults() -> InjectionSettings {
    InjectionSettings::default()
}

fn container<'a>(list: &'a [Container], name: &str) -> &'a Container {
    list.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env(c: &Container) -> BTreeMap<String, Value> {
    c.env
        .iter()
        .flatten()
        .map(|e| {
            let v = match (&e.value, &e.value_from) {
                (Some(v), _) => json!(v),
                (None, Some(from)) => json!(from.field_ref.as_ref().unwrap().field_path),
                _ => Value::Null,
            };
            (e.name.clone(), v)
        })
        .collect()
}

fn names(list: &[Container]) -> Vec<&str> {
    list.iter().map(|c| c.name.as_str()).collect()
}

fn status(pod: &Pod) -> SidecarStatus {
    let raw = &pod.metadata.annotations.as_ref().unwrap()["sidecar.istio.io/status"];
    serde_json::from_str(raw).unwrap()
}

const DEFAULT_INIT_ARGS: [&str; 18] = [
    "istio-iptables",
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
    "--log_output_level=default:info",
];

#[test]
fn deployment_pod_gets_init_container_and_sidecar_first() {
    let (pod, resp) = injected("deployment-pod", &defaults());
    assert!(resp.get("warnings").is_none(), "{resp}");
    let spec = pod.spec.as_ref().unwrap();

    // Sidecar first, the app containers after it in their order.
    assert_eq!(
        names(&spec.containers),
        ["istio-proxy", "productpage", "log-shipper"]
    );
    assert_eq!(
        names(spec.init_containers.as_ref().unwrap()),
        ["istio-init"]
    );

    // istio-init.
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.args.as_ref().unwrap(), &DEFAULT_INIT_ARGS);
    assert_eq!(init.image, Some(defaults().image));
    let sc = init.security_context.as_ref().unwrap();
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.add.as_deref().unwrap(), ["NET_ADMIN", "NET_RAW"]);
    assert_eq!(caps.drop.as_deref().unwrap(), ["ALL"]);
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.run_as_group, Some(0));
    assert_eq!(sc.run_as_non_root, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(false));
    let runtime_default = |sc: &k8s_openapi::api::core::v1::SecurityContext| {
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()) == Some("RuntimeDefault")
    };
    assert!(runtime_default(sc), "istio-init's seccomp: {sc:?}");

    // istio-proxy.
    let proxy = container(&spec.containers, "istio-proxy");
    assert_eq!(
        proxy.args.as_deref().unwrap(),
        ["run", "--config-dir", "/etc/rustmesh/config"]
    );
    assert_eq!(proxy.image, Some(defaults().image));
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(1337));
    assert_eq!(sc.run_as_group, Some(1337));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref().unwrap(),
        ["ALL"]
    );
    assert!(sc.capabilities.as_ref().unwrap().add.is_none());
    assert!(runtime_default(sc), "istio-proxy's seccomp: {sc:?}");
    let port = &proxy.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.container_port, port.name.as_deref()),
        (15090, Some("http-envoy-prom"))
    );
    let probe = proxy.readiness_probe.as_ref().unwrap();
    let get = probe.http_get.as_ref().unwrap();
    assert_eq!(get.path.as_deref(), Some("/healthz/ready"));
    assert_eq!(
        get.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15021)
    );
    assert_eq!(probe.initial_delay_seconds, Some(1));
    assert_eq!(probe.period_seconds, Some(2));
    assert_eq!(probe.failure_threshold, Some(30));
    assert!(proxy.lifecycle.is_none(), "no hold unless asked");
    let res = proxy.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "100m");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "128Mi");
    assert_eq!(res.limits.as_ref().unwrap()["cpu"].0, "2");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "1Gi");

    let env = env(proxy);
    assert_eq!(env["POD_NAME"], "metadata.name");
    assert_eq!(env["POD_NAMESPACE"], "metadata.namespace");
    assert_eq!(env["INSTANCE_IP"], "status.podIP");
    assert_eq!(env["SERVICE_ACCOUNT"], "spec.serviceAccountName");
    assert_eq!(env["HOST_IP"], "status.hostIP");
    assert_eq!(env["ISTIO_META_APP_CONTAINERS"], "productpage,log-shipper");
    assert_eq!(env["ISTIO_META_CLUSTER_ID"], "Kubernetes");
    assert_eq!(env["ISTIO_META_MESH_ID"], "cluster.local");
    assert_eq!(env["PROXY_CONFIGMAP"], "rustmesh-proxy-config");
    let ports: Value = serde_json::from_str(env["ISTIO_META_POD_PORTS"].as_str().unwrap()).unwrap();
    assert_eq!(
        ports,
        json!([
            {"containerPort": 9080, "name": "http", "protocol": "TCP"},
            {"containerPort": 2020, "name": "metrics", "protocol": "TCP"}
        ])
    );

    let mounts: BTreeMap<&str, (&str, Option<bool>)> = proxy
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), (m.mount_path.as_str(), m.read_only)))
        .collect();
    assert_eq!(mounts["istio-podinfo"].0, "/etc/istio/pod");
    assert_eq!(
        mounts["rustmesh-proxy-config"],
        ("/etc/rustmesh/config", Some(true))
    );
    assert_eq!(mounts["istio-envoy"].0, "/etc/istio/proxy");

    // Volumes: the pod's own first, then ours.
    let vols = spec.volumes.as_ref().unwrap();
    let vol_names: Vec<&str> = vols.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        vol_names,
        [
            "tmp",
            "kube-api-access-7xk2p",
            "istio-envoy",
            "istio-podinfo",
            "rustmesh-proxy-config"
        ]
    );
    let cm = vols[4].config_map.as_ref().unwrap();
    assert_eq!(
        (cm.name.as_str(), cm.optional),
        ("rustmesh-proxy-config", Some(true))
    );
    let podinfo = vols[3]
        .downward_api
        .as_ref()
        .unwrap()
        .items
        .as_ref()
        .unwrap();
    let paths: Vec<(&str, &str)> = podinfo
        .iter()
        .map(|i| {
            (
                i.path.as_str(),
                i.field_ref.as_ref().unwrap().field_path.as_str(),
            )
        })
        .collect();
    assert_eq!(
        paths,
        [
            ("labels", "metadata.labels"),
            ("annotations", "metadata.annotations")
        ]
    );
    assert!(vols[2].empty_dir.is_some());

    // The app containers are untouched but for their probes, which now go to the sidecar's
    // status port (Istio's rewrite), keeping their timing; the originals are in the sidecar's
    // ISTIO_KUBE_APP_PROBERS.
    let doc = fixture("deployment-pod");
    let original: Pod = serde_json::from_value(doc["request"]["object"].clone()).unwrap();
    let orig_spec = original.spec.unwrap();
    let without_probes = |c: &Container| Container {
        readiness_probe: None,
        liveness_probe: None,
        ..c.clone()
    };
    assert_eq!(
        spec.containers[1..]
            .iter()
            .map(without_probes)
            .collect::<Vec<_>>(),
        orig_spec
            .containers
            .iter()
            .map(without_probes)
            .collect::<Vec<_>>()
    );
    let app = &spec.containers[1];
    let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| serde_json::to_value(p).unwrap();
    assert_eq!(
        probe(&app.readiness_probe),
        json!({"httpGet": {"path": "/app-health/productpage/readyz", "port": 15020, "scheme": "HTTP"},
               "initialDelaySeconds": 5, "timeoutSeconds": 1, "periodSeconds": 10,
               "successThreshold": 1, "failureThreshold": 3})
    );
    assert_eq!(
        probe(&app.liveness_probe),
        json!({"httpGet": {"path": "/app-health/productpage/livez", "port": 15020, "scheme": "HTTP"},
               "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
    );
    let probers: Value =
        serde_json::from_str(env["ISTIO_KUBE_APP_PROBERS"].as_str().unwrap()).unwrap();
    assert_eq!(
        probers,
        json!({
            "/app-health/productpage/readyz": {"httpGet": {"path": "/health", "port": 9080, "scheme": "HTTP"}, "timeoutSeconds": 1},
            "/app-health/productpage/livez": {"tcpSocket": {"port": 9080}, "timeoutSeconds": 1}
        })
    );

    // Metadata: annotations kept and added, Istio's labels added.
    let ann = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        ann["kubectl.kubernetes.io/restartedAt"],
        "2024-05-01T10:00:00Z"
    );
    assert_eq!(
        ann["kubectl.kubernetes.io/default-container"],
        "productpage"
    );
    assert_eq!(
        ann["sidecar.istio.io/status"],
        r#"{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["istio-envoy","istio-podinfo","rustmesh-proxy-config"],"imagePullSecrets":null,"revision":"default"}"#
    );
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["security.istio.io/tlsMode"], "istio");
    assert_eq!(labels["service.istio.io/canonical-name"], "productpage");
    assert_eq!(labels["service.istio.io/canonical-revision"], "v1");
    assert_eq!(labels["istio.io/rev"], "default");
    assert_eq!(labels["app"], "productpage");
}

#[test]
fn existing_init_containers_run_after_istio_init_and_volumes_are_appended() {
    let (pod, _) = injected("existing-init-containers", &defaults());
    let spec = pod.spec.unwrap();
    assert_eq!(
        names(spec.init_containers.as_ref().unwrap()),
        ["istio-init", "wait-for-db", "migrate"]
    );
    assert_eq!(names(&spec.containers), ["istio-proxy", "reviews"]);
    let vols: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        vols,
        [
            "wlp-output",
            "tmp",
            "kube-api-access-7xk2p",
            "istio-envoy",
            "istio-podinfo",
            "rustmesh-proxy-config"
        ]
    );
    // Workload name from generateName minus the pod-template-hash.
    assert_eq!(
        pod.metadata.labels.unwrap()["service.istio.io/canonical-name"],
        "reviews"
    );
}

#[test]
fn bare_pod_gets_annotations_labels_volumes_and_init_containers_created() {
    let doc = fixture("bare-pod");
    for absent in ["initContainers", "volumes"] {
        assert!(doc["request"]["object"]["spec"].get(absent).is_none());
    }
    assert!(
        doc["request"]["object"]["metadata"]
            .get("annotations")
            .is_none()
    );
    let (pod, _) = injected("bare-pod", &defaults());
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(
        names(spec.init_containers.as_ref().unwrap()),
        ["istio-init"]
    );
    assert_eq!(names(&spec.containers), ["istio-proxy", "nginx"]);
    assert_eq!(spec.volumes.as_ref().unwrap().len(), 3);
    assert_eq!(status(&pod).revision, "default");
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["service.istio.io/canonical-name"], "nginx");
    assert_eq!(labels["service.istio.io/canonical-revision"], "latest");
}

#[test]
fn left_alone_host_network_opt_outs_and_updates() {
    for name in [
        "host-network",
        "opt-out-label",
        "opt-out-annotation",
        "label-false-annotation-true",
        "update-operation",
    ] {
        let resp = untouched(name, &defaults());
        assert!(resp.get("warnings").is_none(), "{name}: {resp}");
    }
}

#[test]
fn pod_label_beats_pod_annotation() {
    let (pod, _) = injected("label-true-annotation-false", &defaults());
    assert_eq!(pod.spec.unwrap().containers[0].name, "istio-proxy");
    untouched("label-false-annotation-true", &defaults());
}

#[test]
fn revision_label_match_and_mismatch() {
    untouched("revision-canary", &defaults());
    let canary = InjectionSettings {
        revision: "canary".into(),
        ..defaults()
    };
    let (pod, _) = injected("revision-canary", &canary);
    assert_eq!(status(&pod).revision, "canary");
    assert_eq!(pod.metadata.labels.unwrap()["istio.io/rev"], "canary");
    // A pod without a revision label: with no namespace lookup, the canary webhook trusts its
    // own webhook configuration's namespaceSelector (istio.io/rev=canary) that sent it here.
    injected("deployment-pod", &canary);
}

#[test]
fn namespace_labels_when_known() {
    let doc = fixture("deployment-pod");
    let body = serde_json::to_vec(&doc).unwrap();
    type Labels<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Labels, &str, Outcome); 5] = [
        (
            &[("istio-injection", "enabled")],
            "default",
            Outcome::Injected,
        ),
        (
            &[("istio-injection", "disabled")],
            "default",
            Outcome::Skipped,
        ),
        (&[("istio.io/rev", "canary")], "canary", Outcome::Injected),
        (&[("istio.io/rev", "canary")], "default", Outcome::Skipped),
        (&[], "default", Outcome::Skipped),
    ];
    for (labels, revision, expected) in cases {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = |ns: &str| {
            assert_eq!(ns, "bookinfo");
            Some(labels.clone())
        };
        let settings = InjectionSettings {
            revision: revision.into(),
            ..defaults()
        };
        let out = review_body(&body, &settings, &lookup).unwrap();
        assert_eq!(out.outcome, expected, "{labels:?} rev {revision}");
    }
}

#[test]
fn v1beta1_is_answered_as_v1beta1() {
    let doc = fixture("v1beta1");
    let (resp, outcome) = run_doc(&doc, &defaults());
    assert_eq!(outcome, Outcome::Injected);
    assert_eq!(resp["uid"], "b1e5c7a0-0000-4000-8000-00000000beta");
    let pod: Pod = serde_json::from_value(apply(&doc, &resp)).unwrap();
    assert_eq!(pod.spec.unwrap().containers[0].name, "istio-proxy");
}

#[test]
fn traffic_and_resource_annotations() {
    let (pod, resp) = injected("traffic-and-resources", &defaults());
    assert!(resp.get("warnings").is_none(), "{resp}");
    let spec = pod.spec.unwrap();
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(
        init.args.as_deref().unwrap(),
        [
            "istio-iptables",
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "10.96.0.0/12,10.244.0.0/16",
            "-x",
            "10.96.0.1/32",
            "-b",
            "9080,9443",
            "-d",
            "15090,15021,15020,9443",
            "-q",
            "8443,9000",
            "-o",
            "3306,6379",
            "-k",
            "k6t-eth0,k6t-net1",
            "-c",
            "eth1",
            "--log_output_level=default:info",
        ]
    );
    let res = spec.containers[0].resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "250m");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "256Mi");
    assert_eq!(res.limits.as_ref().unwrap()["cpu"].0, "1");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "512Mi");
}

#[test]
fn bad_annotations_allow_with_warnings_and_defaults() {
    let (pod, resp) = injected("bad-annotations", &defaults());
    let warnings: Vec<&str> = resp["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    for needle in [
        "sidecar.istio.io/rewriteAppHTTPProbers",
        "prometheus.io/port \"metrics\" is not a port number",
        "proxy.istio.io/config",
        "port 15000",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(needle)),
            "no warning about {needle}: {warnings:?}"
        );
    }
    // Metrics are not merged: the app keeps its annotation and is scraped directly.
    let annotations = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["prometheus.io/port"], "metrics");
    assert!(!annotations.contains_key("prometheus.io/path"));
    let spec = pod.spec.unwrap();
    assert!(!env(&spec.containers[0]).contains_key("ISTIO_PROMETHEUS_ANNOTATIONS"));
    assert_eq!(
        spec.init_containers.unwrap()[0].args.as_deref().unwrap(),
        DEFAULT_INIT_ARGS
    );
}

/// Runs a review that must be refused; returns the `response`.
fn refused(doc: &Value, settings: &InjectionSettings) -> Value {
    let body = serde_json::to_vec(doc).unwrap();
    let out = review_body(&body, settings, &no_namespace).expect("a review answers");
    let resp = out.review["response"].clone();
    assert_eq!(out.outcome, Outcome::Refused, "{resp}");
    assert_eq!(resp["uid"], doc["request"]["uid"], "uid is echoed");
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(resp.get("patch").is_none(), "{resp}");
    assert_eq!(resp["status"]["code"], 400, "{resp}");
    resp
}

/// The bare pod with these annotations.
fn bare_pod_with(annotations: &[(&str, &str)]) -> Value {
    let mut doc = fixture("bare-pod");
    for (k, v) in annotations {
        doc["request"]["object"]["metadata"]["annotations"][*k] = json!(v);
    }
    doc
}

fn inject_bare_pod(annotations: &[(&str, &str)], settings: &InjectionSettings) -> (Pod, Value) {
    let doc = bare_pod_with(annotations);
    let (resp, outcome) = run_doc(&doc, settings);
    assert_eq!(outcome, Outcome::Injected, "{resp}");
    (serde_json::from_value(apply(&doc, &resp)).unwrap(), resp)
}

fn init_args(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref().unwrap();
    container(spec.init_containers.as_deref().unwrap(), "istio-init")
        .args
        .clone()
        .unwrap()
}

/// As Istio's injector: an invalid traffic annotation refuses the pod, every one named in
/// Istio's words (sorted by annotation), in Istio's error-list format; nothing is patched.
#[test]
fn invalid_traffic_annotations_refuse_the_pod_naming_each() {
    let resp = refused(&fixture("bad-traffic-annotations"), &defaults());
    let message = resp["status"]["message"].as_str().unwrap();
    let failures = [
        "invalid value 'tproxy' for annotation 'sidecar.istio.io/interceptionMode': \
         interceptionMode invalid, use REDIRECT,TPROXY,NONE: tproxy",
        "invalid value 'http' for annotation 'traffic.sidecar.istio.io/excludeInboundPorts': \
         excludeInboundPorts invalid: failed parsing port 'http': \"http\" is not a port number (1-65535)",
        "invalid value 'eth0,' for annotation 'traffic.sidecar.istio.io/excludeInterfaces': \
         excludeInterfaces invalid: failed parsing interface '': an interface name is not empty",
        "invalid value '10.0.0/8' for annotation 'traffic.sidecar.istio.io/excludeOutboundIPRanges': \
         excludeIPRanges invalid: failed parsing cidr '10.0.0/8': \"10.0.0\" is not an IP address",
        "invalid value '10.96.0.0/12,10.244.0' for annotation \
         'traffic.sidecar.istio.io/includeOutboundIPRanges': includeIPRanges invalid: failed parsing \
         cidr '10.244.0': no '/' (a range needs its prefix length, like 10.1.2.3/32)",
    ];
    assert_eq!(
        message,
        format!("5 errors occurred:\n\t* {}\n\n", failures.join("\n\t* "))
    );
    assert_eq!(resp["status"]["reason"], "BadRequest");
    // The refusal is the answer: no warnings about the other annotations.
    assert!(resp.get("warnings").is_none(), "{resp}");
    assert_eq!(
        resp["auditAnnotations"]["injection"],
        "refused: 5 invalid annotation(s)"
    );
}

/// The reason for refusing: before, a typo in the ranges to capture was a warning and `-i *`.
#[test]
fn a_typo_in_include_outbound_ip_ranges_refuses_the_pod_never_capture_everything() {
    for typo in [
        "10.96.0.0/12, 10.244.0.0/16",
        "10.96.0.1",
        "10.96.0.0/12,",
        "all",
    ] {
        let resp = refused(
            &bare_pod_with(&[("traffic.sidecar.istio.io/includeOutboundIPRanges", typo)]),
            &defaults(),
        );
        let message = resp["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!(
                "1 error occurred:\n\t* invalid value '{typo}' for annotation \
                 'traffic.sidecar.istio.io/includeOutboundIPRanges': includeIPRanges invalid: \
                 failed parsing cidr '"
            )),
            "{message}"
        );
    }
}

/// A pod that is not injected is not checked, as in Istio (the annotations would do nothing).
#[test]
fn a_pod_left_alone_is_not_refused_for_its_annotations() {
    let mut doc = fixture("opt-out-annotation");
    doc["request"]["object"]["metadata"]["annotations"]["traffic.sidecar.istio.io/includeOutboundIPRanges"] =
        json!("oops");
    let (resp, outcome) = run_doc(&doc, &defaults());
    assert_eq!(outcome, Outcome::Skipped, "{resp}");
}

#[test]
fn include_outbound_ports_exclude_interfaces_and_virtual_interfaces_only_when_annotated() {
    let (pod, _) = inject_bare_pod(&[], &defaults());
    let args = init_args(&pod);
    for flag in ["-q", "-c", "-k", "-o"] {
        assert!(!args.contains(&flag.to_owned()), "{flag}: {args:?}");
    }
    for (annotation, flag, value, passed) in [
        (
            "traffic.sidecar.istio.io/includeOutboundPorts",
            "-q",
            "8080,9090",
            "8080,9090",
        ),
        (
            "traffic.sidecar.istio.io/includeOutboundPorts",
            "-q",
            " 8080 ",
            "8080",
        ),
        (
            "traffic.sidecar.istio.io/includeOutboundPorts",
            "-q",
            "",
            "",
        ),
        (
            "traffic.sidecar.istio.io/excludeInterfaces",
            "-c",
            "eth1,eth2",
            "eth1,eth2",
        ),
        (
            "traffic.sidecar.istio.io/kubevirtInterfaces",
            "-k",
            "net1",
            "net1",
        ),
        (
            "istio.io/reroute-virtual-interfaces",
            "-k",
            "k6t-eth0",
            "k6t-eth0",
        ),
    ] {
        let (pod, resp) = inject_bare_pod(&[(annotation, value)], &defaults());
        assert!(resp.get("warnings").is_none(), "{resp}");
        let args = init_args(&pod);
        let at = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{annotation}: {args:?}"));
        assert_eq!(args[at + 1], passed, "{annotation}={value:?}");
        assert_eq!(args.last().unwrap(), "--log_output_level=default:info");
    }
}

/// Istio's template takes `istio.io/reroute-virtual-interfaces` over the deprecated
/// `traffic.sidecar.istio.io/kubevirtInterfaces`; rustmesh says so in a warning.
#[test]
fn reroute_virtual_interfaces_wins_over_kubevirt_interfaces() {
    let (pod, resp) = inject_bare_pod(
        &[
            ("traffic.sidecar.istio.io/kubevirtInterfaces", "net1"),
            ("istio.io/reroute-virtual-interfaces", "k6t-eth0"),
        ],
        &defaults(),
    );
    let args = init_args(&pod);
    let k: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(_, a)| *a == "-k")
        .map(|(i, _)| &args[i + 1])
        .collect();
    assert_eq!(k, ["k6t-eth0"], "{args:?}");
    let warnings = warnings_of(&resp);
    assert!(
        warnings.len() == 1 && warnings[0].contains("kubevirtInterfaces ignored"),
        "{warnings:?}"
    );
}

/// `NONE`: nothing is captured, so no istio-init at all (Istio's template); the sidecar is
/// still injected and told the mode.
#[test]
fn interception_mode_none_injects_no_istio_init() {
    let (pod, resp) = inject_bare_pod(
        &[("sidecar.istio.io/interceptionMode", "NONE")],
        &defaults(),
    );
    assert!(resp.get("warnings").is_none(), "{resp}");
    let spec = pod.spec.as_ref().unwrap();
    assert!(spec.init_containers.is_none(), "{:?}", spec.init_containers);
    assert_eq!(names(&spec.containers), ["istio-proxy", "nginx"]);
    let proxy = container(&spec.containers, "istio-proxy");
    assert_eq!(env(proxy)["ISTIO_META_INTERCEPTION_MODE"], "NONE");
    assert_eq!(
        proxy.security_context.as_ref().unwrap().run_as_user,
        Some(1337)
    );
    let injected = status(&pod);
    assert_eq!(injected.init_containers, None, "Istio writes null");
    assert_eq!(
        injected.containers.as_deref(),
        Some(&["istio-proxy".to_owned()][..])
    );

    // The pod's own init containers are left as they are.
    let mut doc = fixture("existing-init-containers");
    doc["request"]["object"]["metadata"]["annotations"]["sidecar.istio.io/interceptionMode"] =
        json!("NONE");
    let (resp, _) = run_doc(&doc, &defaults());
    let pod: Pod = serde_json::from_value(apply(&doc, &resp)).unwrap();
    assert_eq!(
        names(pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()),
        ["wait-for-db", "migrate"]
    );

    // A native sidecar is still an init container, alone.
    let native = InjectionSettings {
        native_sidecars: NativeSidecars::On,
        ..defaults()
    };
    let (pod, _) = inject_bare_pod(&[("sidecar.istio.io/interceptionMode", "NONE")], &native);
    assert_eq!(
        names(pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()),
        ["istio-proxy"]
    );
    assert_eq!(
        status(&pod).init_containers.as_deref(),
        Some(&["istio-proxy".to_owned()][..])
    );
}

/// `TPROXY`: `-m TPROXY` (still `-u 1337`), and the sidecar as Istio's template runs it: root
/// with group 1337 and NET_ADMIN, least privilege otherwise.
#[test]
fn interception_mode_tproxy_runs_the_sidecar_as_istio_does() {
    let (pod, resp) = inject_bare_pod(
        &[("sidecar.istio.io/interceptionMode", "TPROXY")],
        &defaults(),
    );
    assert!(resp.get("warnings").is_none(), "{resp}");
    let args = init_args(&pod);
    let at = |flag: &str| &args[args.iter().position(|a| a == flag).unwrap() + 1];
    assert_eq!(at("-m"), "TPROXY");
    assert_eq!(at("-u"), "1337");
    let spec = pod.spec.as_ref().unwrap();
    let proxy = container(&spec.containers, "istio-proxy");
    assert_eq!(env(proxy)["ISTIO_META_INTERCEPTION_MODE"], "TPROXY");
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.run_as_group, Some(1337));
    assert_eq!(sc.run_as_non_root, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.add.as_deref().unwrap(), ["NET_ADMIN"]);
    assert_eq!(caps.drop.as_deref().unwrap(), ["ALL"]);
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    // istio-init is the same as in REDIRECT mode.
    let init = container(spec.init_containers.as_deref().unwrap(), "istio-init");
    assert_eq!(init.security_context.as_ref().unwrap().run_as_user, Some(0));

    // REDIRECT said explicitly is the default.
    let (pod, _) = inject_bare_pod(
        &[("sidecar.istio.io/interceptionMode", "REDIRECT")],
        &defaults(),
    );
    assert_eq!(init_args(&pod), DEFAULT_INIT_ARGS);
    let proxy = &pod.spec.as_ref().unwrap().containers[0];
    assert_eq!(env(proxy)["ISTIO_META_INTERCEPTION_MODE"], "REDIRECT");
    assert_eq!(
        proxy.security_context.as_ref().unwrap().run_as_user,
        Some(1337)
    );
}

/// The mode as Istio's template reads it: the pod's annotation, else `interceptionMode` of its
/// `proxy.istio.io/config`, else the mesh's `defaultConfig` (setting `interceptionMode`).
#[test]
fn interception_mode_comes_from_the_mesh_then_the_pods_proxy_config_then_its_annotation() {
    let mode = |pod: &Pod| {
        let proxy = container(&pod.spec.as_ref().unwrap().containers, "istio-proxy");
        env(proxy)["ISTIO_META_INTERCEPTION_MODE"].clone()
    };
    let mesh_tproxy = InjectionSettings {
        interception_mode: rustmesh_webhook::InterceptionMode::Tproxy,
        ..defaults()
    };
    // The mesh's.
    let (pod, resp) = inject_bare_pod(&[], &mesh_tproxy);
    assert!(resp.get("warnings").is_none(), "{resp}");
    assert_eq!(mode(&pod), "TPROXY");
    let args = init_args(&pod);
    assert_eq!(
        args[args.iter().position(|a| a == "-m").unwrap() + 1],
        "TPROXY"
    );
    let proxy = container(&pod.spec.as_ref().unwrap().containers, "istio-proxy");
    assert_eq!(
        proxy.security_context.as_ref().unwrap().run_as_user,
        Some(0),
        "TPROXY's sidecar binds transparently"
    );
    // The pod's ProxyConfig over the mesh's.
    let (pod, resp) = inject_bare_pod(
        &[("proxy.istio.io/config", "interceptionMode: NONE")],
        &mesh_tproxy,
    );
    assert!(resp.get("warnings").is_none(), "{resp}");
    assert_eq!(mode(&pod), "NONE");
    assert!(pod.spec.as_ref().unwrap().init_containers.is_none());
    // The annotation over both.
    let (pod, _) = inject_bare_pod(
        &[
            ("proxy.istio.io/config", "interceptionMode: NONE"),
            ("sidecar.istio.io/interceptionMode", "REDIRECT"),
        ],
        &mesh_tproxy,
    );
    assert_eq!(mode(&pod), "REDIRECT");
    assert_eq!(init_args(&pod), DEFAULT_INIT_ARGS);
    // A bad ProxyConfig value is named, and the mesh's applies.
    let (pod, resp) = inject_bare_pod(
        &[("proxy.istio.io/config", "interceptionMode: tproxy")],
        &defaults(),
    );
    assert_eq!(mode(&pod), "REDIRECT");
    let warnings = warnings_of(&resp);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("interceptionMode is \"tproxy\", not REDIRECT, TPROXY or NONE")),
        "{warnings:?}"
    );
}

/// `ISTIO_META_DNS_CAPTURE` in the resolved `proxyMetadata` (mesh, then the pod's) reaches
/// istio-init, whose capture step reads it, and the sidecar; unset, neither gets it (the capture
/// step then captures DNS, rustmesh's default).
#[test]
fn dns_capture_metadata_reaches_istio_init_and_the_sidecar() {
    let dns = |pod: &Pod| {
        let spec = pod.spec.as_ref().unwrap();
        let init = container(spec.init_containers.as_deref().unwrap(), "istio-init");
        let proxy = container(&spec.containers, "istio-proxy");
        (
            env(init).get("ISTIO_META_DNS_CAPTURE").cloned(),
            env(proxy).get("ISTIO_META_DNS_CAPTURE").cloned(),
        )
    };
    let (pod, _) = inject_bare_pod(&[], &defaults());
    assert_eq!(dns(&pod), (None, None));
    assert!(
        pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0]
            .env
            .is_none()
    );

    let config = "proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"false\"}";
    let (pod, resp) = inject_bare_pod(&[("proxy.istio.io/config", config)], &defaults());
    assert!(resp.get("warnings").is_none(), "{resp}");
    assert_eq!(dns(&pod), (Some(json!("false")), Some(json!("false"))));

    let mesh_off = InjectionSettings {
        proxy_metadata: [("ISTIO_META_DNS_CAPTURE".to_owned(), "false".to_owned())].into(),
        ..defaults()
    };
    let (pod, _) = inject_bare_pod(&[], &mesh_off);
    assert_eq!(dns(&pod), (Some(json!("false")), Some(json!("false"))));
    let config = "proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"true\"}";
    let (pod, _) = inject_bare_pod(&[("proxy.istio.io/config", config)], &mesh_off);
    assert_eq!(
        dns(&pod),
        (Some(json!("true")), Some(json!("true"))),
        "the pod wins"
    );
    // Other proxyMetadata is the sidecar's only.
    let config = "proxyMetadata: {EXIT_ON_ZERO_ACTIVE_CONNECTIONS: \"true\"}";
    let (pod, _) = inject_bare_pod(&[("proxy.istio.io/config", config)], &defaults());
    assert!(
        pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0]
            .env
            .is_none()
    );
}

#[test]
fn hold_application_until_proxy_starts() {
    let (pod, _) = injected("hold-application", &defaults());
    let proxy = &pod.spec.as_ref().unwrap().containers[0];
    assert_eq!(proxy.name, "istio-proxy");
    let cmd = proxy
        .lifecycle
        .as_ref()
        .unwrap()
        .post_start
        .as_ref()
        .unwrap()
        .exec
        .as_ref()
        .unwrap()
        .command
        .as_deref()
        .unwrap();
    assert_eq!(cmd, ["proxy", "wait"]);
    assert!(
        env(proxy)["PROXY_CONFIG"]
            .as_str()
            .unwrap()
            .contains("holdApplicationUntilProxyStarts")
    );

    // The setting gives the default for pods that don't say.
    let hold = InjectionSettings {
        hold_application_until_proxy_starts: true,
        ..defaults()
    };
    let (pod, _) = injected("bare-pod", &hold);
    assert!(pod.spec.unwrap().containers[0].lifecycle.is_some());
}

#[test]
fn native_sidecar_is_an_init_container_after_istio_init() {
    let native = InjectionSettings {
        native_sidecars: NativeSidecars::On,
        ..defaults()
    };
    let (pod, _) = injected("existing-init-containers", &native);
    let spec = pod.spec.as_ref().unwrap();
    let inits = spec.init_containers.as_ref().unwrap();
    assert_eq!(
        names(inits),
        ["istio-init", "istio-proxy", "wait-for-db", "migrate"]
    );
    assert_eq!(inits[1].restart_policy.as_deref(), Some("Always"));
    assert!(inits[1].startup_probe.is_some());
    assert_eq!(names(&spec.containers), ["reviews"]);
    let st = status(&pod);
    assert_eq!(
        st.init_containers.as_deref().unwrap(),
        ["istio-init", "istio-proxy"]
    );
    assert_eq!(st.containers, None);

    // Same for a pod with no init containers; `Auto` unresolved means off.
    let (pod, _) = injected("bare-pod", &native);
    assert_eq!(
        names(pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()),
        ["istio-init", "istio-proxy"]
    );
    let auto = InjectionSettings {
        native_sidecars: NativeSidecars::Auto,
        ..defaults()
    };
    let (pod, _) = injected("bare-pod", &auto);
    assert_eq!(pod.spec.unwrap().containers[0].name, "istio-proxy");
}

#[test]
fn settings_flow_into_the_containers() {
    let settings = InjectionSettings::from_yaml(
        "image: registry.local/rustmesh/proxy:9\nimagePullPolicy: Always\nclusterId: east\nmeshId: mesh1\n\
         initCPU: 20m\nlogLevel: default:debug\n",
    )
    .unwrap();
    let (pod, _) = injected("bare-pod", &settings);
    let spec = pod.spec.unwrap();
    let init = &spec.init_containers.as_ref().unwrap()[0];
    let proxy = &spec.containers[0];
    for c in [init, proxy] {
        assert_eq!(c.image.as_deref(), Some("registry.local/rustmesh/proxy:9"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    }
    assert_eq!(
        init.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0,
        "20m"
    );
    assert_eq!(
        init.args.as_ref().unwrap().last().unwrap(),
        "--log_output_level=default:debug"
    );
    let env = env(proxy);
    assert_eq!(env["ISTIO_META_CLUSTER_ID"], "east");
    assert_eq!(env["ISTIO_META_MESH_ID"], "mesh1");
}

#[test]
fn not_a_pod_and_unparsable_pod_are_allowed_with_a_warning() {
    let resp = untouched("not-a-pod", &defaults());
    assert!(
        resp["warnings"][0].as_str().unwrap().contains("Service"),
        "{resp}"
    );
    let resp = untouched("unparsable-pod", &defaults());
    let w = resp["warnings"][0].as_str().unwrap();
    assert!(w.contains("spec.containers"), "{w}");
}

/// Re-submitting an injected pod changes nothing, for every fixture that injects and in both
/// sidecar modes.
#[test]
fn injecting_twice_changes_nothing() {
    let native = InjectionSettings {
        native_sidecars: NativeSidecars::On,
        ..defaults()
    };
    for settings in [defaults(), native] {
        for name in [
            "deployment-pod",
            "existing-init-containers",
            "bare-pod",
            "label-true-annotation-false",
            "v1beta1",
            "traffic-and-resources",
            "bad-annotations",
            "hold-application",
        ] {
            let mut doc = fixture(name);
            let (resp, _) = run_doc(&doc, &settings);
            doc["request"]["object"] = apply(&doc, &resp);
            let (again, outcome) = run_doc(&doc, &settings);
            assert_eq!(outcome, Outcome::Skipped, "{name}");
            assert!(again.get("patch").is_none(), "{name}: {again}");
        }
    }
}

/// The pure function on kube's typed request gives the same answer as the body handler.
#[test]
fn typed_review_matches_the_body_handler() {
    let doc = fixture("deployment-pod");
    let typed: AdmissionReview<Pod> = serde_json::from_value(doc.clone()).unwrap();
    let req: AdmissionRequest<Pod> = typed.try_into().unwrap();
    let resp = review(req, &defaults());
    assert!(resp.allowed);
    let patch: json_patch::Patch = serde_json::from_slice(resp.patch.as_ref().unwrap()).unwrap();
    let (body_resp, _) = run_doc(&doc, &defaults());
    assert_eq!(patch, patch_of(&body_resp).unwrap());
}

/// A pod that already has a volume named like ours (but was never injected) is left alone with a
/// warning: a duplicate volume name would make the API server refuse the pod.
#[test]
fn volume_name_conflict_is_not_injected() {
    let mut doc = fixture("bare-pod");
    doc["request"]["object"]["spec"]["volumes"] = json!([{"name": "istio-envoy", "emptyDir": {}}]);
    let (resp, outcome) = run_doc(&doc, &defaults());
    assert_eq!(outcome, Outcome::Invalid);
    assert!(resp.get("patch").is_none());
    assert!(
        resp["warnings"][0]
            .as_str()
            .unwrap()
            .contains("istio-envoy"),
        "{resp}"
    );
}

/// The bare pod with `proxy.istio.io/config` set to `config`.
fn with_proxy_config(config: &str) -> Value {
    let mut doc = fixture("bare-pod");
    doc["request"]["object"]["metadata"]["annotations"]["proxy.istio.io/config"] = json!(config);
    doc
}

fn warnings_of(resp: &Value) -> Vec<String> {
    resp["warnings"]
        .as_array()
        .map(|w| w.iter().map(|w| w.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// A "billion laughs" document: `levels` anchors, each a list of `width` aliases of the previous
/// one, so the last expands to `width^levels` scalars from a few hundred bytes.
fn alias_bomb(levels: usize, width: usize) -> String {
    let mut s = format!("a0: &a0 [{}]\n", vec!["x"; width].join(", "));
    for l in 1..levels {
        let refs = vec![format!("*a{}", l - 1); width].join(", ");
        s.push_str(&format!("a{l}: &a{l} [{refs}]\n"));
    }
    s
}

#[test]
fn an_alias_bomb_in_the_proxy_config_annotation_is_ignored_with_a_warning_naming_the_limit() {
    // 10^6 scalars from 1.2 KB: serde_norway's own repetition guard lets it through.
    let bomb = alias_bomb(3, 100);
    assert!(bomb.len() < 1500);
    let (resp, outcome) = run_doc(&with_proxy_config(&bomb), &defaults());
    assert_eq!(outcome, Outcome::Injected);
    let warnings = warnings_of(&resp);
    assert!(
        warnings.iter().any(|w| w.contains("proxy.istio.io/config")
            && w.contains("ignored")
            && w.contains("limit of 65536 nodes")),
        "{warnings:?}"
    );
    // The defaults apply: the annotation is not passed to the proxy.
    let pod: Pod = serde_json::from_value(apply(&with_proxy_config(&bomb), &resp)).unwrap();
    assert!(!env(&pod.spec.unwrap().containers[0]).contains_key("PROXY_CONFIG"));
}

#[test]
fn an_over_long_or_too_deep_proxy_config_annotation_is_ignored_naming_the_limit() {
    let long = format!("proxyMetadata: {{A: \"{}\"}}\n", "x".repeat(70_000));
    let deep = format!("a: {}1{}", "[".repeat(40), "]".repeat(40));
    for (config, limit) in [
        (long, "over the limit of 65536 bytes"),
        (deep, "deeper than the limit of 32 levels"),
    ] {
        let (resp, _) = run_doc(&with_proxy_config(&config), &defaults());
        let warnings = warnings_of(&resp);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("proxy.istio.io/config") && w.contains(limit)),
            "{limit}: {warnings:?}"
        );
    }
}

#[test]
fn a_proxy_config_annotation_with_a_few_anchors_still_applies() {
    let config = "proxyMetadata: &m {EXIT_ON_ZERO_ACTIVE_CONNECTIONS: \"true\"}\n\
                  holdApplicationUntilProxyStarts: &yes true\n\
                  copy: *m\n";
    let doc = with_proxy_config(config);
    let (resp, _) = run_doc(&doc, &defaults());
    // `copy` is no ProxyConfig field rustmesh implements: named, never silently dropped.
    let warnings = warnings_of(&resp);
    assert_eq!(warnings.len(), 1, "{resp}");
    assert!(
        warnings[0].contains("copy is not implemented by rustmesh"),
        "{warnings:?}"
    );
    let pod: Pod = serde_json::from_value(apply(&doc, &resp)).unwrap();
    let proxy = &pod.spec.unwrap().containers[0];
    assert!(
        proxy.lifecycle.is_some(),
        "holdApplicationUntilProxyStarts applies"
    );
    let env = env(proxy);
    assert_eq!(
        env["EXIT_ON_ZERO_ACTIVE_CONNECTIONS"], "true",
        "proxyMetadata applies"
    );
    let json: Value = serde_json::from_str(env["PROXY_CONFIG"].as_str().unwrap()).unwrap();
    assert_eq!(json["copy"], json["proxyMetadata"]);
}

#[test]
fn probes_are_left_alone_with_the_annotation_false_or_the_setting_off() {
    let mut doc = fixture("deployment-pod");
    doc["request"]["object"]["metadata"]["annotations"]["sidecar.istio.io/rewriteAppHTTPProbers"] =
        json!("false");
    let original: Pod = serde_json::from_value(doc["request"]["object"].clone()).unwrap();
    let check = |doc: &Value, settings: &InjectionSettings| {
        let (resp, outcome) = run_doc(doc, settings);
        assert_eq!(outcome, Outcome::Injected);
        let pod: Pod = serde_json::from_value(apply(doc, &resp)).unwrap();
        let spec = pod.spec.unwrap();
        assert_eq!(
            spec.containers[1].readiness_probe,
            original.spec.as_ref().unwrap().containers[0].readiness_probe
        );
        assert_eq!(
            spec.containers[1].liveness_probe,
            original.spec.as_ref().unwrap().containers[0].liveness_probe
        );
        assert!(!env(&spec.containers[0]).contains_key("ISTIO_KUBE_APP_PROBERS"));
    };
    check(&doc, &defaults());
    let off = InjectionSettings::from_map(&BTreeMap::from([
        ("rewriteAppHTTPProbe".to_owned(), "false".to_owned()),
        ("image".to_owned(), defaults().image),
    ]))
    .unwrap();
    check(&fixture("deployment-pod"), &off);
}

/// The deployment pod (probes, two containers) with these annotations.
fn deployment_pod_with(annotations: &[(&str, &str)]) -> Value {
    let mut doc = fixture("deployment-pod");
    for (k, v) in annotations {
        doc["request"]["object"]["metadata"]["annotations"][*k] = json!(v);
    }
    doc
}

fn annotations_of(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.annotations.clone().unwrap_or_default()
}

/// Istio's metrics merging: Prometheus is pointed at the status port, every spelling of the
/// app's own annotations is taken off and moved into ISTIO_PROMETHEUS_ANNOTATIONS, with the
/// keys and string values the sidecar reads.
#[test]
fn metrics_merging_points_prometheus_at_the_sidecar_and_moves_the_apps_annotations() {
    let (pod, resp) = inject_bare_pod(
        &[
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", "8080"),
            ("prometheus_io/path", "/metrics"),
        ],
        &defaults(),
    );
    assert!(resp.get("warnings").is_none(), "{resp}");
    let annotations = annotations_of(&pod);
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "15020");
    assert_eq!(annotations["prometheus.io/path"], "/stats/prometheus");
    assert!(
        !annotations.contains_key("prometheus_io/path"),
        "{annotations:?}"
    );
    let vars = env(&pod.spec.unwrap().containers[0]);
    assert_eq!(
        vars["ISTIO_PROMETHEUS_ANNOTATIONS"],
        r#"{"scrape":"true","path":"/metrics","port":"8080"}"#
    );

    // An app without annotations is scraped through the sidecar too, with no variable.
    let (pod, _) = inject_bare_pod(&[], &defaults());
    assert_eq!(annotations_of(&pod)["prometheus.io/port"], "15020");
    assert!(!env(&pod.spec.unwrap().containers[0]).contains_key("ISTIO_PROMETHEUS_ANNOTATIONS"));
}

#[test]
fn metrics_merging_is_off_by_annotation_setting_or_scrape_false_and_the_pod_is_left_alone() {
    let off = InjectionSettings {
        enable_prometheus_merge: false,
        ..defaults()
    };
    let app = [
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", "8080"),
    ];
    for (extra, settings) in [
        (
            Some(("prometheus.istio.io/merge-metrics", "false")),
            defaults(),
        ),
        (None, off.clone()),
        (Some(("prometheus.io/scrape", "false")), defaults()),
    ] {
        let mut pairs = app.to_vec();
        if let Some(e) = extra {
            pairs.retain(|(k, _)| *k != e.0);
            pairs.push(e);
        }
        let (pod, _) = inject_bare_pod(&pairs, &settings);
        let annotations = annotations_of(&pod);
        assert_eq!(
            annotations.get("prometheus.io/port").map(String::as_str),
            Some("8080"),
            "{pairs:?}"
        );
        assert!(!annotations.contains_key("prometheus.io/path"), "{pairs:?}");
        assert!(
            !env(&pod.spec.unwrap().containers[0]).contains_key("ISTIO_PROMETHEUS_ANNOTATIONS")
        );
    }
    // The pod's annotation wins over the setting.
    let (pod, _) = inject_bare_pod(&[("prometheus.istio.io/merge-metrics", "true")], &off);
    assert_eq!(annotations_of(&pod)["prometheus.io/port"], "15020");
}

#[test]
fn an_invalid_merge_metrics_value_refuses_the_pod() {
    let resp = refused(
        &bare_pod_with(&[("prometheus.istio.io/merge-metrics", "no")]),
        &defaults(),
    );
    assert_eq!(
        resp["status"]["message"],
        "1 error occurred:\n\t* invalid value 'no' for annotation \
         'prometheus.istio.io/merge-metrics': \"no\" is not a boolean (true, false, 1, 0, t, f, \
         T, F, TRUE, FALSE, True, False)\n\n"
    );
}

fn resources_of(c: &Container) -> Vec<String> {
    let r = c.resources.as_ref().unwrap();
    let mut out = Vec::new();
    for (kind, map) in [("requests", &r.requests), ("limits", &r.limits)] {
        for (k, v) in map.iter().flatten() {
            out.push(format!("{kind}.{k}={}", v.0));
        }
    }
    out
}

/// As Istio's template: with any resource annotation, only the fields they name are set.
#[test]
fn resource_annotations_set_only_what_they_name() {
    let (pod, resp) = inject_bare_pod(&[("sidecar.istio.io/proxyCPU", "3")], &defaults());
    assert!(resp.get("warnings").is_none(), "{resp}");
    let spec = pod.spec.unwrap();
    assert_eq!(resources_of(&spec.containers[0]), ["requests.cpu=3"]);
    // istio-init keeps its own settings.
    assert_eq!(
        resources_of(&spec.init_containers.unwrap()[0]),
        [
            "requests.cpu=10m",
            "requests.memory=40Mi",
            "limits.cpu=2",
            "limits.memory=1Gi"
        ]
    );
}

#[test]
fn a_request_above_its_limit_or_a_bad_quantity_refuses_the_pod_naming_both_annotations() {
    let resp = refused(
        &bare_pod_with(&[
            ("sidecar.istio.io/proxyMemory", "2Gi"),
            ("sidecar.istio.io/proxyMemoryLimit", "1Gi"),
            ("sidecar.istio.io/proxyCPU", "lots"),
        ]),
        &defaults(),
    );
    assert_eq!(
        resp["status"]["message"],
        "2 errors occurred:\n\
         \t* invalid value 'lots' for annotation 'sidecar.istio.io/proxyCPU': \"lots\" is not a \
         Kubernetes quantity (examples: 100m, 0.5, 128Mi, 1Gi)\n\
         \t* invalid value '2Gi' for annotation 'sidecar.istio.io/proxyMemory': the memory \
         request 2Gi is more than the memory limit 1Gi of annotation \
         'sidecar.istio.io/proxyMemoryLimit' (Kubernetes refuses a request above its limit)\n\n"
    );
    // Equal in other units is fine.
    inject_bare_pod(
        &[
            ("sidecar.istio.io/proxyMemory", "1024Mi"),
            ("sidecar.istio.io/proxyMemoryLimit", "1Gi"),
        ],
        &defaults(),
    );
}

fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(String::as_str)
}

#[test]
fn the_status_port_annotation_moves_the_status_port_the_probes_and_the_metrics() {
    let (pod, resp) = injected_doc(&deployment_pod_with(&[
        ("status.sidecar.istio.io/port", "16020"),
        ("readiness.status.sidecar.istio.io/initialDelaySeconds", "0"),
        ("readiness.status.sidecar.istio.io/periodSeconds", "15"),
        ("readiness.status.sidecar.istio.io/failureThreshold", "4"),
    ]));
    assert!(resp.get("warnings").is_none(), "{resp}");
    let spec = pod.spec.as_ref().unwrap();
    let proxy = &spec.containers[0];
    let args = proxy.args.clone().unwrap();
    assert_eq!(arg_after(&args, "--status-port"), Some("16020"));
    let init = init_args(&pod);
    assert_eq!(arg_after(&init, "-d"), Some("15090,15021,16020"));
    let ready = proxy.readiness_probe.as_ref().unwrap();
    assert_eq!(
        (
            ready.initial_delay_seconds,
            ready.period_seconds,
            ready.failure_threshold
        ),
        (Some(0), Some(15), Some(4))
    );
    assert_eq!(ready.timeout_seconds, Some(3));
    let app_probe = spec.containers[1].readiness_probe.as_ref().unwrap();
    assert_eq!(
        app_probe.http_get.as_ref().unwrap().port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(16020)
    );
    assert_eq!(annotations_of(&pod)["prometheus.io/port"], "16020");

    // The default port passes no flag.
    let (pod, _) = injected("deployment-pod", &defaults());
    assert!(
        !pod.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap()
            .contains(&"--status-port".to_owned())
    );
}

/// Runs a review that must inject; returns the patched pod and the response.
fn injected_doc(doc: &Value) -> (Pod, Value) {
    let (resp, outcome) = run_doc(doc, &defaults());
    assert_eq!(outcome, Outcome::Injected, "{resp}");
    (serde_json::from_value(apply(doc, &resp)).unwrap(), resp)
}

/// Istio's `status.sidecar.istio.io/port: "0"`: no readiness probe. rustmesh also turns the
/// status server off and, with a warning each, rewrites no probe and merges no metrics.
#[test]
fn status_port_zero_removes_the_readiness_probe_and_says_what_else_is_off() {
    let doc = deployment_pod_with(&[("status.sidecar.istio.io/port", "0")]);
    let (pod, resp) = injected_doc(&doc);
    let spec = pod.spec.as_ref().unwrap();
    let proxy = &spec.containers[0];
    assert!(proxy.readiness_probe.is_none());
    assert_eq!(
        arg_after(proxy.args.as_ref().unwrap(), "--status-port"),
        Some("0")
    );
    assert_eq!(arg_after(&init_args(&pod), "-d"), Some("15090,15021"));
    let original: Pod = serde_json::from_value(doc["request"]["object"].clone()).unwrap();
    assert_eq!(
        spec.containers[1].readiness_probe,
        original.spec.unwrap().containers[0].readiness_probe,
        "probes left alone"
    );
    assert!(!env(proxy).contains_key("ISTIO_KUBE_APP_PROBERS"));
    assert!(!annotations_of(&pod).contains_key("prometheus.io/port"));
    let warnings = warnings_of(&resp);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("app probes not rewritten")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("metrics are not merged")),
        "{warnings:?}"
    );
}

#[test]
fn invalid_status_and_readiness_annotations_refuse_the_pod() {
    let resp = refused(
        &bare_pod_with(&[
            ("status.sidecar.istio.io/port", "15021"),
            ("readiness.status.sidecar.istio.io/periodSeconds", "-1"),
        ]),
        &defaults(),
    );
    assert_eq!(
        resp["status"]["message"],
        "2 errors occurred:\n\
         \t* invalid value '-1' for annotation 'readiness.status.sidecar.istio.io/periodSeconds': \
         \"-1\" is not a whole number (0-2147483647)\n\
         \t* invalid value '15021' for annotation 'status.sidecar.istio.io/port': statusPort \
         invalid: 15021 is the sidecar's readiness port (the status server could not bind it)\n\n"
    );
}

#[test]
fn the_proxy_image_annotation_sets_both_injected_images() {
    let (pod, _) = inject_bare_pod(
        &[("sidecar.istio.io/proxyImage", "registry.local/proxy:debug")],
        &defaults(),
    );
    let spec = pod.spec.unwrap();
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some("registry.local/proxy:debug")
    );
    assert_eq!(
        spec.init_containers.unwrap()[0].image.as_deref(),
        Some("registry.local/proxy:debug")
    );
    for bad in ["", "proxy :1"] {
        let resp = refused(
            &bare_pod_with(&[("sidecar.istio.io/proxyImage", bad)]),
            &defaults(),
        );
        let message = resp["status"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "invalid value '{bad}' for annotation 'sidecar.istio.io/proxyImage': an image name"
            )),
            "{message}"
        );
    }
}

#[test]
fn image_pull_secrets_of_the_settings_are_merged_with_the_pods() {
    let settings = InjectionSettings {
        image_pull_secrets: vec!["regcred".into(), "mirror".into()],
        ..defaults()
    };
    let (pod, _) = injected("bare-pod", &settings);
    let names = |pod: &Pod| -> Vec<String> {
        pod.spec
            .as_ref()
            .unwrap()
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.clone())
            .collect()
    };
    assert_eq!(names(&pod), ["regcred", "mirror"]);
    assert_eq!(
        status(&pod).image_pull_secrets,
        Some(vec!["regcred".to_owned(), "mirror".to_owned()])
    );
    // The pod's own are kept and not repeated.
    let mut doc = fixture("bare-pod");
    doc["request"]["object"]["spec"]["imagePullSecrets"] = json!([{"name": "mirror"}]);
    let (resp, _) = run_doc(&doc, &settings);
    let pod: Pod = serde_json::from_value(apply(&doc, &resp)).unwrap();
    assert_eq!(names(&pod), ["mirror", "regcred"]);
    // None configured: none added, `null` in the status as before.
    let (pod, _) = injected("bare-pod", &defaults());
    assert!(pod.spec.as_ref().unwrap().image_pull_secrets.is_none());
    assert_eq!(status(&pod).image_pull_secrets, None);
}

#[test]
fn user_volumes_and_mounts_reach_the_pod_and_the_sidecar() {
    let (pod, resp) = injected_doc(&deployment_pod_with(&[
        (
            "sidecar.istio.io/userVolume",
            r#"{"certs": {"secret": {"secretName": "my-certs"}}}"#,
        ),
        (
            "sidecar.istio.io/userVolumeMount",
            r#"{"certs": {"mountPath": "/etc/certs", "readOnly": true}, "tmp": {"mountPath": "/scratch"}}"#,
        ),
    ]));
    assert!(resp.get("warnings").is_none(), "{resp}");
    let spec = pod.spec.as_ref().unwrap();
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "certs")
        .unwrap();
    assert_eq!(
        volume.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("my-certs")
    );
    let mounts: Vec<(&str, &str, Option<bool>)> = spec.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
        .collect();
    assert_eq!(
        &mounts[mounts.len() - 2..],
        [
            ("certs", "/etc/certs", Some(true)),
            ("tmp", "/scratch", None)
        ]
    );
    assert_eq!(
        status(&pod).volumes.unwrap(),
        [
            "istio-envoy",
            "istio-podinfo",
            "rustmesh-proxy-config",
            "certs"
        ]
    );

    let resp = refused(
        &bare_pod_with(&[(
            "sidecar.istio.io/userVolumeMount",
            r#"{"certs": {"mountPath": "/etc/certs"}}"#,
        )]),
        &defaults(),
    );
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("for annotation 'sidecar.istio.io/userVolumeMount': mount \"certs\": the pod has no volume \"certs\""),
        "{message}"
    );
}

/// Every invalid annotation Istio validates, whatever its kind, in one answer.
#[test]
fn invalid_annotations_of_every_kind_are_refused_together_sorted_by_name() {
    let resp = refused(
        &bare_pod_with(&[
            ("sidecar.istio.io/userVolume", "[]"),
            ("traffic.sidecar.istio.io/excludeOutboundPorts", "x"),
            ("sidecar.istio.io/proxyCPU", "1 core"),
            ("status.sidecar.istio.io/port", "port"),
            ("prometheus.istio.io/merge-metrics", "nope"),
        ]),
        &defaults(),
    );
    let message = resp["status"]["message"].as_str().unwrap();
    let named: Vec<&str> = message
        .lines()
        .skip(1)
        .filter_map(|l| l.split("for annotation '").nth(1))
        .filter_map(|l| l.split('\'').next())
        .collect();
    assert_eq!(
        named,
        [
            "prometheus.istio.io/merge-metrics",
            "sidecar.istio.io/proxyCPU",
            "sidecar.istio.io/userVolume",
            "status.sidecar.istio.io/port",
            "traffic.sidecar.istio.io/excludeOutboundPorts",
        ],
        "{message}"
    );
    assert!(message.starts_with("5 errors occurred:\n"), "{message}");
    assert_eq!(
        resp["auditAnnotations"]["injection"],
        "refused: 5 invalid annotation(s)"
    );
}

/// The bare pod with `meta` as its metadata, injected with the default settings.
fn injected_with_metadata(meta: Value) -> Pod {
    let mut doc = fixture("bare-pod");
    doc["request"]["object"]["metadata"] = meta;
    let (resp, outcome) = run_doc(&doc, &defaults());
    assert_eq!(outcome, Outcome::Injected, "{resp}");
    serde_json::from_value(apply(&doc, &resp)).unwrap()
}

/// Pod metadata as a controller of `kind` named `name` creates it.
fn owned(kind: &str, name: &str, labels: Value) -> Value {
    json!({
        "generateName": format!("{name}-"),
        "namespace": "bookinfo",
        "labels": labels,
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "1", "controller": true}]
    })
}

#[test]
fn canonical_labels_follow_the_controller_as_istio() {
    let labels_of = |meta: Value| {
        let labels = injected_with_metadata(meta).metadata.labels.unwrap();
        (
            labels["service.istio.io/canonical-name"].clone(),
            labels["service.istio.io/canonical-revision"].clone(),
        )
    };
    assert_eq!(
        labels_of(owned(
            "ReplicaSet",
            "reviews-v2-6d8f9c7b5",
            json!({"pod-template-hash": "6d8f9c7b5", "version": "v2"})
        )),
        ("reviews-v2".to_owned(), "v2".to_owned())
    );
    assert_eq!(
        labels_of(owned("Job", "backup-28391720", json!({}))),
        ("backup".to_owned(), "latest".to_owned())
    );
    assert_eq!(
        labels_of(owned(
            "StatefulSet",
            "web",
            json!({"app": "", "app.kubernetes.io/version": "1.2"})
        )),
        ("web".to_owned(), "1.2".to_owned())
    );
    // An empty canonical label is replaced, as the template's `default` does; a set one stays.
    assert_eq!(
        labels_of(
            json!({"name": "solo", "labels": {"service.istio.io/canonical-name": "", "app": "a"}})
        ),
        ("a".to_owned(), "latest".to_owned())
    );
    assert_eq!(
        labels_of(
            json!({"name": "solo", "labels": {"service.istio.io/canonical-name": "mine", "app": "a"}})
        ),
        ("mine".to_owned(), "latest".to_owned())
    );
    // Cut at 63 characters, then the trailing '-' removed (Istio's trunc 63 | trimSuffix "-").
    let long = format!("{}-{}", "w".repeat(62), "abcdef");
    assert_eq!(
        labels_of(owned("DaemonSet", &long, json!({}))).0,
        "w".repeat(62)
    );
    let long = format!("{}-{}", "w".repeat(60), "abcdef");
    assert_eq!(
        labels_of(owned("DaemonSet", &long, json!({}))).0,
        format!("{}-ab", "w".repeat(60))
    );
}

// --- re-injection (#18): a pod injected before is stripped and injected again ----------------

/// Runs the review; returns the object after its patch (the object itself without one), the
/// response and the outcome.
fn review_applied(doc: &Value, settings: &InjectionSettings) -> (Value, Value, Outcome) {
    let (resp, outcome) = run_doc(doc, settings);
    let object = if resp.get("patch").is_some() {
        apply(doc, &resp)
    } else {
        doc["request"]["object"].clone()
    };
    (object, resp, outcome)
}

/// The review document `doc` with `object` as its pod.
fn with_object(doc: &Value, object: &Value) -> Value {
    let mut again = doc.clone();
    again["request"]["object"] = object.clone();
    again
}

/// Injecting `object` again with `settings` leaves it as it is: no patch.
fn injects_to_itself(doc: &Value, object: &Value, settings: &InjectionSettings) {
    let (resp, outcome) = run_doc(&with_object(doc, object), settings);
    assert_eq!(outcome, Outcome::Skipped, "{resp}");
    assert!(resp.get("patch").is_none(), "injected again: {resp}");
    assert!(
        resp["auditAnnotations"]["injection"]
            .as_str()
            .unwrap()
            .starts_with("injected again, nothing changed"),
        "{resp}"
    );
}

fn pod_of(object: &Value) -> Pod {
    serde_json::from_value(object.clone()).expect("a valid pod")
}

fn volume_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .map(|v| v.name.clone())
        .collect()
}

/// A pod spec copied from a running injected pod (status annotation, old sidecar with none of
/// today's environment) is not skipped: what the status lists goes, and the pod is injected
/// again, once; the result injects to itself.
#[test]
fn a_pod_injected_before_is_stripped_and_injected_again() {
    let doc = fixture("already-injected");
    let (object, resp, outcome) = review_applied(&doc, &defaults());
    assert_eq!(outcome, Outcome::Injected, "{resp}");
    let pod = pod_of(&object);
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(names(&spec.containers), ["istio-proxy", "productpage"]);
    assert_eq!(
        names(spec.init_containers.as_ref().unwrap()),
        ["istio-init"]
    );
    let proxy = container(&spec.containers, "istio-proxy");
    assert_eq!(env(proxy)["ISTIO_META_APP_CONTAINERS"], "productpage");
    assert!(proxy.readiness_probe.is_some(), "rendered anew");
    assert_eq!(
        volume_names(&pod),
        [
            "kube-api-access-7xk2p",
            "istio-envoy",
            "istio-podinfo",
            "rustmesh-proxy-config"
        ]
    );
    assert_eq!(status(&pod).revision, "default");
    injects_to_itself(&doc, &object, &defaults());
}

/// Re-injection gives the app back what the sidecar carried for it (its probes, its
/// prometheus.io annotations) and then follows what the pod now says.
#[test]
fn reinjection_restores_the_apps_probes_and_metrics_then_follows_the_pod() {
    let mut doc = fixture("deployment-pod");
    let meta = &mut doc["request"]["object"]["metadata"]["annotations"];
    meta["prometheus.io/port"] = json!("9080");
    meta["prometheus.io/path"] = json!("/metrics");
    let (first, _, _) = review_applied(&doc, &defaults());
    let pod = pod_of(&first);
    let spec = pod.spec.as_ref().unwrap();
    let page = container(&spec.containers, "productpage");
    let ready = page
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        ready.path.as_deref(),
        Some("/app-health/productpage/readyz")
    );
    let proxy = container(&spec.containers, "istio-proxy");
    assert!(env(proxy).contains_key("ISTIO_KUBE_APP_PROBERS"));
    assert_eq!(
        env(proxy)["ISTIO_PROMETHEUS_ANNOTATIONS"],
        r#"{"scrape":"","path":"/metrics","port":"9080"}"#
    );
    assert_eq!(annotations_of(&pod)["prometheus.io/port"], "15020");
    // Injected again as it is: nothing changes.
    injects_to_itself(&doc, &first, &defaults());

    // The copied pod now turns the probe rewrite and metrics merging off: the app's own
    // probes and annotations are back, the sidecar carries neither.
    let mut copied = first.clone();
    let a = &mut copied["metadata"]["annotations"];
    a["sidecar.istio.io/rewriteAppHTTPProbers"] = json!("false");
    a["prometheus.istio.io/merge-metrics"] = json!("false");
    let (second, resp, outcome) = review_applied(&with_object(&doc, &copied), &defaults());
    assert_eq!(outcome, Outcome::Injected, "{resp}");
    let pod = pod_of(&second);
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(
        names(&spec.containers),
        ["istio-proxy", "productpage", "log-shipper"]
    );
    let page = container(&spec.containers, "productpage");
    let original = &doc["request"]["object"]["spec"]["containers"][0];
    assert_eq!(
        serde_json::to_value(page.readiness_probe.as_ref().unwrap()).unwrap(),
        original["readinessProbe"]
    );
    assert_eq!(
        serde_json::to_value(page.liveness_probe.as_ref().unwrap()).unwrap(),
        original["livenessProbe"]
    );
    let proxy = container(&spec.containers, "istio-proxy");
    assert!(!env(proxy).contains_key("ISTIO_KUBE_APP_PROBERS"));
    assert!(!env(proxy).contains_key("ISTIO_PROMETHEUS_ANNOTATIONS"));
    let a = annotations_of(&pod);
    assert_eq!(a["prometheus.io/port"], "9080");
    assert_eq!(a["prometheus.io/path"], "/metrics");
    assert!(!a.contains_key("prometheus.io/scrape"), "the app had none");
    injects_to_itself(&doc, &second, &defaults());

    // Another status port: the probes follow it.
    let mut moved = first;
    moved["metadata"]["annotations"]["status.sidecar.istio.io/port"] = json!("16020");
    let (third, _, _) = review_applied(&with_object(&doc, &moved), &defaults());
    let pod = pod_of(&third);
    let page = container(&pod.spec.as_ref().unwrap().containers, "productpage");
    let get = page
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        get.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(16020)
    );
    assert_eq!(get.path.as_deref(), Some("/app-health/productpage/readyz"));
    injects_to_itself(&doc, &third, &defaults());
}

/// Re-injection follows changed settings: a native sidecar now, no CA any more; nothing is
/// left twice, and a volume the previous injection added stays only while a container of the
/// pod still mounts it.
#[test]
fn reinjection_follows_changed_settings_and_keeps_only_mounted_old_volumes() {
    let doc = fixture("bare-pod");
    let with_ca = InjectionSettings {
        ca_address: "istiod.istio-system.svc:15012".into(),
        ..defaults()
    };
    let (first, _, _) = review_applied(&doc, &with_ca);
    assert!(volume_names(&pod_of(&first)).contains(&"istio-token".to_owned()));
    injects_to_itself(&doc, &first, &with_ca);

    let native = InjectionSettings {
        native_sidecars: NativeSidecars::On,
        ..defaults()
    };
    let (second, _, _) = review_applied(&with_object(&doc, &first), &native);
    let pod = pod_of(&second);
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(names(&spec.containers), ["nginx"]);
    assert_eq!(
        names(spec.init_containers.as_ref().unwrap()),
        ["istio-init", "istio-proxy"]
    );
    assert_eq!(
        volume_names(&pod),
        ["istio-envoy", "istio-podinfo", "rustmesh-proxy-config"],
        "the CA's volumes went with the setting"
    );
    injects_to_itself(&doc, &second, &native);

    // The app mounts the old token volume: it stays, as the pod's own.
    let mut mounted = first;
    mounted["spec"]["containers"][1]["volumeMounts"] =
        json!([{"name": "istio-token", "mountPath": "/token"}]);
    let (third, _, _) = review_applied(&with_object(&doc, &mounted), &defaults());
    let pod = pod_of(&third);
    assert_eq!(
        volume_names(&pod),
        [
            "istio-token",
            "istio-envoy",
            "istio-podinfo",
            "rustmesh-proxy-config"
        ]
    );
    assert!(
        !status(&pod)
            .volumes
            .unwrap()
            .contains(&"istio-token".to_owned())
    );
    injects_to_itself(&doc, &third, &defaults());
}

// --- overlays (#18): the pod's own istio-proxy / istio-init -----------------------------------

/// The bare pod with its own `istio-proxy` (after the app) and, if given, `istio-init`.
fn with_own_proxy(proxy: Value, init: Option<Value>) -> Value {
    let mut doc = fixture("bare-pod");
    let spec = &mut doc["request"]["object"]["spec"];
    spec["containers"].as_array_mut().unwrap().push(proxy);
    if let Some(init) = init {
        spec["initContainers"] = json!([init]);
    }
    doc
}

/// As Istio: a pod's own `istio-proxy` is merged onto the injected one (`image: auto` is the
/// injector's image), recorded in `proxy.istio.io/overrides`, and applied again on
/// re-injection.
#[test]
fn the_pods_own_istio_proxy_is_merged_onto_the_injected_one() {
    let doc = with_own_proxy(
        json!({
            "name": "istio-proxy",
            "image": "auto",
            "env": [{"name": "EXTRA", "value": "1"}, {"name": "ISTIO_META_MESH_ID", "value": "mesh1"}],
            "resources": {"limits": {"memory": "512Mi"}}
        }),
        None,
    );
    let (object, resp, outcome) = review_applied(&doc, &defaults());
    assert_eq!(outcome, Outcome::Injected, "{resp}");
    let pod = pod_of(&object);
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(names(&spec.containers), ["istio-proxy", "nginx"]);
    let proxy = &spec.containers[0];
    assert_eq!(proxy.image, Some(defaults().image));
    assert_eq!(
        proxy.args.as_deref().unwrap(),
        ["run", "--config-dir", "/etc/rustmesh/config"]
    );
    let e = env(proxy);
    assert_eq!(e["EXTRA"], "1");
    assert_eq!(e["ISTIO_META_MESH_ID"], "mesh1");
    assert_eq!(e["POD_NAME"], "metadata.name");
    assert_eq!(e["ISTIO_META_APP_CONTAINERS"], "nginx");
    assert_eq!(
        resources_of(proxy),
        [
            "requests.cpu=100m",
            "requests.memory=128Mi",
            "limits.cpu=2",
            "limits.memory=512Mi"
        ]
    );
    let a = annotations_of(&pod);
    assert_eq!(a["kubectl.kubernetes.io/default-container"], "nginx");
    let recorded: Value = serde_json::from_str(&a["proxy.istio.io/overrides"]).unwrap();
    assert_eq!(recorded["containers"][0]["name"], "istio-proxy");
    assert!(
        recorded["containers"][0].get("image").is_none(),
        "auto is not recorded"
    );
    injects_to_itself(&doc, &object, &defaults());

    // Injected again as a native sidecar: the recorded overlay applies to it there.
    let native = InjectionSettings {
        native_sidecars: NativeSidecars::On,
        ..defaults()
    };
    let (again, _, _) = review_applied(&with_object(&doc, &object), &native);
    let pod = pod_of(&again);
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(names(&spec.containers), ["nginx"]);
    let proxy = container(spec.init_containers.as_ref().unwrap(), "istio-proxy");
    assert_eq!(env(proxy)["EXTRA"], "1");
    assert!(resources_of(proxy).contains(&"limits.memory=512Mi".to_owned()));
    injects_to_itself(&doc, &again, &native);
}

/// As Istio's `adjustInitContainerUser`: the pod's `istio-proxy` running as another user makes
/// `istio-init` exempt that user from capture; under TPROXY it stays root (said in a warning).
/// The pod's `istio-init` is merged too, or kept as its own when none is injected.
#[test]
fn the_pods_proxy_user_is_exempted_from_capture_and_its_istio_init_merged() {
    let proxy =
        json!({"name": "istio-proxy", "image": "auto", "securityContext": {"runAsUser": 1000}});
    let init =
        json!({"name": "istio-init", "image": "auto", "resources": {"limits": {"cpu": "500m"}}});
    let doc = with_own_proxy(proxy.clone(), Some(init.clone()));
    let (object, _, _) = review_applied(&doc, &defaults());
    let pod = pod_of(&object);
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(
        names(spec.init_containers.as_ref().unwrap()),
        ["istio-init"]
    );
    let args = init_args(&pod);
    assert_eq!(
        args[args.iter().position(|a| a == "-u").unwrap() + 1],
        "1000"
    );
    let istio_init = &spec.init_containers.as_ref().unwrap()[0];
    assert!(resources_of(istio_init).contains(&"limits.cpu=500m".to_owned()));
    assert_eq!(istio_init.image, Some(defaults().image));
    let sidecar = container(&spec.containers, "istio-proxy");
    assert_eq!(
        sidecar.security_context.as_ref().unwrap().run_as_user,
        Some(1000)
    );
    injects_to_itself(&doc, &object, &defaults());

    // TPROXY: the sidecar must bind transparently as root.
    let mut tproxy = doc.clone();
    tproxy["request"]["object"]["metadata"]["annotations"] =
        json!({"sidecar.istio.io/interceptionMode": "TPROXY"});
    let (object, resp, _) = review_applied(&tproxy, &defaults());
    let pod = pod_of(&object);
    let sidecar = container(&pod.spec.as_ref().unwrap().containers, "istio-proxy");
    assert_eq!(
        sidecar.security_context.as_ref().unwrap().run_as_user,
        Some(0)
    );
    let args = init_args(&pod);
    assert_eq!(
        args[args.iter().position(|a| a == "-u").unwrap() + 1],
        "1337"
    );
    assert!(
        warnings_of(&resp)
            .iter()
            .any(|w| w.contains("runAsUser 1000 of the pod's istio-proxy ignored")),
        "{resp}"
    );

    // NONE injects no istio-init: the pod's own stays its own, and a warning says so.
    let mut none = doc;
    none["request"]["object"]["metadata"]["annotations"] =
        json!({"sidecar.istio.io/interceptionMode": "NONE"});
    let (object, resp, _) = review_applied(&none, &defaults());
    let pod = pod_of(&object);
    let inits = pod.spec.as_ref().unwrap().init_containers.clone().unwrap();
    assert_eq!(names(&inits), ["istio-init"]);
    assert_eq!(
        inits[0].image.as_deref(),
        Some("auto"),
        "left as the pod's own"
    );
    assert!(status(&pod).init_containers.is_none());
    assert!(
        warnings_of(&resp)
            .iter()
            .any(|w| w.contains("kept as the pod's own")),
        "{resp}"
    );
    injects_to_itself(&none, &object, &defaults());
}

/// A `proxy.istio.io/overrides` that is not Istio's list of containers refuses the pod.
#[test]
fn an_unreadable_overrides_annotation_refuses_the_pod() {
    let resp = refused(
        &bare_pod_with(&[("proxy.istio.io/overrides", "{\"containers\": \"x\"}")]),
        &defaults(),
    );
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("for annotation 'proxy.istio.io/overrides': not Istio's"),
        "{message}"
    );
}

// --- templates (#18): inject.istio.io/templates -----------------------------------------------

/// An ingress gateway as Istio's gateway chart deploys it: its own `istio-proxy` with
/// `image: auto`, its ports, resources and security context.
fn gateway_pod() -> Value {
    let mut doc = fixture("bare-pod");
    let object = &mut doc["request"]["object"];
    object["metadata"]["labels"] =
        json!({"app": "istio-ingressgateway", "istio": "ingressgateway"});
    object["metadata"]["annotations"] = json!({
        "inject.istio.io/templates": "gateway",
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "15020",
        "prometheus.io/path": "/stats/prometheus"
    });
    object["spec"]["containers"] = json!([{
        "name": "istio-proxy",
        "image": "auto",
        "ports": [
            {"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"},
            {"containerPort": 8080, "name": "http2", "protocol": "TCP"}
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2000m", "memory": "1024Mi"}},
        "securityContext": {"allowPrivilegeEscalation": false, "runAsUser": 1337, "runAsGroup": 1337}
    }]);
    doc
}

/// Istio's gateway template: a standalone proxy, the pod's own `istio-proxy` filled in; no
/// `istio-init`, nothing captured, no tlsMode label, no native sidecar; the proxy told it is a
/// router (`run --type router`, Istio's `proxy router`) with Istio's router metadata.
#[test]
fn the_gateway_template_makes_the_pods_istio_proxy_a_standalone_proxy() {
    let native = InjectionSettings {
        native_sidecars: NativeSidecars::On,
        ..defaults()
    };
    let doc = gateway_pod();
    let (object, resp, outcome) = review_applied(&doc, &native);
    assert_eq!(outcome, Outcome::Injected, "{resp}");
    let pod = pod_of(&object);
    let spec = pod.spec.as_ref().unwrap();
    assert!(
        spec.init_containers.is_none(),
        "no istio-init, no native sidecar"
    );
    assert_eq!(names(&spec.containers), ["istio-proxy"]);
    let proxy = &spec.containers[0];
    assert_eq!(proxy.image, Some(defaults().image));
    assert_eq!(
        proxy.args.as_deref().unwrap(),
        [
            "run",
            "--type",
            "router",
            "--config-dir",
            "/etc/rustmesh/config"
        ]
    );
    let e = env(proxy);
    assert_eq!(e["ISTIO_META_ROUTER_MODE"], "sni-dnat");
    assert!(e["ISTIO_META_POD_PORTS"].as_str().unwrap().contains("8080"));
    assert_eq!(e["ISTIO_META_APP_CONTAINERS"], "");
    assert!(
        !e.contains_key("ISTIO_PROMETHEUS_ANNOTATIONS"),
        "already the status port"
    );
    // The chart's resources, and none of the settings'.
    assert_eq!(
        resources_of(proxy),
        [
            "requests.cpu=100m",
            "requests.memory=128Mi",
            "limits.cpu=2000m",
            "limits.memory=1024Mi"
        ]
    );
    assert!(proxy.readiness_probe.is_some());
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert!(!labels.contains_key("security.istio.io/tlsMode"));
    assert_eq!(
        labels["service.istio.io/canonical-name"],
        "istio-ingressgateway"
    );
    let st = status(&pod);
    assert_eq!(st.init_containers, None);
    assert_eq!(st.containers.as_deref().unwrap(), ["istio-proxy"]);
    assert!(!annotations_of(&pod).contains_key("kubectl.kubernetes.io/default-container"));
    assert!(
        !warnings_of(&resp)
            .iter()
            .any(|w| w.contains("issue #20") || w.contains("gateway mode")),
        "the proxy has a gateway mode: no warning about it: {resp}"
    );
    injects_to_itself(&doc, &object, &native);

    // Without resources of its own and with the resource annotation: only what it names.
    let mut bare = gateway_pod();
    bare["request"]["object"]["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("resources");
    let (object, _, _) = review_applied(&bare, &defaults());
    assert!(
        pod_of(&object).spec.unwrap().containers[0]
            .resources
            .is_none()
    );
    bare["request"]["object"]["metadata"]["annotations"]["sidecar.istio.io/proxyMemory"] =
        json!("256Mi");
    let (object, _, _) = review_applied(&bare, &defaults());
    assert_eq!(
        resources_of(&pod_of(&object).spec.unwrap().containers[0]),
        ["requests.memory=256Mi"]
    );

    // Capture annotations mean nothing there: each is named in a warning.
    let mut annotated = gateway_pod();
    annotated["request"]["object"]["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeOutboundPorts"] =
        json!("9000");
    let (_, resp, _) = review_applied(&annotated, &defaults());
    assert!(
        warnings_of(&resp).iter().any(|w| w.contains(
            "annotation traffic.sidecar.istio.io/excludeOutboundPorts ignored: the gateway \
             template captures no traffic"
        )),
        "{resp}"
    );
}

/// A template rustmesh does not have, or two together, refuses the pod naming the known ones;
/// never a silent `sidecar`.
#[test]
fn an_unknown_or_combined_template_refuses_the_pod() {
    for (value, says) in [
        (
            "grpc-agent",
            "requested template \"grpc-agent\" not found; have gateway, sidecar",
        ),
        (
            "sidecar,gateway",
            "templates sidecar and gateway together are not implemented by rustmesh",
        ),
    ] {
        let resp = refused(
            &bare_pod_with(&[("inject.istio.io/templates", value)]),
            &defaults(),
        );
        let message = resp["status"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "invalid value '{value}' for annotation 'inject.istio.io/templates': {says}"
            )),
            "{message}"
        );
    }
    // `sidecar` is the default, said or not.
    let (pod, _) = inject_bare_pod(&[("inject.istio.io/templates", "sidecar")], &defaults());
    assert_eq!(
        names(pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()),
        ["istio-init"]
    );
}

// --- native sidecars and holding the app (#18) ------------------------------------------------

fn proxy_of(pod: &Pod) -> &Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == "istio-proxy")
        .unwrap()
}

fn is_native(pod: &Pod) -> bool {
    proxy_of(pod).restart_policy.as_deref() == Some("Always")
}

/// `sidecar.istio.io/nativeSidecar` wins over the setting, both ways; a value other than
/// `"true"`/`"false"` refuses the pod.
#[test]
fn the_native_sidecar_annotation_wins_over_the_setting_and_is_checked() {
    let native = InjectionSettings {
        native_sidecars: NativeSidecars::On,
        ..defaults()
    };
    let (pod, _) = inject_bare_pod(&[("sidecar.istio.io/nativeSidecar", "true")], &defaults());
    assert!(is_native(&pod));
    assert!(proxy_of(&pod).startup_probe.is_some());
    assert_eq!(
        names(pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()),
        ["istio-init", "istio-proxy"]
    );
    let (pod, _) = inject_bare_pod(&[("sidecar.istio.io/nativeSidecar", "false")], &native);
    assert!(!is_native(&pod));
    assert_eq!(pod.spec.as_ref().unwrap().containers[0].name, "istio-proxy");
    let resp = refused(
        &bare_pod_with(&[("sidecar.istio.io/nativeSidecar", "yes")]),
        &native,
    );
    assert!(
        resp["status"]["message"].as_str().unwrap().contains(
            "invalid value 'yes' for annotation 'sidecar.istio.io/nativeSidecar': nativeSidecar \
             invalid, use \"true\" or \"false\""
        ),
        "{resp}"
    );
}

fn holds(pod: &Pod) -> bool {
    proxy_of(pod)
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
        .is_some()
}

/// As Istio combines it: the pod's `proxy.istio.io/config` over the mesh default (the
/// setting), either way; with a native sidecar the startup probe holds the app and no
/// postStart hook is added; the gateway template holds nothing.
#[test]
fn hold_application_until_proxy_starts_combines_mesh_and_pod_as_istio() {
    let hold = InjectionSettings {
        hold_application_until_proxy_starts: true,
        ..defaults()
    };
    let pod_says = |v: bool| format!("holdApplicationUntilProxyStarts: {v}");
    let (pod, _) = inject_bare_pod(&[], &hold);
    assert!(holds(&pod));
    let (pod, _) = inject_bare_pod(&[("proxy.istio.io/config", &pod_says(false))], &hold);
    assert!(!holds(&pod), "the pod turns the mesh default off");
    let (pod, _) = inject_bare_pod(&[("proxy.istio.io/config", &pod_says(true))], &defaults());
    assert!(holds(&pod), "the pod turns it on");

    let native_hold = InjectionSettings {
        native_sidecars: NativeSidecars::On,
        ..hold.clone()
    };
    let (pod, _) = inject_bare_pod(&[], &native_hold);
    assert!(
        is_native(&pod) && !holds(&pod),
        "the startup probe holds the app"
    );
    assert!(proxy_of(&pod).startup_probe.is_some());
    let (pod, _) = inject_bare_pod(&[("sidecar.istio.io/nativeSidecar", "false")], &native_hold);
    assert!(!is_native(&pod) && holds(&pod));

    let (object, _, _) = review_applied(&gateway_pod(), &hold);
    assert!(!holds(&pod_of(&object)));
}

/// The pod's own `istio-proxy` asking more CPU than the injected limit: refused at admission,
/// naming both values, instead of a pod the API server refuses.
#[test]
fn an_overlay_request_above_the_injected_limit_refuses_the_pod() {
    let doc = with_own_proxy(
        json!({"name": "istio-proxy", "image": "auto", "resources": {"requests": {"cpu": "3"}}}),
        None,
    );
    let resp = refused(&doc, &defaults());
    assert_eq!(
        resp["status"]["message"],
        "1 error occurred:\n\t* container 'istio-proxy' of the pod, merged onto the injected one: \
         the cpu request 3 is more than the cpu limit 2 (Kubernetes refuses a request above its \
         limit; set both)\n\n"
    );
    // Saying the limit too is fine.
    let doc = with_own_proxy(
        json!({"name": "istio-proxy", "image": "auto",
               "resources": {"requests": {"cpu": "3"}, "limits": {"cpu": "4"}}}),
        None,
    );
    let (_, resp, outcome) = review_applied(&doc, &defaults());
    assert_eq!(outcome, Outcome::Injected, "{resp}");
}

// --- custom templates: the `templates` setting and inject.istio.io/templates ------------------

/// Settings with the custom templates `value` (the `templates` key, as the ConfigMap holds it).
fn with_templates(value: &str) -> InjectionSettings {
    let data = [
        ("image".to_owned(), defaults().image),
        ("templates".to_owned(), value.to_owned()),
    ]
    .into();
    InjectionSettings::from_map(&data).expect("valid templates")
}

/// The brief's example: an env var on istio-proxy and a label.
const CUSTOM: &str = r#"{"custom": {"metadata": {"labels": {"x": "y"}}, "spec": {"containers": [{"name": "istio-proxy", "env": [{"name": "FOO", "value": "bar"}]}]}}}"#;

/// A custom template adds an env var to `istio-proxy` (wherever it is injected: first container
/// or native sidecar) and a label; the rest is the `sidecar` template's; injecting the result
/// again changes nothing.
#[test]
fn a_custom_template_adds_an_env_var_to_istio_proxy_and_a_label() {
    let settings = with_templates(CUSTOM);
    let native = InjectionSettings {
        native_sidecars: NativeSidecars::On,
        ..settings.clone()
    };
    for (value, settings) in [
        ("custom", &settings),
        ("sidecar,custom", &settings),
        ("sidecar, custom", &native),
    ] {
        let doc = bare_pod_with(&[("inject.istio.io/templates", value)]);
        let (object, resp, outcome) = review_applied(&doc, settings);
        assert_eq!(outcome, Outcome::Injected, "{value}: {resp}");
        assert!(warnings_of(&resp).is_empty(), "{value}: {resp}");
        let pod = pod_of(&object);
        let e = env(proxy_of(&pod));
        assert_eq!(e["FOO"], "bar", "{value}");
        assert!(
            e.contains_key("ISTIO_META_APP_CONTAINERS"),
            "the sidecar's own env is kept"
        );
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["x"], "y");
        assert_eq!(labels["security.istio.io/tlsMode"], "istio");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.init_containers.as_ref().unwrap()[0].name, "istio-init");
        assert_eq!(
            !settings.use_native_sidecars(),
            spec.containers[0].name == "istio-proxy"
        );
        // The template added no container or volume: the status is the sidecar's.
        let st = status(&pod);
        assert_eq!(
            st.volumes.unwrap(),
            status(&inject_bare_pod(&[], settings).0).volumes.unwrap()
        );
        injects_to_itself(&doc, &object, settings);
    }
    // A pod that does not ask for it gets nothing of it.
    let (pod, _) = inject_bare_pod(&[], &settings);
    assert!(!env(proxy_of(&pod)).contains_key("FOO"));
    assert!(!pod.metadata.labels.unwrap().contains_key("x"));
}

/// Custom templates are merged after the built-in one, in the order written (the last wins a
/// field both set); with `gateway` they are merged onto the gateway's proxy.
#[test]
fn custom_templates_apply_after_the_built_in_one_in_the_order_written() {
    let settings = with_templates(
        r#"{
        "first": {"metadata": {"labels": {"order": "first", "first": "yes"}},
                  "spec": {"containers": [{"name": "istio-proxy", "env": [{"name": "FOO", "value": "1"}]}]}},
        "second": {"metadata": {"labels": {"order": "second"}},
                   "spec": {"containers": [{"name": "istio-proxy", "env": [{"name": "FOO", "value": "2"}]}]}}
    }"#,
    );
    for (value, last) in [
        ("sidecar,first,second", "second"),
        ("sidecar,second,first", "first"),
        ("second,sidecar,first", "first"),
        ("first,second", "second"),
    ] {
        let (pod, resp) = inject_bare_pod(&[("inject.istio.io/templates", value)], &settings);
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["order"], last, "{value}: {resp}");
        assert_eq!(labels["first"], "yes", "{value}");
        let want = if last == "first" { "1" } else { "2" };
        assert_eq!(env(proxy_of(&pod))["FOO"], want, "{value}");
        assert_eq!(
            names(pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()),
            ["istio-init"],
            "{value}: the sidecar template is the base"
        );
    }
    let mut doc = gateway_pod();
    doc["request"]["object"]["metadata"]["annotations"]["inject.istio.io/templates"] =
        json!("gateway,first");
    let (object, resp, outcome) = review_applied(&doc, &settings);
    assert_eq!(outcome, Outcome::Injected, "{resp}");
    let pod = pod_of(&object);
    assert!(pod.spec.as_ref().unwrap().init_containers.is_none());
    assert_eq!(env(proxy_of(&pod))["FOO"], "1");
    assert!(
        !pod.metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key("security.istio.io/tlsMode")
    );
}

/// The pod's own `istio-proxy` is merged after the templates (Istio re-applies the pod's
/// containers last): its value wins.
#[test]
fn the_pods_own_istio_proxy_wins_over_a_custom_template() {
    let settings = with_templates(CUSTOM);
    let mut doc = with_own_proxy(
        json!({"name": "istio-proxy", "image": "auto", "env": [{"name": "FOO", "value": "mine"}]}),
        None,
    );
    doc["request"]["object"]["metadata"]["annotations"] =
        json!({"inject.istio.io/templates": "sidecar,custom"});
    let (object, resp, outcome) = review_applied(&doc, &settings);
    assert_eq!(outcome, Outcome::Injected, "{resp}");
    assert_eq!(env(proxy_of(&pod_of(&object)))["FOO"], "mine");
    injects_to_itself(&doc, &object, &settings);
}

/// A template that adds a container, an init container, a volume and a pull secret, and merges
/// into the app's container: what it added is listed in `sidecar.istio.io/status`, so that
/// injecting the result again removes it first and gives the same pod.
#[test]
fn what_a_custom_template_adds_is_in_the_status_and_reinjection_gives_the_same_pod() {
    let settings = with_templates(
        r#"
log:
  spec:
    containers:
    - name: log-shipper
      image: fluent/fluent-bit:3
      volumeMounts: [{name: log-buffer, mountPath: /buffer}]
    - name: nginx
      env: [{name: LOG_FORMAT, value: json}]
    initContainers:
    - {name: setup, image: busybox:1, command: ["true"]}
    volumes:
    - {name: log-buffer, emptyDir: {}}
    imagePullSecrets:
    - {name: log-registry}
    nodeSelector: {disk: ssd}
"#,
    );
    let native = InjectionSettings {
        native_sidecars: NativeSidecars::On,
        ..settings.clone()
    };
    for settings in [&settings, &native] {
        let doc = bare_pod_with(&[("inject.istio.io/templates", "log")]);
        let (object, resp, outcome) = review_applied(&doc, settings);
        assert_eq!(outcome, Outcome::Injected, "{resp}");
        let pod = pod_of(&object);
        let spec = pod.spec.as_ref().unwrap();
        let nginx = container(&spec.containers, "nginx");
        assert_eq!(env(nginx)["LOG_FORMAT"], "json");
        assert_eq!(nginx.image.as_deref(), Some("nginx:1.27"));
        assert_eq!(spec.containers.last().unwrap().name, "log-shipper");
        assert_eq!(
            spec.init_containers.as_ref().unwrap().last().unwrap().name,
            "setup"
        );
        assert_eq!(volume_names(&pod).last().unwrap(), "log-buffer");
        assert_eq!(spec.node_selector.as_ref().unwrap()["disk"], "ssd");
        let st = status(&pod);
        assert!(st.containers.unwrap().contains(&"log-shipper".to_owned()));
        assert_eq!(st.init_containers.unwrap().last().unwrap(), "setup");
        assert_eq!(st.volumes.unwrap().last().unwrap(), "log-buffer");
        assert_eq!(st.image_pull_secrets.unwrap(), ["log-registry"]);
        injects_to_itself(&doc, &object, settings);
    }
}

/// A name that is neither built in nor a custom template refuses the pod, listing every
/// template (the custom ones too); two built-in ones still refuse it; a template that cannot
/// be merged onto this pod refuses it naming the template.
#[test]
fn an_unknown_custom_template_refuses_the_pod_listing_the_custom_names() {
    let settings =
        with_templates(r#"{"custom": {}, "log": {"spec": {"containers": [{"name": "shipper"}]}}}"#);
    for (value, says) in [
        (
            "sidecar,custom,spire",
            "requested template \"spire\" not found; have custom, gateway, log, sidecar",
        ),
        (
            "gateway,custom,sidecar",
            "templates gateway and sidecar together are not implemented by rustmesh; give at \
             most one of gateway, sidecar (with any custom templates)",
        ),
        (
            "log",
            "template \"log\": spec.containers: container \"shipper\" is not in the pod, so the \
             template adds it, and it has no image",
        ),
    ] {
        let resp = refused(
            &bare_pod_with(&[("inject.istio.io/templates", value)]),
            &settings,
        );
        let message = resp["status"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "invalid value '{value}' for annotation 'inject.istio.io/templates': {says}"
            )),
            "{message}"
        );
    }
    // Without the setting, `custom` is not a template.
    let resp = refused(
        &bare_pod_with(&[("inject.istio.io/templates", "custom")]),
        &defaults(),
    );
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("requested template \"custom\" not found; have gateway, sidecar"),
        "{resp}"
    );
}

/// A template asking more CPU of istio-proxy than its injected limit refuses the pod, naming
/// the template.
#[test]
fn a_custom_template_request_above_the_limit_refuses_the_pod() {
    let settings = with_templates(
        r#"{"big": {"spec": {"containers": [{"name": "istio-proxy", "resources": {"requests": {"cpu": "3"}}}]}}}"#,
    );
    let resp = refused(
        &bare_pod_with(&[("inject.istio.io/templates", "big")]),
        &settings,
    );
    assert_eq!(
        resp["status"]["message"],
        "1 error occurred:\n\t* container 'istio-proxy', merged with the custom template(s) \
         \"big\": the cpu request 3 is more than the cpu limit 2 (Kubernetes refuses a request \
         above its limit; set both)\n\n"
    );
    // An app container a template merges into is checked the same way, once every template is
    // merged (a later one may give the limit).
    let settings = with_templates(
        r#"{"req": {"spec": {"containers": [{"name": "nginx", "resources": {"requests": {"cpu": "3"}, "limits": {"cpu": "2"}}}]}},
            "lim": {"spec": {"containers": [{"name": "nginx", "resources": {"limits": {"cpu": "4"}}}]}}}"#,
    );
    let resp = refused(
        &bare_pod_with(&[("inject.istio.io/templates", "req")]),
        &settings,
    );
    assert!(
        resp["status"]["message"].as_str().unwrap().contains(
            "container 'nginx', merged with the custom template(s) \"req\": the cpu request 3 is \
             more than the cpu limit 2"
        ),
        "{resp}"
    );
    let (pod, _) = inject_bare_pod(&[("inject.istio.io/templates", "req,lim")], &settings);
    assert_eq!(
        resources_of(container(&pod.spec.unwrap().containers, "nginx")),
        ["requests.cpu=3", "limits.cpu=4"]
    );
}

/// Bad custom templates make the settings invalid, the error naming the key and the template.
#[test]
fn bad_custom_templates_are_refused_naming_the_key() {
    for (value, says) in [
        (r#"{"gateway": {}}"#, "template \"gateway\" is built in"),
        (
            r#"{"Custom": {}}"#,
            "template name \"Custom\" is not a DNS-1123 label",
        ),
        (
            r#"{"custom": {"metadata": {"name": "x"}}}"#,
            "template \"custom\": metadata.name: not allowed; a template sets only \
             metadata.labels, metadata.annotations and spec",
        ),
        (
            r#"{"custom": {"spec": {"containers": [{"name": "istio-proxy", "image": "{{ annotation .ObjectMeta `sidecar.istio.io/proxyImage` .Values.global.proxy.image }}"}]}}}"#,
            "rustmesh's templates are static pod fragments, nothing in them is evaluated",
        ),
        (
            r#"{"custom": {"spec": {"containers": [{"name": "istio-proxy", "enf": []}]}}}"#,
            "template \"custom\": spec.containers[0].enf: not a field of a Kubernetes Pod",
        ),
    ] {
        let data = [
            ("image".to_owned(), "proxy".to_owned()),
            ("templates".to_owned(), value.to_owned()),
        ]
        .into();
        let e = InjectionSettings::from_map(&data).unwrap_err().to_string();
        assert!(
            e.starts_with("injection setting `templates`: ") && e.contains(says),
            "{value}: {e}"
        );
    }
}

#[test]
fn the_sidecar_is_told_its_workload_as_istios_template_tells_it() {
    let workload_env = |meta: Value| {
        let spec = injected_with_metadata(meta).spec.unwrap();
        env(container(&spec.containers, "istio-proxy"))
            .get("ISTIO_META_WORKLOAD_NAME")
            .cloned()
    };
    let hashed = json!({"pod-template-hash": "6d8f9c7b5"});
    // A Deployment's pod: its ReplicaSet without the template hash.
    assert_eq!(
        workload_env(owned("ReplicaSet", "reviews-v2-6d8f9c7b5", hashed.clone())),
        Some(json!("reviews-v2"))
    );
    // A StatefulSet's pod `web-0` is workload `web` (the proxy alone would guess `web-0`).
    assert_eq!(
        workload_env(owned("StatefulSet", "web", hashed)),
        Some(json!("web"))
    );
    // A bare pod: its own name.
    assert_eq!(
        workload_env(json!({"name": "debug", "namespace": "bookinfo"})),
        Some(json!("debug"))
    );
}
