//! Tests of the loop's decisions, the status and apply bodies, and the writes against a fake
//! API server.

use super::write::*;
use super::*;
use crate::configmap;
use crate::fixtures::{bookinfo, istio};
use crate::index::{Kind, ObjKey, Object, WatchEvent};
use crate::render::MeshView;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher::Event;
use rustmesh_xds::well_known::PROXY_CONFIGMAP;
use serde_json::json;

fn fast() -> Debouncer {
    Debouncer::new(Duration::from_millis(10), Duration::from_millis(50))
}

#[test]
fn nothing_is_due_before_every_watch_listed_and_relists_are_atomic() {
    let mut state = State::new(MeshConfig::default(), fast());
    let t0 = Instant::now();
    let source = bookinfo();
    // Namespaces list first.
    state.handle(Msg::Index(Kind::Namespace, WatchEvent::Init), t0);
    for (name, labels) in &source.namespaces {
        state.handle(
            Msg::Index(
                Kind::Namespace,
                WatchEvent::InitApply(Object::Namespace {
                    name: name.clone(),
                    labels: labels.clone(),
                }),
            ),
            t0,
        );
    }
    assert!(state.index.namespaces.is_empty(), "buffered until InitDone");
    state.handle(Msg::Index(Kind::Namespace, WatchEvent::InitDone), t0);
    assert_eq!(state.index.namespaces.len(), 3);
    for kind in Kind::ALL.iter().filter(|k| **k != Kind::Namespace) {
        assert!(!state.synced());
        state.handle(Msg::Index(*kind, WatchEvent::Init), t0);
        state.handle(Msg::Index(*kind, WatchEvent::InitDone), t0);
    }
    assert!(!state.synced(), "ConfigMaps not listed yet");
    let done = state.handle(Msg::ConfigMap(Box::new(Event::InitDone)), t0);
    assert!(done && state.synced());
    let batch = state
        .debouncer
        .take_due(t0 + Duration::from_secs(1))
        .unwrap();
    assert_eq!(batch.namespaces.iter().collect::<Vec<_>>(), ["default"]);
    assert!(batch.statuses);
}

#[test]
fn a_hand_edited_or_deleted_configmap_is_marked_for_restoring() {
    let mut state = State::new(MeshConfig::default(), fast());
    state.index = bookinfo();
    let t0 = Instant::now();
    let view = MeshView::new(&state.index);
    let r = configmap::render_namespace(&view, "default").unwrap();
    let cm = configmap::config_map(&r);
    state.live.insert("default".into(), r.hash());
    let mut edited = cm.clone();
    edited
        .data
        .as_mut()
        .unwrap()
        .insert("scopes.json".into(), "{}".into());
    state.handle(Msg::ConfigMap(Box::new(Event::Apply(edited))), t0);
    assert_ne!(state.live["default"], r.hash());
    let b = state
        .debouncer
        .take_due(t0 + Duration::from_secs(1))
        .unwrap();
    assert!(b.namespaces.contains("default"));
    state.handle(Msg::ConfigMap(Box::new(Event::Delete(cm))), t0);
    assert!(!state.live.contains_key("default"));
    // A relist that no longer has it (deleted while the watch was down) marks it too.
    state.live.insert("default".into(), r.hash());
    state.debouncer.take_due(t0 + Duration::from_secs(10));
    state.handle(
        Msg::ConfigMap(Box::new(Event::Init)),
        t0 + Duration::from_secs(11),
    );
    state.handle(
        Msg::ConfigMap(Box::new(Event::InitDone)),
        t0 + Duration::from_secs(11),
    );
    assert!(state.live.is_empty());
    let b = state
        .debouncer
        .take_due(t0 + Duration::from_secs(12))
        .unwrap();
    assert!(b.namespaces.contains("default"));
    // Not-injected namespaces are not ours.
    let mut foreign = configmap::config_map(&r);
    foreign.metadata.namespace = Some("kube-system".into());
    state.handle(
        Msg::ConfigMap(Box::new(Event::Apply(foreign))),
        t0 + Duration::from_secs(20),
    );
    assert!(!state.debouncer.pending());
}

#[test]
fn status_patches_are_computed_only_when_they_change() {
    let mut index = bookinfo();
    istio(
        &mut index,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: default, generation: 2}\nspec:\n  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews, subset: v9}}]}]\n",
    );
    let view = MeshView::new(&index);
    let changes = status_changes(&view, "t0");
    let (kind, key, status, newly_invalid) = changes
        .iter()
        .find(|(k, key, ..)| *k == Kind::VirtualService && key.name == "r")
        .unwrap()
        .clone();
    assert!(newly_invalid);
    let body = status_patch(kind, &status);
    assert_eq!(body["apiVersion"], "networking.istio.io/v1");
    assert_eq!(body["kind"], "VirtualService");
    assert_eq!(body["status"]["conditions"][0]["type"], "Accepted");
    assert_eq!(body["status"]["conditions"][0]["status"], "False");
    assert_eq!(body["status"]["conditions"][0]["reason"], "Invalid");
    assert_eq!(body["status"]["observedGeneration"], 2);
    assert!(body.get("spec").is_none(), "status apply must not own spec");
    // Once the object carries that status, nothing more is written.
    index.virtual_services.objects.get_mut(&key).unwrap().status = Some(status);
    let view = MeshView::new(&index);
    assert!(
        status_changes(&view, "t1")
            .iter()
            .all(|(_, k, ..)| k != &key)
    );
}

/// Requests seen by the fake API server: (method, uri, content type, JSON body).
type RequestLog = Arc<std::sync::Mutex<Vec<(String, String, String, serde_json::Value)>>>;

/// A fake API server: records every request and answers with a plausible object.
fn fake_api() -> (Client, RequestLog) {
    fake_api_refusing(Arc::new(std::sync::atomic::AtomicBool::new(false)))
}

/// While `refuse_roles` is set, writes of Roles and RoleBindings are forbidden (403).
fn fake_api_refusing(refuse_roles: Arc<std::sync::atomic::AtomicBool>) -> (Client, RequestLog) {
    fake_api_refusing_under("/apis/rbac.authorization.k8s.io/", refuse_roles)
}

/// A fake API server answering 403 to requests under `refused_path` while `refuse` is set.
fn fake_api_refusing_under(
    refused_path: &'static str,
    refuse_roles: Arc<std::sync::atomic::AtomicBool>,
) -> (Client, RequestLog) {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = log.clone();
    let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let seen = seen.clone();
        let refuse_roles = refuse_roles.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let body: serde_json::Value =
                serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            let content_type = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            seen.lock().unwrap().push((
                parts.method.to_string(),
                parts.uri.to_string(),
                content_type,
                body.clone(),
            ));
            let mut answer = body;
            if answer.get("metadata").is_none() {
                let name = parts
                    .uri
                    .path()
                    .split('/')
                    .rev()
                    .nth(1)
                    .unwrap_or("x")
                    .to_string();
                answer["metadata"] = json!({"name": name});
            }
            if refuse_roles.load(std::sync::atomic::Ordering::SeqCst)
                && parts.uri.path().contains(refused_path)
            {
                let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "Forbidden", "code": 403, "message": "roles is forbidden"});
                return Ok(http::Response::builder()
                    .status(403)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&status).unwrap(),
                    ))
                    .unwrap());
            }
            if answer["kind"] == "DestinationRule" {
                answer["spec"] = json!({"host": "h"});
            } else if answer.get("spec").is_none() && answer["kind"] != "ConfigMap" {
                answer["spec"] = json!({});
            }
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&answer).unwrap(),
                    ))
                    .unwrap(),
            )
        }
    });
    (Client::new(svc, "default"), log)
}

/// A writer on `client`, counting into `metrics`.
fn test_writer(client: Client, metrics: Arc<Metrics>) -> Writer {
    Writer {
        client: client.clone(),
        metrics,
        recorder: Recorder::new(
            client,
            Reporter {
                controller: OPERATOR_FIELD_MANAGER.into(),
                instance: Some("test".into()),
            },
        ),
        rbac_done: BTreeSet::new(),
        renderer: Renderer::default(),
    }
}

#[tokio::test]
async fn a_refused_reader_role_is_retried_though_the_configmap_is_unchanged() {
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (client, log) = fake_api_refusing(refuse.clone());
    let metrics = Arc::new(Metrics::new());
    let mut writer = test_writer(client, metrics.clone());
    let mut state = State::new(MeshConfig::default(), fast());
    state.index = bookinfo();
    let t0 = Instant::now();
    state.note_everything(t0);
    let batch = state
        .debouncer
        .take_due(t0 + Duration::from_secs(1))
        .unwrap();
    writer.flush(&mut state, batch).await;
    assert!(metrics.render().contains("errors_total{kind=\"rbac\"} 1"));
    assert!(!writer.rbac_done.contains("default"));
    // A retry is due for the namespace, after the retry delay.
    let retry = state
        .debouncer
        .take_due(Instant::now() + RETRY_DELAY + Duration::from_secs(1))
        .expect("a retry is scheduled");
    assert!(retry.namespaces.contains("default"));
    refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    log.lock().unwrap().clear();
    writer.flush(&mut state, retry).await;
    let requests = log.lock().unwrap().clone();
    assert!(
        requests.iter().any(|(m, uri, ..)| m == "PATCH"
            && uri.contains("/namespaces/default/roles/rustmesh-proxy-config-reader")),
        "{requests:#?}"
    );
    assert!(
        !requests
            .iter()
            .any(|(_, uri, ..)| uri.contains("configmaps")),
        "the ConfigMap is unchanged: {requests:#?}"
    );
    assert!(writer.rbac_done.contains("default"));
}

#[tokio::test]
async fn a_refused_configmap_write_is_retried_after_the_delay_not_at_once() {
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (client, _log) = fake_api_refusing_under("/configmaps/", refuse);
    let metrics = Arc::new(Metrics::new());
    let mut writer = test_writer(client, metrics.clone());
    let mut state = State::new(MeshConfig::default(), fast());
    state.index = bookinfo();
    let t0 = Instant::now();
    state.note_everything(t0);
    let batch = state
        .debouncer
        .take_due(t0 + Duration::from_secs(1))
        .unwrap();
    let flushed = Instant::now();
    writer.flush(&mut state, batch).await;
    assert!(metrics.render().contains("errors_total{kind=\"apply\"} 1"));
    assert!(
        state
            .debouncer
            .take_due(flushed + RETRY_DELAY / 2)
            .is_none(),
        "no retry before the delay"
    );
    let retry = state
        .debouncer
        .take_due(Instant::now() + RETRY_DELAY + Duration::from_secs(1))
        .expect("a retry after the delay");
    assert!(retry.namespaces.contains("default"));
}

#[tokio::test]
async fn a_namespace_recreated_under_the_same_name_gets_the_reader_role_again() {
    let (client, log) = fake_api();
    let mut writer = test_writer(client, Arc::new(Metrics::new()));
    let mut state = State::new(MeshConfig::default(), fast());
    state.index = bookinfo();
    let t0 = Instant::now();
    state.note_everything(t0);
    let due = |state: &mut State| {
        state
            .debouncer
            .take_due(Instant::now() + Duration::from_secs(5))
            .expect("a batch is due")
    };
    let batch = due(&mut state);
    writer.flush(&mut state, batch).await;
    let role_patches = |log: &RequestLog| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(m, uri, ..)| {
                m == "PATCH"
                    && uri.contains("/namespaces/default/roles/rustmesh-proxy-config-reader")
            })
            .count()
    };
    assert_eq!(role_patches(&log), 1);
    // The namespace is deleted with everything in it: the ConfigMap's delete event comes.
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(PROXY_CONFIGMAP.into());
    cm.metadata.namespace = Some("default".into());
    state.handle(Msg::ConfigMap(Box::new(Event::Delete(cm))), Instant::now());
    let batch = due(&mut state);
    writer.flush(&mut state, batch).await;
    assert_eq!(role_patches(&log), 2, "the Role is applied again");
    // That apply can reach the old namespace while it terminates (a patch of the Role that
    // still exists succeeds), and the namespace controller deletes the Role after it. So
    // the namespace's own delete and create events mark its RBAC for applying again too.
    let labels = state.index.namespaces["default"].clone();
    state.handle(
        Msg::Index(
            Kind::Namespace,
            WatchEvent::Delete(Kind::Namespace, ObjKey::new("", "default")),
        ),
        Instant::now(),
    );
    state.handle(
        Msg::Index(
            Kind::Namespace,
            WatchEvent::Apply(Object::Namespace {
                name: "default".into(),
                labels,
            }),
        ),
        Instant::now(),
    );
    let batch = due(&mut state);
    writer.flush(&mut state, batch).await;
    assert_eq!(
        role_patches(&log),
        3,
        "the recreated namespace gets the Role"
    );
}

#[test]
fn writes_into_a_terminating_namespace_are_recognised() {
    let api = |code, message: &str| {
        kube::Error::Api(
            kube::core::Status::failure(message, "Forbidden")
                .with_code(code)
                .boxed(),
        )
    };
    assert!(namespace_terminating(&api(
        403,
        "configmaps \"rustmesh-proxy-config\" is forbidden: unable to create new content in namespace shop because it is being terminated"
    )));
    assert!(!namespace_terminating(&api(
        403,
        "configmaps is forbidden: User cannot create resource"
    )));
    assert!(!namespace_terminating(&api(
        500,
        "because it is being terminated"
    )));
}

#[tokio::test]
async fn a_flush_applies_configmap_rbac_and_status_once() {
    let (client, log) = fake_api();
    let metrics = Arc::new(Metrics::new());
    let mut writer = test_writer(client, metrics.clone());
    let mut state = State::new(MeshConfig::default(), fast());
    state.index = bookinfo();
    istio(
        &mut state.index,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: default}\nspec:\n  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews, subset: v9}}]}]\n",
    );
    let t0 = Instant::now();
    state.note_everything(t0);
    let batch = state
        .debouncer
        .take_due(t0 + Duration::from_secs(1))
        .unwrap();
    writer.flush(&mut state, batch).await;
    let requests = log.lock().unwrap().clone();
    let find = |path: &str| {
        requests
            .iter()
            .find(|(m, uri, ..)| m == "PATCH" && uri.contains(path))
            .unwrap_or_else(|| panic!("no PATCH of {path} in {requests:#?}"))
            .clone()
    };
    let (_, uri, ct, body) = find("/api/v1/namespaces/default/configmaps/rustmesh-proxy-config");
    assert!(uri.contains("fieldManager=rustmesh-operator") && uri.contains("force=true"));
    assert_eq!(ct, "application/apply-patch+yaml");
    assert!(body["binaryData"]["default.json.gz"].is_string());
    find(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/rustmesh-proxy-config-reader",
    );
    find(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/rustmesh-proxy-config-reader",
    );
    let (_, _, _, status) =
        find("/apis/networking.istio.io/v1/namespaces/default/virtualservices/r/status");
    assert_eq!(status["status"]["conditions"][0]["reason"], "Invalid");
    assert!(
        requests
            .iter()
            .any(|(m, uri, ..)| m == "POST" && uri.contains("events"))
    );
    assert!(
        metrics
            .render()
            .contains("reconciles_total{result=\"written\"} 1")
    );

    // The same content again: no ConfigMap write (the live hash matches).
    log.lock().unwrap().clear();
    state.note_everything(t0 + Duration::from_secs(2));
    let batch = state
        .debouncer
        .take_due(t0 + Duration::from_secs(5))
        .unwrap();
    writer.flush(&mut state, batch).await;
    let again = log.lock().unwrap().clone();
    assert!(
        !again.iter().any(|(_, uri, ..)| uri.contains("configmaps")),
        "{again:#?}"
    );
    assert!(
        metrics
            .render()
            .contains("reconciles_total{result=\"unchanged\"} 1")
    );
}

#[test]
fn configmap_apply_body_is_complete_and_managed() {
    let index = bookinfo();
    let view = MeshView::new(&index);
    let r = configmap::render_namespace(&view, "default").unwrap();
    let body = serde_json::to_value(configmap::config_map(&r)).unwrap();
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["kind"], "ConfigMap");
    assert_eq!(body["metadata"]["name"], PROXY_CONFIGMAP);
    assert_eq!(body["metadata"]["namespace"], "default");
    assert_eq!(
        body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        OPERATOR_FIELD_MANAGER
    );
    assert!(body["metadata"]["annotations"]["rustmesh.io/config-hash"].is_string());
    assert!(body["binaryData"]["default.json.gz"].is_string());
    assert!(body["data"]["scopes.json"].is_string());
}

/// A fake API server for the EndpointSlice probe: answers `discovery.k8s.io/v1` with `answers`
/// in turn (status, body; the last one repeats), counting the requests.
fn fake_discovery(
    answers: Vec<(u16, serde_json::Value)>,
) -> (Client, Arc<std::sync::atomic::AtomicUsize>) {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        assert_eq!(req.uri().path(), "/apis/discovery.k8s.io/v1");
        let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (status, body) = answers[n.min(answers.len() - 1)].clone();
        async move {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            )
        }
    });
    (Client::new(svc, "default"), count)
}

fn discovery(resources: &[&str]) -> serde_json::Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "discovery.k8s.io/v1",
        "resources": resources.iter().map(|r| json!({"name": r, "singularName": "",
            "namespaced": true, "kind": "EndpointSlice", "verbs": ["list", "watch"]}))
            .collect::<Vec<_>>()})
}

fn status(code: u16, reason: &str) -> serde_json::Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
        "code": code, "message": reason})
}

#[test]
fn only_an_answer_decides_the_endpoints_source() {
    use super::watches::{SLICE_PROBES, SlicesProbe, classify, decide};
    let list = |r: &[&str]| serde_json::from_value(discovery(r)).unwrap();
    assert_eq!(classify(Ok(list(&["endpointslices"]))), SlicesProbe::Served);
    assert_eq!(classify(Ok(list(&["other"]))), SlicesProbe::NotServed);
    let api =
        |code: u16| kube::Error::Api(Box::new(serde_json::from_value(status(code, "x")).unwrap()));
    assert_eq!(classify(Err(api(404))), SlicesProbe::NotServed);
    for code in [500, 503, 403, 401, 429] {
        assert!(
            matches!(classify(Err(api(code))), SlicesProbe::Unknown(_)),
            "{code}"
        );
    }
    // A definitive answer decides at once; no answer is asked again, up to SLICE_PROBES.
    assert_eq!(decide(&SlicesProbe::Served, 1), Some(true));
    assert_eq!(decide(&SlicesProbe::NotServed, 1), Some(false));
    let unknown = SlicesProbe::Unknown("connection refused".into());
    for attempt in 1..SLICE_PROBES {
        assert_eq!(decide(&unknown, attempt), None, "{attempt}");
    }
    assert_eq!(decide(&unknown, SLICE_PROBES), Some(false));
}

#[tokio::test(start_paused = true)]
async fn a_failed_endpointslice_probe_is_asked_again_and_ends_on_slices() {
    let (client, probes) = fake_discovery(vec![
        (503, status(503, "ServiceUnavailable")),
        (200, discovery(&["endpointslices", "endpointslices/status"])),
    ]);
    assert!(serves_endpoint_slices(&client).await);
    assert_eq!(probes.load(std::sync::atomic::Ordering::SeqCst), 2);

    // Not served: one answer is enough.
    let (client, probes) = fake_discovery(vec![(404, status(404, "NotFound"))]);
    assert!(!serves_endpoint_slices(&client).await);
    assert_eq!(probes.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Never answered: Endpoints after SLICE_PROBES probes.
    let (client, probes) = fake_discovery(vec![(500, status(500, "InternalError"))]);
    assert!(!serves_endpoint_slices(&client).await);
    assert_eq!(
        probes.load(std::sync::atomic::Ordering::SeqCst),
        super::watches::SLICE_PROBES as usize
    );
}

#[tokio::test(start_paused = true)]
async fn every_watch_backs_off_while_the_api_fails() {
    // Every request fails; each watch (one per kind) may ask only as often as the API back-off
    // allows (kube-runtime's default_backoff() started over at every relist: ~50 a minute).
    let log: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u32>>> = Arc::default();
    let seen = log.clone();
    let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        *seen
            .lock()
            .unwrap()
            .entry(req.uri().path().to_string())
            .or_default() += 1;
        async move {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(500)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&status(500, "InternalError")).unwrap(),
                    ))
                    .unwrap(),
            )
        }
    });
    let client = Client::new(svc, "default");
    let mut events = streams(&client, true);
    let window = Duration::from_secs(60);
    let _ = tokio::time::timeout(window, async { while events.next().await.is_some() {} }).await;
    let most = rustmesh_xds::backoff::Backoff::api().most_attempts(window);
    let log = log.lock().unwrap();
    assert!(log.len() >= 5, "{log:?}");
    for (path, requests) in log.iter() {
        assert!(
            (2..=most).contains(requests),
            "{path}: {requests} requests in {window:?}, the back-off allows at most {most}"
        );
    }
}

/// A replica that is not the leader (during a rollout, the new pod while the old one still
/// leads) remembers what it accepted, so that once it leads an invalid update of that object
/// serves the accepted version instead of dropping the object (an e2e run caught routes falling
/// back to round robin right after an operator rollout).
#[test]
fn a_follower_remembers_what_it_accepted_for_when_it_leads() {
    let vs = |weights: (u32, u32)| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: default, generation: {}}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n      weight: {}\n    - destination: {{host: reviews, subset: v2}}\n      weight: {}\n",
            if weights.0 == 100 { 1 } else { 2 },
            weights.0,
            weights.1
        )
    };
    let mut state = State::new(MeshConfig::default(), fast());
    state.index = bookinfo();
    let t0 = Instant::now();
    let key = ObjKey::new("default", "reviews");
    let mut good = crate::index::Index::default();
    istio(&mut good, &vs((100, 0)));
    let good = good.virtual_services.objects[&key].clone();
    state.handle(
        Msg::Index(
            Kind::VirtualService,
            WatchEvent::Apply(Object::VirtualService(Box::new(good))),
        ),
        t0,
    );
    let batch = state
        .debouncer
        .take_due(t0 + Duration::from_secs(1))
        .expect("a batch");
    assert!(batch.statuses);
    state.follow(batch, t0);
    assert!(state.index.virtual_services.last_good.contains_key(&key));

    // The bad update arrives; this replica now leads and renders.
    let mut bad = crate::index::Index::default();
    istio(&mut bad, &vs((60, 50)));
    let bad = bad.virtual_services.objects[&key].clone();
    state.handle(
        Msg::Index(
            Kind::VirtualService,
            WatchEvent::Apply(Object::VirtualService(Box::new(bad))),
        ),
        t0,
    );
    let view = MeshView::new(&state.index);
    let verdict = &view.validation.verdicts[&(Kind::VirtualService, key.clone())];
    assert_eq!((verdict.accepted, verdict.reason), (false, "Invalid"));
    assert_eq!(verdict.serving_previous, Some(1));
}
