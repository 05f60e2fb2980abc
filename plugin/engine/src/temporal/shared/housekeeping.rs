//! Housekeeping of a shared cache folder, for `anchor cache info` and `anchor cache prune`.
//!
//! Entries are never invalidated (a key names its content for good), so the folder only grows
//! until pruned. Pruning removes the oldest entries first, by publication time; a process that
//! later needs a pruned value recomputes it, identically. Only files this engine recognises by
//! name are ever removed; anything else in the folder is counted as foreign and left alone.
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{format, lease, LeaseState, SharedStore};
use crate::{EngineError, Result};

/// What a shared cache folder holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreInfo {
    /// Entries whose header checks out.
    pub entries: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Leases renewed within the expiry (work in progress).
    pub live_leases: u64,
    /// Leases past the expiry (their holders crashed or froze).
    pub stale_leases: u64,
    /// Entry files that fail their header or length check (never used; removed by prune).
    pub unreadable: u64,
    /// Their bytes.
    pub unreadable_bytes: u64,
    /// Entries being written, or left behind by a writer that died.
    pub temporaries: u64,
    /// Files and folders this engine did not write (ignored, never removed).
    pub foreign: u64,
}

/// What [`SharedStore::prune`] removed and what remains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Valid entries removed.
    pub removed_entries: u64,
    /// Their bytes.
    pub removed_bytes: u64,
    /// Unreadable entry files, stale leases and abandoned temporaries removed.
    pub removed_debris: u64,
    /// Valid entries left.
    pub remaining_entries: u64,
    /// Their bytes.
    pub remaining_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Entry,
    Unreadable,
    LiveLease,
    StaleLease,
    Temporary,
    Foreign,
}

struct Item {
    path: PathBuf,
    kind: Kind,
    len: u64,
    mtime: SystemTime,
}

fn is_key(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn io_error(path: &Path, source: std::io::Error) -> EngineError {
    EngineError::Io {
        path: path.to_owned(),
        source,
    }
}

impl SharedStore {
    fn classify(&self, path: &Path, name: &str) -> Kind {
        if let Some(key) = name.strip_suffix(".entry").filter(|k| is_key(k)) {
            return match format::inspect(path) {
                Ok(Some((h, _, _))) if format!("{:032x}", h.key) == key => Kind::Entry,
                _ => Kind::Unreadable,
            };
        }
        if name.strip_suffix(".lease").is_some_and(is_key) {
            return match lease::state(path, self.config.lease_expiry) {
                LeaseState::Stale => Kind::StaleLease,
                _ => Kind::LiveLease,
            };
        }
        let tmp = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|n| n.split_once('.'));
        if tmp.is_some_and(|(key, _)| is_key(key)) {
            return Kind::Temporary;
        }
        Kind::Foreign
    }

    /// Every file of the folder, classified.
    fn scan(&self) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        let top = std::fs::read_dir(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        for shard in top {
            let shard = shard.map_err(|e| io_error(&self.dir, e))?;
            let name = shard.file_name().to_string_lossy().into_owned();
            let is_shard = name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if !is_shard || !shard.file_type().is_ok_and(|t| t.is_dir()) {
                items.push(Item {
                    path: shard.path(),
                    kind: Kind::Foreign,
                    len: 0,
                    mtime: SystemTime::UNIX_EPOCH,
                });
                continue;
            }
            let files = std::fs::read_dir(shard.path()).map_err(|e| io_error(&shard.path(), e))?;
            for file in files {
                let file = file.map_err(|e| io_error(&shard.path(), e))?;
                let path = file.path();
                // Vanished since listed (another process's rename or prune): skip.
                let Ok(meta) = file.metadata() else { continue };
                let name = file.file_name().to_string_lossy().into_owned();
                let kind = if meta.is_file() {
                    self.classify(&path, &name)
                } else {
                    Kind::Foreign
                };
                items.push(Item {
                    path,
                    kind,
                    len: meta.len(),
                    mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        Ok(items)
    }

    /// Counts what the folder holds. Entries are checked by header and length only (not by
    /// payload checksum), so this stays quick on a large folder.
    pub fn info(&self) -> Result<StoreInfo> {
        let mut info = StoreInfo::default();
        for item in self.scan()? {
            match item.kind {
                Kind::Entry => {
                    info.entries += 1;
                    info.bytes += item.len;
                }
                Kind::Unreadable => {
                    info.unreadable += 1;
                    info.unreadable_bytes += item.len;
                }
                Kind::LiveLease => info.live_leases += 1,
                Kind::StaleLease => info.stale_leases += 1,
                Kind::Temporary => info.temporaries += 1,
                Kind::Foreign => info.foreign += 1,
            }
        }
        Ok(info)
    }

    /// Removes entries published longer than `older_than` ago, then the oldest entries until at
    /// most `max_bytes` remain, and always the debris: unreadable entry files, stale leases, and
    /// temporaries older than the lease expiry (their writers died). Live leases, fresh
    /// temporaries and foreign files are kept. Safe while renders run: a removed entry is
    /// recomputed by whoever needs it.
    pub fn prune(
        &self,
        older_than: Option<Duration>,
        max_bytes: Option<u64>,
    ) -> Result<PruneReport> {
        let now = SystemTime::now();
        let age = |t: SystemTime| now.duration_since(t).unwrap_or(Duration::ZERO);
        let remove = |path: &Path| match std::fs::remove_file(path) {
            Err(e) if !format::absent(&e) => Err(io_error(path, e)),
            _ => Ok(()),
        };
        let mut report = PruneReport::default();
        let mut entries = Vec::new();
        for item in self.scan()? {
            let debris = match item.kind {
                Kind::Entry => {
                    entries.push(item);
                    continue;
                }
                Kind::Unreadable | Kind::StaleLease => true,
                Kind::Temporary => age(item.mtime) > self.config.lease_expiry,
                Kind::LiveLease | Kind::Foreign => false,
            };
            if debris {
                remove(&item.path)?;
                report.removed_debris += 1;
            }
        }
        // Oldest first, so the age cut and the size cut both remove from the front.
        entries.sort_by_key(|i| i.mtime);
        let mut total: u64 = entries.iter().map(|i| i.len).sum();
        for item in entries {
            let too_old = older_than.is_some_and(|d| age(item.mtime) > d);
            let too_big = max_bytes.is_some_and(|m| total > m);
            if too_old || too_big {
                remove(&item.path)?;
                report.removed_entries += 1;
                report.removed_bytes += item.len;
                total -= item.len;
            } else {
                report.remaining_entries += 1;
            }
        }
        report.remaining_bytes = total;
        Ok(report)
    }
}
