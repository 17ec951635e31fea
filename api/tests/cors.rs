//! A VirtualService's `corsPolicy` is rendered (no longer refused); bad values are refused naming
//! the field, as Istio's validation does.

use rustmesh_api::load;

const HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  namespace: bookinfo\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n    corsPolicy:\n";

/// The fields of the findings of a document that must be refused.
fn refused(cors: &str) -> Vec<String> {
    let err = load(&format!("{HEAD}{cors}")).expect_err("document should be refused");
    err.field_errors().iter().map(|f| f.field.clone()).collect()
}

#[test]
fn a_full_policy_is_accepted() {
    load(&format!(
        "{HEAD}      allowOrigins:\n      - exact: https://example.com\n      - prefix: https://a.\n      - regex: 'https://.*\\.example\\.org'\n      allowOrigin: [https://old.example.com]\n      allowMethods: [GET, POST, OPTIONS]\n      allowHeaders: [content-type, x-token]\n      exposeHeaders: ['*']\n      maxAge: 24h\n      allowCredentials: true\n      unmatchedPreflights: IGNORE\n"
    ))
    .expect("a valid corsPolicy is accepted");
}

#[test]
fn bad_values_are_refused_naming_the_field() {
    assert_eq!(
        refused("      allowOrigins:\n      - exact: https://example.com\n      - regex: '('\n"),
        ["spec.http[0].corsPolicy.allowOrigins[1].regex"]
    );
    assert_eq!(
        refused("      allowMethods: [GET, FETCH]\n"),
        ["spec.http[0].corsPolicy.allowMethods[1]"]
    );
    assert_eq!(
        refused("      allowHeaders: ['bad header']\n      exposeHeaders: ['x:y']\n"),
        [
            "spec.http[0].corsPolicy.allowHeaders[0]",
            "spec.http[0].corsPolicy.exposeHeaders[0]"
        ]
    );
    assert_eq!(
        refused("      maxAge: 1.5s\n"),
        ["spec.http[0].corsPolicy.maxAge"]
    );
    assert_eq!(
        refused("      unmatchedPreflights: DROP\n"),
        ["spec.http[0].corsPolicy.unmatchedPreflights"]
    );
}
