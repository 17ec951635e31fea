//! Installing and removing the capture rules with `iptables-restore --noflush`.
//!
//! Each family is changed in one restore document, so a failure leaves the table as it was. The
//! document first removes what a previous run left (its jumps from the built-in chains, chains no
//! longer wanted), re-declares our chains (which flushes them) and appends the rules: running the
//! capture step twice gives the same table as running it once.

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::rules::{BUILTIN_CHAINS, Family, NatTable, OWNED_CHAINS};
use crate::{Error, Result};

/// What the capture step reads and writes: `*-save` and `*-restore`, and the IPv6 passthrough
/// address. Tests substitute a fake.
pub trait Netfilter {
    /// The nat table of `family`, as `iptables-save -t nat` prints it.
    fn save_nat(&self, family: Family) -> Result<String>;
    /// Feeds `document` to `iptables-restore --noflush` (or ip6tables).
    fn restore(&self, family: Family, document: &str) -> Result<()>;
    /// Adds `::6/128` to `lo`, the source of the proxy's IPv6 inbound passthrough connections
    /// (IPv4's `127.0.0.6` is already local).
    fn add_ipv6_passthrough_address(&self) -> Result<()>;
}

/// The programs on `PATH` (Debian's `iptables-restore` is iptables-nft; legacy works too).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemNetfilter;

impl Netfilter for SystemNetfilter {
    fn save_nat(&self, family: Family) -> Result<String> {
        let out = run(
            Command::new(family.save_program()).args(["-t", "nat"]),
            None,
        )?;
        Ok(out)
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

/// What a previous run left in a nat table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// Our chains that exist.
    pub chains: Vec<String>,
    /// `-A <built-in> ... -j <our chain>` rules, as `iptables-save` printed them.
    pub jumps: Vec<String>,
}

impl Leftovers {
    /// Reads the `*nat` section of `iptables-save` output.
    pub fn parse(save: &str) -> Self {
        let mut found = Self::default();
        let mut in_nat = false;
        for line in save.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
                continue;
            }
            if !in_nat {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if OWNED_CHAINS.contains(&name) {
                    found.chains.push(name.to_string());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let chain = rule.split_whitespace().next().unwrap_or_default();
                // The target is the last `-j` (matches, comments included, come before it).
                let target = rule
                    .rsplit(" -j ")
                    .next()
                    .and_then(|t| t.split_whitespace().next());
                if BUILTIN_CHAINS.contains(&chain)
                    && target.is_some_and(|t| OWNED_CHAINS.contains(&t))
                {
                    found.jumps.push(line.to_string());
                }
            }
        }
        found
    }

    /// Nothing of ours is installed.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.jumps.is_empty()
    }

    /// `-D` for every jump.
    fn delete_jumps(&self) -> impl Iterator<Item = String> + '_ {
        self.jumps.iter().map(|rule| format!("-D {}", &rule[3..]))
    }
}

/// The restore document that replaces whatever a previous run left with `table`.
pub fn install_document(table: &NatTable, leftovers: &Leftovers) -> String {
    let mut commands: Vec<String> = leftovers.delete_jumps().collect();
    for chain in leftovers
        .chains
        .iter()
        .filter(|c| !table.chains.contains(&c.as_str()))
    {
        commands.push(format!("-F {chain}"));
    }
    for chain in leftovers
        .chains
        .iter()
        .filter(|c| !table.chains.contains(&c.as_str()))
    {
        commands.push(format!("-X {chain}"));
    }
    table.render_with(&commands)
}

/// The restore document that removes everything of ours, or `None` when nothing is installed.
pub fn cleanup_document(leftovers: &Leftovers) -> Option<String> {
    if leftovers.is_empty() {
        return None;
    }
    let mut doc = String::from("*nat\n");
    for line in leftovers.delete_jumps() {
        doc.push_str(&line);
        doc.push('\n');
    }
    // Flush all first: our chains jump to each other.
    for chain in &leftovers.chains {
        doc.push_str(&format!("-F {chain}\n"));
    }
    for chain in &leftovers.chains {
        doc.push_str(&format!("-X {chain}\n"));
    }
    doc.push_str("COMMIT\n");
    Some(doc)
}

/// Installs `tables` (one per family). Every family's current state is read before anything is
/// changed, so a missing program fails before the first table is touched.
pub fn install(nf: &dyn Netfilter, tables: &[NatTable]) -> Result<()> {
    let mut documents = Vec::new();
    for table in tables {
        let leftovers = Leftovers::parse(&nf.save_nat(table.family)?);
        documents.push((table.family, install_document(table, &leftovers)));
    }
    if tables.iter().any(|t| t.family == Family::V6) {
        nf.add_ipv6_passthrough_address()?;
    }
    for (family, document) in &documents {
        nf.restore(*family, document)?;
        tracing::info!(family = family.name(), "capture rules installed");
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
        let save = match nf.save_nat(family) {
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
    use crate::capture::config::CaptureConfig;
    use crate::capture::rules::nat_table;

    const PREVIOUS_RUN: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*mangle
:PREROUTING ACCEPT [0:0]
-A PREROUTING -j ISTIO_OUTPUT
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
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -p udp -m udp --dport 53 -j ISTIO_OUTPUT_DNS
-A OUTPUT -p tcp -m tcp --dport 53 -j ISTIO_OUTPUT_DNS
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A OUTPUT -j KUBE_SOMETHING
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A POSTROUTING -m comment --comment \"x -j ISTIO_REDIRECT\" -j MASQUERADE
COMMIT
";

    #[test]
    fn leftovers_are_our_chains_and_the_jumps_to_them() {
        let found = Leftovers::parse(PREVIOUS_RUN);
        assert_eq!(found.chains, OWNED_CHAINS);
        assert_eq!(
            found.jumps,
            [
                "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                "-A OUTPUT -p udp -m udp --dport 53 -j ISTIO_OUTPUT_DNS",
                "-A OUTPUT -p tcp -m tcp --dport 53 -j ISTIO_OUTPUT_DNS",
                "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
            ]
        );
        assert!(Leftovers::parse("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n").is_empty());
        assert!(Leftovers::parse("").is_empty());
    }

    #[test]
    fn reinstalling_deletes_old_jumps_and_unwanted_chains_in_the_same_document() {
        let cfg = CaptureConfig {
            redirect_dns: false,
            ..CaptureConfig::default()
        };
        let table = nat_table(&cfg, Family::V4);
        let doc = install_document(&table, &Leftovers::parse(PREVIOUS_RUN));
        let lines: Vec<&str> = doc.lines().collect();
        assert_eq!(
            &lines[..14],
            [
                "*nat",
                ":ISTIO_INBOUND - [0:0]",
                ":ISTIO_IN_REDIRECT - [0:0]",
                ":ISTIO_OUTPUT - [0:0]",
                ":ISTIO_REDIRECT - [0:0]",
                "-D PREROUTING -p tcp -j ISTIO_INBOUND",
                "-D OUTPUT -p udp -m udp --dport 53 -j ISTIO_OUTPUT_DNS",
                "-D OUTPUT -p tcp -m tcp --dport 53 -j ISTIO_OUTPUT_DNS",
                "-D OUTPUT -p tcp -j ISTIO_OUTPUT",
                "-F ISTIO_OUTPUT_DNS",
                "-X ISTIO_OUTPUT_DNS",
                "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
            ]
        );
        assert_eq!(lines.last(), Some(&"COMMIT"));
        // A first run has nothing to delete: the document is the dry-run output.
        assert_eq!(
            install_document(&table, &Leftovers::default()),
            table.render()
        );
    }

    #[test]
    fn cleanup_removes_jumps_then_flushes_then_deletes() {
        let doc = cleanup_document(&Leftovers::parse(PREVIOUS_RUN)).unwrap();
        let expected = "*nat
-D PREROUTING -p tcp -j ISTIO_INBOUND
-D OUTPUT -p udp -m udp --dport 53 -j ISTIO_OUTPUT_DNS
-D OUTPUT -p tcp -m tcp --dport 53 -j ISTIO_OUTPUT_DNS
-D OUTPUT -p tcp -j ISTIO_OUTPUT
-F ISTIO_INBOUND
-F ISTIO_IN_REDIRECT
-F ISTIO_OUTPUT
-F ISTIO_OUTPUT_DNS
-F ISTIO_REDIRECT
-X ISTIO_INBOUND
-X ISTIO_IN_REDIRECT
-X ISTIO_OUTPUT
-X ISTIO_OUTPUT_DNS
-X ISTIO_REDIRECT
COMMIT
";
        assert_eq!(doc, expected);
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
        fn save_nat(&self, family: Family) -> Result<String> {
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
    }

    #[test]
    fn install_reads_every_family_before_changing_any() {
        let cfg = CaptureConfig::default();
        let tables = [nat_table(&cfg, Family::V4), nat_table(&cfg, Family::V6)];
        let fake = Fake::default();
        install(&fake, &tables).unwrap();
        assert_eq!(
            *fake.calls.borrow(),
            [
                "save IPv4",
                "save IPv6",
                "add ::6",
                "restore IPv4",
                "restore IPv6"
            ]
        );

        let fake = Fake {
            v6_missing: true,
            ..Fake::default()
        };
        let err = install(&fake, &tables).unwrap_err();
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
