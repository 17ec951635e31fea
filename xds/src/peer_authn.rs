//! Peer authentication as a proxy receives it: the PeerAuthentication policies that can apply
//! to the pods of a configuration's scope, resolved by the operator into precedence order, and
//! the pure [`effective_mode`] the sidecar applies to its own labels and each inbound port.
//!
//! Why the sidecar picks: one configuration serves every pod of a scope (a namespace, or a
//! Sidecar's selector), while a PeerAuthentication may select some of those pods by label. The
//! operator lists the mesh-wide policy (root namespace, no selector), the namespace-wide one
//! and the namespace's selector policies (oldest first, as Istio breaks ties); the sidecar,
//! which knows its labels, applies Istio's precedence: a matching workload policy's port-level
//! mode, then its mode, then the namespace's, then the mesh's, `UNSET` inheriting at each step,
//! and `PERMISSIVE` when nothing says otherwise.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `PeerAuthentication.MutualTLS.Mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent (workload → namespace → mesh → PERMISSIVE).
    #[default]
    Unset,
    /// Plain text only: TLS is not terminated (a TLS connection goes to the app as bytes).
    Disable,
    /// Both mutual TLS and plain text.
    Permissive,
    /// Mutual TLS only: a plain-text client is refused.
    Strict,
}

impl MtlsMode {
    /// The name Istio writes.
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

fn is_unset(m: &MtlsMode) -> bool {
    *m == MtlsMode::Unset
}

/// The policies that can apply to a scope's pods.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    /// The mesh-wide policy (root namespace, no selector; the oldest if several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<PeerAuthnPolicy>,
    /// The namespace-wide policy (no selector; the oldest if several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<PeerAuthnPolicy>,
    /// The namespace's policies with a selector, oldest first: the first whose selector matches
    /// the pod's labels applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workload: Vec<PeerAuthnPolicy>,
}

/// One policy, as far as a sidecar needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthnPolicy {
    /// `<namespace>/<name>`, for logs and `/config_dump`.
    pub name: String,
    /// `selector.matchLabels` (workload policies only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// `mtls.mode`.
    #[serde(default, skip_serializing_if = "is_unset")]
    pub mode: MtlsMode,
    /// `portLevelMtls`: the workload's (container) port → mode (workload policies only, as in
    /// Istio).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<u16, MtlsMode>,
}

impl PeerAuthnPolicy {
    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// The mode in force on `port` for a pod with `labels`, and the policy that decided it (`None`:
/// the default, PERMISSIVE).
pub fn effective_mode<'a>(
    policies: &'a PeerAuthentication,
    labels: &BTreeMap<String, String>,
    port: u16,
) -> (MtlsMode, Option<&'a str>) {
    let workload = policies.workload.iter().find(|p| p.selects(labels));
    let steps = workload
        .into_iter()
        .flat_map(|w| {
            [
                (w.port_level_mtls.get(&port).copied(), w),
                (Some(w.mode), w),
            ]
        })
        .chain(policies.namespace.iter().map(|p| (Some(p.mode), p)))
        .chain(policies.mesh.iter().map(|p| (Some(p.mode), p)));
    for (mode, policy) in steps {
        match mode {
            Some(MtlsMode::Unset) | None => continue,
            Some(m) => return (m, Some(policy.name.as_str())),
        }
    }
    (MtlsMode::Permissive, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, mode: MtlsMode) -> PeerAuthnPolicy {
        PeerAuthnPolicy {
            name: name.to_string(),
            mode,
            ..PeerAuthnPolicy::default()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn precedence_follows_istio() {
        use MtlsMode::*;
        let none = PeerAuthentication::default();
        assert_eq!(effective_mode(&none, &labels(&[]), 80), (Permissive, None));

        let mut p = PeerAuthentication {
            mesh: Some(policy("istio-system/default", Strict)),
            ..PeerAuthentication::default()
        };
        assert_eq!(
            effective_mode(&p, &labels(&[]), 80),
            (Strict, Some("istio-system/default"))
        );
        // A namespace policy overrides the mesh; UNSET inherits.
        p.namespace = Some(policy("foo/default", Unset));
        assert_eq!(effective_mode(&p, &labels(&[]), 80).0, Strict);
        p.namespace = Some(policy("foo/default", Permissive));
        assert_eq!(
            effective_mode(&p, &labels(&[]), 80),
            (Permissive, Some("foo/default"))
        );
        // Istio's example: the finance workload STRICT, its port 8080 DISABLE.
        let mut finance = policy("foo/finance", Strict);
        finance.selector = labels(&[("app", "finance")]);
        finance.port_level_mtls = BTreeMap::from([(8080, Disable), (9090, Unset)]);
        let mut older = policy("foo/older", Disable);
        older.selector = labels(&[("app", "other")]);
        p.workload = vec![older, finance];
        let fin = labels(&[("app", "finance"), ("version", "v1")]);
        assert_eq!(effective_mode(&p, &fin, 80), (Strict, Some("foo/finance")));
        assert_eq!(
            effective_mode(&p, &fin, 8080),
            (Disable, Some("foo/finance"))
        );
        assert_eq!(effective_mode(&p, &fin, 9090).0, Strict);
        // Not selected: the namespace's.
        assert_eq!(
            effective_mode(&p, &labels(&[("app", "web")]), 8080).0,
            Permissive
        );
        // A workload policy with UNSET inherits the namespace's for ports it does not name.
        p.workload[1].mode = Unset;
        assert_eq!(effective_mode(&p, &fin, 80).0, Permissive);
        assert_eq!(effective_mode(&p, &fin, 8080).0, Disable);
        // The oldest matching workload policy wins.
        let mut first = policy("foo/first", Strict);
        first.selector = labels(&[("app", "finance")]);
        p.workload.insert(0, first);
        assert_eq!(effective_mode(&p, &fin, 8080), (Strict, Some("foo/first")));
    }

    #[test]
    fn reads_and_writes_the_json_shape() {
        let text = r#"{"mesh":{"name":"istio-system/default","mode":"STRICT"},
            "workload":[{"name":"foo/f","selector":{"app":"f"},"portLevelMtls":{"8080":"DISABLE"}}]}"#;
        let p: PeerAuthentication = serde_json::from_str(text).unwrap();
        assert_eq!(p.workload[0].port_level_mtls[&8080], MtlsMode::Disable);
        assert_eq!(p.workload[0].mode, MtlsMode::Unset);
        let again: PeerAuthentication =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(again, p);
        assert!(
            serde_json::from_str::<PeerAuthentication>(r#"{"mesh":{"name":"x","mode":"LOOSE"}}"#)
                .is_err()
        );
    }
}
