//! Scenarios 2 and 3: without routing rules requests spread over reviews v1/v2/v3; with a
//! DestinationRule (subsets by `version`) and a VirtualService, a measured 90/10 split over 1000
//! requests, `end-user: jason` to v2, and a weight update whose propagation (from the apply to
//! the new split answering) is measured and printed.
//!
//! Counts are checked with a statistical tolerance: for 1000 requests at p = 0.9 the standard
//! deviation is 9.5, and the accepted band (850..=950) is more than five of them wide each way.

use crate::secs;
use rustmesh_e2e::sample::{self, HTTP_PORT};
use rustmesh_e2e::{Ctx, Summary, poll, setup};
use std::time::{Duration, Instant};

struct Client<'a> {
    ctx: &'a Ctx,
    ns: String,
    pod: String,
    url: String,
}

impl Client<'_> {
    async fn load(&self, n: u64, headers: &[&str]) -> Summary {
        let s = self
            .ctx
            .http_load(&self.ns, &self.pod, "productpage", &self.url, n, 8, headers)
            .await
            .unwrap();
        self.ctx.log(format!(
            "{n} x GET {} {headers:?}: backends {:?}, statuses {:?}, errors {}, latency {:?}",
            self.url, s.backends, s.statuses, s.errors, s.latency_ms
        ));
        s
    }

    /// Sends batches of 40 until `done` holds for one, returning the time since `since`.
    async fn until(&self, since: Instant, what: &str, done: impl Fn(&Summary) -> bool) -> Duration {
        poll(
            what,
            Duration::from_secs(180),
            Duration::from_millis(100),
            || async {
                let s = self
                    .ctx
                    .http_load(&self.ns, &self.pod, "productpage", &self.url, 40, 4, &[])
                    .await
                    .map_err(|e| e.to_string())?;
                if done(&s) {
                    Ok(Some(since.elapsed()))
                } else {
                    Err(format!("last batch: {:?} {:?}", s.backends, s.statuses))
                }
            },
        )
        .await
        .unwrap()
    }
}

async fn client<'a>(ctx: &'a Ctx, ns: &str) -> Client<'a> {
    let apps = [
        sample::productpage(),
        sample::reviews("v1"),
        sample::reviews("v2"),
        sample::reviews("v3"),
    ];
    sample::deploy(ctx, ns, &apps).await.unwrap();
    let ip = ctx.cluster_ip(ns, "reviews").await.unwrap();
    let pod = ctx.pod_name(ns, &apps[0].selector()).await.unwrap();
    ctx.wait_endpoints(ns, &pod, "reviews", ns, HTTP_PORT, 3)
        .await
        .unwrap();
    Client {
        ctx,
        ns: ns.to_string(),
        pod,
        url: format!("http://{ip}:{HTTP_PORT}/"),
    }
}

#[tokio::test]
async fn s2_without_rules_requests_spread_over_all_versions() {
    let Some(ctx) = setup("s2_spread").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-spread", true).await.unwrap();
    let mut c = client(&ctx, &ns).await;
    // By name, as an application does: the cluster has no DNS server, the client's sidecar
    // answers (the capture sends port 53 to its DNS proxy on 15053), and the route matches the
    // short name as one of the service's domains.
    c.url = format!("http://reviews:{HTTP_PORT}/");
    let s = c.load(300, &[]).await;
    assert_eq!(s.status(200), 300, "every request answered 200: {s:?}");
    for v in ["v1", "v2", "v3"] {
        let got = s.backend(&format!("reviews/{v}"));
        // Expected 100 each; below 45 would mean a version is (nearly) left out.
        assert!(
            got >= 45,
            "reviews/{v} answered {got} of 300: {:?}",
            s.backends
        );
    }
    ctx.delete_namespace(&ns).await;
}

#[tokio::test]
async fn s3_weighted_subsets_header_match_and_weight_update() {
    let Some(ctx) = setup("s3_routing").await else {
        return;
    };
    let ns = ctx.fresh_namespace("e2e-routing", true).await.unwrap();
    let c = client(&ctx, &ns).await;

    let applied = Instant::now();
    ctx.apply_istio(&ns, sample::REVIEWS_DESTINATION_RULE)
        .await
        .unwrap();
    ctx.apply_istio(&ns, &sample::reviews_virtual_service(90, 10))
        .await
        .unwrap();
    // Before the rules, a third of the answers come from v3; a batch of 40 without any is the
    // new routes (chance under the old ones: (2/3)^40, about 1e-7).
    let took = c
        .until(applied, "the 90/10 routes answering (no v3)", |s| {
            s.status(200) == 40 && s.backend("reviews/v3") == 0 && s.backend("reviews/v1") > 20
        })
        .await;
    ctx.log(format!(
        "PROPAGATION apply VirtualService 90/10 -> routes answering: {}",
        secs(took)
    ));

    let s = c.load(1000, &[]).await;
    assert_eq!(s.status(200), 1000, "every request answered 200: {s:?}");
    assert_eq!(
        s.backend("reviews/v3"),
        0,
        "no subset v3 in the routes: {:?}",
        s.backends
    );
    let v1 = s.backend("reviews/v1");
    assert!(
        (850..=950).contains(&v1),
        "90/10 split: v1 answered {v1} of 1000"
    );
    assert_eq!(v1 + s.backend("reviews/v2"), 1000, "{:?}", s.backends);

    let jason = c.load(100, &["end-user:jason"]).await;
    assert_eq!(
        jason.backend("reviews/v2"),
        100,
        "end-user: jason goes to v2: {:?}",
        jason.backends
    );

    let updated = Instant::now();
    ctx.apply_istio(&ns, &sample::reviews_virtual_service(10, 90))
        .await
        .unwrap();
    // Under 90/10 a batch of 40 with more than 30 answers from v2 has probability ~1e-20.
    let took = c
        .until(updated, "the 10/90 weights answering", |s| {
            s.backend("reviews/v2") > 30
        })
        .await;
    ctx.log(format!(
        "PROPAGATION update weights 90/10 -> 10/90 answering: {}",
        secs(took)
    ));
    let s = c.load(1000, &[]).await;
    assert_eq!(s.status(200), 1000, "{s:?}");
    let v2 = s.backend("reviews/v2");
    assert!(
        (850..=950).contains(&v2),
        "10/90 split: v2 answered {v2} of 1000"
    );
    ctx.delete_namespace(&ns).await;
}
