//! Private PKI for the TLS scenarios: a CA made with rcgen, a server certificate for some names
//! and a client certificate, in PEM; and Secrets holding them, applied server-side. Keys live in
//! the test process and in the Secrets of the test namespaces only (deleted with them).

use crate::{Ctx, MANAGER};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A private CA, a server's certificate and a client's, in PEM (`(certificate, key)`).
pub struct Pki {
    pub ca: String,
    pub server: (String, String),
    pub client: (String, String),
}

impl Pki {
    /// A new CA (common name `ca_cn`), a server certificate for `server_names` (common name
    /// `server_cn`) and a client certificate with common name `client_cn`.
    pub fn new(ca_cn: &str, server_cn: &str, server_names: Vec<String>, client_cn: &str) -> Pki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.distinguished_name.push(DnType::CommonName, ca_cn);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_pem = ca.self_signed(&ca_key).expect("CA certificate").pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |cn: &str, names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
            (cert.pem(), key.serialize_pem())
        };
        Pki {
            server: leaf(server_cn, server_names, ExtendedKeyUsagePurpose::ServerAuth),
            client: leaf(client_cn, vec![], ExtendedKeyUsagePurpose::ClientAuth),
            ca: ca_pem,
        }
    }
}

/// Applies Secret `ns/name` of type `kind` (`kubernetes.io/tls`, `Opaque`) holding `data`.
pub async fn put_secret(ctx: &Ctx, ns: &str, name: &str, kind: &str, data: &[(&str, &str)]) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        type_: Some(kind.into()),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap_or_else(|e| panic!("applying Secret {ns}/{name}: {e}"));
}
