//! A `credentialName` Secret as the sidecar receives it from the CA (the Secret's PEM texts are
//! whatever a user put in it): parsing never panics, and what it accepts is complete (a chain
//! and a key, or at least one CA certificate, with revocation lists that parse when given: the
//! same parser reads a `caCrl` file).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustmesh_proxy::identity::credential::parse;
use rustmesh_xds::ca::FetchCredentialResponse;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(4, |b| *b == 0).map(String::from_utf8_lossy);
    let answer = FetchCredentialResponse {
        cert_chain: parts.next().unwrap_or_default().into_owned(),
        private_key: parts.next().unwrap_or_default().into_owned(),
        ca_certificates: parts.next().unwrap_or_default().into_owned(),
        crl: parts.next().unwrap_or_default().into_owned(),
    };
    let name = if which & 1 == 0 { "db" } else { "db-cacert" };
    if let Ok(c) = parse(name, &answer, 1) {
        if name == "db" {
            assert!(!c.chain.is_empty() && c.key.is_some());
        } else {
            assert!(!c.roots.is_empty());
            assert_eq!(c.crls.is_empty(), answer.crl.trim().is_empty());
        }
    }
});
