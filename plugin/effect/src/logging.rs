//! The plug-in's own file logger: `log` records go to the file named by `MAKE_YOUR_ANCHOR_LOG`,
//! at the level named by `MAKE_YOUR_ANCHOR_LOG_LEVEL` (default `info`). Nothing goes to stdout,
//! which hosts such as `melt` use for video.
//!
//! Initialised once per process (on Load, or on `OfxSetHost` so that a failing host hand-shake is
//! logged too). A host that is itself a Rust program owns the `log` facade in its own copy of the
//! crate; ours is a separate copy inside this cdylib, so the two never clash.
use log::{LevelFilter, Log, Metadata, Record};
use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::io::Write;
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

static INIT: Once = Once::new();

/// Install the file logger from the environment, once per process. Without `MAKE_YOUR_ANCHOR_LOG`
/// logging stays off. Also routes panic reports into the log before the previous panic hook runs.
pub fn init_from_env() {
    INIT.call_once(|| {
        let Ok(path) = std::env::var(ENV_LOG_FILE) else {
            return;
        };
        if path.trim().is_empty() {
            return;
        }
        let level = parse_level(std::env::var(ENV_LOG_LEVEL).ok().as_deref());
        let Ok(logger) = FileLogger::open(&path, level) else {
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
                "Make Your Anchor {} (crate {}) logging at {level} to {path}",
                super::VERSION_LABEL,
                env!("CARGO_PKG_VERSION")
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
}
