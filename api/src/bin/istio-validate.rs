//! `istio-validate FILE...`: checks Istio YAML (the networking kinds, PeerAuthentication,
//! AuthorizationPolicy, RequestAuthentication and Telemetry) the way the operator will read it,
//! like `istioctl validate -f`. A ServiceEntry is read and checked as Istio checks it, then
//! reported as not supported yet, naming its fields (the operator does not render it: #20).
//! Prints one line per object; exits 1 when any is refused.

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() || files.iter().any(|f| f == "-h" || f == "--help") {
        eprintln!("usage: istio-validate FILE... (use - for standard input)");
        std::process::exit(2);
    }
    let mut failed = false;
    for file in &files {
        let text = if file == "-" {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(file)
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{file}: cannot read: {e}");
                failed = true;
                continue;
            }
        };
        for result in rustmesh_api::load_all(&text) {
            match result {
                Ok(obj) => {
                    let m = obj.metadata();
                    let ns = m.namespace.as_deref().unwrap_or("default");
                    let name = m.name.as_deref().unwrap_or("");
                    let warnings = obj.warnings();
                    if warnings.is_empty() {
                        println!("{file}: {} {ns}/{name}: valid", obj.kind());
                    } else {
                        println!(
                            "{file}: {} {ns}/{name}: valid, with {} warning(s):",
                            obj.kind(),
                            warnings.len()
                        );
                        for w in warnings {
                            println!("  warning: {w}");
                        }
                    }
                }
                Err(e) => {
                    failed = true;
                    eprintln!("{file}: {e}");
                }
            }
        }
    }
    std::process::exit(i32::from(failed));
}
