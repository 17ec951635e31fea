//! The end-to-end suite (issue #7's scenarios), one test binary so it links once. Every test
//! skips with a printed reason unless `RUSTMESH_E2E=1`; see e2e/README.md.
//!
//! | module | scenario |
//! | --- | --- |
//! | `injection` | 1: namespace label, opt-out, unlabelled namespace; the capture ran; listener table |
//! | `routing` | 2: spread without rules; 3: 90/10 subsets, header match, weight update and its propagation time |
//! | `resilience` | 4: fault delay + route timeout give 504; retries mask a failing endpoint |
//! | `egress` | 5: ALLOW_ANY / REGISTRY_ONLY (mesh-wide and per Sidecar), Sidecar `egress.hosts` |
//! | `tcp` | 6: TCP through the mesh, inbound capture seen by the app and the sidecar's counters; 22: a `tcp` rule matching `sourceLabels` sends only the labelled pod's connections to the canary |
//! | `faults` | 7: webhook down (failurePolicy Ignore / Fail), operator restart under traffic, bad VirtualService |
//! | `identity` | 8: the mesh CA's root in a new namespace, a sidecar's certificate for its SPIFFE id |
//! | `mtls` | 10: auto mTLS between injected pods (principals in metrics), PeerAuthentication STRICT refuses a pod without a sidecar |
//! | `probes` | 9: app probes rewritten to the sidecar's status port; Ready through it (STRICT when `PeerAuthentication` is served); a 503 app fails its probe |
//! | `credential` | 11: DestinationRule `credentialName` (MUTUAL) for the selected client only, served by the CA once its account may list Secrets |
//! | `drain` | 12: pods deleted under traffic: an app's call after SIGTERM goes through its draining sidecar (`terminationDrainDuration` from `proxy.istio.io/config`); a server replica deleted under load fails no request |
//! | `authz` | 13: AuthorizationPolicy as Istio's tasks show it: allow-nothing, ALLOW by principal and path, DENY on a header over ALLOW, TCP by principal and port, an HTTP-only field in a TCP DENY policy |
//! | `jwt` | 14: RequestAuthentication as Istio's JWT task shows it: the operator fetches the test issuer's `jwksUri`; no token served, invalid tokens 401, a valid one taken off with its claim header; `requestPrincipals` and a claim required by an AuthorizationPolicy; an unreachable key set reported (`JwksUnavailable`) and failing closed |
//! | `telemetry` | 15: a real Prometheus (Debian's, started on the node) scrapes the sidecars; Kiali's graph edge from both reporters, the dashboards' latency histogram, Istio's full standard label set with real values; access logs with response flags; a two-hop request traced into a real collector as one trace of four sidecar spans; the Telemetry API turning access logs on for a namespace and off for one workload |
//! | `ingress` | 16: Istio's bookinfo ingress flow: a Gateway and a VirtualService bound to it route a client outside the mesh through the install's `istio-ingressgateway` (by path; another host 404); the gateway's `0.0.0.0_8080` and `http.8080`; a gateway-only VirtualService stays off the sidecars |
//! | `tls_origination` | 20: Istio's egress TLS origination: plain HTTP to a ServiceEntry host (port 80 → the server's 443) leaves the client's sidecar as TLS (DestinationRule `SIMPLE`, `credentialName` with only a `ca.crt`, `sni`), refused before the rule and under another CA |
//! | `workload_selector` | 21: a ServiceEntry's `workloadSelector`: the selected meshed pod (no Service) is the endpoint of `outbound\|80\|\|api.vm.internal` at its targetPort, reached with mutual TLS; scaled to zero, no endpoint; back, the new pod's address |

mod authz;
mod credential;
mod drain;
mod egress;
mod egress_gateway;
mod faults;
mod identity;
mod ingress;
mod injection;
mod jwt;
mod mtls;
mod probes;
mod resilience;
mod routing;
mod tcp;
mod telemetry;
mod tls_origination;
mod workload_selector;

use std::future::Future;

/// Runs `body`, then `restore` whether the body panicked or not (cluster-wide changes must be
/// undone even when an assertion fails, or the next tests inherit them).
pub async fn with_restore<B, R>(body: B, restore: R)
where
    B: Future<Output = ()>,
    R: Future<Output = ()>,
{
    use futures::FutureExt;
    let result = std::panic::AssertUnwindSafe(body).catch_unwind().await;
    restore.await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Seconds, one decimal.
pub fn secs(d: std::time::Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
