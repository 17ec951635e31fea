//! What the webhook keeps in sync with the API server: the `caBundle` patch of its webhook
//! configurations (the loop that writes it is `shared_cert::run`), its settings ConfigMap, an
//! optional namespace cache, and the cluster version (native sidecars).
//!
//! Each piece is split into a pure function (tested here) and a thin watch loop around it
//! (exercised by the e2e suite against a real API server).

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use futures::StreamExt;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, TestOperation};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Event};
use serde_json::Value;

use crate::server::{NamespaceLookup, Readiness};
use crate::settings::InjectionSettings;

/// The field manager of every write this webhook makes.
pub const FIELD_MANAGER: &str = "rustmesh-webhook";

// --- caBundle ---------------------------------------------------------------------------------

/// The webhooks of a webhook configuration (mutating or validating) as names and current
/// `caBundle`s, in order.
pub trait WebhookBundles {
    /// Each webhook's name and `clientConfig.caBundle`.
    fn bundles(&self) -> Vec<(String, Option<Vec<u8>>)>;
}

impl WebhookBundles for MutatingWebhookConfiguration {
    fn bundles(&self) -> Vec<(String, Option<Vec<u8>>)> {
        self.webhooks
            .iter()
            .flatten()
            .map(|w| {
                (
                    w.name.clone(),
                    w.client_config.ca_bundle.as_ref().map(|b| b.0.clone()),
                )
            })
            .collect()
    }
}

impl WebhookBundles for ValidatingWebhookConfiguration {
    fn bundles(&self) -> Vec<(String, Option<Vec<u8>>)> {
        self.webhooks
            .iter()
            .flatten()
            .map(|w| {
                (
                    w.name.clone(),
                    w.client_config.ca_bundle.as_ref().map(|b| b.0.clone()),
                )
            })
            .collect()
    }
}

/// The JSON Patch that puts `ca_pem` into `clientConfig.caBundle` of every webhook of `config`
/// whose bundle differs; `None` when all are already right. Each write is guarded by a `test` of
/// the webhook's name at that index, so a concurrent reorder fails the patch (and the next watch
/// event retries) rather than writing into the wrong entry.
pub fn ca_bundle_patch<C: WebhookBundles>(config: &C, ca_pem: &str) -> Option<Patch> {
    ca_bundle_patch_for(&config.bundles(), ca_pem)
}

/// [`ca_bundle_patch`] over the webhooks' names and bundles ([`WebhookBundles::bundles`]).
pub fn ca_bundle_patch_for(webhooks: &[(String, Option<Vec<u8>>)], ca_pem: &str) -> Option<Patch> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let mut ops = Vec::new();
    for (i, (name, current)) in webhooks.iter().enumerate() {
        if current.as_deref() == Some(ca_pem.as_bytes()) {
            continue;
        }
        let index = i.to_string();
        ops.push(PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["webhooks", index.as_str(), "name"]),
            value: Value::String(name.clone()),
        }));
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["webhooks", index.as_str(), "clientConfig", "caBundle"]),
            value: Value::String(encoded.clone()),
        }));
    }
    (!ops.is_empty()).then_some(Patch(ops))
}

// --- settings ConfigMap -----------------------------------------------------------------------

/// What became of one version of the settings ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettingsOutcome {
    /// Valid: now in use.
    Applied,
    /// Invalid (the reason, naming the key), and valid settings were already in use: they
    /// keep serving.
    KeptPrevious(String),
    /// Invalid (the reason, naming the key), and there are no valid settings to keep: not ready.
    NoSettings(String),
}

/// Applies one version of the settings ConfigMap `source` (`namespace/name`; `None`: it does not
/// exist). Valid settings replace the current ones; invalid ones (a bad value, an unknown key, a
/// missing `image`, or no ConfigMap at all) leave the current ones in place, if any.
pub fn apply_settings(
    store: &ArcSwapOption<InjectionSettings>,
    source: &str,
    configmap: Option<&ConfigMap>,
    cluster_supports_native_sidecars: Option<bool>,
) -> SettingsOutcome {
    let parsed = match configmap {
        None => Err(format!("the settings ConfigMap {source} does not exist")),
        Some(cm) => {
            let empty = BTreeMap::new();
            InjectionSettings::from_map(cm.data.as_ref().unwrap_or(&empty))
                .map_err(|e| format!("ConfigMap {source}: {e}"))
        }
    };
    match parsed {
        Ok(settings) => {
            store.store(Some(Arc::new(
                settings.resolve(cluster_supports_native_sidecars),
            )));
            SettingsOutcome::Applied
        }
        Err(why) if store.load().is_some() => SettingsOutcome::KeptPrevious(why),
        Err(why) => SettingsOutcome::NoSettings(why),
    }
}

/// The reason of the Kubernetes Event about a refused settings version.
pub const INVALID_SETTINGS_REASON: &str = "InvalidSettings";

/// Watches the settings ConfigMap `namespace/name` and applies every version of it; the webhook
/// is ready once the first listing is done and valid settings are in use. A refused version is
/// logged and reported as a Warning Event on the ConfigMap (with `recorder`). Runs forever.
pub async fn watch_settings(
    client: kube::Client,
    namespace: String,
    name: String,
    store: Arc<ArcSwapOption<InjectionSettings>>,
    cluster_supports_native_sidecars: Option<bool>,
    ready: Arc<Readiness>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher::watcher(api, config).backoff(rustmesh_xds::backoff::Backoff::api());
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("HOSTNAME").ok(),
        },
    );
    let failures = std::sync::atomic::AtomicU32::new(0);
    let source = format!("{namespace}/{name}");
    settings_loop(
        events,
        &source,
        &store,
        cluster_supports_native_sidecars,
        &ready,
        |cm, why| {
            let recorder = recorder.clone();
            let failures = &failures;
            async move {
                let event = invalid_settings_event(&why);
                if let Err(e) = recorder.publish(&event, &cm.object_ref(&())).await {
                    // E.g. no RBAC to create events: said once at warn, then at debug.
                    if failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                        tracing::warn!(error = %e, "could not record the InvalidSettings Event (needs create and patch on events.k8s.io events)");
                    } else {
                        tracing::debug!(error = %e, "could not record the InvalidSettings Event");
                    }
                }
            }
        },
    )
    .await;
}

/// The Warning Event recorded on the settings ConfigMap when a version of it is refused.
pub fn invalid_settings_event(why: &str) -> KubeEvent {
    // events.k8s.io limits `note` to 1 KiB.
    let mut note = why.to_owned();
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    KubeEvent {
        type_: EventType::Warning,
        reason: INVALID_SETTINGS_REASON.to_owned(),
        note: Some(note),
        action: "ApplySettings".to_owned(),
        secondary: None,
    }
}

/// Ready when valid settings are in use, else not ready naming `problem`.
fn settle(ready: &Readiness, store: &ArcSwapOption<InjectionSettings>, problem: &str) {
    if store.load().is_some() {
        ready.set_ready();
    } else {
        ready.set_not_ready(problem);
    }
}

/// The body of [`watch_settings`] over any stream of watch events. Each version of the
/// ConfigMap (and its absence, in a listing or by deletion) goes through [`apply_settings`]:
/// a refused version is logged (warn when the previous settings keep serving, error when there
/// are none) and handed to `report` (an existing ConfigMap only) with the reason. `ready` is set
/// once a listing is done with valid settings in use, and names the reason while there are none.
/// Returns the number of versions refused when the stream ends.
pub async fn settings_loop<S, E, R, F>(
    events: S,
    source: &str,
    store: &ArcSwapOption<InjectionSettings>,
    cluster_supports_native_sidecars: Option<bool>,
    ready: &Readiness,
    mut report: R,
) -> usize
where
    S: futures::Stream<Item = std::result::Result<Event<ConfigMap>, E>>,
    E: std::fmt::Display,
    R: FnMut(ConfigMap, String) -> F,
    F: std::future::Future<Output = ()>,
{
    let mut events = std::pin::pin!(events);
    let mut seen_in_listing = false;
    let mut listed = false;
    let mut refused = 0;
    let mut last_problem = format!("waiting for the settings ConfigMap {source} to be listed");
    while let Some(event) = events.next().await {
        let cm = match event {
            Ok(Event::Init) => {
                seen_in_listing = false;
                continue;
            }
            Ok(Event::InitApply(cm)) => {
                seen_in_listing = true;
                Some(cm)
            }
            Ok(Event::InitDone) => {
                listed = true;
                if seen_in_listing {
                    settle(ready, store, &last_problem);
                    continue;
                }
                None
            }
            Ok(Event::Apply(cm)) => Some(cm),
            Ok(Event::Delete(_)) => None,
            Err(e) => {
                tracing::warn!(error = %e, "watching the settings ConfigMap");
                continue;
            }
        };
        let outcome = apply_settings(store, source, cm.as_ref(), cluster_supports_native_sidecars);
        match &outcome {
            SettingsOutcome::Applied => {
                tracing::info!(configmap = %source, "injection settings applied");
            }
            SettingsOutcome::KeptPrevious(why) => {
                refused += 1;
                tracing::warn!(configmap = %source, error = %why, "invalid injection settings refused; the previous ones keep serving");
            }
            SettingsOutcome::NoSettings(why) => {
                refused += 1;
                last_problem = format!("invalid injection settings: {why}");
                tracing::error!(configmap = %source, error = %why, "invalid injection settings and no valid ones to keep: not ready");
            }
        }
        if listed {
            settle(ready, store, &last_problem);
        }
        if let (Some(cm), SettingsOutcome::KeptPrevious(why) | SettingsOutcome::NoSettings(why)) =
            (cm, outcome)
        {
            report(cm, why).await;
        }
    }
    refused
}

// --- namespaces -------------------------------------------------------------------------------

/// A namespace label cache (a reflector over all namespaces) and the future that feeds it.
/// Unknown namespaces (not listed yet) look up as `None`, which trusts the webhook
/// configuration's selectors.
pub fn namespace_cache(
    client: kube::Client,
) -> (
    NamespaceLookup,
    impl std::future::Future<Output = ()> + Send,
) {
    let (reader, writer) = reflector::store::<Namespace>();
    let api: Api<Namespace> = Api::all(client);
    let feed = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()))
        .backoff(rustmesh_xds::backoff::Backoff::api())
        .for_each(|event| {
            if let Err(e) = event {
                tracing::warn!(error = %e, "watching namespaces");
            }
            std::future::ready(())
        });
    let lookup: NamespaceLookup = Arc::new(move |ns: &str| {
        reader
            .get(&ObjectRef::new(ns))
            .map(|n| n.metadata.labels.clone().unwrap_or_default())
    });
    (lookup, feed)
}

// --- cluster version --------------------------------------------------------------------------

/// The first Kubernetes minor version (of 1.x) whose native sidecars `nativeSidecars: auto`
/// uses: 1.33, where sidecar containers became stable, Istio's threshold for its automatic
/// detection (which reads every node's kubelet; see [`crate::native`]).
pub const NATIVE_SIDECARS_MINOR: u32 = 33;

/// Whether the API server's version is one `nativeSidecars: auto` injects native sidecars for
/// (>= 1.[`NATIVE_SIDECARS_MINOR`]).
pub fn supports_native_sidecars(info: &Info) -> Option<bool> {
    let digits = |s: &str| {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .ok()
    };
    let (major, minor) = match (digits(&info.major), digits(&info.minor)) {
        (Some(a), Some(b)) => (a, b),
        // Some distributions leave major/minor empty: read `v1.33.3-...`.
        _ => {
            let v = info.git_version.trim_start_matches('v');
            let mut parts = v.split('.');
            (digits(parts.next()?)?, digits(parts.next()?)?)
        }
    };
    Some(major > 1 || (major == 1 && minor >= NATIVE_SIDECARS_MINOR))
}

/// Asks the API server's `/version`; `None` when it can't be asked.
pub async fn probe_native_sidecars(client: &kube::Client) -> Option<bool> {
    // Bounded: the webhook does not serve until this returns.
    let asked = tokio::time::timeout(VERSION_PROBE_TIMEOUT, client.apiserver_version()).await;
    match asked {
        Err(_) => {
            tracing::warn!(
                timeout = ?VERSION_PROBE_TIMEOUT,
                "the API server did not tell its version in time; native sidecars off"
            );
            None
        }
        Ok(Ok(info)) => {
            let supported = supports_native_sidecars(&info);
            tracing::info!(version = %info.git_version, native_sidecars = ?supported, "API server version");
            supported
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not read the API server version; native sidecars off");
            None
        }
    }
}

/// How long the start waits for the API server's `/version` (`nativeSidecars: auto`).
pub const VERSION_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mwc(bundles: &[Option<&str>]) -> Value {
        let webhooks: Vec<Value> = bundles
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut client = json!({"service": {"name": "rustmesh-webhook", "namespace": "rustmesh-system", "path": "/inject"}});
                if let Some(b) = b {
                    client["caBundle"] = json!(b);
                }
                json!({
                    "name": format!("{i}.sidecar-injector.rustmesh.io"),
                    "clientConfig": client,
                    "admissionReviewVersions": ["v1", "v1beta1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                })
            })
            .collect();
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "rustmesh-sidecar-injector"},
            "webhooks": webhooks,
        })
    }

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn ca_bundle_patch_sets_every_webhook_and_then_is_empty() {
        let other = base64::engine::general_purpose::STANDARD.encode("old CA");
        let mut doc = mwc(&[None, Some(&other), Some("")]);
        let config: MutatingWebhookConfiguration = serde_json::from_value(doc.clone()).unwrap();
        let patch = ca_bundle_patch(&config, CA).expect("a patch");
        json_patch::patch(&mut doc, &patch).unwrap();
        let patched: MutatingWebhookConfiguration = serde_json::from_value(doc.clone()).unwrap();
        for wh in patched.webhooks.as_ref().unwrap() {
            assert_eq!(
                wh.client_config.ca_bundle.as_ref().unwrap().0,
                CA.as_bytes()
            );
            assert_eq!(
                wh.failure_policy.as_deref(),
                Some("Fail"),
                "nothing else changes"
            );
        }
        assert!(ca_bundle_patch(&patched, CA).is_none(), "already right");
    }

    #[test]
    fn ca_bundle_patch_only_touches_what_differs_and_is_guarded() {
        let right = base64::engine::general_purpose::STANDARD.encode(CA);
        let doc = mwc(&[Some(&right), None]);
        let config: MutatingWebhookConfiguration = serde_json::from_value(doc.clone()).unwrap();
        let patch = ca_bundle_patch(&config, CA).unwrap();
        let text = serde_json::to_value(&patch).unwrap();
        assert_eq!(
            text,
            json!([
                {"op": "test", "path": "/webhooks/1/name", "value": "1.sidecar-injector.rustmesh.io"},
                {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": right},
            ])
        );
        // A concurrent reorder makes the guard fail instead of writing the wrong entry.
        let mut reordered = doc.clone();
        reordered["webhooks"].as_array_mut().unwrap().reverse();
        assert!(json_patch::patch(&mut reordered, &patch).is_err());
        // No webhooks at all: nothing to do.
        let empty: MutatingWebhookConfiguration =
            serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        assert!(ca_bundle_patch(&empty, CA).is_none());
    }

    fn configmap(data: Value) -> ConfigMap {
        serde_json::from_value(
            json!({"metadata": {"name": "rustmesh-sidecar-injector", "namespace": "istio-system"}, "data": data}),
        )
        .unwrap()
    }

    const SOURCE: &str = "istio-system/rustmesh-sidecar-injector";

    #[test]
    fn apply_settings_valid_invalid_missing_image_absent() {
        let store = ArcSwapOption::<InjectionSettings>::empty();
        // No settings yet: an invalid version leaves none, naming the key.
        let out = apply_settings(
            &store,
            SOURCE,
            Some(&configmap(json!({"proxyCPU": "1"}))),
            None,
        );
        match out {
            SettingsOutcome::NoSettings(why) => {
                assert!(why.contains("`image`") && why.contains("missing"), "{why}");
                assert!(why.contains(SOURCE), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert!(store.load().is_none(), "no built-in image is ever used");
        match apply_settings(&store, SOURCE, None, None) {
            SettingsOutcome::NoSettings(why) => assert!(why.contains("does not exist"), "{why}"),
            other => panic!("{other:?}"),
        }

        let good = configmap(json!({"image": "a/b:1", "nativeSidecars": "auto"}));
        assert_eq!(
            apply_settings(&store, SOURCE, Some(&good), Some(true)),
            SettingsOutcome::Applied
        );
        assert_eq!(store.load().as_ref().unwrap().image, "a/b:1");
        assert!(
            store.load().as_ref().unwrap().use_native_sidecars(),
            "auto resolved with the probe"
        );

        // Now a bad value, a missing image, or a deletion keep the previous settings.
        for bad in [
            Some(configmap(json!({"image": "a/b:2", "proxyCPU": "lots"}))),
            Some(configmap(json!({"revision": "canary"}))),
            None,
        ] {
            match apply_settings(&store, SOURCE, bad.as_ref(), Some(true)) {
                SettingsOutcome::KeptPrevious(_) => {}
                other => panic!("{other:?}"),
            }
            assert_eq!(
                store.load().as_ref().unwrap().image,
                "a/b:1",
                "previous settings kept"
            );
        }
    }

    type Events = Vec<std::result::Result<Event<ConfigMap>, String>>;

    /// Runs the loop over `events`, returning the refusals and the (ConfigMap, reason) reported.
    async fn run_loop(
        events: Events,
        store: &ArcSwapOption<InjectionSettings>,
        ready: &Readiness,
    ) -> (usize, Vec<(String, String)>) {
        let reported = std::sync::Mutex::new(Vec::new());
        let refused = settings_loop(
            futures::stream::iter(events),
            SOURCE,
            store,
            None,
            ready,
            |cm, why| {
                reported
                    .lock()
                    .unwrap()
                    .push((cm.metadata.name.unwrap_or_default(), why));
                std::future::ready(())
            },
        )
        .await;
        (refused, reported.into_inner().unwrap())
    }

    #[tokio::test]
    async fn an_invalid_first_version_is_not_ready_naming_the_key_and_a_good_one_makes_it_ready() {
        let store = ArcSwapOption::<InjectionSettings>::empty();
        let ready = Readiness::not_ready("starting");
        let (refused, reported) = run_loop(
            vec![
                Ok(Event::Init),
                Ok(Event::InitApply(configmap(
                    json!({"image": "a/b:1", "imagePullPolicy": "Sometimes"}),
                ))),
                Ok(Event::InitDone),
            ],
            &store,
            &ready,
        )
        .await;
        assert_eq!(refused, 1);
        let problem = ready.problem().expect("not ready");
        assert!(
            problem.contains("imagePullPolicy") && problem.contains("Sometimes"),
            "{problem}"
        );
        assert!(store.load().is_none());
        assert_eq!(reported.len(), 1, "one Event on the ConfigMap");
        assert_eq!(reported[0].0, "rustmesh-sidecar-injector");
        assert!(reported[0].1.contains("imagePullPolicy"), "{reported:?}");

        let (refused, _) = run_loop(
            vec![Ok(Event::Apply(configmap(json!({"image": "a/b:2"}))))],
            &store,
            &ready,
        )
        .await;
        // (A new loop has not listed yet: the real watch lists first; see the next test.)
        assert_eq!(refused, 0);
        assert_eq!(store.load().as_ref().unwrap().image, "a/b:2");
    }

    #[tokio::test]
    async fn a_later_invalid_version_keeps_the_good_one_serving_and_ready() {
        let store = ArcSwapOption::<InjectionSettings>::empty();
        let ready = Readiness::not_ready("starting");
        let (refused, reported) = run_loop(
            vec![
                Ok(Event::Init),
                Ok(Event::InitApply(configmap(
                    json!({"image": "a/b:1", "imagePullPolicy": "Sometimes"}),
                ))),
                Ok(Event::InitDone),
                // Fixed: ready.
                Ok(Event::Apply(configmap(
                    json!({"image": "a/b:2", "revision": "canary"}),
                ))),
                Err("connection reset".to_owned()),
                // Broken again: refused whole, the good one keeps serving, still ready.
                Ok(Event::Apply(configmap(
                    json!({"image": "a/b:3", "proxyMemory": "much"}),
                ))),
                Ok(Event::Apply(configmap(json!({"revision": "other"})))),
                // Deleted: kept too.
                Ok(Event::Delete(configmap(json!({})))),
            ],
            &store,
            &ready,
        )
        .await;
        assert_eq!(refused, 4);
        assert!(ready.is_ready(), "{:?}", ready.problem());
        let s = store.load_full().unwrap();
        assert_eq!((s.image.as_str(), s.revision.as_str()), ("a/b:2", "canary"));
        let reasons: Vec<&str> = reported.iter().map(|(_, why)| why.as_str()).collect();
        assert_eq!(
            reasons.len(),
            3,
            "an Event for each refused existing ConfigMap: {reasons:?}"
        );
        assert!(reasons[1].contains("proxyMemory"), "{reasons:?}");
        assert!(reasons[2].contains("`image`"), "{reasons:?}");
    }

    #[tokio::test]
    async fn a_listing_without_the_configmap_is_not_ready_unless_settings_came_from_the_file() {
        let store = ArcSwapOption::<InjectionSettings>::empty();
        let ready = Readiness::not_ready("starting");
        let (_, reported) =
            run_loop(vec![Ok(Event::Init), Ok(Event::InitDone)], &store, &ready).await;
        assert!(reported.is_empty(), "no object to put an Event on");
        let problem = ready.problem().expect("not ready");
        assert!(
            problem.contains(SOURCE) && problem.contains("does not exist"),
            "{problem}"
        );

        // Valid settings from the file: they keep serving, ready.
        let store = ArcSwapOption::from_pointee(InjectionSettings {
            image: "from/file:1".into(),
            ..InjectionSettings::default()
        });
        let ready = Readiness::not_ready("waiting");
        run_loop(vec![Ok(Event::Init), Ok(Event::InitDone)], &store, &ready).await;
        assert!(ready.is_ready(), "{:?}", ready.problem());
        assert_eq!(store.load().as_ref().unwrap().image, "from/file:1");
    }

    #[test]
    fn the_event_names_the_key_and_fits_the_note_limit() {
        let e = invalid_settings_event(
            "ConfigMap x/y: injection setting `proxyCPU`: \"lots\" is not a quantity",
        );
        assert_eq!(e.reason, "InvalidSettings");
        assert_eq!(e.type_, EventType::Warning);
        assert!(e.note.as_deref().unwrap().contains("`proxyCPU`"));
        let long = invalid_settings_event(&"é".repeat(2000));
        assert!(long.note.unwrap().len() <= 1003);
    }

    #[test]
    fn native_sidecars_from_1_33_as_istio_detects_them() {
        let info = |major: &str, minor: &str, git: &str| Info {
            major: major.into(),
            minor: minor.into(),
            git_version: git.into(),
            ..Default::default()
        };
        for (major, minor, git, want) in [
            ("1", "20", "v1.20.15", Some(false)),
            ("1", "29+", "v1.29.1-eks", Some(false)),
            ("1", "32", "v1.32.4", Some(false)),
            ("1", "33", "v1.33.0", Some(true)),
            ("1", "34+", "v1.34.1-gke.1", Some(true)),
            ("2", "0", "v2.0.0", Some(true)),
            // Some distributions leave major/minor empty: the git version is read.
            ("", "", "v1.32.2+k3s1", Some(false)),
            ("", "", "v1.33.2+k3s1", Some(true)),
            ("", "", "", None),
        ] {
            assert_eq!(
                supports_native_sidecars(&info(major, minor, git)),
                want,
                "{major}.{minor} {git}"
            );
        }
    }
}
