//! An issuer's JSON Web Key Set (RFC 7517), parsed once per configuration into the public keys
//! `ring` verifies with, and the signature check of a token against it.
//!
//! Parsing: each entry of `keys` is read as `jsonwebtoken`'s [`Jwk`] and its components decoded
//! with [`DecodingKey::from_jwk`]; the crate's own signature code is never called (it needs a
//! process-wide crypto provider, aws-lc-rs or RustCrypto, and this workspace's one crypto stack
//! is `ring`, through rustls). As in `jwt_verify_lib`, a key that cannot be used is skipped and
//! the set is refused only when none is left. Usable:
//!
//! | `kty` | `crv` | algorithms | checked here |
//! | --- | --- | --- | --- |
//! | `RSA` | | RS256/384/512, PS256/384/512 | modulus of 2048 to 8192 bits (`ring`'s range), `e` 3 or 65537 (`jwt_verify_lib`'s rule) |
//! | `EC` | `P-256`, `P-384` (none: from `alg`, else P-256) | ES256, ES384 | `x` and `y` of the curve's size; the point itself when a token is checked |
//! | `OKP` | `Ed25519` | EdDSA | `x` of 32 bytes |
//!
//! Refused by name: `oct` (HMAC: a shared secret in a key set anyone can fetch), `P-521`/ES512
//! (`ring` has no P-521), other key types and curves, and a key whose `alg` does not fit its type.
//! RSA keys under 2048 bits (which Envoy accepts) are refused: `ring` verifies nothing shorter.
//!
//! Verification ([`KeySet::verify`]) follows `jwt_verify_lib`: a key is a candidate unless both
//! it and the token have a `kid` and they differ, or the key has an `alg` other than the token's;
//! candidates are tried in the set's order; none → "Jwks doesn't have key to match kid or alg
//! from Jwt", none verifying → "Jwt verification fails". Keys are indexed by `kid`, so a token
//! with a `kid` only tries that key and the keys without one.

use std::collections::HashMap;
use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use ring::signature::{self, RsaParameters, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::Value;

use super::status::Status;
use super::token::Token;

/// The public keys of one issuer.
pub struct KeySet {
    keys: Vec<Key>,
    /// Positions of the keys with each `kid`.
    by_kid: HashMap<String, Vec<usize>>,
    /// Positions of the keys without a `kid` (candidates for every token).
    without_kid: Vec<usize>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.keys).finish()
    }
}

/// One usable key.
struct Key {
    kid: Option<String>,
    alg: Option<Algorithm>,
    material: Material,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.material {
            Material::Rsa { n, .. } => format!("RSA-{}", bit_len(n)),
            Material::P256(_) => "EC P-256".to_string(),
            Material::P384(_) => "EC P-384".to_string(),
            Material::Ed25519(_) => "OKP Ed25519".to_string(),
        };
        write!(f, "{kind} kid={:?} alg={:?}", self.kid, self.alg)
    }
}

/// The public key itself, in the form `ring` takes.
enum Material {
    /// Big-endian modulus and exponent.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (`04 || x || y`).
    P256(Vec<u8>),
    P384(Vec<u8>),
    /// The 32-byte public key.
    Ed25519(Vec<u8>),
}

impl KeySet {
    /// Parses a JSON Web Key Set. The error says why nothing could be used: not JSON, no `keys`
    /// array, or each key's reason.
    pub fn parse(text: &str) -> Result<KeySet, String> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("not a JSON document: {e}"))?;
        let Some(entries) = value.get("keys") else {
            return Err("has no \"keys\" field".into());
        };
        let Value::Array(entries) = entries else {
            return Err("\"keys\" is not an array".into());
        };
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            match key_of(entry) {
                Ok(key) => keys.push(key),
                Err(why) => skipped.push(format!("keys[{i}]: {why}")),
            }
        }
        if keys.is_empty() {
            return Err(if skipped.is_empty() {
                "has no key".into()
            } else {
                format!("has no usable key ({})", skipped.join("; "))
            });
        }
        let mut by_kid: HashMap<String, Vec<usize>> = HashMap::new();
        let mut without_kid = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match &key.kid {
                Some(kid) => by_kid.entry(kid.clone()).or_default().push(i),
                None => without_kid.push(i),
            }
        }
        Ok(KeySet {
            keys,
            by_kid,
            without_kid,
        })
    }

    /// Checks the token's signature with the candidate keys (see the module doc).
    pub fn verify(&self, token: &Token<'_>) -> Result<(), Status> {
        let positions: Vec<usize> = match &token.kid {
            None => (0..self.keys.len()).collect(),
            Some(kid) => {
                let mut p: Vec<usize> = self
                    .by_kid
                    .get(kid)
                    .into_iter()
                    .flatten()
                    .chain(&self.without_kid)
                    .copied()
                    .collect();
                p.sort_unstable();
                p
            }
        };
        let mut matched = false;
        for key in positions.into_iter().map(|i| &self.keys[i]) {
            if key.alg.is_some_and(|a| a != token.alg) {
                continue;
            }
            matched = true;
            if key.verifies(token)? {
                return Ok(());
            }
        }
        Err(if matched {
            Status::VerificationFail
        } else {
            Status::KidAlgMismatch
        })
    }
}

impl Key {
    /// Whether this key verifies the token's signature; a key of another type than the token's
    /// algorithm does not. An EdDSA signature of the wrong length ends the search, as in
    /// `jwt_verify_lib`.
    fn verifies(&self, token: &Token<'_>) -> Result<bool, Status> {
        let message = token.signing_input;
        let signature = token.signature.as_slice();
        let ok = match (&self.material, token.alg) {
            (Material::Rsa { n, e }, alg) => match rsa_parameters(alg) {
                Some(params) => RsaPublicKeyComponents { n, e }
                    .verify(params, message, signature)
                    .is_ok(),
                None => false,
            },
            (Material::P256(point), Algorithm::ES256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            (Material::P384(point), Algorithm::ES384) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            (Material::Ed25519(key), Algorithm::EdDSA) => {
                if signature.len() != 64 {
                    return Err(Status::Ed25519SignatureWrongLength);
                }
                UnparsedPublicKey::new(&signature::ED25519, key)
                    .verify(message, signature)
                    .is_ok()
            }
            _ => false,
        };
        Ok(ok)
    }
}

/// `ring`'s parameters for an RSA algorithm (2048 to 8192-bit keys; PSS with a salt as long as
/// the hash, as RFC 7518 3.5 requires).
fn rsa_parameters(alg: Algorithm) -> Option<&'static RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

/// One entry of `keys`, or why it cannot be used.
fn key_of(entry: &Value) -> Result<Key, String> {
    let Value::Object(fields) = entry else {
        return Err("not a JSON object".into());
    };
    let kty = match fields.get("kty") {
        Some(Value::String(k)) => k.as_str(),
        Some(_) => return Err("kty is not a string".into()),
        None => return Err("kty is missing".into()),
    };
    let mut fields = fields.clone();
    if kty == "EC" && !fields.contains_key("crv") {
        // jwt_verify_lib: an EC key without crv is on the curve of its alg, else P-256.
        let crv = match fields.get("alg").and_then(Value::as_str) {
            Some("ES384") => "P-384",
            Some("ES512") => "P-521",
            _ => "P-256",
        };
        fields.insert("crv".into(), Value::String(crv.into()));
    }
    let jwk: Jwk = serde_json::from_value(Value::Object(fields))
        .map_err(|e| format!("not a JSON Web Key: {e}"))?;
    let kid = jwk.common.key_id.clone();
    let alg =
        match entry.get("alg") {
            None => None,
            Some(Value::String(a)) if a.starts_with("HS") => {
                return Err(format!("alg {a} (HMAC, a shared secret) is refused"));
            }
            Some(Value::String(a)) if a == "ES512" => {
                return Err("alg ES512 (curve P-521) is not supported: ring has no P-521".into());
            }
            Some(Value::String(a)) => Some(Algorithm::from_str(a).map_err(|_| {
                format!("alg {a:?} is not a signature algorithm this proxy verifies")
            })?),
            Some(_) => return Err("alg is not a string".into()),
        };
    let material = match (&jwk.algorithm, kty) {
        (AlgorithmParameters::RSA(_), _) => {
            if alg.is_some_and(|a| rsa_parameters(a).is_none()) {
                return Err(format!("alg {alg:?} does not fit an RSA key"));
            }
            let key = decoded(&jwk)?;
            let DecodingKeyKind::RsaModulusExponent { n, e } = key.kind() else {
                return Err("RSA key without n and e".into());
            };
            rsa_material(n, e)?
        }
        (AlgorithmParameters::EllipticCurve(ec), _) => {
            let (want_alg, size) = match ec.curve {
                EllipticCurve::P256 => (Algorithm::ES256, 32),
                EllipticCurve::P384 => (Algorithm::ES384, 48),
                EllipticCurve::P521 => {
                    return Err("curve P-521 is not supported: ring has no P-521".into());
                }
                _ => return Err("crv does not name a curve for ECDSA".into()),
            };
            if alg.is_some_and(|a| a != want_alg) {
                return Err(format!(
                    "alg {alg:?} does not fit an EC key on curve {:?}",
                    ec.curve
                ));
            }
            let point = secret_or_der(decoded(&jwk)?)?;
            if point.len() != 1 + 2 * size {
                return Err(format!("x and y must be {size} bytes each"));
            }
            match want_alg {
                Algorithm::ES256 => Material::P256(point),
                _ => Material::P384(point),
            }
        }
        (AlgorithmParameters::OctetKeyPair(okp), _) => {
            if okp.curve != EllipticCurve::Ed25519 {
                return Err("OKP keys must be on curve Ed25519".into());
            }
            if alg.is_some_and(|a| a != Algorithm::EdDSA) {
                return Err(format!("alg {alg:?} does not fit an Ed25519 key"));
            }
            let x = secret_or_der(decoded(&jwk)?)?;
            if x.len() != signature::ED25519_PUBLIC_KEY_LEN {
                return Err("x must be 32 bytes".into());
            }
            Material::Ed25519(x)
        }
        (AlgorithmParameters::OctetKey(_), _) => {
            return Err("kty oct (HMAC shared secrets) is refused".into());
        }
        (_, "RSA") => return Err("RSA key without n and e as strings".into()),
        (_, "EC") => return Err("EC key without a supported crv, x and y".into()),
        (_, "OKP") => return Err("OKP key without crv Ed25519 and x".into()),
        (_, "oct") => return Err("kty oct (HMAC shared secrets) is refused".into()),
        (_, other) => return Err(format!("kty {other:?} is not supported")),
    };
    Ok(Key { kid, alg, material })
}

/// The key's components, base64url-decoded by `jsonwebtoken`.
fn decoded(jwk: &Jwk) -> Result<DecodingKey, String> {
    DecodingKey::from_jwk(jwk).map_err(|e| format!("bad key component: {e}"))
}

/// The raw bytes of a decoded EC point or OKP key.
fn secret_or_der(key: DecodingKey) -> Result<Vec<u8>, String> {
    match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => Ok(bytes.clone()),
        DecodingKeyKind::RsaModulusExponent { .. } => Err("unexpected RSA components".into()),
    }
}

/// Checks an RSA public key as far as can be done without a signature.
fn rsa_material(n: &[u8], e: &[u8]) -> Result<Material, String> {
    let bits = bit_len(n);
    if !(2048..=8192).contains(&bits) {
        return Err(format!(
            "RSA modulus of {bits} bits (2048 to 8192 are supported)"
        ));
    }
    let e_value = strip_zeros(e).iter().try_fold(0u64, |acc, b| {
        acc.checked_mul(256).map(|v| v + u64::from(*b))
    });
    if !matches!(e_value, Some(3 | 65537)) {
        return Err("RSA exponent must be 3 or 65537".into());
    }
    Ok(Material::Rsa {
        n: strip_zeros(n).to_vec(),
        e: strip_zeros(e).to_vec(),
    })
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}

/// The bit length of a big-endian unsigned integer.
fn bit_len(b: &[u8]) -> usize {
    let b = strip_zeros(b);
    match b.first() {
        None => 0,
        Some(first) => (b.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
    }
}
