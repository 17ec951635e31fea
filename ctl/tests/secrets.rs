//! `rustmeshctl proxy-config secret`: the table from a fixed `/certs` document (pure, with a
//! fixed clock), then the real binary with `--admin-url` against a stub admin API serving
//! `/certs` (the harness of `tests/admin_api.rs`), and the refusal of `--file`.

mod support;

use rustmesh_ctl::secrets::{self, Certs, NO_SECRETS, format_rfc3339, parse_rfc3339};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{Reply, config_dump, ctl, failure, fixture, fixture_text, serve, stdout};

fn at(rfc3339: &str) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(parse_rfc3339(rfc3339).unwrap() as u64)
}

fn certs_fixture() -> Certs {
    Certs::from_json("certs.json", &fixture_text("certs")).unwrap()
}

#[test]
fn the_table_is_istioctls() {
    assert_eq!(
        secrets::render(&certs_fixture(), at("2026-12-04T06:00:00Z")),
        "\
RESOURCE NAME     TYPE           STATUS     VALID CERT     SERIAL NUMBER                        NOT AFTER                NOT BEFORE
default           Cert Chain     ACTIVE     true           6fbee254c22900615cb1f74e3d2f1713     2026-12-05T05:49:12Z     2026-12-04T05:49:12Z
ROOTCA            CA             ACTIVE     true           193a543fe2b0d9cd4847675394dfc54      2036-11-18T09:12:40Z     2026-11-20T09:12:40Z
"
    );
}

#[test]
fn an_expired_leaf_is_not_valid_and_the_root_still_is() {
    let out = secrets::render(&certs_fixture(), at("2026-12-06T00:00:00Z"));
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..4], ["default", "Cert", "Chain", "ACTIVE"]);
    assert_eq!(rows[0][4], "false");
    assert_eq!(rows[1][..4], ["ROOTCA", "CA", "ACTIVE", "true"]);
    // Not yet valid either.
    let out = secrets::render(&certs_fixture(), at("2026-11-01T00:00:00Z"));
    assert!(out.lines().skip(1).all(|l| l.contains(" false ")), "{out}");
}

#[test]
fn no_certificate_prints_istioctls_sentence() {
    let certs = Certs::from_json("test", r#"{"certificates": []}"#).unwrap();
    assert_eq!(secrets::render(&certs, SystemTime::now()), NO_SECRETS);
    assert_eq!(NO_SECRETS, "No active or warming secrets found.\n");
}

/// A `/certs` document like the sidecar's, valid from an hour ago for a day (the leaf) and for
/// ten years (the root), with the table it must give.
fn live_certs() -> (String, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let t = format_rfc3339;
    let doc = json!({"certificates": [{
        "ca_cert": [{"path": "ROOTCA", "serial_number": "00c0ffee", "subject_alt_names": [],
            "days_until_expiration": "3650",
            "valid_from": t(now - 86400), "expiration_time": t(now + 3650 * 86400)}],
        "cert_chain": [{"path": "default", "serial_number": "5eed", "days_until_expiration": "0",
            "subject_alt_names": [{"uri": "spiffe://cluster.local/ns/default/sa/productpage"}],
            "valid_from": t(now - 3600), "expiration_time": t(now + 23 * 3600)}],
    }]});
    let table = format!(
        "\
RESOURCE NAME     TYPE           STATUS     VALID CERT     SERIAL NUMBER     NOT AFTER                NOT BEFORE
default           Cert Chain     ACTIVE     true           5eed              {}     {}
ROOTCA            CA             ACTIVE     true           c0ffee            {}     {}
",
        t(now + 23 * 3600),
        t(now - 3600),
        t(now + 3650 * 86400),
        t(now - 86400),
    );
    (doc.to_string(), table)
}

fn proxy_with_certs(certs: String) -> support::Server {
    let document = fixture_text("productpage");
    serve(move |_, target| match target {
        "/config_dump?include_eds" => config_dump(&document, "include_eds"),
        "/certs" => Reply::json(200, certs.clone()),
        _ => Reply::text(404, "not found\n"),
    })
}

#[test]
fn secret_over_the_admin_api() {
    let (doc, table) = live_certs();
    let proxy = proxy_with_certs(doc.clone());
    for alias in ["secret", "secrets", "s"] {
        let out = stdout(&ctl(&["pc", alias, "--admin-url", &proxy.url()]));
        assert_eq!(out, table, "{alias}");
    }
    assert_eq!(
        proxy.requests(),
        ["GET /config_dump?include_eds", "GET /certs"].repeat(3)
    );

    // `-o json` and `-o yaml` print the document as read.
    let served: Value = serde_json::from_str(&doc).unwrap();
    let out = stdout(&ctl(&[
        "proxy-config",
        "secret",
        "--admin-url",
        &proxy.url(),
        "-o",
        "json",
    ]));
    assert!(out.starts_with("{\n    \"certificates\": [\n"), "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), served);
    let out = stdout(&ctl(&[
        "pc",
        "s",
        "--admin-url",
        &proxy.url(),
        "-o",
        "yaml",
    ]));
    assert_eq!(serde_norway::from_str::<Value>(&out).unwrap(), served);
}

#[test]
fn a_sidecar_without_a_certificate() {
    let proxy = proxy_with_certs(r#"{"certificates": []}"#.into());
    let out = stdout(&ctl(&["pc", "secret", "--admin-url", &proxy.url()]));
    assert_eq!(out, "No active or warming secrets found.\n");
    let out = stdout(&ctl(&[
        "pc",
        "secret",
        "--admin-url",
        &proxy.url(),
        "-o",
        "json",
    ]));
    assert_eq!(out, "{\n    \"certificates\": []\n}\n");
}

#[test]
fn a_sidecar_without_certs_or_with_another_shape_says_so() {
    let document = fixture_text("productpage");
    let proxy = serve(move |_, target| match target {
        "/config_dump?include_eds" => config_dump(&document, "include_eds"),
        _ => Reply::text(404, "no such admin endpoint\n"),
    });
    assert_eq!(
        failure(&ctl(&["pc", "secret", "--admin-url", &proxy.url()])),
        format!(
            "Error: the proxy admin API at {} answered 404 to GET /certs: no such admin endpoint",
            proxy.url()
        )
    );

    let proxy = proxy_with_certs(
        r#"{"certificates": [{"cert_chain": [{"path": "default",
            "valid_from": "Fri, 04 Dec 2026 05:49:12 +0000"}]}]}"#
            .into(),
    );
    assert_eq!(
        failure(&ctl(&["pc", "secret", "--admin-url", &proxy.url()])),
        format!(
            "Error: the certificates from {} are not in the documented /certs shape: \
             certificates[0].cert_chain[0].valid_from: \"Fri, 04 Dec 2026 05:49:12 +0000\" is \
             not an RFC 3339 time like 2026-12-05T05:00:00Z",
            proxy.url()
        )
    );
}

#[test]
fn a_file_cannot_show_secrets() {
    let path = fixture("productpage");
    let p = path.to_str().unwrap();
    let why = "cannot show secrets: a configuration document holds no certificates (the proxy \
               keeps its certificate and key in memory and serves them only on its admin API's \
               /certs); read a running proxy with a pod name or --admin-url";
    assert_eq!(
        failure(&ctl(&["pc", "secret", "--file", p])),
        format!("Error: --file {p} {why}")
    );
    // Said before the file is read.
    assert_eq!(
        failure(&ctl(&["pc", "s", "-f", "/nonexistent/dump.json"])),
        format!("Error: --file /nonexistent/dump.json {why}")
    );
}
