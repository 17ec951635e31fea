//! What the webhook keeps in sync with the API server: the `caBundle` of its
//! MutatingWebhookConfiguration (generated certificates only), its settings ConfigMap, an optional
//! namespace cache, and the cluster version (native sidecars).
//!
//! Each piece is split into a pure function (tested here) and a thin watch loop around it
//! (exercised by the e2e suite against a real API server).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use base64::Engine as _;
use futures::StreamExt;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, TestOperation};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::api::{Api, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Event};
use serde_json::Value;

use crate::error::Result;
use crate::server::NamespaceLookup;
use crate::settings::InjectionSettings;

/// The field manager of every write this webhook makes.
pub const FIELD_MANAGER: &str = "rustmesh-webhook";

// --- caBundle ---------------------------------------------------------------------------------

/// The JSON Patch that puts `ca_pem` into `clientConfig.caBundle` of every webhook of `config`
/// whose bundle differs; `None` when all are already right. Each write is guarded by a `test` of
/// the webhook's name at that index, so a concurrent reorder fails the patch (and the next watch
/// event retries) rather than writing into the wrong entry.
pub fn ca_bundle_patch(config: &MutatingWebhookConfiguration, ca_pem: &str) -> Option<Patch> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let mut ops = Vec::new();
    for (i, wh) in config.webhooks.iter().flatten().enumerate() {
        let current = wh.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice());
        if current == Some(ca_pem.as_bytes()) {
            continue;
        }
        let index = i.to_string();
        ops.push(PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["webhooks", index.as_str(), "name"]),
            value: Value::String(wh.name.clone()),
        }));
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["webhooks", index.as_str(), "clientConfig", "caBundle"]),
            value: Value::String(encoded.clone()),
        }));
    }
    (!ops.is_empty()).then_some(Patch(ops))
}

/// Patches `ca_pem` into the named MutatingWebhookConfiguration and keeps it there: every change
/// to the object (a Helm upgrade or `kubectl apply` resetting `caBundle`) is re-patched.
/// Runs forever; API errors are logged and retried on the API back-off
/// (`rustmesh_xds::backoff`: 0.8 s doubling to 30 s, jittered).
pub async fn keep_ca_bundle(client: kube::Client, name: String, ca_pem: String) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let objects = watcher::watcher(api.clone(), config)
        .backoff(rustmesh_xds::backoff::Backoff::api())
        .applied_objects();
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let patcher = |patch: Patch| {
        let api = api.clone();
        let params = params.clone();
        let name = name.clone();
        async move {
            // kube's `Patch::Json` carries its own json-patch version: convert through JSON.
            let converted = serde_json::to_value(&patch)
                .and_then(serde_json::from_value)
                .map_err(|e| e.to_string())?;
            api.patch(&name, &params, &kube::api::Patch::<()>::Json(converted))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    ca_bundle_loop(objects, &ca_pem, patcher).await;
}

/// The body of [`keep_ca_bundle`] over any stream of observed configurations and any patcher:
/// for each version of the object whose bundle is not `ca_pem`, sends the patch. Returns the
/// number of patches that succeeded when the stream ends (never, for a real watch).
pub async fn ca_bundle_loop<S, E, P, F>(objects: S, ca_pem: &str, patcher: P) -> usize
where
    S: futures::Stream<Item = std::result::Result<MutatingWebhookConfiguration, E>>,
    E: std::fmt::Display,
    P: Fn(Patch) -> F,
    F: std::future::Future<Output = std::result::Result<(), String>>,
{
    let mut objects = std::pin::pin!(objects);
    let mut patched = 0;
    while let Some(event) = objects.next().await {
        let obj = match event {
            Ok(obj) => obj,
            Err(e) => {
                tracing::warn!(error = %e, "watching the webhook configuration");
                continue;
            }
        };
        let name = obj.metadata.name.clone().unwrap_or_default();
        let Some(patch) = ca_bundle_patch(&obj, ca_pem) else {
            continue;
        };
        match patcher(patch).await {
            Ok(()) => {
                patched += 1;
                tracing::info!(webhook_config = %name, "caBundle patched");
            }
            Err(e) => {
                tracing::warn!(webhook_config = %name, error = %e, "patching caBundle failed; retrying on the next change")
            }
        }
    }
    patched
}

// --- settings ConfigMap -----------------------------------------------------------------------

/// Applies a settings ConfigMap (`None`: it does not exist → defaults). Valid settings replace
/// the current ones; invalid ones leave them in place and return the reason.
pub fn apply_settings(
    store: &ArcSwap<InjectionSettings>,
    configmap: Option<&ConfigMap>,
    cluster_supports_native_sidecars: Option<bool>,
) -> Result<()> {
    let empty = BTreeMap::new();
    let data = configmap.and_then(|c| c.data.as_ref()).unwrap_or(&empty);
    let settings = InjectionSettings::from_map(data)?;
    store.store(Arc::new(settings.resolve(cluster_supports_native_sidecars)));
    Ok(())
}

/// Watches the settings ConfigMap `namespace/name` and applies every version of it; sets
/// `ready` once the first listing is done (present or not). Runs forever.
pub async fn watch_settings(
    client: kube::Client,
    namespace: String,
    name: String,
    store: Arc<ArcSwap<InjectionSettings>>,
    cluster_supports_native_sidecars: Option<bool>,
    ready: Arc<AtomicBool>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher::watcher(api, config).backoff(rustmesh_xds::backoff::Backoff::api());
    settings_loop(events, &store, cluster_supports_native_sidecars, &ready).await;
}

/// The body of [`watch_settings`] over any stream of watch events: a listing that does not
/// contain the ConfigMap, or its deletion, means defaults; a bad version keeps the previous
/// settings. Returns the number of settings versions refused when the stream ends.
pub async fn settings_loop<S, E>(
    events: S,
    store: &ArcSwap<InjectionSettings>,
    cluster_supports_native_sidecars: Option<bool>,
    ready: &AtomicBool,
) -> usize
where
    S: futures::Stream<Item = std::result::Result<Event<ConfigMap>, E>>,
    E: std::fmt::Display,
{
    let mut events = std::pin::pin!(events);
    let mut seen_in_listing = false;
    let mut refused = 0;
    let mut apply = |cm: Option<&ConfigMap>| {
        let which = cm
            .and_then(|c| c.metadata.name.clone())
            .unwrap_or_else(|| "<absent>".to_owned());
        match apply_settings(store, cm, cluster_supports_native_sidecars) {
            Ok(()) => tracing::info!(configmap = %which, "injection settings applied"),
            Err(e) => {
                refused += 1;
                tracing::error!(configmap = %which, error = %e, "invalid injection settings; keeping the previous ones")
            }
        }
    };
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => seen_in_listing = false,
            Ok(Event::InitApply(cm)) => {
                seen_in_listing = true;
                apply(Some(&cm));
            }
            Ok(Event::InitDone) => {
                if !seen_in_listing {
                    apply(None);
                }
                ready.store(true, Ordering::Release);
            }
            Ok(Event::Apply(cm)) => apply(Some(&cm)),
            Ok(Event::Delete(_)) => apply(None),
            Err(e) => tracing::warn!(error = %e, "watching the settings ConfigMap"),
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

/// Whether the API server's version supports native sidecars (`restartPolicy: Always` init
/// containers, on by default from Kubernetes 1.29).
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
        // Some distributions leave major/minor empty: read `v1.29.3-...`.
        _ => {
            let v = info.git_version.trim_start_matches('v');
            let mut parts = v.split('.');
            (digits(parts.next()?)?, digits(parts.next()?)?)
        }
    };
    Some(major > 1 || (major == 1 && minor >= 29))
}

/// Asks the API server's `/version`; `None` when it can't be asked.
pub async fn probe_native_sidecars(client: &kube::Client) -> Option<bool> {
    match client.apiserver_version().await {
        Ok(info) => {
            let supported = supports_native_sidecars(&info);
            tracing::info!(version = %info.git_version, native_sidecars = ?supported, "API server version");
            supported
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the API server version; native sidecars off");
            None
        }
    }
}

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

    #[test]
    fn settings_configmap_valid_invalid_absent() {
        let store = ArcSwap::from_pointee(InjectionSettings::default());
        let cm = |data: Value| -> ConfigMap {
            serde_json::from_value(json!({"metadata": {"name": "s"}, "data": data})).unwrap()
        };
        apply_settings(
            &store,
            Some(&cm(json!({"image": "a/b:1", "nativeSidecars": "auto"}))),
            Some(true),
        )
        .unwrap();
        assert_eq!(store.load().image, "a/b:1");
        assert!(
            store.load().use_native_sidecars(),
            "auto resolved with the probe"
        );

        let err =
            apply_settings(&store, Some(&cm(json!({"proxyCPU": "lots"}))), Some(true)).unwrap_err();
        assert!(err.to_string().contains("proxyCPU"));
        assert_eq!(store.load().image, "a/b:1", "previous settings kept");

        apply_settings(&store, None, None).unwrap();
        assert_eq!(**store.load(), InjectionSettings::default());
    }

    fn configmap(data: Value) -> ConfigMap {
        serde_json::from_value(
            json!({"metadata": {"name": "rustmesh-sidecar-injector"}, "data": data}),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn settings_events_apply_refuse_and_fall_back_to_defaults() {
        let store = ArcSwap::from_pointee(InjectionSettings::default());
        let ready = AtomicBool::new(false);

        // Listed, then changed, then broken, then deleted.
        let events: Vec<std::result::Result<Event<ConfigMap>, String>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(configmap(json!({"image": "a/b:1"})))),
            Ok(Event::InitDone),
        ];
        assert_eq!(
            settings_loop(futures::stream::iter(events), &store, None, &ready).await,
            0
        );
        assert!(ready.load(Ordering::Acquire));
        assert_eq!(store.load().image, "a/b:1");

        let events: Vec<std::result::Result<Event<ConfigMap>, String>> = vec![
            Ok(Event::Apply(configmap(
                json!({"image": "a/b:2", "revision": "canary"}),
            ))),
            Err("connection reset".to_owned()),
            Ok(Event::Apply(configmap(
                json!({"image": "a/b:3", "imagePullPolicy": "Sometimes"}),
            ))),
        ];
        assert_eq!(
            settings_loop(futures::stream::iter(events), &store, None, &ready).await,
            1
        );
        assert_eq!(
            store.load().image,
            "a/b:2",
            "the bad version is refused whole"
        );
        assert_eq!(store.load().revision, "canary");

        let events: Vec<std::result::Result<Event<ConfigMap>, String>> =
            vec![Ok(Event::Delete(configmap(json!({}))))];
        settings_loop(futures::stream::iter(events), &store, None, &ready).await;
        assert_eq!(**store.load(), InjectionSettings::default());
    }

    #[tokio::test]
    async fn a_listing_without_the_configmap_means_defaults_and_ready() {
        let store = ArcSwap::from_pointee(InjectionSettings {
            image: "stale".into(),
            ..InjectionSettings::default()
        });
        let ready = AtomicBool::new(false);
        let events: Vec<std::result::Result<Event<ConfigMap>, String>> =
            vec![Ok(Event::Init), Ok(Event::InitDone)];
        settings_loop(futures::stream::iter(events), &store, Some(true), &ready).await;
        assert!(ready.load(Ordering::Acquire));
        assert_eq!(**store.load(), InjectionSettings::default());
    }

    /// A fake API server: applies each patch to its copy of the object, like the real one would.
    #[tokio::test]
    async fn ca_bundle_is_patched_and_re_patched_when_reset() {
        let server = std::sync::Mutex::new(mwc(&[None, None]));
        let patcher = |patch: Patch| {
            let result = {
                let mut obj = server.lock().unwrap();
                json_patch::patch(&mut obj, &patch).map_err(|e| e.to_string())
            };
            std::future::ready(result)
        };
        let observed = |doc: &Value| -> std::result::Result<MutatingWebhookConfiguration, String> {
            Ok(serde_json::from_value(doc.clone()).unwrap())
        };

        // First sight: patched. The watch then sees our own write: nothing to do.
        let first = observed(&server.lock().unwrap());
        assert_eq!(
            ca_bundle_loop(futures::stream::iter([first]), CA, &patcher).await,
            1
        );
        let after = observed(&server.lock().unwrap());
        assert_eq!(
            ca_bundle_loop(futures::stream::iter([after]), CA, &patcher).await,
            0
        );

        // Someone re-applies the manifest without caBundle: patched back.
        *server.lock().unwrap() = mwc(&[None, None]);
        let reset = observed(&server.lock().unwrap());
        let watch_error = Err("410 Gone".to_owned());
        assert_eq!(
            ca_bundle_loop(futures::stream::iter([watch_error, reset]), CA, &patcher).await,
            1
        );
        let done: MutatingWebhookConfiguration =
            serde_json::from_value(server.lock().unwrap().clone()).unwrap();
        assert!(
            done.webhooks
                .unwrap()
                .iter()
                .all(|w| w.client_config.ca_bundle.as_ref().unwrap().0 == CA.as_bytes())
        );

        // A failing API call is counted as not patched and does not stop the loop.
        let failing = |_: Patch| std::future::ready(Err::<(), String>("forbidden".to_owned()));
        let stale = observed(&mwc(&[None]));
        assert_eq!(
            ca_bundle_loop(futures::stream::iter([stale.clone(), stale]), CA, failing).await,
            0
        );
    }

    #[test]
    fn native_sidecar_versions() {
        let info = |major: &str, minor: &str, git: &str| Info {
            major: major.into(),
            minor: minor.into(),
            git_version: git.into(),
            ..Default::default()
        };
        assert_eq!(
            supports_native_sidecars(&info("1", "20", "v1.20.15")),
            Some(false)
        );
        assert_eq!(
            supports_native_sidecars(&info("1", "28+", "v1.28.3-gke.1")),
            Some(false)
        );
        assert_eq!(
            supports_native_sidecars(&info("1", "29+", "v1.29.1-eks")),
            Some(true)
        );
        assert_eq!(
            supports_native_sidecars(&info("1", "33", "v1.33.0")),
            Some(true)
        );
        assert_eq!(
            supports_native_sidecars(&info("", "", "v1.30.2+k3s1")),
            Some(true)
        );
        assert_eq!(supports_native_sidecars(&info("", "", "")), None);
    }
}
