//! `anchor cache info|prune`: housekeeping of a farm's shared cache folder (the folder given to
//! `anchor render --shared-cache` and the effect's `sharedCacheFolder`).
//!
//! Entries are content-keyed, so removing any of them is always safe: a later render recomputes
//! what it needs. Files the store does not recognise are counted and left alone.
use std::path::PathBuf;
use std::time::Duration;

use anchor_engine::temporal::{SharedConfig, SharedStore};

use super::{Result, ToolsError};

/// `anchor cache …`.
#[derive(clap::Args, Debug)]
pub struct CacheArgs {
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CacheCommand {
    /// Entries, bytes and leases (live and stale) of a shared cache folder.
    Info {
        /// The shared cache folder.
        dir: PathBuf,
    },
    /// Remove entries: those older than --older-than, then the oldest until the folder holds at
    /// most --max-size. Stale leases and abandoned temporary files go too.
    Prune {
        /// The shared cache folder.
        dir: PathBuf,
        /// Age above which entries go, e.g. 90s, 30m, 12h, 7d.
        #[arg(long, value_parser = parse_age)]
        older_than: Option<Duration>,
        /// Size the folder is brought under, oldest entries first, e.g. 500M, 20G, 1T (bytes when
        /// no unit).
        #[arg(long, value_parser = parse_size)]
        max_size: Option<u64>,
    },
}

/// `90s`, `30m`, `12h`, `7d` (a bare number is seconds).
pub fn parse_age(s: &str) -> std::result::Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("age \"{s}\": expected a number and a unit, e.g. 12h or 7d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => return Err(format!("age \"{s}\": the unit must be s, m, h, d or w")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

/// `500M`, `20G`, `1T`, `4096K` (powers of 1024; a bare number is bytes).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size \"{s}\": expected a number and a unit, e.g. 500M or 20G"))?;
    let shift = match unit.trim_end_matches(['B', 'b', 'i']) {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(format!("size \"{s}\": the unit must be K, M, G or T")),
    };
    Ok(n.saturating_mul(1 << shift))
}

fn store(dir: &PathBuf) -> Result<SharedStore> {
    if !dir.is_dir() {
        return Err(ToolsError::Input(format!(
            "shared cache folder {} does not exist",
            dir.display()
        )));
    }
    Ok(SharedStore::open(dir, SharedConfig::default()))
}

fn engine_err(dir: &std::path::Path) -> impl FnOnce(anchor_engine::EngineError) -> ToolsError + '_ {
    move |e| ToolsError::Input(format!("shared cache folder {}: {e}", dir.display()))
}

/// Runs `anchor cache …`, printing its report on stdout.
pub fn run(a: &CacheArgs) -> Result<()> {
    match &a.command {
        CacheCommand::Info { dir } => {
            let info = store(dir)?.info().map_err(engine_err(dir))?;
            println!(
                "{}: {} entries, {} bytes ({:.1} MiB); leases: {} live, {} stale; {} unreadable \
                 entries ({} bytes), {} temporary files, {} other files",
                dir.display(),
                info.entries,
                info.bytes,
                info.bytes as f64 / (1u64 << 20) as f64,
                info.live_leases,
                info.stale_leases,
                info.unreadable,
                info.unreadable_bytes,
                info.temporaries,
                info.foreign
            );
        }
        CacheCommand::Prune {
            dir,
            older_than,
            max_size,
        } => {
            if older_than.is_none() && max_size.is_none() {
                return Err(ToolsError::Input(
                    "cache prune needs --older-than or --max-size (or both)".into(),
                ));
            }
            let r = store(dir)?
                .prune(*older_than, *max_size)
                .map_err(engine_err(dir))?;
            println!(
                "{}: removed {} entries ({} bytes) and {} stale or temporary files; {} entries \
                 ({} bytes) remain",
                dir.display(),
                r.removed_entries,
                r.removed_bytes,
                r.removed_debris,
                r.remaining_entries,
                r.remaining_bytes
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_sizes_parse_with_their_units() {
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_age("45"), Ok(Duration::from_secs(45)));
        assert!(parse_age("7y").unwrap_err().contains("s, m, h, d or w"));
        assert!(parse_age("soon").unwrap_err().contains("\"soon\""));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("20GiB"), Ok(20 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("3X").unwrap_err().contains("K, M, G or T"));
    }
}
