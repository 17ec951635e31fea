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
    // DNS capture follows the machine's resolv.conf: off here, so the file is the same anywhere
    // (and is what Istio, whose DNS capture is off by default, programs).
    args.extend([
        "--log_output_level=default:info",
        "--redirect-dns=false",
        "--dry-run",
    ]);
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

/// The seed's rules were dumped from an Istio release before 1.23; today's Istio writes two lines
/// differently (tests/golden/README.md): the `OUTPUT` jump takes every protocol (DNS over UDP
/// goes through `ISTIO_OUTPUT` since 1.23), and a list of excluded ports is one multiport rule
/// (1.25).
fn seed_in_todays_istio_form(seed: Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    for line in seed {
        match line.as_str() {
            "-A OUTPUT -p tcp -j ISTIO_OUTPUT" => out.push("-A OUTPUT -j ISTIO_OUTPUT".to_string()),
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN" => out.push(
                "-A ISTIO_INBOUND -p tcp -m multiport --dports 15090,15021,15020 -j RETURN"
                    .to_string(),
            ),
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN"
            | "-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN" => {}
            _ => out.push(line),
        }
    }
    out
}

#[test]
fn golden_nat_rules_are_the_seeds_in_todays_istio_form() {
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
    assert_same_lines(
        &ours,
        &seed_in_todays_istio_form(seed),
        "our nat rules vs the seed's",
    );
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
    let out = stdout(&proxy(&["--dry-run", "--redirect-dns=false"]));
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

    let v4_only = stdout(&proxy(&[
        "--dry-run",
        "--ipv6=never",
        "--redirect-dns=false",
    ]));
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
            "-A ISTIO_OUTPUT -p tcp -m multiport --dports 3306,6379 -j RETURN",
            "-A ISTIO_OUTPUT -p udp -m multiport --dports 3306,6379 -j RETURN"
        ]
    );
    assert_eq!(
        output[output.len() - 3..],
        [
            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-A ISTIO_OUTPUT -d 10.96.0.10/32 -j RETURN",
            "-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT",
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
    assert!(
        !nat_block(&out, 0)
            .iter()
            .any(|l| l.starts_with("-A PREROUTING")),
        "{out}"
    );
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
        (&["-m", "tproxy"], "-m/--istio-inbound-interception-mode"),
        (&["-m", "NONE"], "-m/--istio-inbound-interception-mode"),
        (&["-q", "80,http"], "-q/--istio-outbound-ports"),
        (&["-c", "eth0,a b"], "-c/--istio-exclude-interfaces"),
        (
            &["-k", "this-name-is-too-long"],
            "-k/--kube-virt-interfaces",
        ),
        (&["-t", "0x539"], "-t/--istio-inbound-tproxy-mark"),
        (&["-r", "main"], "-r/--istio-inbound-tproxy-route-table"),
        (&["--drop-invalid=maybe"], "--drop-invalid"),
        (&["--capture-all-dns=2"], "--capture-all-dns"),
        (&["--cni-mode"], "--cni-mode"),
        (&["--run-validation"], "--run-validation"),
        (&["--native-nftables"], "--native-nftables"),
        (&["--reconcile=false"], "--reconcile"),
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

fn proxy_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxy"));
    cmd.arg("istio-iptables").args(args).env_remove("RUST_LOG");
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd.output().expect("run the proxy binary")
}

#[test]
fn tproxy_dry_run_programs_mangle_and_names_the_route() {
    let out = stdout(&proxy(&[
        "-m",
        "TPROXY",
        "--redirect-dns=false",
        "--ipv6=never",
        "--dry-run",
    ]));
    for line in [
        "*mangle",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_INBOUND -p tcp -m multiport --dports 15090,15021,15020 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT",
        "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x539/0xffffffff",
        "ip rule add fwmark 1337 lookup 133",
    ] {
        assert!(out.contains(line), "{line} missing:\n{out}");
    }
    // Inbound is not NATed in TPROXY mode.
    assert!(
        !nat_block(&out, 0)
            .iter()
            .any(|l| l.starts_with("-A PREROUTING"))
    );
}

/// Each flag can be given by its Istio variable; the flag wins over the variable.
#[test]
fn flags_follow_istios_environment_variables() {
    let out = stdout(&proxy_env(
        &["--dry-run", "--ipv6=never"],
        &[
            ("ISTIO_SERVICE_CIDR", "10.0.0.0/8"),
            ("ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE", "22"),
            ("ISTIO_META_DNS_CAPTURE", "false"),
            ("INVALID_DROP", "true"),
            ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888"),
        ],
    ));
    for line in [
        "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -p udp -m udp --dport 22 -j RETURN",
        "-A PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP",
        "-A ISTIO_OUTPUT -m owner --gid-owner 888 -j RETURN",
    ] {
        assert!(out.contains(line), "{line} missing:\n{out}");
    }
    assert!(!out.contains("ISTIO_OUTPUT_DNS"), "{out}");

    let out = stdout(&proxy_env(
        &[
            "-i",
            "192.168.0.0/16",
            "--dry-run",
            "--ipv6=never",
            "--redirect-dns=false",
        ],
        &[("ISTIO_SERVICE_CIDR", "10.0.0.0/8")],
    ));
    assert!(out.contains("-d 192.168.0.0/16 -j ISTIO_REDIRECT") && !out.contains("10.0.0.0/8"));

    let out = proxy_env(&["--dry-run"], &[("CNI_MODE", "true")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CNI_MODE"));
}
