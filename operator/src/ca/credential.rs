//! A DestinationRule's `credentialName`, served to the sidecar that may read it (Istio serves it
//! from istiod over SDS): the sidecar asks by Istio's SDS name (`<secret>` for `MUTUAL`'s
//! certificate and key, `<secret>-cacert` for the roots), authenticated by its token as for its
//! certificate, and gets the PEM texts of a Secret of **its own namespace** only, and only when
//! its service account may `list` Secrets there (a SubjectAccessReview: Istio's check, so the
//! mesh never lets a pod read a Secret it could not read itself).
//!
//! Istio's Secret shapes are read ([`answer`], pure, tested alone): a generic Secret with `cert`,
//! `key`, `cacert`, or a TLS Secret with `tls.crt`, `tls.key`, `ca.crt`; the roots of `<secret>`
//! come from a Secret `<secret>-cacert` when there is one, else from `<secret>`'s own CA key,
//! with the certificate revocation lists of the same Secret (`crl` or `ca.crl`), if any.
//! [`KubeSecrets`] reads Secrets (`get` by name, never `list`) and asks the API server.
//! Nothing read is logged or kept.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use rustmesh_xds::ca::{
    FetchCredentialResponse, KEY_CA_CRL, KEY_CA_CRT, KEY_CACERT, KEY_CERT, KEY_CRL, KEY_KEY,
    KEY_TLS_CRT, KEY_TLS_KEY,
};
use rustmesh_xds::identity::SpiffeId;
use rustmesh_xds::tls::SDS_CACERT_SUFFIX;

/// A Secret's `data`.
pub type SecretData = BTreeMap<String, Vec<u8>>;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where Secrets are read and who may read them: the API server ([`KubeSecrets`]), or a table
/// in tests.
pub trait SecretSource: Send + Sync + 'static {
    /// Secret `name` of `namespace`, `None` when there is none.
    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SecretData>, String>>;

    /// Whether `who`'s service account may `list` Secrets in its own namespace.
    fn may_list_secrets<'a>(&'a self, who: &'a SpiffeId) -> BoxFuture<'a, Result<bool, String>>;
}

/// Why a credential was not served; each names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The name is not a Secret's.
    #[error("{0}")]
    Name(String),
    /// The caller's service account may not list Secrets in its namespace.
    #[error(
        "service account {account} may not list Secrets in namespace {namespace}, which a \
         credentialName needs (as in Istio): grant it a Role with list on secrets"
    )]
    Forbidden {
        /// The namespace.
        namespace: String,
        /// The service account.
        account: String,
    },
    /// No such Secret in the caller's namespace.
    #[error(
        "no Secret {name} in namespace {namespace} (a credentialName names a Secret of the sidecar's own namespace)"
    )]
    NotFound {
        /// The namespace.
        namespace: String,
        /// The Secret.
        name: String,
    },
    /// The Secret lacks the keys asked for.
    #[error("Secret {namespace}/{name} has {wanted}; it has keys {found:?}")]
    Keys {
        /// The namespace.
        namespace: String,
        /// The Secret.
        name: String,
        /// Which keys were looked for.
        wanted: &'static str,
        /// Which keys it has (never values).
        found: Vec<String>,
    },
    /// A value is not text.
    #[error("Secret {namespace}/{name} key {key:?} is not UTF-8 PEM text")]
    NotText {
        /// The namespace.
        namespace: String,
        /// The Secret.
        name: String,
        /// The key.
        key: String,
    },
    /// The API server could not be asked.
    #[error("reading the Secret: {0}")]
    Api(String),
}

/// What a sidecar asked for: `<secret>` or `<secret>-cacert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted<'a> {
    /// The certificate and key of Secret `.0`.
    Certificate(&'a str),
    /// The CA certificates of credential `.0`.
    Roots(&'a str),
}

/// Reads an SDS name (without `kubernetes://`); a name that is no Secret's is refused.
pub fn wanted(name: &str) -> Result<Wanted<'_>, CredentialError> {
    let w = match name.strip_suffix(SDS_CACERT_SUFFIX) {
        Some(base) if !base.is_empty() => Wanted::Roots(base),
        _ => Wanted::Certificate(name),
    };
    let secret = match &w {
        Wanted::Certificate(s) | Wanted::Roots(s) => s,
    };
    match rustmesh_xds::ca::secret_name_problem(secret) {
        Some(why) => Err(CredentialError::Name(why)),
        None => Ok(w),
    }
}

fn text(
    data: &SecretData,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String, CredentialError> {
    String::from_utf8(data[key].clone()).map_err(|_| CredentialError::NotText {
        namespace: namespace.into(),
        name: name.into(),
        key: key.into(),
    })
}

fn ca_key(data: &SecretData) -> Option<&'static str> {
    [KEY_CACERT, KEY_CA_CRT]
        .into_iter()
        .find(|k| data.get(*k).is_some_and(|v| !v.is_empty()))
}

/// The answer to `wanted` in `namespace`, from the Secrets read: `primary` is Secret `<secret>`,
/// `cacert` is Secret `<secret>-cacert` (read for the roots only).
pub fn answer(
    wanted: &Wanted<'_>,
    namespace: &str,
    primary: Option<&SecretData>,
    cacert: Option<&SecretData>,
) -> Result<FetchCredentialResponse, CredentialError> {
    let keys = |d: &SecretData| d.keys().cloned().collect::<Vec<_>>();
    match *wanted {
        Wanted::Certificate(name) => {
            let data = primary.ok_or_else(|| CredentialError::NotFound {
                namespace: namespace.into(),
                name: name.into(),
            })?;
            let has = |k: &str| data.get(k).is_some_and(|v| !v.is_empty());
            let (cert, key) = if has(KEY_CERT) && has(KEY_KEY) {
                (KEY_CERT, KEY_KEY)
            } else if has(KEY_TLS_CRT) && has(KEY_TLS_KEY) {
                (KEY_TLS_CRT, KEY_TLS_KEY)
            } else {
                return Err(CredentialError::Keys {
                    namespace: namespace.into(),
                    name: name.into(),
                    wanted: "no certificate and key (cert and key, or tls.crt and tls.key)",
                    found: keys(data),
                });
            };
            Ok(FetchCredentialResponse {
                cert_chain: text(data, namespace, name, cert)?,
                private_key: text(data, namespace, name, key)?,
                ca_certificates: String::new(),
                crl: String::new(),
            })
        }
        Wanted::Roots(name) => {
            let own = format!("{name}{SDS_CACERT_SUFFIX}");
            let (data, from) = match (cacert, primary) {
                (Some(d), _) if ca_key(d).is_some() => (d, own.as_str()),
                (_, Some(d)) => (d, name),
                (Some(d), None) => (d, own.as_str()),
                (None, None) => {
                    return Err(CredentialError::NotFound {
                        namespace: namespace.into(),
                        name: format!("{name} (nor {own})"),
                    });
                }
            };
            let key = ca_key(data).ok_or_else(|| CredentialError::Keys {
                namespace: namespace.into(),
                name: from.into(),
                wanted: "no CA certificates (cacert or ca.crt)",
                found: keys(data),
            })?;
            let crl = match [KEY_CRL, KEY_CA_CRL]
                .into_iter()
                .find(|k| data.get(*k).is_some_and(|v| !v.is_empty()))
            {
                Some(k) => text(data, namespace, from, k)?,
                None => String::new(),
            };
            Ok(FetchCredentialResponse {
                cert_chain: String::new(),
                private_key: String::new(),
                ca_certificates: text(data, namespace, from, key)?,
                crl,
            })
        }
    }
}

/// Serves `name` to `who`: checks the name and the caller's right, reads the Secrets.
pub async fn fetch(
    source: &dyn SecretSource,
    who: &SpiffeId,
    name: &str,
) -> Result<FetchCredentialResponse, CredentialError> {
    let wanted = wanted(name)?;
    let namespace = who.namespace();
    if !source
        .may_list_secrets(who)
        .await
        .map_err(CredentialError::Api)?
    {
        return Err(CredentialError::Forbidden {
            namespace: namespace.to_string(),
            account: who.service_account().to_string(),
        });
    }
    let get = |n: String| async move {
        source
            .secret(namespace, &n)
            .await
            .map_err(CredentialError::Api)
    };
    match wanted {
        Wanted::Certificate(secret) => {
            let primary = get(secret.to_string()).await?;
            answer(&wanted, namespace, primary.as_ref(), None)
        }
        Wanted::Roots(secret) => {
            let cacert = get(format!("{secret}{SDS_CACERT_SUFFIX}")).await?;
            let primary = if cacert.as_ref().and_then(ca_key).is_some() {
                None
            } else {
                get(secret.to_string()).await?
            };
            answer(&wanted, namespace, primary.as_ref(), cacert.as_ref())
        }
    }
}

/// Secrets from the API server: `get` by name (the operator's ClusterRole), and a
/// SubjectAccessReview for the caller's right to list them.
#[derive(Clone)]
pub struct KubeSecrets {
    client: kube::Client,
}

impl KubeSecrets {
    /// Reads with `client` (needs `get` on secrets and `create` on subjectaccessreviews).
    pub fn new(client: kube::Client) -> Self {
        KubeSecrets { client }
    }
}

impl SecretSource for KubeSecrets {
    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SecretData>, String>> {
        Box::pin(async move {
            let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
                kube::Api::namespaced(self.client.clone(), namespace);
            let secret = api.get_opt(name).await.map_err(|e| e.to_string())?;
            Ok(secret.map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect()
            }))
        })
    }

    fn may_list_secrets<'a>(&'a self, who: &'a SpiffeId) -> BoxFuture<'a, Result<bool, String>> {
        use k8s_openapi::api::authorization::v1::{
            ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
        };
        Box::pin(async move {
            let ns = who.namespace();
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(format!(
                        "system:serviceaccount:{ns}:{}",
                        who.service_account()
                    )),
                    groups: Some(vec![
                        "system:serviceaccounts".into(),
                        format!("system:serviceaccounts:{ns}"),
                        "system:authenticated".into(),
                    ]),
                    resource_attributes: Some(ResourceAttributes {
                        namespace: Some(ns.to_string()),
                        verb: Some("list".into()),
                        resource: Some("secrets".into()),
                        ..ResourceAttributes::default()
                    }),
                    ..SubjectAccessReviewSpec::default()
                },
                ..SubjectAccessReview::default()
            };
            let answer = kube::Api::<SubjectAccessReview>::all(self.client.clone())
                .create(&kube::api::PostParams::default(), &review)
                .await
                .map_err(|e| e.to_string())?;
            Ok(answer.status.is_some_and(|s| s.allowed))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> SecretData {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn names_follow_istios_cacert_suffix() {
        assert_eq!(wanted("db").unwrap(), Wanted::Certificate("db"));
        assert_eq!(wanted("db-cacert").unwrap(), Wanted::Roots("db"));
        assert!(matches!(wanted("-cacert"), Err(CredentialError::Name(_))));
        assert!(matches!(wanted("Db"), Err(CredentialError::Name(_))));
        assert!(matches!(
            wanted("a/b-cacert"),
            Err(CredentialError::Name(_))
        ));
    }

    #[test]
    fn a_generic_or_tls_secret_gives_certificate_and_key() {
        let generic = data(&[("cert", "C"), ("key", "K"), ("cacert", "R")]);
        let r = answer(&Wanted::Certificate("db"), "ns", Some(&generic), None).unwrap();
        assert_eq!((r.cert_chain.as_str(), r.private_key.as_str()), ("C", "K"));
        assert!(r.ca_certificates.is_empty());
        let tls = data(&[("tls.crt", "C2"), ("tls.key", "K2")]);
        let r = answer(&Wanted::Certificate("db"), "ns", Some(&tls), None).unwrap();
        assert_eq!(
            (r.cert_chain.as_str(), r.private_key.as_str()),
            ("C2", "K2")
        );
        let e = answer(
            &Wanted::Certificate("db"),
            "ns",
            Some(&data(&[("cert", "C")])),
            None,
        )
        .unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("ns/db") && message.contains("[\"cert\"]"),
            "{message}"
        );
        assert!(matches!(
            answer(&Wanted::Certificate("db"), "ns", None, None),
            Err(CredentialError::NotFound { .. })
        ));
        let binary = SecretData::from([
            ("cert".to_string(), vec![0xff, 0xfe]),
            ("key".to_string(), b"K".to_vec()),
        ]);
        assert!(matches!(
            answer(&Wanted::Certificate("db"), "ns", Some(&binary), None),
            Err(CredentialError::NotText { .. })
        ));
    }

    #[test]
    fn roots_come_from_the_cacert_secret_first_then_the_secret_itself() {
        let own = data(&[("cert", "C"), ("key", "K"), ("ca.crt", "R1")]);
        let separate = data(&[("cacert", "R2")]);
        let roots = |p, c| answer(&Wanted::Roots("db"), "ns", p, c).map(|r| r.ca_certificates);
        assert_eq!(roots(Some(&own), Some(&separate)).unwrap(), "R2");
        assert_eq!(roots(Some(&own), None).unwrap(), "R1");
        assert_eq!(roots(None, Some(&separate)).unwrap(), "R2");
        let no_ca = data(&[("cert", "C"), ("key", "K")]);
        let e = roots(Some(&no_ca), None).unwrap_err().to_string();
        assert!(e.contains("cacert or ca.crt") && e.contains("ns/db"), "{e}");
        assert!(matches!(
            roots(None, None),
            Err(CredentialError::NotFound { .. })
        ));
        // The revocation lists come with the roots, from the same Secret.
        let crl = |p, c| answer(&Wanted::Roots("db"), "ns", p, c).map(|r| r.crl);
        let tls = data(&[
            ("tls.crt", "C"),
            ("tls.key", "K"),
            ("ca.crt", "R1"),
            ("ca.crl", "L1"),
        ]);
        let generic = data(&[("cacert", "R2"), ("crl", "L2")]);
        assert_eq!(crl(Some(&tls), None).unwrap(), "L1");
        assert_eq!(crl(Some(&tls), Some(&generic)).unwrap(), "L2");
        assert_eq!(
            crl(Some(&tls), Some(&separate)).unwrap(),
            "",
            "R2's Secret has none"
        );
        let certificate = answer(&Wanted::Certificate("db"), "ns", Some(&tls), None).unwrap();
        assert!(certificate.crl.is_empty(), "only the roots carry lists");
    }

    /// A table of Secrets and of the accounts that may list them.
    struct Table {
        secrets: BTreeMap<(String, String), SecretData>,
        readers: Vec<String>,
    }

    impl SecretSource for Table {
        fn secret<'a>(
            &'a self,
            namespace: &'a str,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<SecretData>, String>> {
            let found = self
                .secrets
                .get(&(namespace.to_string(), name.to_string()))
                .cloned();
            Box::pin(async move { Ok(found) })
        }

        fn may_list_secrets<'a>(
            &'a self,
            who: &'a SpiffeId,
        ) -> BoxFuture<'a, Result<bool, String>> {
            let ok = self.readers.contains(&who.to_string());
            Box::pin(async move { Ok(ok) })
        }
    }

    #[tokio::test]
    async fn only_a_secret_of_the_callers_namespace_and_only_with_its_right() {
        let table = Table {
            secrets: BTreeMap::from([
                (
                    ("shop".to_string(), "db".to_string()),
                    data(&[("tls.crt", "C"), ("tls.key", "K"), ("ca.crt", "R")]),
                ),
                (
                    ("other".to_string(), "db".to_string()),
                    data(&[("tls.crt", "X"), ("tls.key", "Y")]),
                ),
            ]),
            readers: vec!["spiffe://cluster.local/ns/shop/sa/app".into()],
        };
        let app = SpiffeId::new("cluster.local", "shop", "app").unwrap();
        let r = fetch(&table, &app, "db").await.unwrap();
        assert_eq!(r.cert_chain, "C");
        assert_eq!(
            fetch(&table, &app, "db-cacert")
                .await
                .unwrap()
                .ca_certificates,
            "R"
        );
        // Another account of the same namespace without the right is refused.
        let nosy = SpiffeId::new("cluster.local", "shop", "nosy").unwrap();
        let e = fetch(&table, &nosy, "db").await.unwrap_err();
        assert!(matches!(e, CredentialError::Forbidden { .. }), "{e}");
        // A name cannot reach another namespace.
        assert!(matches!(
            fetch(&table, &app, "other/db").await,
            Err(CredentialError::Name(_))
        ));
        assert!(matches!(
            fetch(&table, &app, "missing").await,
            Err(CredentialError::NotFound { .. })
        ));
    }
}
