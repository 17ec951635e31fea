//! Why a token is refused, each reason with the text Envoy's `jwt_authn` filter answers with
//! (the response body, from `jwt_verify_lib`'s status strings) and its HTTP status: 403 for
//! audiences that are not allowed, 401 for everything else.
//!
//! A leaf: nothing else in the crate is used here.

use http::StatusCode;

/// A refusal reason. The variants follow `jwt_verify_lib`'s statuses, so a client sees the same
/// body it would from an Istio sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not three non-empty sections separated by exactly two dots.
    BadFormat,
    /// The header section is not base64url.
    HeaderBadBase64,
    /// The header is not a JSON object.
    HeaderBadJson,
    /// `alg` missing or not a string.
    HeaderBadAlg,
    /// `alg` names an algorithm this verifier refuses (`none`, HMAC, ES512, unknown).
    HeaderNotImplementedAlg,
    /// `kid` is present but not a string.
    HeaderBadKid,
    /// The payload section is not base64url.
    PayloadBadBase64,
    /// The payload is not a JSON object.
    PayloadBadJson,
    /// `iss` is present but not a string.
    IssNotString,
    /// `sub` is present but not a string.
    SubNotString,
    /// `iat` is present but not a number.
    IatNotInteger,
    /// `iat` is negative or does not fit 63 bits.
    IatOutOfRange,
    /// `nbf` is present but not a number.
    NbfNotInteger,
    /// `nbf` is negative or does not fit 63 bits.
    NbfOutOfRange,
    /// `exp` is present but not a number.
    ExpNotInteger,
    /// `exp` is negative or does not fit 63 bits.
    ExpOutOfRange,
    /// `jti` is present but not a string.
    JtiNotString,
    /// `aud` is neither a string nor a list of strings.
    AudNotString,
    /// The signature section is not base64url.
    SignatureBadBase64,
    /// An EdDSA signature that is not 64 bytes.
    Ed25519SignatureWrongLength,
    /// No rule that reads the location the token came from has its `iss`.
    UnknownIssuer,
    /// `aud` names none of the rule's `audiences` (403).
    AudienceNotAllowed,
    /// `nbf` is later than now plus the clock skew.
    NotYetValid,
    /// `exp` is earlier than now minus the clock skew.
    Expired,
    /// The signature did not verify with any candidate key, or the token was refused before
    /// decoding (too long, unknown critical header); the detail says which.
    VerificationFail,
    /// No key of the issuer's set has the token's `kid` (or an `alg` equal to the token's).
    KidAlgMismatch,
    /// The issuer's key set could not be had (`jwksError`): every token of it is refused.
    JwksFetchFail,
    /// More tokens in one request than the verifier checks.
    MultipleTokens,
}

impl Status {
    /// The response body Envoy sends for this reason.
    pub fn message(self) -> &'static str {
        match self {
            Status::BadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            Status::HeaderBadBase64 => "Jwt header is an invalid Base64url encoded",
            Status::HeaderBadJson => "Jwt header is an invalid JSON",
            Status::HeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            Status::HeaderNotImplementedAlg => "Jwt header [alg] is not supported",
            Status::HeaderBadKid => "Jwt header [kid] field is not a string",
            Status::PayloadBadBase64 => "Jwt payload is an invalid Base64url encoded",
            Status::PayloadBadJson => "Jwt payload is an invalid JSON",
            Status::IssNotString => "Jwt payload [iss] field is not a string",
            Status::SubNotString => "Jwt payload [sub] field is not a string",
            Status::IatNotInteger => "Jwt payload [iat] field is not an integer",
            Status::IatOutOfRange => "Jwt payload [iat] field is not a positive 64 bit integer",
            Status::NbfNotInteger => "Jwt payload [nbf] field is not an integer",
            Status::NbfOutOfRange => "Jwt payload [nbf] field is not a positive 64 bit integer",
            Status::ExpNotInteger => "Jwt payload [exp] field is not an integer",
            Status::ExpOutOfRange => "Jwt payload [exp] field is not a positive 64 bit integer",
            Status::JtiNotString => "Jwt payload [jti] field is not a string",
            Status::AudNotString => "Jwt payload [aud] field is not a string or string list",
            Status::SignatureBadBase64 => "Jwt signature is an invalid Base64url encoded",
            Status::Ed25519SignatureWrongLength => "Jwt ED25519 signature is wrong length",
            Status::UnknownIssuer => "Jwt issuer is not configured",
            Status::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            Status::NotYetValid => "Jwt not yet valid",
            Status::Expired => "Jwt is expired",
            Status::VerificationFail => "Jwt verification fails",
            Status::KidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            Status::JwksFetchFail => "Jwks remote fetch is failed",
            Status::MultipleTokens => "Found multiple Jwt tokens",
        }
    }

    /// The HTTP status of the refusal: Envoy answers 403 when only the audience is wrong (the
    /// token is genuine, just not for this service) and 401 otherwise.
    pub fn http_status(self) -> StatusCode {
        match self {
            Status::AudienceNotAllowed => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}
