//! Lease files: how the processes of a farm job claim the work of computing one value.
//!
//! Before computing a missing window, a process creates `<key>.lease` beside where the entry will
//! go, exclusively (`O_CREAT | O_EXCL`, atomic on local filesystems and on NFSv3 and later). The
//! file says who holds it (host, process id, a token unique to the claim, the claim time). While
//! the work runs, a background thread renews the lease by setting its modification time to now,
//! every quarter of the expiry; the lease is deleted when the claim ends, whether the work
//! finished, failed or was cancelled (issue 15, "Work claiming").
//!
//! A lease whose modification time is older than the expiry belongs to a process that crashed or
//! froze: another process may delete it and claim again. The age is read through a freshly opened
//! file, since opening revalidates cached attributes on NFS (close-to-open consistency). It
//! compares the renewer's clock with the reader's, so farm clocks should agree (NTP) to well
//! within the expiry. A wrong verdict only costs time, never correctness: an early takeover
//! computes a value twice (same key, same bytes), and a late one is bounded by the waiter's own
//! bounded wait.
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a lease file says about its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// No lease: nobody is computing the value (or it is done).
    Absent,
    /// A process renewed the lease within the expiry.
    Live,
    /// The lease was not renewed within the expiry: its holder crashed or froze.
    Stale,
}

/// This host's name, for lease files (diagnostics only; tokens make claims unique).
fn host_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(read_host_name)
}

fn read_host_name() -> String {
    let from_file = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    from_file("/proc/sys/kernel/hostname")
        .or_else(|| from_file("/etc/hostname"))
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

/// A name unique to this claim across the farm: host, process id, time and a process counter.
pub fn unique_token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let host: String = host_name()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!(
        "{host}-{}-{nanos:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates the lease at `path` exclusively. `AlreadyExists` means another claim holds it.
pub fn create(path: &Path, token: &str) -> std::io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    let claimed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let body = format!(
        "make-your-anchor lease v1\nhost={}\npid={}\ntoken={token}\nclaimed_unix={claimed}\n",
        host_name(),
        std::process::id()
    );
    let written = file
        .write_all(body.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        // A lease we could not fill (a full disk) must not block others until it expires.
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// The state of the lease at `path` for a lease expiry of `expiry`. An unreadable lease counts as
/// live: the waiter's bounded wait still ends the wait.
pub fn state(path: &Path, expiry: Duration) -> LeaseState {
    let age = match File::open(path).and_then(|f| f.metadata()?.modified()) {
        Ok(mtime) => SystemTime::now()
            .duration_since(mtime)
            .unwrap_or(Duration::ZERO),
        Err(e) if super::format::absent(&e) => return LeaseState::Absent,
        Err(_) => return LeaseState::Live,
    };
    if age > expiry {
        LeaseState::Stale
    } else {
        LeaseState::Live
    }
}

/// True when the lease at `path` still carries `token` (nobody took it over).
fn holds(path: &Path, token: &str) -> bool {
    let mut body = String::new();
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut body))
        .is_ok()
        && body
            .lines()
            .any(|l| l.strip_prefix("token=") == Some(token))
}

/// Sets the lease's modification time to now, if it is still ours.
fn renew(path: &Path, token: &str) -> bool {
    if !holds(path, token) {
        return false;
    }
    let touched = OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = touched {
        log::debug!("cannot renew the lease {}: {e}", path.display());
    }
    true
}

/// A held claim: renews its lease in the background and deletes it when dropped.
#[derive(Debug)]
pub struct ClaimGuard {
    path: PathBuf,
    token: String,
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<JoinHandle<()>>,
}

impl ClaimGuard {
    /// Starts renewing the lease at `path` (created with `token`) every `every`.
    pub(super) fn start(path: PathBuf, token: String, every: Duration) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let (p, t) = (path.clone(), token.clone());
        let renewer = std::thread::Builder::new()
            .name("anchor-lease".into())
            .spawn(move || {
                // Any message or a dropped sender ends the claim.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    if !renew(&p, &t) {
                        log::debug!("lease {} was taken over", p.display());
                        break;
                    }
                }
            });
        let renewer = match renewer {
            Ok(h) => Some(h),
            Err(e) => {
                // Without renewal the lease expires and others may duplicate the work: harmless.
                log::debug!("cannot start the lease renewer: {e}");
                None
            }
        };
        Self {
            path,
            token,
            stop: Some(stop),
            renewer,
        }
    }

    /// The lease file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.renewer.take() {
            let _ = h.join();
        }
        // Only our own lease: after a takeover the file belongs to the new holder.
        if holds(&self.path, &self.token) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
