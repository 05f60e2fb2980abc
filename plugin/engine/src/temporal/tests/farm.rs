//! Denoisers of separate "processes" (own cache, own counters, own store handle) sharing one
//! folder, as the processes of a render farm job do (issue 15): the frames equal a single render
//! bit for bit, the work is split rather than repeated, and faults fall back to local work.
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use super::*;

const LEN: usize = 48;
const STEPS: usize = 5;

fn config() -> SharedConfig {
    SharedConfig {
        lease_expiry: Duration::from_secs(5),
        poll_interval: Duration::from_millis(5),
        max_wait: Duration::from_secs(60),
    }
}

fn open(dir: &Path, config: SharedConfig) -> Arc<SharedStore> {
    Arc::new(SharedStore::open(dir, config))
}

/// The whole clip, one process, no store: the reference frames and the cost of a full render.
fn single_render() -> (Vec<Vec<u32>>, u64) {
    let s = Setup::new(LEN, STEPS);
    let frames = render_all(&s, &(0..LEN).collect::<Vec<_>>(), 1);
    (frames, s.calls())
}

/// One farm process: renders `frames` through the store; returns them, its network calls and
/// decodes, and its store counters.
fn process(dir: &Path, config: SharedConfig, frames: &[usize]) -> Process {
    let s = Setup::new(LEN, STEPS);
    let store = open(dir, config);
    let d = s
        .denoiser(4, 1, Tail::Paper, Fusion::Flat)
        .with_shared(Some(store.clone()));
    let seen = Seen::default();
    d.render_cone(frames, &seen).unwrap();
    let calls_in_cone = s.calls();
    // Progress hears of each window of the cone exactly once, whoever computed it.
    let seen = seen.0.into_inner().unwrap();
    let plan = d.plan();
    let run = frames[0]..frames[frames.len() - 1] + 1;
    let mut cone = Vec::new();
    for step in 0..STEPS {
        let needed: std::collections::BTreeSet<usize> = plan
            .cone(run.clone(), STEPS - 1 - step)
            .flat_map(|f| plan.covering(f).to_vec())
            .collect();
        cone.extend(needed.into_iter().map(|w| (step, w)));
    }
    let mut reported = seen;
    reported.sort_unstable();
    assert_eq!(reported, cone, "each window of the cone reported once");
    let out = frames
        .iter()
        .map(|&f| bits(&d.image(f, &NoProgress).unwrap()))
        .collect();
    assert_eq!(
        s.calls(),
        calls_in_cone,
        "after the cone walk, frames only read and decode"
    );
    Process {
        frames: out,
        calls: s.calls(),
        decodes: s.counters.decodes.load(Ordering::Relaxed),
        stats: store.stats(),
    }
}

/// Records the windows progress hears of.
#[derive(Default)]
struct Seen(Mutex<Vec<(usize, usize)>>);
impl Progress for Seen {
    fn window_done(&self, step: usize, steps: usize, window: usize) {
        assert_eq!(steps, STEPS);
        self.0.lock().unwrap().push((step, window));
    }
}

struct Process {
    frames: Vec<Vec<u32>>,
    calls: u64,
    decodes: u64,
    stats: SharedStats,
}

/// `n` processes started together on contiguous chunks of the clip, in chunk order.
fn farm(n: usize) -> Vec<Process> {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<Vec<usize>> = (0..n)
        .map(|i| (i * LEN / n..(i + 1) * LEN / n).collect())
        .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|c| scope.spawn(|| process(dir.path(), config(), c)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn processes_sharing_a_folder_split_the_work_and_match_a_single_render() {
    let (want, single) = single_render();
    assert_eq!(
        single,
        16 * STEPS as u64,
        "16 windows of 4/1 over 48 frames"
    );
    for n in [2, 3, 4] {
        let procs = farm(n);
        let got: Vec<Vec<u32>> = procs.iter().flat_map(|p| p.frames.clone()).collect();
        assert!(
            got == want,
            "{n} processes: frames differ from a single render"
        );
        let calls: Vec<u64> = procs.iter().map(|p| p.calls).collect();
        let total: u64 = calls.iter().sum();
        assert!(
            total as f64 <= 1.15 * single as f64,
            "{n} processes made {calls:?} = {total} calls, single render {single}"
        );
        let most = *calls.iter().max().unwrap();
        assert!(
            most < single,
            "{n} processes: the busiest made {most} of {single} calls, so nothing was split"
        );
        let decodes: u64 = procs.iter().map(|p| p.decodes).sum();
        assert_eq!(
            decodes, LEN as u64,
            "each frame decoded once, by its own process"
        );
        for p in &procs {
            let s = p.stats;
            assert_eq!((s.rejected, s.warnings, s.degraded), (0, 0, false), "{s:?}");
        }
        eprintln!("{n} processes: calls {calls:?} (single {single})");
    }
}

#[test]
fn a_second_process_reads_every_value_from_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (want, single) = single_render();
    let all: Vec<usize> = (0..LEN).collect();
    let first = process(dir.path(), config(), &all);
    assert!(first.frames == want);
    assert_eq!((first.calls, first.decodes), (single, LEN as u64));
    // A fresh process: its own empty cache, the same folder.
    let again = process(dir.path(), config(), &all);
    assert!(again.frames == want);
    let s = again.stats;
    assert_eq!(
        (again.calls, again.decodes, s.published, s.rejected),
        (0, 0, 0, 0)
    );
    // The cone walk reads the windows of every step, then each frame's decoded image.
    assert_eq!(s.hits, 16 * STEPS as u64 + LEN as u64);
}

/// Flips one byte in the middle of every entry of the folder.
fn corrupt_all(dir: &Path) -> usize {
    let mut n = 0;
    for shard in std::fs::read_dir(dir).unwrap() {
        for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "entry") {
                let mut b = std::fs::read(&path).unwrap();
                let i = b.len() / 2;
                b[i] ^= 0x01;
                std::fs::write(&path, b).unwrap();
                n += 1;
            }
        }
    }
    n
}

#[test]
fn corrupt_entries_are_refused_recomputed_and_republished() {
    let dir = tempfile::tempdir().unwrap();
    let (want, single) = single_render();
    let all: Vec<usize> = (0..LEN).collect();
    process(dir.path(), config(), &all);
    let damaged = corrupt_all(dir.path());
    assert_eq!(
        damaged,
        16 * STEPS + LEN * STEPS + LEN,
        "windows, latents, images"
    );
    let p = process(dir.path(), config(), &all);
    assert!(p.frames == want, "nothing damaged reaches a frame");
    assert_eq!(
        (p.calls, p.decodes),
        (single, LEN as u64),
        "everything recomputed"
    );
    assert_eq!(
        p.stats.rejected, damaged as u64,
        "each damaged file refused once"
    );
    assert_eq!(p.stats.hits, 0);
    // Republished over the damaged files: a third process computes nothing.
    let p = process(dir.path(), config(), &all);
    assert!(p.frames == want);
    assert_eq!((p.calls, p.decodes, p.stats.rejected), (0, 0, 0));
}

#[test]
fn garbage_files_in_the_folder_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (want, single) = single_render();
    let s = Setup::new(LEN, STEPS);
    let d = s.denoiser(4, 1, Tail::Paper, Fusion::Flat);
    let store = open(dir.path(), config());
    // Garbage under a real window's name, in its shard, and beside the shards.
    let target = store.entry_path(d.window_key(2, 7).unwrap());
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(&target, b"\x00garbage").unwrap();
    std::fs::write(target.with_file_name("garbage.bin"), b"x").unwrap();
    std::fs::write(dir.path().join("Thumbs.db"), b"x").unwrap();
    std::fs::create_dir_all(dir.path().join("zz/also")).unwrap();
    let p = process(dir.path(), config(), &(0..LEN).collect::<Vec<_>>());
    assert!(p.frames == want);
    assert_eq!((p.calls, p.stats.rejected), (single, 1));
    assert!(dir.path().join("Thumbs.db").exists());
}

fn write_lease(path: &Path, age: Duration) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        path,
        "make-your-anchor lease v1\nhost=node7\npid=4242\ntoken=dead\n",
    )
    .unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

#[test]
fn a_dead_process_claim_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let (want, single) = single_render();
    let s = Setup::new(LEN, STEPS);
    let d = s.denoiser(4, 1, Tail::Paper, Fusion::Flat);
    let store = open(dir.path(), config());
    // Killed (-9) an hour ago while holding windows of the first and a middle step.
    for (step, w) in [(0, 0), (0, 8), (2, 3)] {
        write_lease(
            &store.lease_path(d.window_key(step, w).unwrap()),
            Duration::from_secs(3600),
        );
    }
    let started = std::time::Instant::now();
    let p = process(dir.path(), config(), &(0..LEN).collect::<Vec<_>>());
    assert!(p.frames == want);
    assert_eq!((p.calls, p.stats.takeovers), (single, 3));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no wait for a stale lease"
    );
    assert_eq!(
        store.info().unwrap().live_leases + store.info().unwrap().stale_leases,
        0
    );
}

#[test]
fn a_frozen_holder_is_waited_for_then_computed_around() {
    let dir = tempfile::tempdir().unwrap();
    let (want, single) = single_render();
    let s = Setup::new(LEN, STEPS);
    let d = s.denoiser(4, 1, Tail::Paper, Fusion::Flat);
    // A process that froze yet keeps renewing its lease on window 5 of step 1.
    let frozen = open(dir.path(), config());
    let Claim::Ours(_held) = frozen.try_claim(d.window_key(1, 5).unwrap()) else {
        panic!("free window")
    };
    let waiter = SharedConfig {
        max_wait: Duration::from_millis(300),
        ..config()
    };
    let started = std::time::Instant::now();
    let p = process(dir.path(), waiter, &(0..LEN).collect::<Vec<_>>());
    assert!(p.frames == want);
    let s = p.stats;
    assert_eq!((p.calls, s.expired_waits, s.takeovers), (single, 1, 0));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "waited the bounded wait"
    );
}

#[test]
fn a_cancelled_walk_leaves_no_lease_and_a_rerun_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (want, single) = single_render();
    let all: Vec<usize> = (0..LEN).collect();
    let s = Setup::new(LEN, STEPS);
    let store = open(dir.path(), config());
    let d = s
        .denoiser(4, 1, Tail::Paper, Fusion::Flat)
        .with_shared(Some(store.clone()));
    let cancel = CancelAfter(AtomicUsize::new(20), AtomicBool::new(false));
    let err = d.render_cone(&all, &cancel).unwrap_err();
    assert!(matches!(err, EngineError::Cancelled), "{err}");
    assert_eq!(s.calls(), 20, "stops before the next window");
    let info = store.info().unwrap();
    assert_eq!((info.live_leases, info.stale_leases), (0, 0));
    // All 16 windows of step 0, windows 0-3 of step 1 and the 13 latents (frames 0-12) they read.
    assert_eq!(store.stats().published, 16 + 4 + 13);
    // The rerun of the chunk reads what was published and computes only the rest.
    let p = process(dir.path(), config(), &all);
    assert!(p.frames == want);
    assert_eq!(p.calls, single - 20);
}

/// Captures warnings, to count them.
struct Capture(Mutex<Vec<String>>);
impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            self.0.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}
static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

fn warnings_naming(path: &Path) -> usize {
    let needle = path.display().to_string();
    let all = CAPTURE.0.lock().unwrap();
    all.iter().filter(|m| m.contains(&needle)).count()
}

/// Renders through an unwritable folder: identical frames, all work local, one warning.
fn falls_back(folder: &Path) {
    // Another logger may have been installed first; then only the counters are checked.
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    let captured = *INSTALLED.get_or_init(|| {
        let ok = log::set_logger(&CAPTURE).is_ok();
        log::set_max_level(log::LevelFilter::Warn);
        ok
    });
    let (want, single) = single_render();
    let p = process(folder, config(), &(0..LEN).collect::<Vec<_>>());
    assert!(p.frames == want);
    assert_eq!((p.calls, p.decodes), (single, LEN as u64));
    let s = p.stats;
    assert_eq!((s.warnings, s.degraded, s.published), (1, true, 0));
    if captured {
        assert_eq!(
            warnings_naming(folder),
            1,
            "exactly one warning names the folder"
        );
    }
}

#[test]
fn an_unwritable_folder_falls_back_to_local_work_with_one_warning() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_folder = dir.path().join("cache");
    std::fs::write(&not_a_folder, b"x").unwrap();
    falls_back(&not_a_folder);
}

#[cfg(unix)]
#[test]
fn a_read_only_folder_falls_back_to_local_work_with_one_warning() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("ro");
    std::fs::create_dir(&folder).unwrap();
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(folder.join("probe"), b"x").is_ok() {
        eprintln!(
            "SKIPPED a_read_only_folder_falls_back_to_local_work_with_one_warning: running as \
             root, mode 0o555 does not stop writes (the not-a-folder test covers the fallback)"
        );
        return;
    }
    falls_back(&folder);
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).unwrap();
}
