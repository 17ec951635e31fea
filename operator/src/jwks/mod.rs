//! The key sets of RequestAuthentication rules, resolved as istiod resolves them: the operator
//! fetches each rule's `jwksUri` (or finds it by OpenID discovery of the issuer) and passes the
//! JSON Web Key Set inline to the sidecars (`rustmesh_xds::request_authn::JwtRule::jwks`), which
//! make no call of their own.
//!
//! Split in two, so that everything but the network is pure and tested as such:
//! - the model and the state, read by the index, validation and the renderer: [`Source`] (a
//!   rule's `jwksUri`, or the issuer's discovery document), [`Wanted`] (what the index's objects
//!   need fetched, at most [`MAX_SOURCES`]), [`KeySets`] (what the fetches gave: the last good
//!   set of each source, and the last failure) and [`KeySets::resolve`] (what one rule renders:
//!   the keys, or `jwksError`);
//! - the I/O shell: [`run`] fetches each wanted source ([`Fetch`], over HTTP(S) with
//!   [`http::HttpFetch`]: hyper and rustls) on the schedule [`Schedule`] keeps, and sends each
//!   outcome ([`Report`]) to the controller's loop, which records it in the index and re-renders
//!   the namespaces whose policies use the source.
//!
//! Behaviour, as istiod's `JwksResolver` unless said:
//! - a fetch gets the rule's `timeout` (Istio's default 5 s; with several rules on one URL, the
//!   longest) for the whole exchange, redirects included (at most [`http::MAX_REDIRECTS`], never
//!   from https to http); the answer must be 2xx, at most [`MAX_BYTES`] (istiod has no limit),
//!   and a key set the sidecar can use (`rustmesh_api::request_authentication::jwks_problem`:
//!   istiod passes anything on and Envoy refuses it later);
//! - OpenID discovery: `<issuer>/.well-known/openid-configuration` is fetched and its `jwks_uri`
//!   (an http(s) URL) fetched in turn, both within the timeout each;
//! - a good set is fetched again every [`REFRESH`] (istiod's 20 minutes); a failed refresh keeps
//!   the last good set serving (a warning in the object's status) for up to [`MAX_STALE`]
//!   (istiod's 7 days), after which it is dropped;
//! - a failure is retried after 1 s, doubling up to [`RETRY_MAX`] (istiod: 1 minute doubling to
//!   60 minutes); while no set was ever had, the rule renders with `jwksError` saying why, so the
//!   sidecar refuses every token of its issuer (fail closed, as istiod's fake key set does), and
//!   the object's status names the field and the reason;
//! - at most [`MAX_SOURCES`] URLs are fetched (istiod: no limit); the others, in [`Source`]
//!   order, render as unavailable with a reason naming the limit;
//! - sources no object needs any more are forgotten (their sets dropped).

pub mod http;
#[cfg(test)]
mod tests;

use rustmesh_api::request_authentication::{JwtRule, KeySource, jwks_problem, jwks_uri_problem};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// The most key set URLs (jwksUri and discovery documents) the operator fetches.
pub const MAX_SOURCES: usize = 256;
/// The largest answer read (a key set, or a discovery document).
pub const MAX_BYTES: usize = 1 << 20;
/// How often a good key set is fetched again.
pub const REFRESH: Duration = Duration::from_secs(20 * 60);
/// The first retry after a failure; each further failure doubles it, up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest pause between retries of a failing source.
pub const RETRY_MAX: Duration = Duration::from_secs(5 * 60);
/// How long a key set may keep serving after its last successful fetch when refreshes fail.
pub const MAX_STALE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How many fetches run at once.
pub const CONCURRENCY: usize = 8;

/// Where a key set comes from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// A rule's `jwksUri`.
    Uri(String),
    /// OpenID discovery: the issuer's discovery document, whose `jwks_uri` is then fetched.
    Discovery(String),
}

impl Source {
    /// The source of a rule's key set; `None` when the rule carries its keys (`jwks`) or has
    /// no fetchable source (an issuer that is not an http(s) URL, an invalid `jwksUri`).
    pub fn of(rule: &JwtRule) -> Option<Source> {
        match rule.key_source() {
            KeySource::Inline(_) => None,
            KeySource::Uri(uri) => jwks_uri_problem(uri)
                .is_none()
                .then(|| Source::Uri(uri.to_string())),
            KeySource::Discovery { url, .. } => url.map(Source::Discovery),
        }
    }

    /// The URL fetched first.
    pub fn url(&self) -> &str {
        match self {
            Source::Uri(u) | Source::Discovery(u) => u,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Uri(u) => write!(f, "{u}"),
            Source::Discovery(u) => write!(f, "{u} (OpenID discovery)"),
        }
    }
}

/// The sources the index's objects need: those to fetch, each with its timeout, and those over
/// [`MAX_SOURCES`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub fetch: BTreeMap<Source, Duration>,
    pub over_limit: BTreeSet<Source>,
}

impl Wanted {
    /// The sources of `rules`, each with the longest timeout of the rules using it.
    pub fn of<'a>(rules: impl IntoIterator<Item = &'a JwtRule>) -> Wanted {
        let mut all: BTreeMap<Source, Duration> = BTreeMap::new();
        for rule in rules {
            if let Some(source) = Source::of(rule) {
                let timeout = all.entry(source).or_default();
                *timeout = (*timeout).max(rule.fetch_timeout());
            }
        }
        let mut wanted = Wanted::default();
        for (i, (source, timeout)) in all.into_iter().enumerate() {
            if i < MAX_SOURCES {
                wanted.fetch.insert(source, timeout);
            } else {
                wanted.over_limit.insert(source);
            }
        }
        wanted
    }

    /// Every source, fetched or over the limit.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.fetch.keys().chain(&self.over_limit)
    }
}

/// What one fetch of a source gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// A key set the sidecar can use, as served, and the URL it came from (for discovery, the
    /// document's `jwks_uri`).
    Fetched { uri: String, jwks: String },
    /// Why none could be had; `keep`: the set fetched before (if any) may keep serving (its
    /// last successful fetch is less than [`MAX_STALE`] old).
    Failed { error: String, keep: bool },
}

/// What the fetches gave for one source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The last good set: the URL it came from and the key set.
    pub good: Option<(String, String)>,
    /// The last fetch's failure (`None` once a fetch succeeds).
    pub error: Option<String>,
}

/// What a rule renders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved<'a> {
    /// The keys, the URL they came from, and the last refresh's failure while they keep
    /// serving.
    Keys {
        uri: &'a str,
        jwks: &'a str,
        refresh_error: Option<&'a str>,
    },
    /// No keys: the URL they would come from, and why (`jwksError`).
    Unavailable { uri: &'a str, error: String },
    /// Not fetched yet (the controller holds back a namespace that has a configuration already
    /// until the first fetch ends; a new one renders it fail closed).
    Pending { uri: &'a str },
}

impl Resolved<'_> {
    /// The `jwksError` a rule renders with, if any.
    pub fn error(&self) -> Option<String> {
        match self {
            Resolved::Keys { .. } => None,
            Resolved::Unavailable { error, .. } => Some(error.clone()),
            Resolved::Pending { uri } => Some(format!("the key set from {uri} is not fetched yet")),
        }
    }
}

/// The key sets fetched so far, by source (held in the index).
#[derive(Clone, Debug, Default)]
pub struct KeySets {
    entries: BTreeMap<Source, Entry>,
}

impl KeySets {
    pub fn get(&self, source: &Source) -> Option<&Entry> {
        self.entries.get(source)
    }

    /// Records what a fetch gave; returns whether what renders or shows in a status changed.
    pub fn record(&mut self, source: Source, report: Report) -> bool {
        let entry = self.entries.entry(source).or_default();
        let before = entry.clone();
        match report {
            Report::Fetched { uri, jwks } => {
                entry.good = Some((uri, jwks));
                entry.error = None;
            }
            Report::Failed { error, keep } => {
                if !keep {
                    entry.good = None;
                }
                entry.error = Some(error);
            }
        }
        *entry != before
    }

    /// Forgets the sources `wanted` does not list.
    pub fn retain(&mut self, wanted: &Wanted) {
        self.entries.retain(|s, _| wanted.fetch.contains_key(s));
    }

    /// What `source` renders given what is wanted (see [`Resolved`]).
    pub fn resolve<'a>(&'a self, wanted: &Wanted, source: &'a Source) -> Resolved<'a> {
        if wanted.over_limit.contains(source) {
            return Resolved::Unavailable {
                uri: source.url(),
                error: format!(
                    "not fetched: more than {MAX_SOURCES} key set URLs in the mesh (the \
                     operator's limit); {source} is over it"
                ),
            };
        }
        match self.entries.get(source) {
            Some(Entry {
                good: Some((uri, jwks)),
                error,
            }) => Resolved::Keys {
                uri,
                jwks,
                refresh_error: error.as_deref(),
            },
            Some(Entry {
                good: None,
                error: Some(error),
            }) => Resolved::Unavailable {
                uri: source.url(),
                error: error.clone(),
            },
            _ => Resolved::Pending { uri: source.url() },
        }
    }
}

/// The fetched body as a key set, or why it is not a usable one.
fn body_problem(uri: &str, body: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(body)
        .map_err(|_| format!("the key set from {uri} is not UTF-8 text"))?;
    match jwks_problem(text) {
        None => Ok(text.to_string()),
        Some(p) => Err(format!("the key set from {uri} is not usable: {p}")),
    }
}

/// One HTTP GET: the body of a 2xx answer within `timeout` and [`MAX_BYTES`], or why not.
pub trait Fetch: Send + Sync + 'static {
    fn get(
        &self,
        url: &str,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Result<Vec<u8>, String>>;
}

/// Fetches one source: the key set at a `jwksUri`, or the discovery document and then the key
/// set at its `jwks_uri`; checks it.
pub async fn fetch_source(
    fetch: &dyn Fetch,
    source: &Source,
    timeout: Duration,
) -> Result<(String, String), String> {
    let uri = match source {
        Source::Uri(uri) => uri.clone(),
        Source::Discovery(url) => {
            let body = fetch.get(url, timeout).await?;
            let doc: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| format!("the OpenID discovery document {url} is not JSON: {e}"))?;
            let Some(uri) = doc.get("jwks_uri").and_then(|u| u.as_str()) else {
                return Err(format!(
                    "the OpenID discovery document {url} has no jwks_uri string"
                ));
            };
            if let Some(p) = jwks_uri_problem(uri) {
                return Err(format!(
                    "the jwks_uri of the OpenID discovery document {url} cannot be fetched: {p}"
                ));
            }
            uri.to_string()
        }
    };
    let body = fetch.get(&uri, timeout).await?;
    let jwks = body_problem(&uri, &body)?;
    Ok((uri, jwks))
}

/// When each wanted source is fetched next: pure (time is passed in), driven by [`run`].
#[derive(Debug, Default)]
pub struct Schedule {
    sources: BTreeMap<Source, Slot>,
}

#[derive(Debug)]
struct Slot {
    timeout: Duration,
    next: Instant,
    running: bool,
    /// Failures in a row.
    failures: u32,
    last_ok: Option<Instant>,
}

impl Schedule {
    /// Takes the wanted sources: new ones are due now, gone ones forgotten.
    pub fn want(&mut self, wanted: &BTreeMap<Source, Duration>, now: Instant) {
        self.sources.retain(|s, _| wanted.contains_key(s));
        for (source, timeout) in wanted {
            self.sources
                .entry(source.clone())
                .and_modify(|slot| slot.timeout = *timeout)
                .or_insert(Slot {
                    timeout: *timeout,
                    next: now,
                    running: false,
                    failures: 0,
                    last_ok: None,
                });
        }
    }

    /// The sources due at `now` that are not being fetched, at most `room`, marked running.
    pub fn take_due(&mut self, now: Instant, room: usize) -> Vec<(Source, Duration)> {
        let mut out = Vec::new();
        for (source, slot) in &mut self.sources {
            if out.len() >= room {
                break;
            }
            if !slot.running && slot.next <= now {
                slot.running = true;
                out.push((source.clone(), slot.timeout));
            }
        }
        out
    }

    /// When the next fetch is due (`None`: nothing waits).
    pub fn next_due(&self) -> Option<Instant> {
        self.sources
            .values()
            .filter(|s| !s.running)
            .map(|s| s.next)
            .min()
    }

    /// A fetch ended; returns its report, or `None` when the source is no longer wanted.
    pub fn done(
        &mut self,
        source: &Source,
        outcome: Result<(String, String), String>,
        now: Instant,
    ) -> Option<Report> {
        let slot = self.sources.get_mut(source)?;
        slot.running = false;
        Some(match outcome {
            Ok((uri, jwks)) => {
                slot.failures = 0;
                slot.last_ok = Some(now);
                slot.next = now + REFRESH;
                Report::Fetched { uri, jwks }
            }
            Err(error) => {
                slot.failures += 1;
                slot.next = now + retry_after(slot.failures);
                Report::Failed {
                    error,
                    keep: slot
                        .last_ok
                        .is_some_and(|t| now.duration_since(t) < MAX_STALE),
                }
            }
        })
    }
}

/// How long namespaces that have a configuration wait for the first fetch of a source whose
/// fetches take at most `timeout` each: two of them (discovery, then the key set) and a second.
pub fn first_fetch_wait(timeout: Duration) -> Duration {
    timeout.saturating_mul(2) + Duration::from_secs(1)
}

/// The pause after the `failures`-th failure in a row: [`RETRY_FIRST`] doubling, at most
/// [`RETRY_MAX`].
pub fn retry_after(failures: u32) -> Duration {
    let doubled = RETRY_FIRST.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    doubled.min(RETRY_MAX)
}

/// Tokio's clock (paused in tests), as a `std` instant.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Fetches the wanted sources until `shutdown`, sending each outcome to `reports`.
pub async fn run(
    fetch: std::sync::Arc<dyn Fetch>,
    mut wanted: watch::Receiver<BTreeMap<Source, Duration>>,
    reports: mpsc::Sender<(Source, Report)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut schedule = Schedule::default();
    schedule.want(&wanted.borrow_and_update(), now());
    let mut running = tokio::task::JoinSet::new();
    loop {
        let room = CONCURRENCY.saturating_sub(running.len());
        for (source, timeout) in schedule.take_due(now(), room) {
            let fetch = fetch.clone();
            running.spawn(async move {
                let outcome = fetch_source(fetch.as_ref(), &source, timeout).await;
                (source, outcome)
            });
        }
        let due = schedule.next_due();
        tokio::select! {
            _ = shutdown.changed() => break,
            changed = wanted.changed() => {
                if changed.is_err() {
                    break;
                }
                schedule.want(&wanted.borrow_and_update(), now());
            }
            Some(joined) = running.join_next(), if !running.is_empty() => {
                let Ok((source, outcome)) = joined else { continue };
                match &outcome {
                    Ok((uri, _)) => tracing::info!(%source, %uri, "key set fetched"),
                    Err(error) => tracing::warn!(%source, %error, "key set fetch failed"),
                }
                if let Some(report) = schedule.done(&source, outcome, now())
                    && reports.send((source, report)).await.is_err()
                {
                    break;
                }
            }
            _ = async {
                match due {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    }
    running.abort_all();
}
