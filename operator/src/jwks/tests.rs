//! The key set model, the fetch schedule and `fetch_source` with a fake [`Fetch`] (the real HTTP
//! client is tested against a real server in `operator/tests/jwks_http.rs`).

use super::*;
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};

/// An Ed25519 key set the sidecar can verify with.
const JWKS: &str = r#"{"keys":[{"kty":"OKP","kid":"ed-1","crv":"Ed25519","x":"keUzBvdTiZZTD82uAWEeMoYR9Ng_7-qrTQZGX6rvDu4"}]}"#;

fn rule(issuer: &str, uri: Option<&str>, timeout_s: Option<u64>) -> JwtRule {
    JwtRule {
        issuer: Some(issuer.into()),
        jwks_uri: uri.map(Into::into),
        timeout: timeout_s
            .map(|s| serde_json::from_value(serde_json::Value::String(format!("{s}s"))).unwrap()),
        ..Default::default()
    }
}

#[test]
fn sources_come_from_jwks_uri_or_discovery_never_from_inline_keys() {
    let inline = JwtRule {
        issuer: Some("https://a.example".into()),
        jwks: Some(JWKS.into()),
        ..Default::default()
    };
    assert_eq!(Source::of(&inline), None);
    assert_eq!(
        Source::of(&rule("i", Some("http://keys.example/jwks"), None)),
        Some(Source::Uri("http://keys.example/jwks".into()))
    );
    assert_eq!(
        Source::of(&rule("https://idp.example/realm/", None, None)),
        Some(Source::Discovery(
            "https://idp.example/realm/.well-known/openid-configuration".into()
        ))
    );
    // Not an http(s) issuer: nothing to fetch (the validation warns, the sidecar refuses).
    assert_eq!(Source::of(&rule("my-issuer", None, None)), None);
    // A jwksUri that cannot be fetched is not handed to the fetcher.
    assert_eq!(Source::of(&rule("i", Some("file:///etc/keys"), None)), None);
}

#[test]
fn a_source_used_by_several_rules_gets_their_longest_timeout() {
    let rules = [
        rule("a", Some("http://k.example/jwks"), Some(2)),
        rule("b", Some("http://k.example/jwks"), Some(9)),
        rule("c", Some("http://other.example/jwks"), None),
    ];
    let wanted = Wanted::of(&rules);
    assert_eq!(wanted.fetch.len(), 2);
    assert_eq!(
        wanted.fetch[&Source::Uri("http://k.example/jwks".into())],
        Duration::from_secs(9)
    );
    assert_eq!(
        wanted.fetch[&Source::Uri("http://other.example/jwks".into())],
        rustmesh_api::request_authentication::DEFAULT_JWKS_TIMEOUT
    );
    assert!(wanted.over_limit.is_empty());
}

#[test]
fn sources_past_the_limit_render_unavailable_naming_it() {
    let rules: Vec<JwtRule> = (0..MAX_SOURCES + 3)
        .map(|i| rule("i", Some(&format!("http://k.example/{i:04}")), None))
        .collect();
    let wanted = Wanted::of(&rules);
    assert_eq!(wanted.fetch.len(), MAX_SOURCES);
    assert_eq!(wanted.over_limit.len(), 3);
    assert_eq!(wanted.sources().count(), MAX_SOURCES + 3);
    let over = wanted.over_limit.iter().next().unwrap().clone();
    let sets = KeySets::default();
    let r = sets.resolve(&wanted, &over);
    let error = r.error().expect("over the limit is an error");
    assert!(error.contains(&MAX_SOURCES.to_string()), "{error}");
    assert!(error.contains(over.url()), "{error}");
}

#[test]
fn a_source_is_pending_then_has_keys_then_keeps_them_through_a_failed_refresh() {
    let source = Source::Uri("http://k.example/jwks".into());
    let wanted = Wanted::of(&[rule("i", Some(source.url()), None)]);
    let mut sets = KeySets::default();
    let pending = sets.resolve(&wanted, &source);
    assert_eq!(pending, Resolved::Pending { uri: source.url() });
    assert!(pending.error().unwrap().contains("not fetched yet"));

    assert!(sets.record(
        source.clone(),
        Report::Fetched {
            uri: source.url().into(),
            jwks: JWKS.into()
        }
    ));
    assert_eq!(
        sets.resolve(&wanted, &source),
        Resolved::Keys {
            uri: source.url(),
            jwks: JWKS,
            refresh_error: None
        }
    );
    // The same keys again change nothing (no re-render).
    assert!(!sets.record(
        source.clone(),
        Report::Fetched {
            uri: source.url().into(),
            jwks: JWKS.into()
        }
    ));

    // A failed refresh within MAX_STALE: the keys keep serving, the failure is shown.
    assert!(sets.record(
        source.clone(),
        Report::Failed {
            error: "status 503".into(),
            keep: true
        }
    ));
    let r = sets.resolve(&wanted, &source);
    assert_eq!(
        r,
        Resolved::Keys {
            uri: source.url(),
            jwks: JWKS,
            refresh_error: Some("status 503")
        }
    );
    assert_eq!(r.error(), None);

    // Past MAX_STALE: the keys go, the rule renders fail closed with the reason.
    assert!(sets.record(
        source.clone(),
        Report::Failed {
            error: "status 503".into(),
            keep: false
        }
    ));
    assert_eq!(
        sets.resolve(&wanted, &source).error().as_deref(),
        Some("status 503")
    );

    // A source no object wants any more is forgotten.
    sets.retain(&Wanted::default());
    assert!(sets.get(&source).is_none());
}

#[test]
fn retries_double_from_one_second_up_to_the_cap() {
    assert_eq!(retry_after(1), RETRY_FIRST);
    assert_eq!(retry_after(2), RETRY_FIRST * 2);
    assert_eq!(retry_after(4), RETRY_FIRST * 8);
    assert_eq!(retry_after(30), RETRY_MAX);
    assert_eq!(retry_after(u32::MAX), RETRY_MAX);
    assert!(first_fetch_wait(Duration::from_secs(5)) > Duration::from_secs(10));
}

#[test]
fn the_schedule_fetches_new_sources_now_refreshes_good_ones_and_backs_off_failing_ones() {
    let t0 = Instant::now();
    let a = Source::Uri("http://a.example/jwks".into());
    let b = Source::Uri("http://b.example/jwks".into());
    let mut s = Schedule::default();
    let wanted: BTreeMap<Source, Duration> = [
        (a.clone(), Duration::from_secs(5)),
        (b.clone(), Duration::from_secs(3)),
    ]
    .into();
    s.want(&wanted, t0);
    // Room for one: one is taken; the other stays due.
    let first = s.take_due(t0, 1);
    assert_eq!(first.len(), 1);
    let second = s.take_due(t0, 8);
    assert_eq!(second.len(), 1);
    assert_ne!(first[0].0, second[0].0);
    // Both running: nothing due, nothing taken.
    assert_eq!(s.next_due(), None);
    assert!(s.take_due(t0, 8).is_empty());

    // a succeeds: next fetch after REFRESH.
    let report = s.done(&a, Ok((a.url().into(), JWKS.into())), t0).unwrap();
    assert!(matches!(report, Report::Fetched { .. }));
    assert_eq!(s.next_due(), Some(t0 + REFRESH));

    // b fails twice: retried after 1 s, then 2 s; never had keys, so nothing to keep.
    let r = s.done(&b, Err("refused".into()), t0).unwrap();
    assert_eq!(
        r,
        Report::Failed {
            error: "refused".into(),
            keep: false
        }
    );
    assert_eq!(s.next_due(), Some(t0 + RETRY_FIRST));
    let t1 = t0 + RETRY_FIRST;
    assert_eq!(s.take_due(t1, 8), vec![(b.clone(), Duration::from_secs(3))]);
    s.done(&b, Err("refused".into()), t1).unwrap();
    assert_eq!(s.next_due(), Some(t1 + RETRY_FIRST * 2));

    // a's refresh fails: its keys may keep serving (fetched less than MAX_STALE ago)...
    let t2 = t0 + REFRESH;
    assert!(s.take_due(t2, 8).iter().any(|(src, _)| *src == a));
    let r = s.done(&a, Err("503".into()), t2).unwrap();
    assert_eq!(
        r,
        Report::Failed {
            error: "503".into(),
            keep: true
        }
    );
    // ...until MAX_STALE after the last success.
    let t3 = t0 + MAX_STALE + Duration::from_secs(1);
    s.take_due(t3, 8);
    let r = s.done(&a, Err("503".into()), t3).unwrap();
    assert_eq!(
        r,
        Report::Failed {
            error: "503".into(),
            keep: false
        }
    );

    // No longer wanted: forgotten, and a late outcome reports nothing.
    s.want(&BTreeMap::new(), t3);
    assert_eq!(s.next_due(), None);
    assert_eq!(s.done(&a, Ok((a.url().into(), JWKS.into())), t3), None);
}

/// What a fake GET answers: a body or an error.
type Answer = Result<Vec<u8>, String>;

/// Answers from a table of URL → body (or error), recording each URL asked.
#[derive(Default, Clone)]
struct Table {
    answers: Arc<Mutex<BTreeMap<String, Answer>>>,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Table {
    fn set(&self, url: &str, answer: Result<&str, &str>) {
        self.answers.lock().unwrap().insert(
            url.into(),
            answer.map(|b| b.as_bytes().to_vec()).map_err(Into::into),
        );
    }
}

impl Fetch for Table {
    fn get(&self, url: &str, _timeout: Duration) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        self.asked.lock().unwrap().push(url.into());
        let answer = self
            .answers
            .lock()
            .unwrap()
            .get(url)
            .cloned()
            .unwrap_or_else(|| Err(format!("GET {url}: status 404")));
        Box::pin(async move { answer })
    }
}

#[tokio::test]
async fn discovery_fetches_the_document_then_its_jwks_uri() {
    let table = Table::default();
    let doc_url = "https://idp.example/.well-known/openid-configuration";
    table.set(
        doc_url,
        Ok(r#"{"issuer":"https://idp.example","jwks_uri":"https://idp.example/certs"}"#),
    );
    table.set("https://idp.example/certs", Ok(JWKS));
    let got = fetch_source(
        &table,
        &Source::Discovery(doc_url.into()),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(
        got,
        ("https://idp.example/certs".to_string(), JWKS.to_string())
    );
    assert_eq!(
        *table.asked.lock().unwrap(),
        vec![doc_url.to_string(), "https://idp.example/certs".into()]
    );
}

#[tokio::test]
async fn a_bad_discovery_document_or_key_set_is_an_error_saying_what_is_wrong() {
    let table = Table::default();
    let doc = "https://idp.example/.well-known/openid-configuration";
    let src = Source::Discovery(doc.into());
    let t = Duration::from_secs(1);

    table.set(doc, Ok("<html>"));
    let e = fetch_source(&table, &src, t).await.unwrap_err();
    assert!(e.contains("not JSON") && e.contains(doc), "{e}");

    table.set(doc, Ok(r#"{"issuer":"x"}"#));
    let e = fetch_source(&table, &src, t).await.unwrap_err();
    assert!(e.contains("no jwks_uri"), "{e}");

    table.set(doc, Ok(r#"{"jwks_uri":"ftp://idp.example/keys"}"#));
    let e = fetch_source(&table, &src, t).await.unwrap_err();
    assert!(e.contains("cannot be fetched"), "{e}");

    // A key set the sidecar cannot use is refused here, naming the URL.
    let uri = Source::Uri("http://k.example/jwks".into());
    table.set("http://k.example/jwks", Ok(r#"{"kty":"RSA"}"#));
    let e = fetch_source(&table, &uri, t).await.unwrap_err();
    assert!(e.contains("not usable") && e.contains("single key"), "{e}");

    table.set("http://k.example/jwks", Ok(r#"{"keys":[]}"#));
    let e = fetch_source(&table, &uri, t).await.unwrap_err();
    assert!(e.contains("no key"), "{e}");

    // The transport's error passes through.
    table.set(
        "http://k.example/jwks",
        Err("GET http://k.example/jwks: status 500"),
    );
    let e = fetch_source(&table, &uri, t).await.unwrap_err();
    assert!(e.contains("status 500"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn run_reports_each_fetch_and_retries_a_failing_source() {
    let table = Table::default();
    let url = "http://k.example/jwks";
    table.set(url, Err("connection refused"));
    let source = Source::Uri(url.into());
    let (wanted_tx, wanted_rx) = watch::channel(BTreeMap::new());
    let (reports_tx, mut reports) = mpsc::channel(8);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(run(
        Arc::new(table.clone()),
        wanted_rx,
        reports_tx,
        shutdown_rx,
    ));
    wanted_tx.send_replace([(source.clone(), Duration::from_secs(5))].into());

    let (s, r) = reports.recv().await.unwrap();
    assert_eq!(s, source);
    assert!(matches!(r, Report::Failed { keep: false, .. }), "{r:?}");
    // The server comes back: the retry (after RETRY_FIRST, on the paused clock) has the keys.
    table.set(url, Ok(JWKS));
    let (_, r) = reports.recv().await.unwrap();
    assert_eq!(
        r,
        Report::Fetched {
            uri: url.into(),
            jwks: JWKS.into()
        }
    );
    assert_eq!(table.asked.lock().unwrap().len(), 2);

    shutdown_tx.send_replace(true);
    task.await.unwrap();
}
