//! Where the sidecar's configuration comes from, and how a new one replaces the old.
//!
//! * `--config FILE`: a `ProxyConfig` JSON document.
//! * `--config-dir DIR` (default `/etc/rustmesh/config`, the ConfigMap the webhook mounts): the
//!   operator's layout (`rustmesh_xds::scope`): `scopes.json` lists the scopes, and the pod's
//!   own labels (`--pod-labels`, default `/etc/istio/pod/labels`, downward-API format) select
//!   the key, `default.json.gz` or `sidecar-<name>.json.gz` (gzip of the JSON). When the index
//!   lists endpoint parts for that key (`default.eds-03.json.gz`...), they are read with it and
//!   put back together before validation; a missing or bad part refuses the whole document.
//!   Without `scopes.json`, `DIR/config.json` (plain JSON) or `DIR/default.json.gz` is used.
//!   The format of the ConfigMap (gzip, size limit, index, reassembling the parts) is the
//!   contract in [`rustmesh_xds::configmap`], shared with the operator that writes it; this
//!   module fetches the keys (mount or API), picks the pod's scope and hashes the inputs.
//!
//! The [`Watcher`] reads the inputs every poll interval (500 ms by default) and hashes them;
//! when the hash changes it validates the document (`ProxyConfig::from_json`), compiles it
//! ([`crate::snapshot::Snapshot::compile`]: filter chains, clusters, HTTP routes) and swaps it
//! in. A document that fails is refused with a log line naming the field, counted
//! (`rustmesh_config_reloads_total{result="rejected"}`, `rustmesh_config_rejected` = 1), and
//! the previous configuration keeps serving. Kubelet updates a ConfigMap volume by re-pointing
//! the `..data` symlink; the files are read through it, and the read is retried if `..data`
//! moved while reading, so one poll never mixes two versions. Writers of `--config FILE`
//! should replace the file atomically (write elsewhere, then rename), as kubelet does.
//!
//! The stages, each a module that only uses the ones after it:
//!
//! 1. [`watcher`]: polls, and applies a changed document (compile, swap, count, log);
//! 2. [`source`]: reads the inputs ([`ConfigSource`]: the file, or the mounted ConfigMap and
//!    the pod's labels); [`api`] does the same for the ConfigMap as the API serves it;
//! 3. [`document`]: picks the pod's document out of a ConfigMap's keys and decodes it, with the
//!    contract [`rustmesh_xds::configmap`].

use std::time::Duration;

use rustmesh_xds::configmap as contract;

pub mod api;
pub mod document;
pub mod source;
pub mod watcher;

pub use document::{Document, Split};
pub(crate) use document::{Keys, select_document};
pub use source::ConfigSource;
pub(crate) use source::read_labels;
pub use watcher::{Outcome, Watcher};

/// Default poll interval.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// A configuration larger than this (after gunzip) is refused: the contract's limit.
pub const MAX_CONFIG_BYTES: u64 = contract::MAX_DECODED_BYTES;
/// Plain-JSON key read from a config directory without `scopes.json`.
pub const PLAIN_CONFIG_KEY: &str = "config.json";
