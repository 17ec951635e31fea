//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas can run: both watch and
//! keep their index warm, only the leader writes. The decision is a pure function of the Lease
//! and the clock; the loop around it uses optimistic concurrency (resourceVersion) so two
//! candidates can never both win the same round.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::core::ObjectMeta;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// What to do with the Lease this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it.
    Acquire,
    /// Someone else holds it.
    Follow { holder: String },
}

/// Decides from the Lease as read.
pub fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Acquire;
    }
    let duration = spec
        .lease_duration_seconds
        .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
        .unwrap_or(default_duration);
    let renewed = spec.renew_time.as_ref().map(|t| t.0);
    let expired = match renewed {
        None => true,
        Some(t) => t
            .checked_add(SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX))
            .map(|end| end < now)
            .unwrap_or(false),
    };
    if expired {
        Decision::Acquire
    } else {
        Decision::Follow { holder }
    }
}

/// The Lease spec after a decision to hold it.
pub fn held_spec(
    previous: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    duration: Duration,
    acquire: bool,
) -> LeaseSpec {
    let mut spec = previous.cloned().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    if acquire {
        spec.acquire_time = Some(MicroTime(now));
        if previous
            .and_then(|p| p.holder_identity.as_deref())
            .is_some_and(|h| !h.is_empty() && h != me)
        {
            spec.lease_transitions = Some(transitions + 1);
        } else {
            spec.lease_transitions = Some(transitions);
        }
    }
    spec.holder_identity = Some(me.to_string());
    spec.lease_duration_seconds = Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX));
    spec.renew_time = Some(MicroTime(now));
    spec
}

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    pub renew_every: Duration,
}

/// Runs the election until `shutdown` turns true; `leader` reflects whether we hold the Lease.
/// On shutdown a held Lease is released (holder cleared) so the other replica takes over at once.
pub async fn run(
    api: Api<Lease>,
    cfg: LeaseConfig,
    leader: Arc<AtomicBool>,
    changed: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_ok = std::time::Instant::now();
    loop {
        let outcome = round(&api, &cfg).await;
        let now_leader = match outcome {
            Ok(held) => {
                last_ok = std::time::Instant::now();
                held
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease round failed");
                // Keep leadership only while our last renewal is still valid.
                leader.load(Ordering::SeqCst) && last_ok.elapsed() < cfg.duration
            }
        };
        if leader.swap(now_leader, Ordering::SeqCst) != now_leader {
            tracing::info!(leader = now_leader, identity = %cfg.identity, "leadership changed");
            let _ = changed.send(now_leader);
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.renew_every) => {}
            _ = shutdown.changed() => break,
        }
    }
    if leader.swap(false, Ordering::SeqCst) {
        let _ = changed.send(false);
        if let Ok(mut lease) = api.get(&cfg.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(cfg.identity.as_str())
        {
            spec.holder_identity = None;
            let _ = api.replace(&cfg.name, &PostParams::default(), &lease).await;
        }
    }
}

async fn round(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&cfg.name).await?;
    let spec = current.as_ref().and_then(|l| l.spec.as_ref());
    match decide(spec, &cfg.identity, now, cfg.duration) {
        Decision::Follow { .. } => Ok(false),
        d => {
            let new_spec = held_spec(
                spec,
                &cfg.identity,
                now,
                cfg.duration,
                d == Decision::Acquire,
            );
            let result = match current {
                None => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(cfg.name.clone()),
                            namespace: Some(cfg.namespace.clone()),
                            ..ObjectMeta::default()
                        },
                        spec: Some(new_spec),
                    };
                    api.create(&PostParams::default(), &lease).await.map(|_| ())
                }
                Some(mut lease) => {
                    // resourceVersion stays set: a concurrent writer makes this fail with 409.
                    lease.spec = Some(new_spec);
                    api.replace(&cfg.name, &PostParams::default(), &lease)
                        .await
                        .map(|_| ())
                }
            };
            match result {
                Ok(()) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::sync::Mutex;

    /// A fake API server holding one Lease, with resourceVersion checks (409 on a stale write).
    fn fake_leases() -> (kube::Client, Arc<Mutex<Option<Value>>>) {
        let stored: Arc<Mutex<Option<Value>>> = Arc::new(Mutex::new(None));
        let shared = stored.clone();
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let shared = shared.clone();
            async move {
                let method = req.method().clone();
                let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let mut lease = shared.lock().unwrap();
                let status = |code: u16, reason: &str| {
                    (
                        code,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": reason, "code": code, "message": reason}),
                    )
                };
                let (code, answer) = match method.as_str() {
                    "GET" => match lease.as_ref() {
                        Some(l) => (200, l.clone()),
                        None => status(404, "NotFound"),
                    },
                    "POST" if lease.is_none() => {
                        let mut l = body;
                        l["metadata"]["resourceVersion"] = json!("1");
                        *lease = Some(l.clone());
                        (201, l)
                    }
                    "POST" => status(409, "AlreadyExists"),
                    "PUT" => {
                        let current = lease
                            .as_ref()
                            .map(|l| l["metadata"]["resourceVersion"].clone());
                        if current == Some(body["metadata"]["resourceVersion"].clone()) {
                            let next: u64 = current
                                .and_then(|v| v.as_str().and_then(|s| s.parse().ok()))
                                .unwrap_or(0)
                                + 1;
                            let mut l = body;
                            l["metadata"]["resourceVersion"] = json!(next.to_string());
                            *lease = Some(l.clone());
                            (200, l)
                        } else {
                            status(409, "Conflict")
                        }
                    }
                    _ => status(405, "MethodNotAllowed"),
                };
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(kube::client::Body::from(
                            serde_json::to_vec(&answer).unwrap(),
                        ))
                        .unwrap(),
                )
            }
        });
        (kube::Client::new(svc, "istio-system"), stored)
    }

    fn cfg(identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: "istio-system".into(),
            name: "rustmesh-operator".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn two_replicas_one_leader_and_takeover_after_expiry() {
        let (client, stored) = fake_leases();
        let api: Api<Lease> = Api::namespaced(client, "istio-system");
        assert!(round(&api, &cfg("a")).await.unwrap(), "a creates the Lease");
        assert!(
            !round(&api, &cfg("b")).await.unwrap(),
            "b follows a fresh holder"
        );
        assert!(round(&api, &cfg("a")).await.unwrap(), "a renews");
        // a stops renewing: its renewTime ages past the lease duration.
        {
            let mut l = stored.lock().unwrap();
            let l = l.as_mut().unwrap();
            l["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z");
        }
        assert!(
            round(&api, &cfg("b")).await.unwrap(),
            "b takes over an expired Lease"
        );
        assert!(!round(&api, &cfg("a")).await.unwrap(), "a now follows");
        let l = stored.lock().unwrap().clone().unwrap();
        assert_eq!(l["spec"]["holderIdentity"], "b");
        assert_eq!(l["spec"]["leaseTransitions"], 1);
    }

    fn spec(holder: &str, renewed: Timestamp, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(secs),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn election_decisions() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let d = Duration::from_secs(15);
        assert_eq!(decide(None, "a", now, d), Decision::Acquire);
        let fresh = spec("b", now - SignedDuration::from_secs(5), 15);
        assert_eq!(
            decide(Some(&fresh), "a", now, d),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(decide(Some(&fresh), "b", now, d), Decision::Renew);
        let stale = spec("b", now - SignedDuration::from_secs(20), 15);
        assert_eq!(decide(Some(&stale), "a", now, d), Decision::Acquire);
        let released = LeaseSpec::default();
        assert_eq!(decide(Some(&released), "a", now, d), Decision::Acquire);
        let taken = held_spec(Some(&stale), "a", now, d, true);
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.lease_duration_seconds, Some(15));
        let renewed = held_spec(Some(&taken), "a", now, d, false);
        assert_eq!(renewed.lease_transitions, Some(1));
        assert_eq!(renewed.acquire_time, taken.acquire_time);
    }
}
