//! `rustmeshctl proxy-config log POD [--level LEVELS]`, as `istioctl proxy-config log`: without
//! `--level` it shows the sidecar's log levels (`POST /logging` with no query: Envoy's `active
//! loggers:` listing); with it, it changes them in one `POST /logging?...` and shows the result.
//!
//! `--level` takes istioctl's form, `[<logger>:]<level>,[<logger>:]<level>,...`: a bare level
//! sets every logger, `<logger>:<level>` one (`http:debug,info`: everything at info, http at
//! debug; the bare level is applied first whatever its place). Levels are Envoy's and are
//! checked here; logger names (Envoy's `http`, `router`, `upstream`... or a module path such
//! as `rustmesh_proxy::http`) are checked by the sidecar, which answers 400 naming an unknown
//! one (the list is in `proxy/README.md`, "Log levels").

/// The levels `--level` accepts (Envoy's; `warn` is `warning`, `critical` is `error`).
pub const LEVELS: [&str; 8] = [
    "trace", "debug", "info", "warning", "warn", "error", "critical", "off",
];

/// Path `rustmeshctl` POSTs to.
pub const LOGGING_PATH: &str = "/logging";

/// One entry of `--level`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelSpec {
    /// `None`: every logger.
    pub logger: Option<String>,
    pub level: String,
}

/// Reads `--level` (`http:debug,info`), naming the first bad entry.
pub fn parse_levels(text: &str) -> Result<Vec<LevelSpec>, String> {
    let mut out: Vec<LevelSpec> = Vec::new();
    for entry in text.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(format!(
                "{text:?} has an empty entry: write [<logger>:]<level>,[<logger>:]<level>,..."
            ));
        }
        let (logger, level) = match entry.rsplit_once(':') {
            Some((logger, level)) => (Some(logger), level),
            None => (None, entry),
        };
        if !LEVELS.contains(&level) {
            return Err(format!(
                "unknown level {level:?} in {entry:?} (one of {})",
                LEVELS.join(", ")
            ));
        }
        if let Some(l) = logger {
            let ok = !l.is_empty()
                && !l.ends_with(':')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
            if !ok {
                return Err(format!(
                    "{l:?} in {entry:?} is not a logger name (an Envoy logger such as http, \
                     or a module path such as rustmesh_proxy::http)"
                ));
            }
        }
        if logger.is_none() && out.iter().any(|s| s.logger.is_none()) {
            return Err(format!(
                "{text:?} gives more than one level for every logger"
            ));
        }
        out.push(LevelSpec {
            logger: logger.map(str::to_string),
            level: level.to_string(),
        });
    }
    Ok(out)
}

/// The one request that applies `specs`: `/logging?level=L&<logger>=L...`, the level for every
/// logger first.
pub fn query(specs: &[LevelSpec]) -> String {
    let mut params: Vec<String> = specs
        .iter()
        .filter(|s| s.logger.is_none())
        .map(|s| format!("level={}", s.level))
        .collect();
    params.extend(
        specs
            .iter()
            .filter_map(|s| s.logger.as_ref().map(|l| format!("{l}={}", s.level))),
    );
    format!("{LOGGING_PATH}?{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istioctl_level_lists() {
        let specs = parse_levels("http:debug,info").unwrap();
        assert_eq!(
            specs,
            [
                LevelSpec {
                    logger: Some("http".into()),
                    level: "debug".into()
                },
                LevelSpec {
                    logger: None,
                    level: "info".into()
                },
            ]
        );
        assert_eq!(query(&specs), "/logging?level=info&http=debug");
        let specs = parse_levels("rustmesh_proxy::http::route:trace, upstream:warning").unwrap();
        assert_eq!(
            query(&specs),
            "/logging?rustmesh_proxy::http::route=trace&upstream=warning"
        );
        assert_eq!(query(&parse_levels("off").unwrap()), "/logging?level=off");
    }

    #[test]
    fn bad_lists_name_the_entry() {
        assert_eq!(
            parse_levels("http:verbose").unwrap_err(),
            "unknown level \"verbose\" in \"http:verbose\" (one of trace, debug, info, warning, \
             warn, error, critical, off)"
        );
        assert!(parse_levels("http").unwrap_err().contains("\"http\""));
        assert!(
            parse_levels("info,,http:debug")
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            parse_levels("info,debug")
                .unwrap_err()
                .contains("more than one")
        );
        assert!(
            parse_levels("ht tp:debug")
                .unwrap_err()
                .contains("\"ht tp\"")
        );
        assert!(parse_levels(":debug").is_err());
    }
}
