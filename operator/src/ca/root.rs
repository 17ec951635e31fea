//! Where the CA's keys live and how its root reaches the workloads, as in Istio.
//!
//! - A user-provided Secret `cacerts` in the root namespace (Istio's plug-in CA: `ca-cert.pem`,
//!   `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`) wins.
//! - Otherwise the self-signed root in Secret `istio-ca-secret` is used, created on the first
//!   start. Creation is a plain `create`: when two replicas race, one wins and the other reads
//!   the winner's, so the mesh never has two roots by accident.
//! - The trust bundle is published as ConfigMap `istio-ca-root-cert` (key `root-cert.pem`) in
//!   each namespace by server-side apply with the operator's field manager.
//!
//! The key is only ever in the Secret and in memory; it is never logged (see
//! [`Material`]'s `Debug`).

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rustmesh_xds::well_known::{CA_ROOT_CERT_KEY, CA_ROOT_CONFIGMAP, OPERATOR_FIELD_MANAGER};

use super::authority::{Material, MaterialError};

/// The plug-in CA's Secret (user-provided).
pub const PLUGGED_SECRET: &str = "cacerts";
/// The self-signed CA's Secret (created by the operator).
pub const SELF_SIGNED_SECRET: &str = "istio-ca-secret";

/// The Secret keys, Istio's names.
pub const CA_CERT: &str = "ca-cert.pem";
/// The signing key.
pub const CA_KEY: &str = "ca-key.pem";
/// The signing certificate's chain.
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// The root bundle.
pub const ROOT_CERT: &str = "root-cert.pem";

/// Which Secret the CA's material came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `cacerts`, provided by the user.
    Plugged,
    /// `istio-ca-secret`, already there.
    SelfSigned,
    /// `istio-ca-secret`, created now.
    Created,
}

/// Why the CA could not get its material.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// A Secret's content is unusable; names the Secret and the key.
    #[error("Secret {namespace}/{secret}: {source}")]
    Material {
        /// Its namespace.
        namespace: String,
        /// Its name.
        secret: &'static str,
        /// What is wrong.
        #[source]
        source: MaterialError,
    },
    /// The API server refused or failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

fn text(secret: &Secret, key: &'static str, required: bool) -> Result<String, MaterialError> {
    let data = secret.data.as_ref().and_then(|d| d.get(key));
    match data {
        Some(ByteString(bytes)) => String::from_utf8(bytes.clone()).map_err(|_| MaterialError {
            what: key,
            reason: "not UTF-8 PEM".into(),
        }),
        None if required => Err(MaterialError {
            what: key,
            reason: "missing".into(),
        }),
        None => Ok(String::new()),
    }
}

/// The material in a CA Secret. `root-cert.pem` defaults to `ca-cert.pem` (a self-signed root
/// signs with itself); `cert-chain.pem` may be absent.
pub fn material_from_secret(secret: &Secret) -> Result<Material, MaterialError> {
    let ca_cert = text(secret, CA_CERT, true)?;
    let ca_key = text(secret, CA_KEY, true)?;
    let cert_chain = text(secret, CERT_CHAIN, false)?;
    let mut root_cert = text(secret, ROOT_CERT, false)?;
    if root_cert.is_empty() {
        root_cert = ca_cert.clone();
    }
    Ok(Material {
        ca_cert,
        ca_key,
        cert_chain,
        root_cert,
    })
}

/// The `istio-ca-secret` Secret holding `material`.
pub fn secret_for(namespace: &str, material: &Material) -> Secret {
    let data: BTreeMap<String, ByteString> = [
        (CA_CERT, &material.ca_cert),
        (CA_KEY, &material.ca_key),
        (CERT_CHAIN, &material.cert_chain),
        (ROOT_CERT, &material.root_cert),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
    .collect();
    Secret {
        metadata: kube::core::ObjectMeta {
            name: Some(SELF_SIGNED_SECRET.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        type_: Some("istio.io/ca-root".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// The `istio-ca-root-cert` ConfigMap carrying `bundle`.
pub fn root_configmap(namespace: &str, bundle: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::core::ObjectMeta {
            name: Some(CA_ROOT_CONFIGMAP.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "istio.io/config".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            CA_ROOT_CERT_KEY.to_string(),
            bundle.to_string(),
        )])),
        ..Default::default()
    }
}

fn api_error(what: String) -> impl FnOnce(kube::Error) -> RootError {
    move |source| RootError::Api { what, source }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

async fn get_secret(secrets: &Api<Secret>, name: &str) -> Result<Option<Secret>, RootError> {
    match secrets.get(name).await {
        Ok(s) => Ok(Some(s)),
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(api_error(format!("reading Secret {name}"))(e)),
    }
}

/// The CA's material from the root namespace `namespace`: `cacerts` if the user provided it,
/// else `istio-ca-secret`, created with a new self-signed root for `trust_domain` if absent.
pub async fn load_or_create(
    client: &Client,
    namespace: &str,
    trust_domain: &str,
) -> Result<(Material, Source), RootError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let from = |secret: &'static str| {
        move |source| RootError::Material {
            namespace: namespace.to_string(),
            secret,
            source,
        }
    };
    if let Some(s) = get_secret(&secrets, PLUGGED_SECRET).await? {
        return Ok((
            material_from_secret(&s).map_err(from(PLUGGED_SECRET))?,
            Source::Plugged,
        ));
    }
    if let Some(s) = get_secret(&secrets, SELF_SIGNED_SECRET).await? {
        return Ok((
            material_from_secret(&s).map_err(from(SELF_SIGNED_SECRET))?,
            Source::SelfSigned,
        ));
    }
    let fresh = Material::self_signed_root(trust_domain, SystemTime::now())
        .map_err(from(SELF_SIGNED_SECRET))?;
    match secrets
        .create(&PostParams::default(), &secret_for(namespace, &fresh))
        .await
    {
        Ok(_) => Ok((fresh, Source::Created)),
        // Another replica created it first: use theirs.
        Err(e) if is_status(&e, 409) => {
            let s = get_secret(&secrets, SELF_SIGNED_SECRET)
                .await?
                .ok_or_else(|| RootError::Material {
                    namespace: namespace.to_string(),
                    secret: SELF_SIGNED_SECRET,
                    source: MaterialError {
                        what: CA_CERT,
                        reason: "created by another replica, then gone".into(),
                    },
                })?;
            Ok((
                material_from_secret(&s).map_err(from(SELF_SIGNED_SECRET))?,
                Source::SelfSigned,
            ))
        }
        Err(e) => Err(api_error(format!("creating Secret {SELF_SIGNED_SECRET}"))(
            e,
        )),
    }
}

/// Publishes the trust bundle to `namespace` (server-side apply, operator's field manager).
pub async fn publish_root(client: &Client, namespace: &str, bundle: &str) -> Result<(), RootError> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    cms.patch(
        CA_ROOT_CONFIGMAP,
        &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
        &Patch::Apply(root_configmap(namespace, bundle)),
    )
    .await
    .map(|_| ())
    .map_err(api_error(format!(
        "applying ConfigMap {namespace}/{CA_ROOT_CONFIGMAP}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_round_trips_and_missing_keys_are_named() {
        let material = Material::self_signed_root("cluster.local", SystemTime::now()).unwrap();
        let secret = secret_for("istio-system", &material);
        assert_eq!(material_from_secret(&secret).unwrap(), material);
        // A plug-in Secret without root-cert.pem trusts its ca-cert.pem.
        let mut partial = secret.clone();
        let data = partial.data.as_mut().unwrap();
        data.remove(ROOT_CERT);
        data.remove(CERT_CHAIN);
        let loaded = material_from_secret(&partial).unwrap();
        assert_eq!(loaded.root_cert, material.ca_cert);
        partial.data.as_mut().unwrap().remove(CA_KEY);
        let err = material_from_secret(&partial).unwrap_err();
        assert_eq!((err.what, err.reason.as_str()), (CA_KEY, "missing"));
    }

    #[test]
    fn the_root_configmap_has_istios_name_and_key() {
        let cm = root_configmap("bookinfo", "PEM");
        assert_eq!(cm.metadata.name.as_deref(), Some("istio-ca-root-cert"));
        assert_eq!(cm.data.unwrap()["root-cert.pem"], "PEM");
    }
}
