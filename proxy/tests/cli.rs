//! `proxy istio-iptables` run as a program: the golden `--dry-run` output for Istio's injected
//! arguments, the flag variants, and every bad flag's message. Nothing here needs root: bad
//! flags and `--dry-run` never touch iptables.

use std::path::PathBuf;
use std::process::{Command, Output};

mod support;

use support::ISTIO_INIT_ARGS;

fn proxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_proxy"))
        .arg("istio-iptables")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the proxy binary")
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "proxy failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

/// The lines of the `index`th `*nat` ... `COMMIT` block, comments and blank lines left out.
fn nat_block(text: &str, index: usize) -> Vec<String> {
    let mut blocks: Vec<Vec<String>> = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines().map(str::trim_end) {
        if line == "*nat" {
            current = Some(Vec::new());
        } else if line == "COMMIT" {
            blocks.extend(current.take());
        } else if let Some(block) = current.as_mut()
            && !line.is_empty()
            && !line.starts_with('#')
        {
            block.push(line.to_string());
        }
    }
    blocks
        .into_iter()
        .nth(index)
        .unwrap_or_else(|| panic!("no nat block #{index} in:\n{text}"))
}

fn assert_same_lines(actual: &[String], expected: &[String], what: &str) {
    for (n, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(a, e, "{what}: line {} differs", n + 1);
    }
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: {} lines instead of {}\nactual:\n{}\nexpected:\n{}",
        actual.len(),
        expected.len(),
        actual.join("\n"),
        expected.join("\n")
    );
}

#[test]
fn dry_run_of_istios_arguments_matches_the_golden_file() {
    let mut args = ISTIO_INIT_ARGS.to_vec();
    args.extend(["--log_output_level=default:info", "--dry-run"]);
    let out = proxy(&args);
    let actual = stdout(&out);
    let path = golden("istio-iptables-default.rules");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    let lines = |s: &str| s.lines().map(String::from).collect::<Vec<_>>();
    assert_same_lines(&lines(&actual), &lines(&expected), "dry-run vs golden file");

    // The Istio flag is accepted, and said to be ignored.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ignoring --log_output_level=default:info"),
        "{stderr}"
    );
}

/// The DNS capture lines, documented in tests/golden/README.md.
const DNS_LINES: &[&str] = &[
    ":ISTIO_OUTPUT_DNS - [0:0]",
    "-A OUTPUT -p udp -m udp --dport 53 -j ISTIO_OUTPUT_DNS",
    "-A OUTPUT -p tcp -m tcp --dport 53 -j ISTIO_OUTPUT_DNS",
    "-A ISTIO_OUTPUT_DNS -m owner --uid-owner 1337 -j RETURN",
    "-A ISTIO_OUTPUT_DNS -m owner --gid-owner 1337 -j RETURN",
    "-A ISTIO_OUTPUT_DNS -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
    "-A ISTIO_OUTPUT_DNS -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053",
];

#[test]
fn golden_nat_rules_are_the_seeds_plus_the_dns_rules() {
    let ours = nat_block(
        &std::fs::read_to_string(golden("istio-iptables-default.rules")).unwrap(),
        0,
    );
    let seed = nat_block(
        &std::fs::read_to_string(golden("seed004-istio-nat.txt")).unwrap(),
        0,
    );

    // The built-in chains' policy lines carry packet counters (runtime state); we declare none.
    let builtin_policy = |l: &String| {
        ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]
            .iter()
            .any(|chain| l.starts_with(&format!(":{chain} ACCEPT ")))
    };
    let seed: Vec<String> = seed.into_iter().filter(|l| !builtin_policy(l)).collect();
    assert_eq!(
        seed.len(),
        22,
        "the seed's nat block: 4 chains and 18 rules"
    );

    let (dns, istio): (Vec<String>, Vec<String>) = ours
        .into_iter()
        .partition(|l| l.contains("ISTIO_OUTPUT_DNS"));
    assert_same_lines(&istio, &seed, "our nat rules without DNS vs the seed's");
    let expected_dns: Vec<String> = DNS_LINES.iter().map(|l| l.to_string()).collect();
    assert_same_lines(&dns, &expected_dns, "our DNS lines vs the documented ones");
}

#[test]
fn readme_shows_the_default_rules() {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let golden = std::fs::read_to_string(golden("istio-iptables-default.rules")).unwrap();
    assert_same_lines(
        &nat_block(&readme, 0),
        &nat_block(&golden, 0),
        "README vs golden file",
    );
}

#[test]
fn dry_run_shows_the_ipv6_counterpart() {
    let out = stdout(&proxy(&["--dry-run"]));
    let v4 = nat_block(&out, 0);
    let v6 = nat_block(&out, 1);
    let expected: Vec<String> = v4
        .iter()
        .map(|l| {
            l.replace("127.0.0.6/32", "::6/128")
                .replace("127.0.0.1/32", "::1/128")
        })
        .collect();
    assert_same_lines(&v6, &expected, "IPv6 vs IPv4 with IPv6 addresses");
    assert!(v6.contains(&"-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN".to_string()));

    let v4_only = stdout(&proxy(&["--dry-run", "--ipv6=never"]));
    assert_eq!(v4_only.matches("*nat").count(), 1);
}

#[test]
fn dry_run_of_the_variants() {
    let out = stdout(&proxy(&[
        "-i",
        "10.96.0.0/12,fd00::/8",
        "-x",
        "10.96.0.10/32",
        "-o",
        "3306,6379",
        "-b",
        "8080,9090",
        "--redirect-dns=false",
        "--dry-run",
    ]));
    let v4 = nat_block(&out, 0);
    let rules = |prefix: &str| -> Vec<String> {
        v4.iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect()
    };
    assert_eq!(
        rules("-A ISTIO_INBOUND "),
        [
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 9090 -j ISTIO_IN_REDIRECT",
        ]
    );
    let output = rules("-A ISTIO_OUTPUT ");
    assert_eq!(
        output[..2],
        [
            "-A ISTIO_OUTPUT -p tcp -m tcp --dport 3306 -j RETURN",
            "-A ISTIO_OUTPUT -p tcp -m tcp --dport 6379 -j RETURN"
        ]
    );
    assert_eq!(
        output[output.len() - 4..],
        [
            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-A ISTIO_OUTPUT -d 10.96.0.10/32 -j RETURN",
            "-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT",
            "-A ISTIO_OUTPUT -j RETURN",
        ]
    );
    assert!(
        !out.contains("ISTIO_OUTPUT_DNS"),
        "--redirect-dns=false:\n{out}"
    );
    assert!(
        nat_block(&out, 1).contains(&"-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT".to_string())
    );

    // A repeated flag overrides the earlier one, as in Istio.
    let out = stdout(&proxy(&["-b", "*", "-b", "8080", "--dry-run"]));
    assert!(
        out.contains("-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT"),
        "{out}"
    );

    // No inbound ports: nothing jumps from PREROUTING.
    let out = stdout(&proxy(&["-b", "", "--dry-run"]));
    assert!(!out.contains("-A PREROUTING"), "{out}");
}

#[test]
fn each_bad_flag_fails_naming_the_flag_and_prints_no_rules() {
    let cases: &[(&[&str], &str)] = &[
        (&["-p", "abc"], "-p/--envoy-port"),
        (&["-p", "70000"], "-p/--envoy-port"),
        (&["--envoy-port", ""], "-p/--envoy-port"),
        (&["-z", "0"], "-z/--inbound-capture-port"),
        (&["-z", "15006x"], "-z/--inbound-capture-port"),
        (&["--inbound-tunnel-port=-5"], "-e/--inbound-tunnel-port"),
        (&["-u", "istio-proxy"], "-u/--proxy-uid"),
        (&["-g", "1337,x"], "-g/--proxy-gid"),
        (&["-m", "TPROXY"], "-m/--istio-inbound-interception-mode"),
        (&["-m", "NAT"], "-m/--istio-inbound-interception-mode"),
        (&["-i", "10.0.0.0/33"], "-i/--istio-service-cidr"),
        (&["-i", "10.0.0.0/8,bogus"], "-i/--istio-service-cidr"),
        (&["-x", "300.1.1.1/32"], "-x/--istio-service-exclude-cidr"),
        (&["-x", "*"], "-x/--istio-service-exclude-cidr"),
        (&["-b", "80,http"], "-b/--istio-inbound-ports"),
        (&["-b", "65536"], "-b/--istio-inbound-ports"),
        (&["-d", "15090,abc"], "-d/--istio-local-exclude-ports"),
        (&["-o", "99999"], "-o/--istio-local-outbound-ports-exclude"),
        (&["--redirect-dns=maybe"], "--redirect-dns"),
        (&["--ipv6", "sometimes"], "--ipv6"),
    ];
    for (args, flag) in cases {
        let mut all = args.to_vec();
        all.push("--dry-run");
        let out = proxy(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            stderr.contains(flag),
            "{args:?}: the message does not name {flag}: {stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed rules: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn tproxy_is_refused_with_a_clear_message() {
    let out = proxy(&["-m", "TPROXY", "--dry-run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TPROXY interception is not supported yet; use REDIRECT"),
        "{stderr}"
    );
}
