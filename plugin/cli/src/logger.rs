//! The `anchor` command line's logger: `log` records to stderr, one line each, as
//! `anchor: warning: CUDA device 0 could not be opened …` (info lines carry no level word).
//!
//! Without it the engine's warnings are dropped: `log` discards records until a logger is set.
//! Verbosity follows the usual `-q` / `-v` / `-vv` counts (see [`max_level`]): by default
//! warnings, errors and info lines are shown. Debug and trace lines come only from our own crates
//! (targets starting with `anchor` or `make_your_anchor`); a dependency's records are shown from
//! warnings up, whatever the verbosity, so `-vv` is not drowned in candle's or a codec's chatter.
//!
//! Stderr only: stdout stays free for the summaries and reports the commands print. The
//! `MAKE_YOUR_ANCHOR_LOG` / `MAKE_YOUR_ANCHOR_LOG_LEVEL` variables belong to the effect's file
//! logger (`plugin/effect/src/logging.rs`), which lives in the plug-in, not in this binary; the
//! CLI reads neither, so setting them for a host never changes what `anchor` prints.
use std::fmt;
use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The level shown for a verbosity: the number of `-v` minus the number of `-q`.
///
/// | verbosity | shown |
/// |---|---|
/// | -1 or less (`-q`) | errors |
/// | 0 (default) | errors, warnings, info |
/// | 1 (`-v`) | … and debug (our crates only) |
/// | 2 or more (`-vv`) | … and trace (our crates only) |
///
/// Errors stay visible even with `-qq`: a failure must never be silent.
pub fn max_level(verbosity: i8) -> LevelFilter {
    match verbosity {
        i8::MIN..=-1 => LevelFilter::Error,
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Whether `target` (a record's target, by default its module path) is one of our crates:
/// `anchor` (the binary), `anchor_cli`, `anchor_engine`, `make_your_anchor`, ….
pub fn is_own_target(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    krate == "anchor" || krate.starts_with("anchor_") || krate.starts_with("make_your_anchor")
}

/// Whether a record passes: at or above `max`, and, from a dependency, at least a warning.
pub fn shows(max: LevelFilter, level: Level, target: &str) -> bool {
    level <= max && (level <= Level::Warn || is_own_target(target))
}

/// The line printed for a record, without the newline: `anchor: <message>` for info,
/// `anchor: error: …` / `anchor: warning: …` for our own errors and warnings, and the target
/// after the level word where it helps find the source: on debug and trace lines, and on any
/// record from a dependency (`anchor: warning: candle_core::cuda: …`).
pub fn format_record(level: Level, target: &str, args: impl fmt::Display) -> String {
    let word = match level {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info => "",
        Level::Debug => "debug",
        Level::Trace => "trace",
    };
    let with_target = level >= Level::Debug || !is_own_target(target);
    match (word.is_empty(), with_target) {
        (true, false) => format!("anchor: {args}"),
        (true, true) => format!("anchor: {target}: {args}"),
        (false, false) => format!("anchor: {word}: {args}"),
        (false, true) => format!("anchor: {word}: {target}: {args}"),
    }
}

/// A logger writing [`format_record`] lines to stderr for the records [`shows`] lets through.
#[derive(Debug, Clone, Copy)]
pub struct StderrLogger {
    max: LevelFilter,
}

impl StderrLogger {
    /// A logger for `verbosity` (see [`max_level`]).
    pub fn new(verbosity: i8) -> Self {
        Self {
            max: max_level(verbosity),
        }
    }

    /// The most verbose level this logger shows.
    pub fn max(&self) -> LevelFilter {
        self.max
    }
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        shows(self.max, metadata.level(), metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = format_record(record.level(), record.target(), record.args());
        line.push('\n');
        // One write per line keeps lines from concurrent render threads whole. A closed stderr
        // must not turn a render into a panic, so write errors are dropped.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the stderr logger for `verbosity` (see [`max_level`]); call it once, first thing in
/// `main`. A second call, or a logger already installed by someone else, leaves the first in
/// place.
pub fn init(verbosity: i8) {
    // Leaked once per process: `log` needs a `'static` logger, and it lives as long as `main`.
    let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger::new(verbosity)));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(logger.max());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_maps_to_levels() {
        assert_eq!(max_level(i8::MIN), LevelFilter::Error);
        assert_eq!(max_level(-2), LevelFilter::Error);
        assert_eq!(max_level(-1), LevelFilter::Error);
        assert_eq!(max_level(0), LevelFilter::Info);
        assert_eq!(max_level(1), LevelFilter::Debug);
        assert_eq!(max_level(2), LevelFilter::Trace);
        assert_eq!(max_level(i8::MAX), LevelFilter::Trace);
    }

    #[test]
    fn own_targets() {
        for target in [
            "anchor",
            "anchor::render",
            "anchor_cli::frames",
            "anchor_engine::device",
            "make_your_anchor",
            "make_your_anchor::render",
        ] {
            assert!(is_own_target(target), "{target}");
        }
        for target in ["candle_core::cuda", "image", "anchorage", "wgpu_anchor", ""] {
            assert!(!is_own_target(target), "{target}");
        }
    }

    #[test]
    fn default_verbosity_filters() {
        let max = max_level(0);
        assert!(shows(max, Level::Error, "candle_core"));
        assert!(shows(max, Level::Warn, "anchor_engine::device"));
        assert!(shows(max, Level::Warn, "candle_core"));
        assert!(shows(max, Level::Info, "anchor_engine::pipeline"));
        assert!(!shows(max, Level::Info, "candle_core"));
        assert!(!shows(max, Level::Debug, "anchor_engine::pipeline"));
    }

    #[test]
    fn quiet_shows_only_errors() {
        let max = max_level(-1);
        assert!(shows(max, Level::Error, "anchor_engine"));
        assert!(!shows(max, Level::Warn, "anchor_engine"));
        assert!(!shows(max, Level::Info, "anchor"));
    }

    #[test]
    fn verbose_shows_our_debug_and_trace_only() {
        let v = max_level(1);
        assert!(shows(v, Level::Debug, "anchor_engine::temporal"));
        assert!(!shows(v, Level::Trace, "anchor_engine::temporal"));
        assert!(!shows(v, Level::Debug, "candle_core"));
        let vv = max_level(2);
        assert!(shows(vv, Level::Trace, "make_your_anchor::render"));
        assert!(!shows(vv, Level::Trace, "image::codecs::png"));
        assert!(!shows(vv, Level::Info, "image::codecs::png"));
        assert!(shows(vv, Level::Warn, "image::codecs::png"));
    }

    #[test]
    fn logger_enabled_matches_shows() {
        let logger = StderrLogger::new(1);
        let meta = |level, target| Metadata::builder().level(level).target(target).build();
        assert!(logger.enabled(&meta(Level::Debug, "anchor_engine")));
        assert!(!logger.enabled(&meta(Level::Debug, "candle_core")));
        assert!(!logger.enabled(&meta(Level::Trace, "anchor_engine")));
        assert_eq!(logger.max(), LevelFilter::Debug);
    }

    #[test]
    fn lines_for_our_records() {
        assert_eq!(
            format_record(
                Level::Info,
                "anchor",
                format_args!("rendered {} frames", 12)
            ),
            "anchor: rendered 12 frames"
        );
        assert_eq!(
            format_record(
                Level::Warn,
                "anchor_engine::device",
                "CUDA device 0 could not be opened; using the CPU"
            ),
            "anchor: warning: CUDA device 0 could not be opened; using the CPU"
        );
        assert_eq!(
            format_record(Level::Error, "anchor_cli::frames", "frame 1010 is missing"),
            "anchor: error: frame 1010 is missing"
        );
        assert_eq!(
            format_record(
                Level::Debug,
                "anchor_engine::temporal",
                format_args!("window {}", 3)
            ),
            "anchor: debug: anchor_engine::temporal: window 3"
        );
        assert_eq!(
            format_record(Level::Trace, "anchor", "step 7"),
            "anchor: trace: anchor: step 7"
        );
    }

    #[test]
    fn lines_for_dependency_records_name_the_target() {
        assert_eq!(
            format_record(Level::Warn, "candle_core::cuda", "no kernel"),
            "anchor: warning: candle_core::cuda: no kernel"
        );
        assert_eq!(
            format_record(Level::Info, "image", "decoded"),
            "anchor: image: decoded"
        );
    }
}
