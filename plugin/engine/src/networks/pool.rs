//! A persistent worker pool for the CPU kernels' work items, kind to a shared machine.
//!
//! The kernels used to start scoped threads per call and join them. On a machine whose cores are
//! also busy with other processes, a freshly started (or woken) thread may wait a whole
//! scheduler time slice before it runs, and the join waited for it even when the calling thread
//! had meanwhile done every item itself: with hundreds of kernel calls per network pass, two
//! threads were then over twice as slow as one.
//!
//! Here [`for_each`] publishes a job, works through its items on the calling thread too, and
//! waits only for items that a worker has actually *claimed* and not finished; a worker that
//! wakes late finds no item left and never touches the job's closure. Which thread runs an item
//! never changes its result (items write disjoint outputs), so results stay independent of the
//! thread count and of scheduling.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// One published job: items `0..n`, claimed through `next`, counted in `done` when finished.
struct Job {
    next: AtomicUsize,
    done: AtomicUsize,
    n: usize,
    /// The caller's closure with its lifetime erased; only dereferenced for a claimed item
    /// `< n`, and the caller does not return before every claimed item is done.
    f: *const (dyn Fn(usize) + Sync),
}

// SAFETY: `f` points to a `Sync` closure that outlives every dereference (see `Job::f`).
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// Runs items until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            // SAFETY: item i < n was claimed by this thread, so the caller is still waiting in
            // `for_each` and the closure is alive.
            unsafe { (*self.f)(i) };
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

struct Pool {
    /// (generation, current job).
    slot: Mutex<(u64, Option<Arc<Job>>)>,
    wake: Condvar,
    workers: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let workers = candle_core::utils::get_num_threads().saturating_sub(1);
        for _ in 0..workers {
            // A worker that cannot start leaves its share to the callers.
            let _ = std::thread::Builder::new()
                .name("mya-kernel".into())
                .spawn(worker_loop);
        }
        Pool {
            slot: Mutex::new((0, None)),
            wake: Condvar::new(),
            workers,
        }
    })
}

fn worker_loop() {
    let pool = pool();
    let mut seen = 0u64;
    loop {
        let job = {
            let Ok(mut slot) = pool.slot.lock() else {
                return;
            };
            while slot.0 == seen {
                slot = match pool.wake.wait(slot) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
            seen = slot.0;
            slot.1.clone()
        };
        if let Some(job) = job {
            job.work();
        }
    }
}

/// Runs `f(0)`, …, `f(n − 1)`, each exactly once, on the calling thread and on the pool's
/// workers (up to `threads` threads in all; `threads ≤ 1` runs everything here).
pub(crate) fn for_each(n: usize, threads: usize, f: impl Fn(usize) + Sync) {
    if n == 0 {
        return;
    }
    let pool = pool();
    if threads <= 1 || n == 1 || pool.workers == 0 {
        (0..n).for_each(f);
        return;
    }
    let f: &(dyn Fn(usize) + Sync) = &f;
    // SAFETY: erases the closure's lifetime; `Job::work` only calls it for claimed items, and
    // this function returns only after all of those are done.
    let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
    let job = Arc::new(Job {
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        n,
        f,
    });
    if let Ok(mut slot) = pool.slot.lock() {
        slot.0 = slot.0.wrapping_add(1);
        slot.1 = Some(job.clone());
        pool.wake.notify_all();
    }
    job.work();
    // Only items a worker claimed can be outstanding: wait for those alone.
    while job.done.load(Ordering::Acquire) < n {
        std::thread::yield_now();
    }
    if let Ok(mut slot) = pool.slot.lock() {
        if slot.1.as_ref().is_some_and(|j| Arc::ptr_eq(j, &job)) {
            slot.1 = None;
        }
    }
}

thread_local! {
    /// Per-thread scratch buffers of the kernels (im2col bands, Winograd transforms), kept
    /// between calls so that a work item does not allocate and fault in fresh pages.
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 3]> = const {
        std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()])
    };
}

/// Runs `f` with this thread's three scratch buffers (contents unspecified; resize before use).
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut [Vec<f32>; 3]) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut bufs) => f(&mut bufs),
        // Re-entered from inside a kernel item: fresh buffers.
        Err(_) => f(&mut [Vec::new(), Vec::new(), Vec::new()]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item runs once, from one or several callers at the same time.
    #[test]
    fn every_item_runs_once() {
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    for n in [1, 2, 7, 1000] {
                        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                        for_each(n, 4, |i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
    }
}
