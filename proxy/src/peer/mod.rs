//! Who is on the other side of a call, for the peer labels of Istio's metrics
//! (`source_workload`, `destination_app`, ...), learned as Istio's sidecars learn it:
//!
//! - **HTTP metadata exchange**: the client's sidecar sends its workload in
//!   `x-envoy-peer-metadata` (base64 of a protobuf `google.protobuf.Struct`, the encoding of
//!   Istio's metadata exchange filter, so rustmesh and Envoy sidecars understand each other) and
//!   its node id in `x-envoy-peer-metadata-id`, on requests to services of the mesh only; the
//!   server's sidecar reads and removes them (the app never sees them) and answers with its own,
//!   which the client's sidecar reads and removes in turn. A server's sidecar answers with its
//!   metadata only to a request that carried the client's, so nothing leaks to clients outside
//!   the mesh.
//! - **TCP metadata exchange** ([`tcp`]): over mutual TLS with Istio's `istio-peer-exchange`
//!   ALPN, each sidecar sends the same struct in a preface at the start of the stream and
//!   reads (and removes) its peer's, so `istio_tcp_*` metrics name the client's workload too.
//! - **Endpoint metadata** (the client's fallback, also for TCP): the operator writes the workload
//!   behind each endpoint (`filterMetadata.istio.workload`, [`EndpointWorkload`]); it names the
//!   workload, namespace, canonical service and revision and cluster, not `app`/`version`
//!   (`WorkloadInfo::from_endpoint`).
//!
//! The struct's fields are Istio's node metadata keys: `NAME` (pod), `NAMESPACE`,
//! `WORKLOAD_NAME`, `CLUSTER_ID` and `LABELS`. Of the pod's labels only those the metrics read
//! are sent (`app`, `version`, their `app.kubernetes.io/` forms and the canonical service
//! labels): the rest of a pod's labels are its own business.
//!
//! The header comes from the peer and is untrusted: over [`MAX_HEADER_BYTES`] or not a valid
//! struct, it is dropped (and the peer reads `unknown`), never an error for the request.

use crate::metrics::{LABEL_CANONICAL_NAME, LABEL_CANONICAL_REVISION, WorkloadInfo};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message;
use prost_types::value::Kind;
use prost_types::{Any, Struct, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub mod tcp;

/// The peer's workload (base64 of a protobuf `Struct`).
pub const PEER_METADATA: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");
/// The peer's node id (`sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`).
pub const PEER_METADATA_ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");

/// Largest `x-envoy-peer-metadata` value read (base64 text); a larger one is dropped.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Most labels taken from a peer's `LABELS`.
pub const MAX_LABELS: usize = 32;
/// Longest string taken from a peer's struct (a label key is at most 317 bytes).
const MAX_STRING: usize = 320;

/// Labels sent in the exchange (those the metric labels read).
const SENT_LABELS: [&str; 6] = [
    "app",
    "version",
    "app.kubernetes.io/name",
    "app.kubernetes.io/version",
    LABEL_CANONICAL_NAME,
    LABEL_CANONICAL_REVISION,
];

/// This proxy's own exchange headers and TCP preface, encoded once.
#[derive(Debug, Clone)]
pub struct OwnMetadata {
    metadata: HeaderValue,
    id: Option<HeaderValue>,
    /// The `istio-peer-exchange` preface ([`preface`]).
    preface: bytes::Bytes,
}

impl OwnMetadata {
    /// Encodes `w` (and the node id when the pod's address and name are known).
    pub fn of(w: &WorkloadInfo, pod_ip: Option<std::net::IpAddr>) -> Self {
        let text = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_string())),
        };
        let mut fields = BTreeMap::new();
        for (key, v) in [
            ("NAME", &w.pod),
            ("NAMESPACE", &w.namespace),
            ("WORKLOAD_NAME", &w.name),
            ("CLUSTER_ID", &w.cluster),
        ] {
            if !v.is_empty() {
                fields.insert(key.to_string(), text(v));
            }
        }
        let labels: BTreeMap<String, Value> = SENT_LABELS
            .iter()
            .filter_map(|k| w.labels.get(*k).map(|v| (k.to_string(), text(v))))
            .collect();
        if !labels.is_empty() {
            fields.insert(
                "LABELS".to_string(),
                Value {
                    kind: Some(Kind::StructValue(Struct { fields: labels })),
                },
            );
        }
        let own = Struct { fields };
        let encoded = STANDARD.encode(own.encode_to_vec());
        let metadata = HeaderValue::from_str(&encoded).expect("base64 is a valid header value");
        let id = pod_ip
            .filter(|_| !w.pod.is_empty() && !w.namespace.is_empty())
            .and_then(|ip| {
                HeaderValue::from_str(&format!(
                    "sidecar~{ip}~{}.{ns}~{ns}.svc.cluster.local",
                    w.pod,
                    ns = w.namespace
                ))
                .ok()
            });
        let preface = preface(own, id.as_ref().and_then(|v| v.to_str().ok())).into();
        OwnMetadata {
            metadata,
            id,
            preface,
        }
    }

    /// The preface this proxy sends at the start of an `istio-peer-exchange` stream.
    pub fn tcp_preface(&self) -> &[u8] {
        &self.preface
    }

    /// This proxy's node id (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`), when known.
    pub fn node_id(&self) -> Option<&str> {
        self.id.as_ref().and_then(|v| v.to_str().ok())
    }

    /// Adds the exchange headers (replacing any the app sent).
    pub fn insert(&self, headers: &mut HeaderMap) {
        headers.insert(PEER_METADATA, self.metadata.clone());
        match &self.id {
            Some(id) => headers.insert(PEER_METADATA_ID, id.clone()),
            None => headers.remove(PEER_METADATA_ID),
        };
    }
}

/// The TCP preface's first four bytes (Istio's `MetadataExchangeInitialHeader::magic_number`).
const PREFACE_MAGIC: u32 = 0x3D23_0467;
/// The TCP preface's magic and length.
const PREFACE_HEADER_BYTES: usize = 8;
/// The type URL of the TCP preface's `Any`.
const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";

/// The TCP exchange's preface ([`tcp`]) a sidecar with metadata `metadata` and node id `id`
/// sends (written here, with the rest of this proxy's own metadata; read in [`tcp`]).
fn preface(metadata: Struct, id: Option<&str>) -> Vec<u8> {
    let mut fields = BTreeMap::new();
    fields.insert(
        PEER_METADATA.as_str().to_string(),
        Value {
            kind: Some(Kind::StructValue(metadata)),
        },
    );
    if let Some(id) = id {
        fields.insert(
            PEER_METADATA_ID.as_str().to_string(),
            Value {
                kind: Some(Kind::StringValue(id.to_string())),
            },
        );
    }
    let body = Any {
        type_url: STRUCT_TYPE_URL.to_string(),
        value: Struct { fields }.encode_to_vec(),
    }
    .encode_to_vec();
    let mut out = Vec::with_capacity(PREFACE_HEADER_BYTES + body.len());
    out.extend_from_slice(&PREFACE_MAGIC.to_be_bytes());
    // Our own metadata: a few hundred bytes, far below u32::MAX.
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes a peer's `x-envoy-peer-metadata` value; `None` when it is too large or not a
/// base64 protobuf struct.
pub fn decode(value: &[u8]) -> Option<WorkloadInfo> {
    if value.len() > MAX_HEADER_BYTES {
        return None;
    }
    let bytes = STANDARD.decode(value).ok()?;
    let s = Struct::decode(bytes.as_slice()).ok()?;
    Some(from_struct(&s))
}

/// The workload a peer's metadata struct describes (Istio's node metadata keys); what is not
/// a string, or longer than a label value can be, is left out.
fn from_struct(s: &Struct) -> WorkloadInfo {
    let text = |v: &Value| match &v.kind {
        Some(Kind::StringValue(t)) if t.len() <= MAX_STRING => Some(t.clone()),
        _ => None,
    };
    let field = |k: &str| s.fields.get(k).and_then(text).unwrap_or_default();
    let labels = match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(l)) => l
            .fields
            .iter()
            .filter(|(k, _)| k.len() <= MAX_STRING)
            .filter_map(|(k, v)| Some((k.clone(), text(v)?)))
            .take(MAX_LABELS)
            .collect(),
        _ => BTreeMap::new(),
    };
    WorkloadInfo {
        name: field("WORKLOAD_NAME"),
        namespace: field("NAMESPACE"),
        labels,
        cluster: field("CLUSTER_ID"),
        pod: field("NAME"),
    }
}

/// Removes the exchange headers from `headers`, returning the peer they describe (`None`
/// without a valid `x-envoy-peer-metadata`). `cache` keeps the last decoded value of the
/// connection: a peer sends the same bytes on every request.
pub fn take(headers: &mut HeaderMap, cache: &PeerCache) -> Option<Arc<WorkloadInfo>> {
    headers.remove(PEER_METADATA_ID);
    let value = headers.remove(PEER_METADATA)?;
    let mut last = crate::sync::lock(&cache.0);
    if let Some((raw, peer)) = last.as_ref()
        && *raw == value
    {
        return peer.clone();
    }
    let peer = decode(value.as_bytes()).map(Arc::new);
    *last = Some((value, peer.clone()));
    peer
}

/// The last exchange header a connection decoded, and what it gave.
#[derive(Debug, Default)]
pub struct PeerCache(Mutex<Option<(HeaderValue, Option<Arc<WorkloadInfo>>)>>);

#[cfg(test)]
mod tests {
    use super::*;
    use rustmesh_xds::cluster::EndpointWorkload;

    /// A peer's workload, with a label the exchange does not send (`team`).
    pub(super) fn reviews() -> WorkloadInfo {
        WorkloadInfo {
            name: "reviews-v1".into(),
            namespace: "bookinfo".into(),
            labels: [
                ("app", "reviews"),
                ("version", "v1"),
                (LABEL_CANONICAL_NAME, "reviews"),
                (LABEL_CANONICAL_REVISION, "v1"),
                ("team", "secret"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            cluster: "Kubernetes".into(),
            pod: "reviews-v1-6d8f9c7b5-abcde".into(),
        }
    }

    #[test]
    fn the_own_metadata_reads_back_without_the_labels_metrics_do_not_use() {
        let own = OwnMetadata::of(&reviews(), Some("10.0.0.7".parse().unwrap()));
        let mut h = HeaderMap::new();
        h.insert(PEER_METADATA, HeaderValue::from_static("from the app"));
        own.insert(&mut h);
        assert_eq!(
            h[&PEER_METADATA_ID],
            "sidecar~10.0.0.7~reviews-v1-6d8f9c7b5-abcde.bookinfo~bookinfo.svc.cluster.local"
        );
        let cache = PeerCache::default();
        let peer = take(&mut h, &cache).expect("decodes");
        assert!(h.is_empty(), "both headers removed: {h:?}");
        let mut want = reviews();
        want.labels.remove("team");
        assert_eq!(*peer, want);
        assert_eq!(peer.app(), "reviews");
        assert_eq!(peer.canonical_revision(), "v1");
    }

    #[test]
    fn the_struct_is_istios_encoding() {
        // Built independently with prost: a Struct holding Istio's keys.
        let s = Struct {
            fields: [
                ("WORKLOAD_NAME", "productpage-v1"),
                ("NAMESPACE", "default"),
                ("CLUSTER_ID", "Kubernetes"),
                ("MESH_ID", "cluster.local"),
            ]
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(v.into())),
                    },
                )
            })
            .chain([(
                "LABELS".to_string(),
                Value {
                    kind: Some(Kind::StructValue(Struct {
                        fields: [(
                            "app".to_string(),
                            Value {
                                kind: Some(Kind::StringValue("productpage".into())),
                            },
                        )]
                        .into(),
                    })),
                },
            )])
            .collect(),
        };
        let header = STANDARD.encode(s.encode_to_vec());
        let w = decode(header.as_bytes()).unwrap();
        assert_eq!(w.workload(), "productpage-v1");
        assert_eq!(w.workload_namespace(), "default");
        assert_eq!(w.cluster_id(), "Kubernetes");
        assert_eq!(w.app(), "productpage");
        assert_eq!(w.version(), "unknown");
    }

    #[test]
    fn bad_or_oversized_headers_give_no_peer() {
        assert_eq!(decode(b"not base64!"), None);
        assert_eq!(decode(STANDARD.encode([0xff, 0xff, 0xff]).as_bytes()), None);
        let huge = "A".repeat(MAX_HEADER_BYTES + 4);
        assert_eq!(decode(huge.as_bytes()), None);
        let mut h = HeaderMap::new();
        h.insert(PEER_METADATA, HeaderValue::from_static("%%%"));
        h.insert(PEER_METADATA_ID, HeaderValue::from_static("x"));
        assert!(take(&mut h, &PeerCache::default()).is_none());
        assert!(h.is_empty(), "removed even when invalid");
    }

    #[test]
    fn an_endpoints_workload_names_the_canonical_service() {
        let w = WorkloadInfo::from_endpoint(&EndpointWorkload {
            name: "reviews-v2".into(),
            namespace: "bookinfo".into(),
            canonical_service: "reviews".into(),
            canonical_revision: "v2".into(),
            cluster: "Kubernetes".into(),
        });
        assert_eq!(
            (w.workload(), w.canonical_service(), w.canonical_revision()),
            ("reviews-v2", "reviews", "v2")
        );
        assert_eq!(w.app(), "unknown");
    }
}
