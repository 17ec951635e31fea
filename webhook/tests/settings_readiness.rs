//! Item 7 of issue 17: invalid injection settings keep the webhook not ready, naming the key;
//! a later invalid version keeps the previous good settings serving. Real listeners, real HTTP
//! requests to `/readyz` (and `/inject`), the real settings loop fed watch events.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use clap::Parser;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher::Event;
use rustmesh_webhook::server::{self, AppState, Readiness};
use rustmesh_webhook::{Args, InjectionSettings, Webhook, kube_sync};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `GET path` on a fresh connection: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let out = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("an answer");
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn configmap(data: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": "rustmesh-sidecar-injector", "namespace": "istio-system"},
        "data": data,
    }))
    .unwrap()
}

/// Waits (generously) until `/readyz` answers `status` with a body containing `word`.
async fn readyz_says(addr: SocketAddr, status: u16, word: &str) -> String {
    for _ in 0..300 {
        let (s, body) = get(addr, "/readyz").await;
        if s == status && body.contains(word) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("/readyz never answered {status} with {word:?}");
}

/// Waits (generously) until `/readyz` answers `status`; returns the body.
async fn readyz_becomes(addr: SocketAddr, status: u16) -> String {
    for _ in 0..300 {
        let (s, body) = get(addr, "/readyz").await;
        if s == status {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("/readyz never answered {status}");
}

#[tokio::test]
async fn readyz_is_503_naming_the_key_until_good_settings_then_200_and_stays_200_on_a_bad_update() {
    let state = AppState {
        settings: Arc::new(ArcSwapOption::empty()),
        ready: Arc::new(Readiness::not_ready(
            "waiting for the settings ConfigMap to be listed",
        )),
        ..AppState::new(InjectionSettings::default())
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gate = Arc::new(rustmesh_xds::serve::Gate::new("test ops", 64));
    tokio::spawn(server::serve_plain(
        listener,
        server::ops_router(state.clone()),
        gate,
        std::future::pending(),
    ));

    // The watch, fed by hand.
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Event<ConfigMap>, String>>();
    let reported = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (store, ready, seen) = (
        state.settings.clone(),
        state.ready.clone(),
        reported.clone(),
    );
    tokio::spawn(async move {
        kube_sync::settings_loop(
            rx,
            "istio-system/rustmesh-sidecar-injector",
            &store,
            None,
            &ready,
            |_, why| {
                seen.lock().unwrap().push(why);
                std::future::ready(())
            },
        )
        .await;
    });

    let body = readyz_becomes(addr, 503).await;
    assert!(
        body.contains("waiting for the settings ConfigMap"),
        "{body}"
    );

    // Listed with a bad value (and no image): not ready, the body names the key.
    tx.unbounded_send(Ok(Event::Init)).unwrap();
    tx.unbounded_send(Ok(Event::InitApply(configmap(json!({"proxyCPU": "lots"})))))
        .unwrap();
    tx.unbounded_send(Ok(Event::InitDone)).unwrap();
    let body = readyz_says(addr, 503, "proxyCPU").await;
    assert!(
        body.contains("`proxyCPU`") && body.contains("lots"),
        "{body}"
    );
    assert!(
        state.settings.load().is_none(),
        "no settings, no built-in image"
    );

    // Fixed, but without the image: still not ready, naming `image`.
    tx.unbounded_send(Ok(Event::Apply(configmap(json!({"proxyCPU": "1"})))))
        .unwrap();
    let body = readyz_says(addr, 503, "`image`").await;
    assert!(
        body.contains("`image`") && body.contains("missing"),
        "{body}"
    );

    // Good settings: ready.
    tx.unbounded_send(Ok(Event::Apply(configmap(
        json!({"image": "registry.local/proxy:1", "proxyCPU": "1"}),
    ))))
    .unwrap();
    assert_eq!(readyz_becomes(addr, 200).await, "ready\n");

    // A bad update: refused, reported, the good settings keep serving, still ready.
    tx.unbounded_send(Ok(Event::Apply(configmap(
        json!({"image": "registry.local/proxy:2", "imagePullPolicy": "Sometimes"}),
    ))))
    .unwrap();
    for _ in 0..300 {
        if reported.lock().unwrap().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reasons = reported.lock().unwrap().clone();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[2].contains("`imagePullPolicy`"), "{reasons:?}");
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(
        state.settings.load().as_ref().unwrap().image,
        "registry.local/proxy:1"
    );
}

#[tokio::test]
async fn a_webhook_started_with_bad_or_no_settings_is_not_ready_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "image: registry.local/proxy:1\nproxyCPU: lots\n").unwrap();
    let no_image = dir.path().join("no-image.yaml");
    std::fs::write(&no_image, "revision: canary\n").unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "image: registry.local/proxy:1\nnativeSidecars: \"false\"\n",
    )
    .unwrap();
    for (file, status, words) in [
        (Some(&bad), 503, vec!["proxyCPU", "lots"]),
        (Some(&no_image), 503, vec!["`image`", "missing"]),
        (None, 503, vec!["--settings-file", "--settings-configmap"]),
        (Some(&good), 200, vec!["ready"]),
    ] {
        let mut argv = vec![
            "webhook".to_owned(),
            "--listen=127.0.0.1:0".to_owned(),
            "--ops-listen=127.0.0.1:0".to_owned(),
        ];
        if let Some(f) = file {
            argv.push(format!("--settings-file={}", f.display()));
        }
        let webhook = Webhook::start(Args::try_parse_from(argv).unwrap())
            .await
            .expect("starts, ready or not");
        let (s, body) = get(webhook.ops_addr.unwrap(), "/readyz").await;
        assert_eq!(s, status, "{file:?}: {body}");
        for w in words {
            assert!(body.contains(w), "{file:?}: {body} should contain {w}");
        }
        webhook.shutdown().await;
    }
}

#[tokio::test]
async fn without_valid_settings_inject_answers_503_and_never_a_made_up_image() {
    use tower::ServiceExt;
    let state = AppState {
        settings: Arc::new(ArcSwapOption::empty()),
        ready: Arc::new(Readiness::not_ready(
            "invalid injection settings: `image` missing",
        )),
        ..AppState::new(InjectionSettings::default())
    };
    let review = std::fs::read(format!(
        "{}/tests/fixtures/bare-pod.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let resp = server::router(state)
        .oneshot(
            http::Request::post("/inject")
                .body(axum::body::Body::from(review))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("no valid injection settings") && body.contains("`image`"),
        "{body}"
    );
}
