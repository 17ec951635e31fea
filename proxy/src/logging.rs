//! The proxy's log levels, changeable at run time through the admin API's `/logging` (Envoy's
//! endpoint, which `istioctl proxy-config log` and `rustmeshctl proxy-config log` drive).
//!
//! At start `main.rs` installs ([`init`]) a `tracing` subscriber whose `EnvFilter` sits behind
//! a `tracing_subscriber::reload` layer; the starting filter is `RUST_LOG` (as before), `info`
//! without it (or when it does not parse). [`Control`] keeps that starting filter and the levels
//! set since, rebuilds the filter from both and swaps it in.
//!
//! Envoy names its loggers by subsystem; rustmesh logs by module (`tracing` targets such as
//! `rustmesh_proxy::http::route`). [`COMPONENTS`] maps the Envoy logger names that have a
//! rustmesh counterpart to the module targets they cover; a component can also be named by its
//! module path (`rustmesh_proxy::http`, `rustmesh_xds`...). Levels are Envoy's: `trace`,
//! `debug`, `info`, `warning` (or `warn`), `error`, `critical` (the same as `error`: `tracing`
//! has nothing above it) and `off`.
//!
//! - `level=L` sets every logger to `L` (the starting filter's own per-target levels go too, as
//!   Envoy sets every logger);
//! - `<component>=L` sets one component (each of its module targets);
//! - `paths=<component>:L,<component>:L` sets several at once (Envoy's form).
//!
//! Every name and level of a request is checked before anything changes: one unknown name or
//! level refuses the whole request, naming it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// The Envoy logger names rustmesh has, and the module targets each covers.
pub const COMPONENTS: &[(&str, &[&str])] = &[
    (
        "admin",
        &["rustmesh_proxy::admin", "rustmesh_proxy::status"],
    ),
    (
        "config",
        &["rustmesh_proxy::config", "rustmesh_proxy::snapshot"],
    ),
    ("conn_handler", &["rustmesh_proxy::listener"]),
    (
        "connection",
        &[
            "rustmesh_proxy::transport",
            "rustmesh_proxy::socket",
            "rustmesh_proxy::sniff",
        ],
    ),
    ("dns", &["rustmesh_proxy::dns"]),
    ("http", &["rustmesh_proxy::http"]),
    ("jwt", &["rustmesh_proxy::jwt"]),
    (
        "main",
        &[
            "rustmesh_proxy::sidecar",
            "rustmesh_proxy::drain",
            "rustmesh_proxy::wait",
            "rustmesh_proxy::capture",
        ],
    ),
    ("pool", &["rustmesh_proxy::pool"]),
    ("rbac", &["rustmesh_proxy::authz"]),
    ("router", &["rustmesh_proxy::http::route"]),
    ("secret", &["rustmesh_proxy::identity"]),
    (
        "stats",
        &[
            "rustmesh_proxy::metrics",
            "rustmesh_proxy::merge_metrics",
            "rustmesh_proxy::stats",
        ],
    ),
    (
        "upstream",
        &["rustmesh_proxy::cluster", "rustmesh_proxy::dial"],
    ),
];

/// Crates whose module paths may be named directly.
const CRATES: &[&str] = &["rustmesh_proxy", "rustmesh_xds"];

/// A log level as Envoy names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// `trace`.
    Trace,
    /// `debug`.
    Debug,
    /// `info`.
    Info,
    /// `warning` (`warn`).
    Warning,
    /// `error`; Envoy's `critical` is this too.
    Error,
    /// `off`.
    Off,
}

/// The level names `/logging` accepts, for messages.
pub const LEVEL_NAMES: &str = "trace, debug, info, warning, warn, error, critical, off";

impl Level {
    /// Envoy's names (`warning` and `warn`, `critical` is `error`); `None` for anything else.
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "trace" => Level::Trace,
            "debug" => Level::Debug,
            "info" => Level::Info,
            "warning" | "warn" => Level::Warning,
            "error" | "critical" => Level::Error,
            "off" => Level::Off,
            _ => return None,
        })
    }

    /// The name `EnvFilter` reads.
    fn directive(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warning => "warn",
            Level::Error => "error",
            Level::Off => "off",
        }
    }

    fn from_filter(f: LevelFilter) -> Level {
        match f {
            LevelFilter::TRACE => Level::Trace,
            LevelFilter::DEBUG => Level::Debug,
            LevelFilter::INFO => Level::Info,
            LevelFilter::WARN => Level::Warning,
            LevelFilter::ERROR => Level::Error,
            _ => Level::Off,
        }
    }
}

/// As Envoy lists it (`warning`, not `warn`).
impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Warning => "warning",
            other => other.directive(),
        })
    }
}

/// Why a change was refused (the admin answers 400 with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LevelError {
    /// Not one of [`LEVEL_NAMES`] (for which name).
    UnknownLevel {
        /// The component it was for, or `level` for everything.
        name: String,
        /// What was given.
        level: String,
    },
    /// Not a component of [`COMPONENTS`] nor a module path of a rustmesh crate.
    UnknownComponent(String),
    /// `paths=` entry without `:`.
    BadPath(String),
    /// Swapping the filter failed (the subscriber is gone).
    Reload(String),
}

impl fmt::Display for LevelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LevelError::UnknownLevel { name, level } => write!(
                f,
                "unknown level {level:?} for {name} (one of {LEVEL_NAMES})"
            ),
            LevelError::UnknownComponent(name) => write!(
                f,
                "unknown logger {name:?} (one of {}, or a module path under {})",
                COMPONENTS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
                CRATES.join(" or ")
            ),
            LevelError::BadPath(entry) => write!(
                f,
                "paths entry {entry:?} is not <logger>:<level> (e.g. http:debug)"
            ),
            LevelError::Reload(e) => write!(f, "cannot change the log filter: {e}"),
        }
    }
}

impl std::error::Error for LevelError {}

/// The module targets a component name stands for: its [`COMPONENTS`] entry, or itself when it
/// is a module path under a rustmesh crate (`rustmesh_proxy::http::route`).
pub fn targets(name: &str) -> Result<Vec<String>, LevelError> {
    if let Some((_, t)) = COMPONENTS.iter().find(|(n, _)| *n == name) {
        return Ok(t.iter().map(|s| s.to_string()).collect());
    }
    let mut segments = name.split("::");
    let krate = segments.next().unwrap_or_default();
    let well_formed = segments.all(|s| {
        !s.is_empty()
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    });
    if CRATES.contains(&krate) && well_formed {
        Ok(vec![name.to_string()])
    } else {
        Err(LevelError::UnknownComponent(name.to_string()))
    }
}

/// One change a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Every logger.
    All(Level),
    /// One component (its name as given, and the targets it stands for).
    One {
        /// As given.
        name: String,
        /// [`targets`] of it.
        targets: Vec<String>,
        /// The new level.
        level: Level,
    },
}

/// Reads a `/logging` query's parameters (`level=L`, `<component>=L`, `paths=c:L,c:L`) into
/// changes, refusing the first unknown name or level.
pub fn parse_changes<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<Change>, LevelError> {
    let mut out = Vec::new();
    let level_of = |name: &str, level: &str| {
        Level::parse(level).ok_or_else(|| LevelError::UnknownLevel {
            name: name.to_string(),
            level: level.to_string(),
        })
    };
    let one = |name: &str, level: &str, out: &mut Vec<Change>| -> Result<(), LevelError> {
        let targets = targets(name)?;
        out.push(Change::One {
            name: name.to_string(),
            targets,
            level: level_of(name, level)?,
        });
        Ok(())
    };
    for (key, value) in params {
        match key {
            "level" => out.push(Change::All(level_of("level", value)?)),
            "paths" => {
                for entry in value.split(',').filter(|e| !e.is_empty()) {
                    let (name, level) = entry
                        .rsplit_once(':')
                        .ok_or_else(|| LevelError::BadPath(entry.to_string()))?;
                    one(name, level, &mut out)?;
                }
            }
            name => one(name, value, &mut out)?,
        }
    }
    Ok(out)
}

/// Swaps a new filter into the subscriber.
type Reload = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// The starting filter and the levels set since, and the way to apply them.
pub struct Control {
    reload: Reload,
    state: Mutex<State>,
}

#[derive(Clone, Debug)]
struct State {
    /// The starting filter's directives (`RUST_LOG`), or the one level `level=` set.
    base: Vec<String>,
    /// Levels set per target since.
    overrides: BTreeMap<String, Level>,
}

/// The target part of a directive (`hyper=debug` → `hyper`, `rustmesh_proxy[span]=x` →
/// `rustmesh_proxy`); `None` for a bare level, which applies to everything.
fn directive_target(d: &str) -> Option<&str> {
    let target = d.split_once('=').map_or(d, |(t, _)| t);
    let target = target.split_once('[').map_or(target, |(t, _)| t);
    if target.is_empty() || (!d.contains('=') && Level::parse(target).is_some()) {
        return None;
    }
    Some(target)
}

fn directive_level(d: &str) -> Level {
    match d.split_once('=') {
        Some((_, l)) => l
            .parse::<LevelFilter>()
            .map_or(Level::Trace, Level::from_filter),
        // A bare target enables everything in it; a bare level is that level.
        None => d
            .parse::<LevelFilter>()
            .map_or(Level::Trace, Level::from_filter),
    }
}

/// Whether `target` lies within module `prefix` (`a::b` is in `a`, `ab` is not).
fn within(target: &str, prefix: &str) -> bool {
    target == prefix
        || target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with("::"))
}

impl State {
    /// The directives, the starting ones first, without those a later level replaced.
    fn directives(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .base
            .iter()
            .filter(|d| directive_target(d).is_none_or(|t| !self.overrides.contains_key(t)))
            .cloned()
            .collect();
        out.extend(
            self.overrides
                .iter()
                .map(|(t, l)| format!("{t}={}", l.directive())),
        );
        out
    }

    /// The level events of `target` pass at: the most specific directive covering it, as
    /// `EnvFilter` decides (without span filters); `off` when nothing covers it.
    fn level_of(&self, target: &str) -> Level {
        let mut best: Option<(usize, Level)> = None;
        for d in self.directives() {
            let (len, covers) = match directive_target(&d) {
                None => (0, true),
                Some(t) => (t.len() + 1, within(target, t)),
            };
            if covers && best.is_none_or(|(l, _)| len >= l) {
                best = Some((len, directive_level(&d)));
            }
        }
        best.map_or(Level::Off, |(_, l)| l)
    }
}

impl Control {
    /// Starts from `base` (an `EnvFilter` directive string, as `RUST_LOG`); `reload` swaps a new
    /// filter in.
    pub fn new(
        base: &str,
        reload: impl Fn(EnvFilter) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        Control {
            reload: Box::new(reload),
            state: Mutex::new(State {
                base: base
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(str::to_string)
                    .collect(),
                overrides: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The filter now in force, as an `EnvFilter` directive string.
    pub fn filter(&self) -> String {
        self.lock().directives().join(",")
    }

    /// Every component with its level, sorted by name: the [`COMPONENTS`] (each at the level
    /// of its first target), then module paths set directly.
    pub fn levels(&self) -> Vec<(String, Level)> {
        let state = self.lock();
        let mut out: Vec<(String, Level)> = COMPONENTS
            .iter()
            .map(|(name, targets)| (name.to_string(), state.level_of(targets[0])))
            .collect();
        let named: Vec<&str> = COMPONENTS
            .iter()
            .flat_map(|(_, t)| t.iter().copied())
            .collect();
        for (target, level) in &state.overrides {
            if !named.contains(&target.as_str()) {
                out.push((target.clone(), *level));
            }
        }
        out
    }

    /// Envoy's listing: `active loggers:` then `  <name>: <level>` lines.
    pub fn listing(&self) -> String {
        let mut out = String::from("active loggers:\n");
        for (name, level) in self.levels() {
            out.push_str(&format!("  {name}: {level}\n"));
        }
        out
    }

    /// Applies `changes` in order (all of them or, when the filter cannot be swapped, none).
    pub fn apply(&self, changes: &[Change]) -> Result<(), LevelError> {
        let mut state = self.lock();
        let mut next = state.clone();
        for change in changes {
            match change {
                Change::All(level) => {
                    next.base = vec![level.directive().to_string()];
                    next.overrides.clear();
                }
                Change::One { targets, level, .. } => {
                    for t in targets {
                        next.overrides.insert(t.clone(), *level);
                    }
                }
            }
        }
        let filter = EnvFilter::try_new(next.directives().join(","))
            .map_err(|e| LevelError::Reload(e.to_string()))?;
        (self.reload)(filter).map_err(LevelError::Reload)?;
        *state = next;
        Ok(())
    }
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Makes `control` the process's (what `/logging` uses); `Err` gives it back when one is
/// installed already.
pub fn install(control: Control) -> Result<(), Control> {
    CONTROL.set(control)
}

/// The process's [`Control`], when one was installed.
pub fn installed() -> Option<&'static Control> {
    CONTROL.get()
}

/// The starting filter: `RUST_LOG` when it is set and parses, else `info`.
pub fn starting_filter() -> String {
    match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(s) if EnvFilter::try_new(&s).is_ok() => s,
        _ => "info".to_string(),
    }
}

/// Installs the process's subscriber (the `fmt` layer writing to `writer`, ANSI colours when
/// `ansi`) with the [`starting_filter`] behind a reload layer, and its [`Control`].
pub fn init<W>(writer: W, ansi: bool)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    init_with(&starting_filter(), writer, ansi)
}

/// [`init`] with the starting filter given (`base`, `EnvFilter` directives). When the process
/// already has a subscriber it is kept and no [`Control`] is installed.
pub fn init_with<W>(base: &str, writer: W, ansi: bool)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(EnvFilter::new(base));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(ansi),
        )
        .try_init();
    // Only the filter of the subscriber in force may be controlled: when another was installed
    // first (a library user's), `/logging` answers that it has no control rather than
    // pretending to change levels.
    if installed.is_ok() {
        let _ = install(Control::new(base, move |f| {
            handle.reload(f).map_err(|e| e.to_string())
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(base: &str) -> Control {
        Control::new(base, |_| Ok(()))
    }

    fn level(c: &Control, name: &str) -> Level {
        c.levels()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} not listed"))
            .1
    }

    #[test]
    fn starting_filter_levels_and_one_component() {
        let c = control("info,rustmesh_proxy::dns=debug,hyper=warn");
        assert_eq!(level(&c, "http"), Level::Info);
        assert_eq!(level(&c, "dns"), Level::Debug);
        let changes = parse_changes([("http", "debug")]).unwrap();
        c.apply(&changes).unwrap();
        assert_eq!(level(&c, "http"), Level::Debug);
        assert_eq!(level(&c, "router"), Level::Debug, "inside http");
        assert_eq!(level(&c, "admin"), Level::Info);
        assert_eq!(
            c.filter(),
            "info,rustmesh_proxy::dns=debug,hyper=warn,rustmesh_proxy::http=debug"
        );
        c.apply(&parse_changes([("paths", "router:error,rustmesh_xds:trace")]).unwrap())
            .unwrap();
        assert_eq!(level(&c, "router"), Level::Error);
        assert_eq!(level(&c, "http"), Level::Debug);
        assert_eq!(level(&c, "rustmesh_xds"), Level::Trace);
        assert!(
            c.listing().contains("\n  rustmesh_xds: trace\n"),
            "{}",
            c.listing()
        );
        c.apply(&parse_changes([("level", "warning")]).unwrap())
            .unwrap();
        assert_eq!(c.filter(), "warn");
        assert!(c.levels().iter().all(|(_, l)| *l == Level::Warning));
    }

    #[test]
    fn unknown_names_and_levels_are_named_and_change_nothing() {
        let e = parse_changes([("level", "verbose")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("unknown level \"verbose\" for level (one of {LEVEL_NAMES})")
        );
        let e = parse_changes([("http", "debug"), ("htp", "debug")]).unwrap_err();
        assert!(e.to_string().starts_with("unknown logger \"htp\""), "{e}");
        assert!(parse_changes([("rustmesh_proxy::", "debug")]).is_err());
        assert!(parse_changes([("hyper", "debug")]).is_err());
        assert!(matches!(
            parse_changes([("paths", "http")]),
            Err(LevelError::BadPath(_))
        ));
        assert_eq!(
            parse_changes([("level", "critical")]).unwrap(),
            vec![Change::All(Level::Error)]
        );
    }

    #[test]
    fn a_failed_reload_keeps_the_state() {
        let c = Control::new("info", |_| Err("gone".into()));
        let e = c
            .apply(&parse_changes([("http", "debug")]).unwrap())
            .unwrap_err();
        assert_eq!(e.to_string(), "cannot change the log filter: gone");
        assert_eq!(c.filter(), "info");
    }

    #[test]
    fn without_a_bare_level_uncovered_targets_are_off() {
        let c = control("rustmesh_proxy::http=debug");
        assert_eq!(level(&c, "http"), Level::Debug);
        assert_eq!(level(&c, "dns"), Level::Off);
        let c = control("rustmesh_proxy");
        assert_eq!(level(&c, "dns"), Level::Trace);
    }
}
