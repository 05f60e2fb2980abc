//! The farm-wide window cache: a content-keyed store in a folder on the farm's shared storage
//! (NFS or SMB) that every process of a render job reads and writes, with lease files so that
//! processes split the work instead of repeating it (issue 15).
//!
//! Exact joint denoising makes every frame depend on nearly the whole clip, so farm chunks
//! rendered in separate processes each paid for almost the entire clip. With a shared store, each
//! value the temporal engine memoises by content key (window noise predictions, frame latents
//! after each step, decoded frames) is published once and read by the others. The keys make this
//! safe: a key is a hash of everything the value depends on, so the same key means the same
//! bytes, whichever process on whichever machine computed it, and duplicates are harmless.
//!
//! Layout of the folder: `<kk>/<key>.entry` (the value, see [`VERSION`] and the format module),
//! `<kk>/<key>.lease` (a claim on computing it) and short-lived `<kk>/.<key>.<token>.tmp`
//! (an entry being written), where `<key>` is 32 hex digits and `<kk>` its first two.
//!
//! - **Publishing** writes a temporary file in the same folder, flushes it to storage, then
//!   renames it over the final name: readers see a whole entry or none.
//! - **Reading** checks magic, version, key, kind, length and checksums. A file that fails is
//!   ignored, counted in [`SharedStats::rejected`], and the caller recomputes and republishes.
//! - **Claiming** (see [`SharedStore::try_claim`]) creates a lease exclusively; it is renewed
//!   every quarter of [`SharedConfig::lease_expiry`] while held and deleted when released. Past the
//!   expiry, another process takes it over.
//! - **Faults**: when the folder cannot be written (read-only, full, missing, not a folder), the
//!   store logs one warning and goes on *degraded*: nothing more is published or claimed, reads
//!   still work, and the render continues with local work. Files it does not recognise are
//!   ignored and never deleted.
//! - New files may take seconds to appear on other NFS clients (attribute caching), so nothing
//!   here waits for visibility: waiters poll with a bounded total wait
//!   ([`SharedConfig::max_wait`]), then compute the value themselves.
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use candle_core::Device;

use super::cache::{Entry, Key};

mod format;
mod housekeeping;
mod lease;
#[cfg(test)]
mod tests;

pub use format::{EntryKind, MAGIC, VERSION};
pub use housekeeping::{PruneReport, StoreInfo};
pub use lease::{ClaimGuard, LeaseState};

/// The environment variable naming the shared cache folder when no folder is given explicitly.
pub const SHARED_CACHE_ENV: &str = "MAKE_YOUR_ANCHOR_SHARED_CACHE";

/// Timings of the shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedConfig {
    /// A lease not renewed for this long is stale and may be taken over (default 60 s). Holders
    /// renew every quarter of it (15 s by default), so a live holder survives three missed
    /// renewals, e.g. a storage hiccup.
    pub lease_expiry: Duration,
    /// How often a waiter looks again for an entry another process is computing (default 200 ms).
    pub poll_interval: Duration,
    /// The longest a waiter waits for one step's entries claimed by others before computing the
    /// missing ones itself (default 5 min): this ends waits on a holder that is frozen yet still
    /// renewing, and on files NFS keeps hidden.
    pub max_wait: Duration,
}

impl Default for SharedConfig {
    fn default() -> Self {
        Self {
            lease_expiry: Duration::from_secs(60),
            poll_interval: Duration::from_millis(200),
            max_wait: Duration::from_secs(300),
        }
    }
}

/// Counters of one store handle (this process's view), for logs, the CLI summary and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedStats {
    /// Entries read and verified.
    pub hits: u64,
    /// Reads that found no entry.
    pub misses: u64,
    /// Entry files found but not used: truncated, corrupt, foreign, another version or key.
    pub rejected: u64,
    /// Entries published.
    pub published: u64,
    /// Claims won (including takeovers).
    pub claims: u64,
    /// Claims won by taking over a stale lease.
    pub takeovers: u64,
    /// Waits for another process's entry that ended at [`SharedConfig::max_wait`].
    pub expired_waits: u64,
    /// Warnings logged (at most one: the switch to local-only work).
    pub warnings: u64,
    /// True once the folder failed to take a write: local work only from then on.
    pub degraded: bool,
}

#[derive(Debug, Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
    rejected: AtomicU64,
    published: AtomicU64,
    claims: AtomicU64,
    takeovers: AtomicU64,
    expired_waits: AtomicU64,
    warnings: AtomicU64,
}

/// The outcome of [`SharedStore::try_claim`].
#[derive(Debug)]
pub enum Claim {
    /// This process holds the claim until the guard is dropped: compute, publish, then drop.
    Ours(ClaimGuard),
    /// A live lease of another process holds it: work on something else, then wait for its entry.
    Theirs,
    /// The store is degraded (the folder takes no writes): compute locally without a claim.
    Unavailable,
}

/// A shared cache folder, as one process sees it. Cheap to share between threads (`Arc`).
#[derive(Debug)]
pub struct SharedStore {
    dir: PathBuf,
    config: SharedConfig,
    degraded: AtomicBool,
    counts: Counts,
}

impl SharedStore {
    /// Opens (creating if needed) the store in `dir`. Never fails: a folder that cannot be
    /// created leaves the store degraded, with one warning.
    pub fn open(dir: impl Into<PathBuf>, config: SharedConfig) -> Self {
        let store = Self {
            dir: dir.into(),
            config,
            degraded: AtomicBool::new(false),
            counts: Counts::default(),
        };
        if let Err(e) = std::fs::create_dir_all(&store.dir) {
            store.degrade("creating the folder", &e);
        }
        store
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The timings.
    pub fn config(&self) -> &SharedConfig {
        &self.config
    }

    /// True once the folder failed to take a write (local work only from then on).
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::SeqCst)
    }

    /// This handle's counters.
    pub fn stats(&self) -> SharedStats {
        let c = &self.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SharedStats {
            hits: get(&c.hits),
            misses: get(&c.misses),
            rejected: get(&c.rejected),
            published: get(&c.published),
            claims: get(&c.claims),
            takeovers: get(&c.takeovers),
            expired_waits: get(&c.expired_waits),
            warnings: get(&c.warnings),
            degraded: self.is_degraded(),
        }
    }

    fn shard(&self, key: Key) -> PathBuf {
        self.dir.join(format!("{:02x}", key >> 120))
    }

    /// Where the entry for `key` lives.
    pub fn entry_path(&self, key: Key) -> PathBuf {
        self.shard(key).join(format!("{key:032x}.entry"))
    }

    /// Where the lease on `key` lives.
    pub fn lease_path(&self, key: Key) -> PathBuf {
        self.shard(key).join(format!("{key:032x}.lease"))
    }

    fn degrade(&self, what: &str, e: &std::io::Error) {
        if !self.degraded.swap(true, Ordering::SeqCst) {
            self.counts.warnings.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "shared cache {}: {what} failed ({e}); this process goes on with local work \
                 only and publishes nothing more there",
                self.dir.display()
            );
        }
    }

    /// The verified entry for `key`, with its tensors on `device`; `None` when there is none or
    /// the file fails a check (then it is counted in [`SharedStats::rejected`] and never used).
    pub fn get(&self, key: Key, kind: EntryKind, device: &Device) -> Option<Entry> {
        let path = self.entry_path(key);
        match format::read(&path, key, kind, device) {
            Ok(Some(entry)) => {
                self.counts.hits.fetch_add(1, Ordering::Relaxed);
                Some(entry)
            }
            Ok(None) => {
                self.counts.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(why) => {
                self.counts.rejected.fetch_add(1, Ordering::Relaxed);
                log::debug!("shared cache: ignoring {} ({why:?})", path.display());
                None
            }
        }
    }

    /// True when an entry file for `key` is visible (not yet verified: a corrupt one is caught
    /// and recomputed when read).
    pub fn contains(&self, key: Key) -> bool {
        std::fs::metadata(self.entry_path(key)).is_ok_and(|m| m.is_file())
    }

    /// Publishes `entry` under `key`: temporary file, flush, rename. Failures to write degrade
    /// the store (one warning) instead of failing the render; values of a dtype the format does
    /// not carry are simply not shared.
    pub fn publish(&self, key: Key, entry: &Entry) {
        if self.is_degraded() {
            return;
        }
        let bytes = match format::encode(key, entry) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                log::debug!("shared cache: {key:032x} has a dtype the format does not carry");
                return;
            }
            Err(e) => {
                log::debug!("shared cache: cannot serialise {key:032x}: {e}");
                return;
            }
        };
        match self.write_atomically(key, &bytes) {
            Ok(()) => {
                self.counts.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.degrade("publishing an entry", &e),
        }
    }

    fn write_atomically(&self, key: Key, bytes: &[u8]) -> std::io::Result<()> {
        let shard = self.shard(key);
        std::fs::create_dir_all(&shard)?;
        let tmp = shard.join(format!(".{key:032x}.{}.tmp", lease::unique_token()));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(bytes)?;
                f.sync_all()
            })
            .and_then(|()| {
                let target = self.entry_path(key);
                match std::fs::rename(&tmp, &target) {
                    // Windows refuses to replace a file another process has open: that copy
                    // holds the same bytes, so publishing is done.
                    Err(e) if target.is_file() => {
                        log::debug!("shared cache: kept {} ({e})", target.display());
                        Ok(())
                    }
                    renamed => renamed,
                }
            });
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        // Make the rename itself durable where the platform allows syncing a folder.
        #[cfg(unix)]
        let _ = std::fs::File::open(&shard).and_then(|d| d.sync_all());
        Ok(())
    }

    /// The state of the lease on `key`.
    pub fn lease_state(&self, key: Key) -> LeaseState {
        lease::state(&self.lease_path(key), self.config.lease_expiry)
    }

    /// Claims the work of computing `key`: creates its lease exclusively, or takes over a stale
    /// one (delete, then create exclusively again; when two processes race for the same stale
    /// lease, both may win and compute the value twice, which is harmless).
    pub fn try_claim(&self, key: Key) -> Claim {
        if self.is_degraded() {
            return Claim::Unavailable;
        }
        if let Err(e) = std::fs::create_dir_all(self.shard(key)) {
            self.degrade("creating a lease", &e);
            return Claim::Unavailable;
        }
        let path = self.lease_path(key);
        let mut took_over = false;
        for _ in 0..2 {
            let token = lease::unique_token();
            match lease::create(&path, &token) {
                Ok(()) => {
                    self.counts.claims.fetch_add(1, Ordering::Relaxed);
                    if took_over {
                        self.counts.takeovers.fetch_add(1, Ordering::Relaxed);
                    }
                    let renew_every = (self.config.lease_expiry / 4).max(Duration::from_millis(1));
                    return Claim::Ours(ClaimGuard::start(path, token, renew_every));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    self.degrade("creating a lease", &e);
                    return Claim::Unavailable;
                }
            }
            match lease::state(&path, self.config.lease_expiry) {
                LeaseState::Live => return Claim::Theirs,
                LeaseState::Stale => {
                    log::info!(
                        "shared cache: taking over the stale lease {}",
                        path.display()
                    );
                    took_over = true;
                    let _ = std::fs::remove_file(&path);
                }
                // Released between our attempt and the look: try once more.
                LeaseState::Absent => {}
            }
        }
        Claim::Theirs
    }

    /// Counts a wait that ended at [`SharedConfig::max_wait`] (the waiter computes itself).
    pub(crate) fn note_expired_wait(&self) {
        self.counts.expired_waits.fetch_add(1, Ordering::Relaxed);
    }
}
