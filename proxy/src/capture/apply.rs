//! Installing and removing the capture rules with `iptables-restore --noflush`.
//!
//! Each family is changed in one restore document (one block per table; each table commits
//! atomically, so a failure leaves that table as it was). The document first removes what a
//! previous run left (its rules in the built-in chains, chains no longer wanted), re-declares our
//! chains (which flushes them) and appends the rules: running the capture step twice gives the
//! same tables as running it once, whatever flags the first run had.

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::rules::{Family, TableName, Tables};
use crate::{Error, Result};

/// What the capture step reads and writes: `*-save` and `*-restore`, and the routes and
/// addresses of the pod. Tests substitute a fake.
pub trait Netfilter {
    /// Every table of `family`, as `iptables-save` prints them.
    fn save(&self, family: Family) -> Result<String>;
    /// Feeds `document` to `iptables-restore --noflush` (or ip6tables).
    fn restore(&self, family: Family, document: &str) -> Result<()>;
    /// Adds `::6/128` to `lo`, the source of the proxy's IPv6 inbound passthrough connections
    /// (IPv4's `127.0.0.6` is already local).
    fn add_ipv6_passthrough_address(&self) -> Result<()>;
    /// TPROXY: `ip rule add fwmark <mark> lookup <table>` (unless present) and
    /// `ip route replace local default dev lo table <table>`, so marked packets are delivered
    /// locally, to the transparent listener.
    fn add_tproxy_route(&self, family: Family, mark: u32, table: u32) -> Result<()>;
}

/// The programs on `PATH` (Debian's `iptables-restore` is iptables-nft; legacy works too).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemNetfilter;

impl Netfilter for SystemNetfilter {
    fn save(&self, family: Family) -> Result<String> {
        run(&mut Command::new(family.save_program()), None)
    }

    fn restore(&self, family: Family, document: &str) -> Result<()> {
        run(
            Command::new(family.restore_program()).arg("--noflush"),
            Some(document),
        )
        .map(drop)
    }

    fn add_ipv6_passthrough_address(&self) -> Result<()> {
        // `replace` succeeds when the address is already there.
        run(
            Command::new("ip").args(["-6", "addr", "replace", "::6/128", "dev", "lo"]),
            None,
        )
        .map(drop)
    }

    fn add_tproxy_route(&self, family: Family, mark: u32, table: u32) -> Result<()> {
        let f = match family {
            Family::V4 => "-4",
            Family::V6 => "-6",
        };
        let (mark, table) = (mark.to_string(), table.to_string());
        let existing = run(
            Command::new("ip").args([f, "rule", "show", "fwmark", &mark, "lookup", &table]),
            None,
        )?;
        if existing.trim().is_empty() {
            run(
                Command::new("ip").args([f, "rule", "add", "fwmark", &mark, "lookup", &table]),
                None,
            )?;
        }
        run(
            Command::new("ip").args([
                f, "route", "replace", "local", "default", "dev", "lo", "table", &table,
            ]),
            None,
        )
        .map(drop)
    }
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<String> {
    let program = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error means the program exited early; its status and stderr say why.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let mut detail = if stderr.is_empty() {
        "no error output".to_string()
    } else {
        stderr.clone()
    };
    if let (Some(input), Some(n)) = (stdin, failed_line(&stderr))
        && let Some(line) = input.lines().nth(n.saturating_sub(1))
    {
        detail.push_str(&format!(" [line {n} of the document: `{line}`]"));
    }
    Err(Error::CommandFailed {
        program,
        status: out.status.to_string(),
        detail,
    })
}

/// `Error occurred at line: 7` → 7.
fn failed_line(stderr: &str) -> Option<usize> {
    let rest = stderr.split("Error occurred at line: ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// What a previous run left in one table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TableLeftovers {
    /// Our chains that exist.
    pub chains: Vec<String>,
    /// Our rules in the built-in chains, as `iptables-save` printed them.
    pub rules: Vec<String>,
}

impl TableLeftovers {
    /// Nothing of ours is in the table.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.rules.is_empty()
    }

    /// `-D` for every rule.
    fn delete_rules(&self) -> impl Iterator<Item = String> + '_ {
        self.rules.iter().map(|rule| format!("-D {}", &rule[3..]))
    }
}

/// What a previous run left, table by table (mangle, nat, raw).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// Indexed like [`TableName::ALL`].
    pub tables: [TableLeftovers; 3],
}

impl Leftovers {
    /// Reads `iptables-save` output.
    pub fn parse(save: &str) -> Self {
        let mut found = Self::default();
        let mut table: Option<TableName> = None;
        for line in save.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                table = TableName::ALL.into_iter().find(|t| t.name() == name);
                continue;
            }
            let Some(table) = table else { continue };
            let into = &mut found.tables[index(table)];
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if table.owned_chains().contains(&name) {
                    into.chains.push(name.to_string());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
                if table.builtin_chains().contains(&chain) && is_ours(table, spec) {
                    into.rules.push(line.to_string());
                }
            }
        }
        found
    }

    /// The leftovers of one table.
    pub fn get(&self, table: TableName) -> &TableLeftovers {
        &self.tables[index(table)]
    }

    /// Nothing of ours is installed.
    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(TableLeftovers::is_empty)
    }
}

fn index(table: TableName) -> usize {
    TableName::ALL
        .iter()
        .position(|t| *t == table)
        .expect("every table is in ALL")
}

/// Whether a rule in a built-in chain is one the capture step writes: a jump to one of our
/// chains, or one of the shapes of its other rules there (`-c`/`-k` interface returns, TPROXY
/// marks). Nothing else in a pod's network namespace writes these shapes.
fn is_ours(table: TableName, spec: &str) -> bool {
    let target = spec
        .rfind(" -j ")
        .map(|at| &spec[at + 4..])
        .or_else(|| spec.strip_prefix("-j "))
        .and_then(|t| t.split_whitespace().next());
    if target.is_some_and(|t| table.owned_chains().contains(&t)) {
        return true;
    }
    let words: Vec<&str> = spec.split_whitespace().collect();
    let interface_return = matches!(words.as_slice(), ["-i" | "-o", _, "-j", "RETURN"]);
    match table {
        TableName::Nat => interface_return,
        TableName::Mangle => {
            interface_return
                || (spec.starts_with("-p tcp -m mark --mark ")
                    && spec.contains(" -j CONNMARK --save-mark"))
                || (spec.starts_with("-p tcp -m connmark --mark ")
                    && spec.contains(" -j CONNMARK --restore-mark"))
                || matches!(
                    words.as_slice(),
                    [
                        "-o",
                        "lo",
                        "-p",
                        "tcp",
                        "-m",
                        "mark",
                        "--mark",
                        _,
                        "-j",
                        "RETURN"
                    ]
                )
                || (spec.starts_with("! -d ")
                    && spec.contains(" -o lo -p tcp -m owner ")
                    && spec.contains(" -j MARK --set-xmark "))
        }
        TableName::Raw => false,
    }
}

/// The restore document that replaces whatever a previous run left with `tables`.
pub fn install_document(tables: &Tables, leftovers: &Leftovers) -> String {
    let mut doc = String::new();
    for table in &tables.tables {
        let left = leftovers.get(table.name);
        if table.rules.is_empty() && left.is_empty() {
            continue;
        }
        let wanted = table.chains();
        let mut commands: Vec<String> = left.delete_rules().collect();
        let unwanted: Vec<&String> = left
            .chains
            .iter()
            .filter(|c| !wanted.contains(&c.as_str()))
            .collect();
        // Flush all first: our chains jump to each other.
        commands.extend(unwanted.iter().map(|c| format!("-F {c}")));
        commands.extend(unwanted.iter().map(|c| format!("-X {c}")));
        doc.push_str(&table.render_with(&commands));
    }
    doc
}

/// The restore document that removes everything of ours, or `None` when nothing is installed.
pub fn cleanup_document(leftovers: &Leftovers) -> Option<String> {
    if leftovers.is_empty() {
        return None;
    }
    let mut doc = String::new();
    for table in TableName::ALL {
        let left = leftovers.get(table);
        if left.is_empty() {
            continue;
        }
        doc.push_str(&format!("*{}\n", table.name()));
        for line in left.delete_rules() {
            doc.push_str(&line);
            doc.push('\n');
        }
        for chain in &left.chains {
            doc.push_str(&format!("-F {chain}\n"));
        }
        for chain in &left.chains {
            doc.push_str(&format!("-X {chain}\n"));
        }
        doc.push_str("COMMIT\n");
    }
    Some(doc)
}

/// A TPROXY policy route to add after the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TproxyRoute {
    /// The mark of intercepted packets.
    pub mark: u32,
    /// The routing table.
    pub table: u32,
}

/// Installs `tables` (one per family), then the TPROXY route of each family. Every family's
/// current state is read before anything is changed, so a missing program fails before the
/// first table is touched.
pub fn install(nf: &dyn Netfilter, tables: &[Tables], route: Option<TproxyRoute>) -> Result<()> {
    let mut documents = Vec::new();
    for family_tables in tables {
        let leftovers = Leftovers::parse(&nf.save(family_tables.family)?);
        documents.push((
            family_tables.family,
            install_document(family_tables, &leftovers),
        ));
    }
    if tables.iter().any(|t| t.family == Family::V6) {
        nf.add_ipv6_passthrough_address()?;
    }
    for (family, document) in &documents {
        nf.restore(*family, document)?;
        tracing::info!(family = family.name(), "capture rules installed");
    }
    if let Some(route) = route {
        for family_tables in tables {
            nf.add_tproxy_route(family_tables.family, route.mark, route.table)?;
        }
    }
    Ok(())
}

/// The cleanup documents of `families` that have something to remove. With `lenient_v6`, an
/// ip6tables that cannot be read counts as nothing to remove (IPv6 was never set up).
pub fn cleanup_documents(
    nf: &dyn Netfilter,
    families: &[Family],
    lenient_v6: bool,
) -> Result<Vec<(Family, String)>> {
    let mut documents = Vec::new();
    for &family in families {
        let save = match nf.save(family) {
            Ok(save) => save,
            Err(err) if family == Family::V6 && lenient_v6 => {
                tracing::info!("not cleaning up IPv6: {err}");
                continue;
            }
            Err(err) => return Err(err),
        };
        match cleanup_document(&Leftovers::parse(&save)) {
            Some(doc) => documents.push((family, doc)),
            None => tracing::info!(family = family.name(), "no capture rules to remove"),
        }
    }
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::capture::config::{CaptureConfig, IstioIptablesArgs};
    use crate::capture::rules::{Host, tables};

    const PREVIOUS_RUN: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:ISTIO_DIVERT - [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_TPROXY - [0:0]
:OTHER - [0:0]
-A PREROUTING -i not-istio-nic -j RETURN
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A PREROUTING -p tcp -m mark --mark 0x539 -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff
-A PREROUTING -p udp -j OTHER
-A OUTPUT -o lo -p tcp -m mark --mark 0x539 -j RETURN
-A OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1337 -j MARK --set-xmark 0x53a/0xffffffff
-A OUTPUT -p tcp -m connmark --mark 0x539 -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
-A OUTPUT -p tcp -j MARK --set-xmark 0x7/0xffffffff
-A ISTIO_DIVERT -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_OUTPUT_DNS - [0:0]
:ISTIO_REDIRECT - [0:0]
:KUBE_SOMETHING - [0:0]
-A PREROUTING -i eth1 -j ISTIO_REDIRECT
-A PREROUTING -i eth1 -j RETURN
-A OUTPUT -j ISTIO_OUTPUT
-A OUTPUT -j KUBE_SOMETHING
-A OUTPUT -p tcp -m tcp --dport 80 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A POSTROUTING -m comment --comment \"x -j ISTIO_REDIRECT\" -j MASQUERADE
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_OUTPUT_DNS - [0:0]
-A PREROUTING -j ISTIO_INBOUND
-A OUTPUT -j ISTIO_OUTPUT_DNS
-A OUTPUT -p udp -j CT --zone 9
COMMIT
";

    #[test]
    fn leftovers_are_our_chains_and_our_rules_in_the_builtin_chains() {
        let found = Leftovers::parse(PREVIOUS_RUN);
        assert_eq!(
            found.get(TableName::Mangle).chains,
            ["ISTIO_DIVERT", "ISTIO_INBOUND", "ISTIO_TPROXY"]
        );
        assert_eq!(
            found.get(TableName::Mangle).rules,
            [
                "-A PREROUTING -i not-istio-nic -j RETURN",
                "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                "-A PREROUTING -p tcp -m mark --mark 0x539 -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff",
                "-A OUTPUT -o lo -p tcp -m mark --mark 0x539 -j RETURN",
                "-A OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1337 -j MARK --set-xmark 0x53a/0xffffffff",
                "-A OUTPUT -p tcp -m connmark --mark 0x539 -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
            ]
        );
        assert_eq!(
            found.get(TableName::Nat).chains,
            TableName::Nat.owned_chains()
        );
        assert_eq!(
            found.get(TableName::Nat).rules,
            [
                "-A PREROUTING -i eth1 -j ISTIO_REDIRECT",
                "-A PREROUTING -i eth1 -j RETURN",
                "-A OUTPUT -j ISTIO_OUTPUT",
            ]
        );
        assert_eq!(
            found.get(TableName::Raw).rules,
            [
                "-A PREROUTING -j ISTIO_INBOUND",
                "-A OUTPUT -j ISTIO_OUTPUT_DNS"
            ]
        );
        assert!(Leftovers::parse("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n").is_empty());
        assert!(Leftovers::parse("").is_empty());
    }

    fn redirect_no_dns() -> Tables {
        let cfg = CaptureConfig::try_from(&IstioIptablesArgs {
            redirect_dns: Some(false),
            ..IstioIptablesArgs::default()
        })
        .unwrap();
        tables(&cfg, Family::V4, &Host::default())
    }

    #[test]
    fn reinstalling_removes_what_the_previous_run_left_in_every_table() {
        let doc = install_document(&redirect_no_dns(), &Leftovers::parse(PREVIOUS_RUN));
        let blocks: Vec<&str> = doc.split_inclusive("COMMIT\n").collect();
        assert_eq!(blocks.len(), 3, "{doc}");
        // mangle: no rules wanted any more; everything of ours goes, the rest stays.
        assert_eq!(
            blocks[0],
            "*mangle
-D PREROUTING -i not-istio-nic -j RETURN
-D PREROUTING -p tcp -j ISTIO_INBOUND
-D PREROUTING -p tcp -m mark --mark 0x539 -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff
-D OUTPUT -o lo -p tcp -m mark --mark 0x539 -j RETURN
-D OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1337 -j MARK --set-xmark 0x53a/0xffffffff
-D OUTPUT -p tcp -m connmark --mark 0x539 -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
-F ISTIO_DIVERT
-F ISTIO_INBOUND
-F ISTIO_TPROXY
-X ISTIO_DIVERT
-X ISTIO_INBOUND
-X ISTIO_TPROXY
COMMIT
"
        );
        let nat: Vec<&str> = blocks[1].lines().collect();
        assert_eq!(
            &nat[..11],
            [
                "*nat",
                ":ISTIO_INBOUND - [0:0]",
                ":ISTIO_IN_REDIRECT - [0:0]",
                ":ISTIO_OUTPUT - [0:0]",
                ":ISTIO_REDIRECT - [0:0]",
                "-D PREROUTING -i eth1 -j ISTIO_REDIRECT",
                "-D PREROUTING -i eth1 -j RETURN",
                "-D OUTPUT -j ISTIO_OUTPUT",
                "-F ISTIO_OUTPUT_DNS",
                "-X ISTIO_OUTPUT_DNS",
                "-A PREROUTING -p tcp -j ISTIO_INBOUND",
            ]
        );
        assert!(blocks[2].starts_with("*raw\n-D PREROUTING -j ISTIO_INBOUND\n"));
        // A first run has nothing to delete: the document is the dry-run output.
        let t = redirect_no_dns();
        assert_eq!(install_document(&t, &Leftovers::default()), t.render());
    }

    #[test]
    fn cleanup_removes_rules_then_flushes_then_deletes_in_each_table() {
        let doc = cleanup_document(&Leftovers::parse(PREVIOUS_RUN)).unwrap();
        assert!(
            doc.starts_with("*mangle\n-D PREROUTING -i not-istio-nic -j RETURN\n"),
            "{doc}"
        );
        let raw = &doc[doc.find("*raw").unwrap()..];
        assert_eq!(
            raw,
            "*raw
-D PREROUTING -j ISTIO_INBOUND
-D OUTPUT -j ISTIO_OUTPUT_DNS
-F ISTIO_INBOUND
-F ISTIO_OUTPUT_DNS
-X ISTIO_INBOUND
-X ISTIO_OUTPUT_DNS
COMMIT
"
        );
        assert!(
            !doc.contains("OTHER") && !doc.contains("KUBE_SOMETHING") && !doc.contains("zone 9")
        );
        assert_eq!(cleanup_document(&Leftovers::default()), None);
    }

    #[test]
    fn failed_line_is_read_from_restore_errors() {
        let stderr = "iptables-restore v1.8.9 (nf_tables): Chain 'X' does not exist\nError occurred at line: 5\nTry `iptables-restore -h'";
        assert_eq!(failed_line(stderr), Some(5));
        assert_eq!(failed_line("something else"), None);
    }

    #[derive(Default)]
    struct Fake {
        v6_missing: bool,
        calls: RefCell<Vec<String>>,
    }

    impl Netfilter for Fake {
        fn save(&self, family: Family) -> Result<String> {
            self.calls
                .borrow_mut()
                .push(format!("save {}", family.name()));
            if family == Family::V6 && self.v6_missing {
                return Err(Error::Spawn {
                    program: "ip6tables-save".into(),
                    source: std::io::ErrorKind::NotFound.into(),
                });
            }
            Ok(PREVIOUS_RUN.to_string())
        }
        fn restore(&self, family: Family, _: &str) -> Result<()> {
            self.calls
                .borrow_mut()
                .push(format!("restore {}", family.name()));
            Ok(())
        }
        fn add_ipv6_passthrough_address(&self) -> Result<()> {
            self.calls.borrow_mut().push("add ::6".into());
            Ok(())
        }
        fn add_tproxy_route(&self, family: Family, mark: u32, table: u32) -> Result<()> {
            self.calls
                .borrow_mut()
                .push(format!("route {} {mark} {table}", family.name()));
            Ok(())
        }
    }

    #[test]
    fn install_reads_every_family_before_changing_any_and_routes_last() {
        let cfg = CaptureConfig::default();
        let both = [
            tables(&cfg, Family::V4, &Host::default()),
            tables(&cfg, Family::V6, &Host::default()),
        ];
        let fake = Fake::default();
        install(
            &fake,
            &both,
            Some(TproxyRoute {
                mark: 1337,
                table: 133,
            }),
        )
        .unwrap();
        assert_eq!(
            *fake.calls.borrow(),
            [
                "save IPv4",
                "save IPv6",
                "add ::6",
                "restore IPv4",
                "restore IPv6",
                "route IPv4 1337 133",
                "route IPv6 1337 133",
            ]
        );

        let fake = Fake {
            v6_missing: true,
            ..Fake::default()
        };
        let err = install(&fake, &both, None).unwrap_err();
        assert!(err.to_string().contains("ip6tables-save"), "{err}");
        assert_eq!(*fake.calls.borrow(), ["save IPv4", "save IPv6"]);
    }

    #[test]
    fn cleanup_of_an_unreadable_ip6tables_is_lenient_only_when_asked() {
        let fake = Fake {
            v6_missing: true,
            ..Fake::default()
        };
        let docs = cleanup_documents(&fake, &Family::ALL, true).unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].0, Family::V4);
        assert!(cleanup_documents(&fake, &Family::ALL, false).is_err());
    }
}
