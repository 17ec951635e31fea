//! Who is asking for a certificate: the caller's projected service-account token, checked by
//! the Kubernetes API server (TokenReview), as Istio's CA does.
//!
//! The sidecar presents a token minted for the audience [`AUDIENCE`] (a projected volume the
//! webhook injects). The API server says whether it is valid, unexpired, bound to a live pod,
//! and for that audience; its username `system:serviceaccount:<namespace>:<name>` is the only
//! identity the CA will sign. [`identity`] reads a review's answer (pure, tested alone);
//! [`Reviewer`] asks the API server. Tokens are never logged or kept.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};
use rustmesh_xds::identity::SpiffeId;

/// The audience workload tokens must be minted for (Istio's default `TOKEN_AUDIENCES`).
pub use rustmesh_xds::ca::TOKEN_AUDIENCE as AUDIENCE;

/// The largest token accepted (bytes). Kubernetes tokens are about 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a caller was not authenticated. Never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No bearer token in the request.
    #[error("no service-account token (the request has no bearer credential)")]
    Missing,
    /// The token is longer than [`MAX_TOKEN_BYTES`].
    #[error("the token is {0} bytes, the limit is {MAX_TOKEN_BYTES}")]
    TooLarge(usize),
    /// The API server did not authenticate the token (expired, revoked, wrong audience...).
    #[error("the API server rejected the token: {0}")]
    Rejected(String),
    /// Authenticated, but not for the CA's audience.
    #[error("the token is not for audience {AUDIENCE:?} (it is for {0:?})")]
    Audience(Vec<String>),
    /// Authenticated, but not as a service account.
    #[error("the token authenticates {0:?}, not a service account")]
    NotServiceAccount(String),
    /// The service account's name does not make a SPIFFE id.
    #[error("the token's service account gives no valid identity: {0}")]
    Identity(String),
    /// The TokenReview could not be made (API server unreachable, forbidden...).
    #[error("TokenReview failed: {0}")]
    Api(String),
}

/// The identity a TokenReview's answer authenticates, in `trust_domain`.
pub fn identity(status: &TokenReviewStatus, trust_domain: &str) -> Result<SpiffeId, AuthError> {
    if status.authenticated != Some(true) {
        return Err(AuthError::Rejected(
            status
                .error
                .clone()
                .unwrap_or_else(|| "not authenticated".into()),
        ));
    }
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == AUDIENCE) {
        return Err(AuthError::Audience(audiences));
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.clone())
        .unwrap_or_default();
    let Some((namespace, account)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return Err(AuthError::NotServiceAccount(username));
    };
    SpiffeId::new(trust_domain, namespace, account).map_err(|e| AuthError::Identity(e.to_string()))
}

/// Asks the API server who a token is.
#[derive(Clone)]
pub struct Reviewer {
    client: Client,
    trust_domain: String,
}

impl Reviewer {
    /// A reviewer using `client` (its service account needs `create` on `tokenreviews`).
    pub fn new(client: Client, trust_domain: &str) -> Self {
        Reviewer {
            client,
            trust_domain: trust_domain.to_string(),
        }
    }

    /// The identity `token` authenticates for [`AUDIENCE`].
    pub async fn authenticate(&self, token: &str) -> Result<SpiffeId, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge(token.len()));
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Api(e.to_string()))?;
        identity(&answer.status.unwrap_or_default(), &self.trust_domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(authenticated: bool, user: &str, audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(user.to_string()),
                ..UserInfo::default()
            }),
            error: (!authenticated).then(|| "token has expired".to_string()),
        }
    }

    #[test]
    fn a_service_account_for_the_ca_audience_is_its_spiffe_id() {
        let id = identity(
            &status(true, "system:serviceaccount:bookinfo:reviews", &[AUDIENCE]),
            "cluster.local",
        )
        .unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/bookinfo/sa/reviews"
        );
    }

    #[test]
    fn everything_else_is_refused_naming_why() {
        let td = "cluster.local";
        assert_eq!(
            identity(&status(false, "", &[]), td),
            Err(AuthError::Rejected("token has expired".into()))
        );
        assert_eq!(
            identity(
                &status(
                    true,
                    "system:serviceaccount:a:b",
                    &["https://kubernetes.default.svc"]
                ),
                td
            ),
            Err(AuthError::Audience(vec![
                "https://kubernetes.default.svc".into()
            ]))
        );
        assert_eq!(
            identity(&status(true, "alice", &[AUDIENCE]), td),
            Err(AuthError::NotServiceAccount("alice".into()))
        );
        assert!(matches!(
            identity(
                &status(true, "system:serviceaccount:a/b:c", &[AUDIENCE]),
                td
            ),
            Err(AuthError::Identity(_))
        ));
        assert!(matches!(
            identity(&TokenReviewStatus::default(), td),
            Err(AuthError::Rejected(_))
        ));
    }
}
