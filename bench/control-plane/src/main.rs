//! Operator render benchmark: synthetic meshes put into the operator's own `Index`, rendered with
//! its own code path (the `Renderer` a flush uses: `MeshView::new` + render, validate, encode per
//! namespace, or the incremental endpoint path; + the content hash, exactly what a flush does
//! minus the API writes), full and after one endpoint change. Also the
//! in-process cost of one admission review (`rustmesh_webhook::review_body`), without TLS/HTTP.
//!
//! Prints one JSON document on stdout, progress on stderr. Run by `bench/control-plane/run`,
//! which adds the webhook-over-HTTPS figures and writes the tables.
//!
//! ```text
//! rustmesh-bench-control-plane [--quick] [--sizes 100,1000,5000] [--layouts open,scoped]
//! rustmesh-bench-control-plane --memory N --layout open|scoped    # one process, prints RSS
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rustmesh_operator::configmap::{self, RenderedNamespace};
use rustmesh_operator::fixtures::{self, endpoints, namespace, pod, service};
use rustmesh_operator::index::{Affects, ObjKey, Object};
use rustmesh_operator::renderer::{RenderPath, Renderer};
use rustmesh_operator::{Index, MeshView, Scope, render_view};
use rustmesh_webhook::{InjectionSettings, review_body};
use serde_json::{Value, json};

/// Services per namespace (the mesh has `services / PER_NS` namespaces, at least one).
const PER_NS: usize = 100;
/// Endpoints (pods) per service: 8 labelled `version: v1`, 2 `version: v2`.
const ENDPOINTS: usize = 10;

/// How visibility is set up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layout {
    /// Istio's default: no Sidecar, objects exported everywhere: every namespace sees every
    /// service, so every namespace's configuration holds the whole mesh.
    Open,
    /// Each namespace has a Sidecar with egress `./*` and `istio-system/*`, and its
    /// VirtualServices/DestinationRules are `exportTo: ["."]`: a namespace sees its own 100.
    Scoped,
}

impl Layout {
    fn parse(s: &str) -> Layout {
        match s {
            "open" => Layout::Open,
            "scoped" => Layout::Scoped,
            other => panic!("unknown layout {other:?} (open, scoped)"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Layout::Open => "open",
            Layout::Scoped => "scoped",
        }
    }
}

fn ns_of(i: usize) -> String {
    format!("ns-{}", i / PER_NS)
}

fn pod_ip(i: usize, j: usize) -> String {
    let n = i * ENDPOINTS + j;
    format!("10.{}.{}.{}", 100 + n / 65536, (n / 256) % 256, n % 256)
}

/// The Endpoints of service `i`; `moved` replaces the first address (an endpoint change).
fn service_endpoints(i: usize, moved: bool) -> Object {
    let name = format!("svc-{i}");
    let ips: Vec<(String, String)> = (0..ENDPOINTS)
        .map(|j| {
            let ip = if moved && j == 0 {
                format!("10.250.{}.{}", i / 250, i % 250 + 1)
            } else {
                pod_ip(i, j)
            };
            (ip, format!("{name}-{j}"))
        })
        .collect();
    let addrs: Vec<(&str, &str)> = ips.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    Object::Endpoints(Box::new(endpoints(
        &ns_of(i),
        &name,
        &addrs,
        &[("http", 9080)],
    )))
}

/// A mesh of `n` services x 10 endpoints, 100 per namespace, each with a DestinationRule (two
/// subsets, connection pool, outlier detection) and a VirtualService (a header match to v2, then
/// 90/10 v1/v2 with timeout and retries).
fn mesh(n: usize, layout: Layout) -> Index {
    let mut index = Index::default();
    namespace(&mut index, "istio-system", false);
    let export = match layout {
        Layout::Open => "",
        Layout::Scoped => "\n  exportTo: [\".\"]",
    };
    let mut yaml = String::new();
    for k in 0..n.div_ceil(PER_NS) {
        let ns = format!("ns-{k}");
        namespace(&mut index, &ns, true);
        if layout == Layout::Scoped {
            yaml.push_str(&format!(
                "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: default\n  namespace: {ns}\nspec:\n  egress:\n  - hosts: [\"./*\", \"istio-system/*\"]\n"
            ));
        }
    }
    for i in 0..n {
        let ns = ns_of(i);
        let name = format!("svc-{i}");
        let vip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        index.apply(Object::Service(Box::new(service(
            &ns,
            &name,
            Some(&vip),
            &[("http", 9080, 9080)],
        ))));
        index.apply(service_endpoints(i, false));
        for j in 0..ENDPOINTS {
            let version = if j < 8 { "v1" } else { "v2" };
            pod(
                &mut index,
                &ns,
                &format!("{name}-{j}"),
                &[("app", &name), ("version", version)],
            );
        }
        yaml.push_str(&format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: {name}
  namespace: {ns}
spec:
  host: {name}{export}
  trafficPolicy:
    connectionPool:
      http: {{http1MaxPendingRequests: 100, maxRequestsPerConnection: 10}}
    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {name}
  namespace: {ns}
spec:
  hosts: [{name}]{export}
  http:
  - match:
    - headers:
        end-user: {{exact: jason}}
    route:
    - destination: {{host: {name}, subset: v2}}
  - route:
    - destination: {{host: {name}, subset: v1}}
      weight: 90
    - destination: {{host: {name}, subset: v2}}
      weight: 10
    timeout: 10s
    retries: {{attempts: 3, perTryTimeout: 2s, retryOn: "5xx,connect-failure"}}
"#
        ));
    }
    fixtures::istio(&mut index, &yaml);
    index
}

/// What one flush computes: the content hash per namespace, the first namespace's rendering
/// (for its sizes), the payload bytes of all of them, and how many took the incremental path.
struct Flush {
    first: Option<RenderedNamespace>,
    hashes: BTreeMap<String, String>,
    payload_bytes: usize,
    incremental: usize,
}

/// The operator's flush without the API calls (controller/write.rs `Writer::flush`): the renderer
/// plans the batch (`endpoints_only`: the services whose Endpoints were the only change), then
/// renders each affected injected namespace (incrementally when it can, else `MeshView` once
/// per batch + render, validate, encode), the size check and the content hash.
fn flush(
    renderer: &mut Renderer,
    index: &Index,
    namespaces: &BTreeSet<String>,
    endpoints_only: Option<&BTreeSet<ObjKey>>,
    keep_first: bool,
) -> Flush {
    let mut plan = renderer.plan(index, endpoints_only);
    let mut view = None;
    let injected: BTreeSet<&str> = index.injected_namespaces().collect();
    let mut out = Flush {
        first: None,
        hashes: BTreeMap::new(),
        payload_bytes: 0,
        incremental: 0,
    };
    for ns in namespaces.iter().filter(|n| injected.contains(n.as_str())) {
        let (r, path) = renderer
            .render(&mut plan, index, &mut view, ns)
            .expect("render");
        let bytes = r.payload_bytes();
        std::hint::black_box(bytes > configmap::MAX_PAYLOAD_BYTES);
        out.payload_bytes += bytes;
        out.hashes.insert(ns.clone(), r.hash());
        out.incremental += usize::from(path == RenderPath::Endpoints);
        if keep_first && out.first.is_none() {
            out.first = Some(r.clone());
        }
    }
    out
}

/// A full flush of every namespace by a fresh renderer (the operator's start).
fn full_flush(index: &Index, namespaces: &BTreeSet<String>, keep_first: bool) -> Flush {
    flush(&mut Renderer::default(), index, namespaces, None, keep_first)
}

/// CPU time of this thread (user + system), in seconds: what "on one core" means, and what
/// other people's compilers on a shared machine do not inflate (wall time is reported too).
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Durations of repeated runs, sorted: wall and thread CPU seconds.
struct Runs {
    wall: Vec<f64>,
    cpu: Vec<f64>,
}

/// Runs `f` at least `min` times and until `budget` is spent (at most 200 runs).
fn time(min: usize, budget: Duration, mut f: impl FnMut()) -> Runs {
    let mut runs = Runs {
        wall: Vec::new(),
        cpu: Vec::new(),
    };
    let start = Instant::now();
    while runs.wall.len() < min || (start.elapsed() < budget && runs.wall.len() < 200) {
        let (t, c) = (Instant::now(), thread_cpu());
        f();
        runs.cpu.push(thread_cpu() - c);
        runs.wall.push(t.elapsed().as_secs_f64());
    }
    runs.wall.sort_by(f64::total_cmp);
    runs.cpu.sort_by(f64::total_cmp);
    runs
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn stats_ms(r: &Runs) -> Value {
    json!({
        "cpu_median_ms": median(&r.cpu) * 1e3,
        "cpu_min_ms": r.cpu[0] * 1e3,
        "median_ms": median(&r.wall) * 1e3,
        "min_ms": r.wall[0] * 1e3,
        "max_ms": r.wall[r.wall.len() - 1] * 1e3,
        "runs": r.wall.len(),
    })
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `--memory N --layout L`: in a fresh process, build the index, do one full flush (the
/// operator's start), then one endpoint-change flush; report RSS along the way.
fn memory(n: usize, layout: Layout) -> Value {
    let base = status_kib("VmRSS:");
    let mut index = mesh(n, layout);
    let after_index = status_kib("VmRSS:");
    let all: BTreeSet<String> = index.injected_namespaces().map(str::to_string).collect();
    // The operator keeps each namespace's last output (for incremental endpoint changes).
    let mut renderer = Renderer::default();
    let hashes = flush(&mut renderer, &index, &all, None, false).hashes;
    let affects = index.apply(service_endpoints(0, true));
    let again = flush(
        &mut renderer,
        &index,
        &affects.namespaces,
        affects.endpoints_only.as_ref(),
        false,
    );
    assert!(again.incremental > 0);
    assert!(again.hashes.iter().any(|(ns, h)| hashes.get(ns) != Some(h)));
    json!({
        "services": n, "layout": layout.name(),
        "rss_start_kib": base,
        "rss_after_index_kib": after_index,
        "rss_after_flushes_kib": status_kib("VmRSS:"),
        "peak_rss_kib": status_kib("VmHWM:"),
    })
}

fn bench_size(n: usize, layout: Layout, quick: bool) -> Value {
    let t = Instant::now();
    let mut index = mesh(n, layout);
    let namespaces: BTreeSet<String> = index.injected_namespaces().map(str::to_string).collect();
    eprintln!(
        "[{n} services, {}] index built in {:.1} s ({} namespaces, {} VirtualServices, {} DestinationRules)",
        layout.name(),
        t.elapsed().as_secs_f64(),
        namespaces.len(),
        index.virtual_services.objects.len(),
        index.destination_rules.objects.len()
    );
    // At least 3 runs (1 with --quick), more while the budget lasts; big open meshes take
    // seconds per flush, so they get the minimum.
    let (min, budget) = if quick {
        (1, Duration::from_secs(2))
    } else {
        (3, Duration::from_secs(10))
    };

    // One full flush: every namespace, as at start (and its sizes).
    let first = full_flush(&index, &namespaces, true);
    let ns0 = first.first.as_ref().expect("one namespace");
    let scope0 = &ns0.scopes[&Scope::namespace(&ns0.namespace).key()];
    let config = &scope0.config().expect("what is written reads back");
    assert!(config.validate().is_ok());
    let json_bytes = serde_json::to_vec(config).expect("JSON").len();
    let cm_bytes = serde_json::to_vec(&configmap::config_map(ns0))
        .expect("JSON")
        .len();
    let vhosts = config.route("9080").map_or(0, |r| r.virtual_hosts.len());
    let sizes = json!({
        "namespaces": namespaces.len(),
        "listeners": config.listeners.len(), "clusters": config.clusters.len(),
        "endpoint_groups": config.endpoints.len(), "virtual_hosts_9080": vhosts,
        "json_bytes": json_bytes, "gzip_bytes": scope0.gz_bytes(),
        "endpoint_parts": scope0.parts.len(),
        "configmap_payload_bytes": ns0.payload_bytes(),
        "configmap_object_bytes": cm_bytes,
        "over_configmap_limit": ns0.payload_bytes() > configmap::MAX_PAYLOAD_BYTES,
        "mesh_payload_bytes": first.payload_bytes,
    });
    let mut live = first.hashes.clone();
    drop(first);

    // Full flush, repeated: MeshView + every namespace.
    let full = time(min, budget, || {
        std::hint::black_box(full_flush(&index, &namespaces, false));
    });
    eprintln!(
        "[{n}, {}] full flush ({} namespaces): median {:.1} ms CPU of {}",
        layout.name(),
        namespaces.len(),
        median(&full.cpu) * 1e3,
        full.wall.len()
    );

    // Breakdown on the first namespace: view, render, validate, gzip, hash.
    let view_t = time(min, budget / 4, || {
        std::hint::black_box(MeshView::new(&index));
    });
    let view = MeshView::new(&index);
    let scope = Scope::namespace("ns-0");
    let render_t = time(min, budget / 4, || {
        std::hint::black_box(render_view(&view, &scope));
    });
    let config = render_view(&view, &scope);
    let validate_t = time(min, budget / 8, || {
        std::hint::black_box(config.validate()).expect("valid");
    });
    let encode_t = time(min, budget / 8, || {
        std::hint::black_box(configmap::encode(&config));
    });
    let one_ns_t = time(min, budget / 4, || {
        std::hint::black_box(configmap::render_namespace(&view, "ns-0").expect("render"));
    });
    drop(view);

    // One endpoint change of svc-0 (in ns-0), alternating between two addresses: apply to the
    // index (which computes the affected namespaces and whether only endpoints changed), then
    // flush those with the operator's renderer, which keeps its last output from the start.
    // Twice: as the operator does it (incremental), and forced through the full path (what an
    // endpoint change cost before, and what any other change costs).
    let mut renderer = Renderer::default();
    flush(&mut renderer, &index, &namespaces, None, false);
    let mut endpoint_change = |index: &mut Index, incremental: bool| {
        let mut moved = false;
        let mut affected = 0;
        let mut changed = 0;
        let mut paths = 0;
        let runs = time(min, budget, || {
            moved = !moved;
            let affects: Affects = index.apply(service_endpoints(0, moved));
            let only = affects.endpoints_only.as_ref().filter(|_| incremental);
            let f = flush(&mut renderer, index, &affects.namespaces, only, false);
            affected = f.hashes.len();
            paths = f.incremental;
            changed = f
                .hashes
                .iter()
                .filter(|(ns, h)| live.get(*ns) != Some(h))
                .count();
            live.extend(f.hashes);
        });
        assert!(changed >= 1, "an endpoint change must change a ConfigMap");
        assert_eq!(paths, if incremental { affected } else { 0 });
        eprintln!(
            "[{n}, {}] endpoint change ({}): {affected} namespace(s) re-rendered, {changed} changed: median {:.2} ms CPU",
            layout.name(),
            if incremental { "incremental" } else { "full path" },
            median(&runs.cpu) * 1e3
        );
        (runs, affected, changed)
    };
    let (change, affected, changed) = endpoint_change(&mut index, true);
    let (change_full, _, _) = endpoint_change(&mut index, false);

    json!({
        "services": n, "endpoints_per_service": ENDPOINTS, "layout": layout.name(),
        "sizes_one_namespace": sizes,
        "full_flush": stats_ms(&full),
        "one_namespace": {
            "mesh_view": stats_ms(&view_t),
            "render": stats_ms(&render_t),
            "validate": stats_ms(&validate_t),
            "json_gzip": stats_ms(&encode_t),
            "render_namespace": stats_ms(&one_ns_t),
        },
        "endpoint_change": {
            "namespaces_rerendered": affected, "configmaps_changed": changed,
            "flush": stats_ms(&change),
            "flush_full_path": stats_ms(&change_full),
        },
    })
}

/// A Deployment's pod as the API server sends it for admission.
fn pod_review() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "bench", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "reviews-v1-5d9f7c6b8d-", "namespace": "bench",
                    "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "5d9f7c6b8d"}},
                "spec": {"containers": [{"name": "reviews",
                    "image": "docker.io/istio/examples-bookinfo-reviews-v1:1.20.1",
                    "ports": [{"containerPort": 9080}], "resources": {}}],
                    "serviceAccountName": "bookinfo-reviews"}}}}))
    .expect("JSON")
}

fn bench_review(quick: bool) -> Value {
    let body = pod_review();
    let settings = InjectionSettings::default();
    let labels = |_: &str| Some([("istio-injection".to_string(), "enabled".to_string())].into());
    let out = review_body(&body, &settings, &labels).expect("a review");
    assert!(
        out.review["response"]["patch"].is_string(),
        "the pod was not injected: {}",
        out.review
    );
    let budget = Duration::from_secs(if quick { 1 } else { 5 });
    let runs = time(5, budget, || {
        for _ in 0..100 {
            std::hint::black_box(review_body(&body, &settings, &labels).expect("review"));
        }
    });
    let per = median(&runs.cpu) / 100.0;
    eprintln!(
        "webhook handler in-process: {:.1} µs per review ({:.0}/s on one thread)",
        per * 1e6,
        1.0 / per
    );
    json!({"us_per_review": per * 1e6, "reviews_per_s_one_thread": 1.0 / per,
        "batches_of_100": runs.wall.len()})
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!(
            "usage: rustmesh-bench-control-plane [--quick] [--sizes 100,1000,5000] [--layouts open,scoped] [--no-review]\n       rustmesh-bench-control-plane --memory N --layout open|scoped"
        );
        return;
    }
    if let Some(n) = arg(&args, "--memory") {
        let layout = Layout::parse(&arg(&args, "--layout").unwrap_or_else(|| "open".into()));
        println!("{}", memory(n.parse().expect("--memory N"), layout));
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let sizes: Vec<usize> = arg(&args, "--sizes")
        .unwrap_or_else(|| "100,1000,5000".into())
        .split(',')
        .map(|s| s.parse().expect("--sizes: numbers"))
        .collect();
    let layouts: Vec<Layout> = arg(&args, "--layouts")
        .unwrap_or_else(|| "open,scoped".into())
        .split(',')
        .map(Layout::parse)
        .collect();
    let exe = std::env::current_exe().expect("own path");
    let mut renders = Vec::new();
    let mut memory = Vec::new();
    for &layout in &layouts {
        for &n in &sizes {
            renders.push(bench_size(n, layout, quick));
            // Peak RSS in a fresh process (this one has held bigger meshes).
            let out = std::process::Command::new(&exe)
                .args(["--memory", &n.to_string(), "--layout", layout.name()])
                .output()
                .expect("memory child");
            assert!(out.status.success(), "memory child failed");
            let m: Value = serde_json::from_slice(&out.stdout).expect("memory JSON");
            eprintln!(
                "[{n}, {}] peak RSS {:.1} MiB",
                layout.name(),
                m["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
            );
            memory.push(m);
        }
    }
    let review = if args.iter().any(|a| a == "--no-review") {
        Value::Null
    } else {
        bench_review(quick)
    };
    println!(
        "{}",
        json!({"render": renders, "memory": memory, "webhook_in_process": review,
            "services_per_namespace": PER_NS})
    );
}
