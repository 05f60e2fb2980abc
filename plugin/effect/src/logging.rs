//! The plug-in's own file logger: `log` records go to a file, at the level named by
//! `MAKE_YOUR_ANCHOR_LOG_LEVEL` (default `info`). Nothing goes to stdout, which hosts such as
//! `melt` use for video.
//!
//! The file is the one `MAKE_YOUR_ANCHOR_LOG` names (`off` turns logging off), else the default
//! place of the OS ([`default_log_path`]): `$XDG_STATE_HOME/make-your-anchor/plugin.log`
//! (`~/.local/state/…`) on Linux, `~/Library/Logs/MakeYourAnchor/plugin.log` on macOS and
//! `%LOCALAPPDATA%\MakeYourAnchor\plugin.log` on Windows. A default file past
//! [`ROTATE_BYTES`] is moved to `plugin.log.1` when a process opens it.
//!
//! Initialised once per process (on Load, or on `OfxSetHost` so that a failing host hand-shake is
//! logged too). A host that is itself a Rust program owns the `log` facade in its own copy of the
//! crate; ours is a separate copy inside this cdylib, so the two never clash.
use log::{LevelFilter, Log, Metadata, Record};
use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable naming the log file.
pub const ENV_LOG_FILE: &str = "MAKE_YOUR_ANCHOR_LOG";
/// Environment variable naming the level: off, error, warn, info, debug or trace.
pub const ENV_LOG_LEVEL: &str = "MAKE_YOUR_ANCHOR_LOG_LEVEL";

/// Parse a level name (case-insensitive); `None` or an unknown name gives `info`.
pub fn parse_level(name: Option<&str>) -> LevelFilter {
    match name.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("off") => LevelFilter::Off,
        Some("error") => LevelFilter::Error,
        Some("warn") | Some("warning") => LevelFilter::Warn,
        Some("debug") => LevelFilter::Debug,
        Some("trace") => LevelFilter::Trace,
        _ => LevelFilter::Info,
    }
}

/// A logger appending one line per record to a file.
pub struct FileLogger {
    file: Mutex<File>,
    level: LevelFilter,
}

impl FileLogger {
    /// Open (append, create) `path`.
    pub fn open(path: &str, level: LevelFilter) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file: Mutex::new(file),
            level,
        })
    }
}

impl Log for FileLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let thread = std::thread::current();
        let thread_name = thread
            .name()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{:?}", thread.id()));
        let line = format!(
            "{}.{:03} {:<5} [{}] {}: {}\n",
            now.as_secs(),
            now.subsec_millis(),
            record.level(),
            thread_name,
            record.target(),
            record.args()
        );
        // One write per line keeps lines from concurrent render threads whole; a full disk must
        // not take the host down, so write errors are dropped.
        let _ = self.file.lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = self.file.lock().flush();
    }
}

/// Size past which the default log file is rotated when a process opens it.
pub const ROTATE_BYTES: u64 = 16 << 20;

/// The default log file of this OS, from the environment `env`: `None` when the variables it
/// needs are absent.
pub fn default_log_path(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let var = |name: &str| {
        env(name)
            .filter(|v| !v.trim().is_empty())
            .map(PathBuf::from)
    };
    let dir = if cfg!(windows) {
        var("LOCALAPPDATA")?.join("MakeYourAnchor")
    } else if cfg!(target_os = "macos") {
        var("HOME")?.join("Library/Logs/MakeYourAnchor")
    } else {
        var("XDG_STATE_HOME")
            .or_else(|| var("HOME").map(|h| h.join(".local/state")))?
            .join("make-your-anchor")
    };
    Some(dir.join("plugin.log"))
}

/// The log file `MAKE_YOUR_ANCHOR_LOG` asks for (`None`: logging off), and whether it is the
/// default place.
pub fn log_path(env: impl Fn(&str) -> Option<String>) -> Option<(PathBuf, bool)> {
    match env(ENV_LOG_FILE).map(|v| v.trim().to_string()) {
        Some(v) if ["off", "none", "0"].contains(&v.to_ascii_lowercase().as_str()) => None,
        Some(v) if !v.is_empty() => Some((PathBuf::from(v), false)),
        _ => default_log_path(env).map(|p| (p, true)),
    }
}

/// Creates the default log file's folder and rotates a file past [`ROTATE_BYTES`].
fn prepare_default(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::metadata(path).is_ok_and(|m| m.len() > ROTATE_BYTES) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(path, old)?;
    }
    Ok(())
}

static INIT: Once = Once::new();

/// Install the file logger from the environment, once per process ([`log_path`]). Also routes
/// panic reports into the log before the previous panic hook runs.
pub fn init_from_env() {
    INIT.call_once(|| {
        let Some((path, default)) = log_path(|name| std::env::var(name).ok()) else {
            return;
        };
        if default && prepare_default(&path).is_err() {
            return;
        }
        let level = parse_level(std::env::var(ENV_LOG_LEVEL).ok().as_deref());
        let Ok(logger) = FileLogger::open(&path.to_string_lossy(), level) else {
            return;
        };
        // Leaked once per process: the logger lives as long as the loaded binary.
        let logger: &'static FileLogger = Box::leak(Box::new(logger));
        if log::set_logger(logger).is_ok() {
            log::set_max_level(level);
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                log::error!("panic: {info}");
                previous(info);
            }));
            log::info!(
                "Make Your Anchor {} (crate {}) logging at {level} to {}",
                super::VERSION_LABEL,
                env!("CARGO_PKG_VERSION"),
                path.display()
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_names() {
        assert_eq!(parse_level(None), LevelFilter::Info);
        assert_eq!(parse_level(Some("DEBUG")), LevelFilter::Debug);
        assert_eq!(parse_level(Some(" trace ")), LevelFilter::Trace);
        assert_eq!(parse_level(Some("warning")), LevelFilter::Warn);
        assert_eq!(parse_level(Some("off")), LevelFilter::Off);
        assert_eq!(parse_level(Some("loud")), LevelFilter::Info);
    }

    #[test]
    fn file_logger_filters_by_level_and_writes_lines() {
        let path = std::env::temp_dir().join(format!("mya-log-test-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let logger = FileLogger::open(path.to_str().unwrap_or_default(), LevelFilter::Info)
            .expect("temp file opens");
        logger.log(
            &Record::builder()
                .level(log::Level::Info)
                .target("mya")
                .args(format_args!("render frame {}", 7))
                .build(),
        );
        logger.log(
            &Record::builder()
                .level(log::Level::Debug)
                .target("mya")
                .args(format_args!("hidden"))
                .build(),
        );
        logger.flush();
        let text = std::fs::read_to_string(&path).expect("log file reads");
        let _ = std::fs::remove_file(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "only the info record: {text:?}");
        assert!(lines[0].contains(" INFO  ["), "{}", lines[0]);
        assert!(lines[0].ends_with("] mya: render frame 7"), "{}", lines[0]);
    }

    #[test]
    fn the_log_goes_to_the_variables_file_else_the_default_place_and_off_turns_it_off() {
        fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        }
        let home = [
            ("HOME", "/home/ana"),
            ("LOCALAPPDATA", "C:/Users/ana/AppData/Local"),
        ];
        let (path, default) = log_path(env(&home[..])).expect("a default place");
        assert!(default);
        let expected = if cfg!(windows) {
            "C:/Users/ana/AppData/Local/MakeYourAnchor/plugin.log"
        } else if cfg!(target_os = "macos") {
            "/home/ana/Library/Logs/MakeYourAnchor/plugin.log"
        } else {
            "/home/ana/.local/state/make-your-anchor/plugin.log"
        };
        assert_eq!(path, PathBuf::from(expected));
        if cfg!(all(unix, not(target_os = "macos"))) {
            let xdg = [("HOME", "/home/ana"), ("XDG_STATE_HOME", "/var/state/ana")];
            assert_eq!(
                log_path(env(&xdg[..])).map(|(p, _)| p),
                Some(PathBuf::from("/var/state/ana/make-your-anchor/plugin.log"))
            );
        }
        let named = [("HOME", "/home/ana"), (ENV_LOG_FILE, "/tmp/mya.log")];
        assert_eq!(
            log_path(env(&named[..])),
            Some((PathBuf::from("/tmp/mya.log"), false))
        );
        let off = [("HOME", "/home/ana"), (ENV_LOG_FILE, "OFF")];
        assert_eq!(log_path(env(&off[..])), None);
        assert_eq!(log_path(env(&[])), None, "no home: no default place");
    }

    #[test]
    fn a_large_default_log_is_rotated() {
        let dir = std::env::temp_dir().join(format!("mya-log-rotate-{}", std::process::id()));
        let path = dir.join("sub").join("plugin.log");
        prepare_default(&path).expect("creates the folder");
        assert!(path.parent().is_some_and(Path::is_dir));
        std::fs::write(&path, vec![b'x'; ROTATE_BYTES as usize + 1]).unwrap();
        prepare_default(&path).expect("rotates");
        assert!(!path.exists());
        assert!(dir.join("sub").join("plugin.log.1").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
