//! The farm order of the temporal engine: several processes sharing a [`SharedStore`] walk their
//! requests' dependency cones step by step and split the window batches between them (issue 15).
//!
//! Each step's windows are visited nearest to the process's own frames first, so N processes
//! started together on disjoint chunks begin on different windows, then take whatever is still
//! unclaimed. A window claimed by another live process is deferred, not waited for, until the end
//! of the step. Waits cannot cycle: a process waits only after releasing every claim of the step,
//! and only for windows of that step, whose inputs are all published already.
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::super::shared::{Claim, SharedStore};
use super::{Progress, TemporalDenoiser};
use crate::temporal::WindowPlan;
use crate::{EngineError, Result};

/// Forwards progress, noting whether one window was reported (computed, or read inside).
struct ReportedOnce<'p> {
    inner: &'p dyn Progress,
    window: (usize, usize),
    reported: AtomicBool,
}

impl Progress for ReportedOnce<'_> {
    fn window_done(&self, step: usize, steps: usize, window: usize) {
        if (step, window) == self.window {
            self.reported.store(true, Ordering::Relaxed);
        }
        self.inner.window_done(step, steps, window);
    }
    fn window_read(&self, step: usize, steps: usize, window: usize) {
        if (step, window) == self.window {
            self.reported.store(true, Ordering::Relaxed);
        }
        self.inner.window_read(step, steps, window);
    }
    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
}

impl TemporalDenoiser<'_> {
    /// Computes, together with the other processes sharing the store, every window noise
    /// prediction that `frames` depend on, so that [`image`](Self::image) of those frames then
    /// only decodes and reads.
    ///
    /// Steps are walked in order. At each step the windows of the frames' cone are visited nearest
    /// to `frames` first: a window already published is read into the process cache (a damaged
    /// entry is refused and recomputed); a free one is claimed, computed and published; one held
    /// by another process's live lease is deferred. At the end of the step this polls (every
    /// [`SharedConfig::poll_interval`](crate::temporal::SharedConfig::poll_interval)) for the
    /// deferred windows, computing any whose lease goes stale or disappears without an entry, and
    /// all that remain after [`SharedConfig::max_wait`](crate::temporal::SharedConfig::max_wait).
    /// So N processes started together on disjoint chunks spread over different windows of each
    /// step. `progress` hears of every window of the cone once, whoever computed it. Without a
    /// store this does nothing, and `image` computes its cone lazily.
    pub fn render_cone(&self, frames: &[usize], progress: &dyn Progress) -> Result<()> {
        let Some(store) = &self.shared else {
            return Ok(());
        };
        let runs = self.frame_runs(frames)?;
        if runs.is_empty() {
            return Ok(());
        }
        let steps = self.steps();
        for s in 0..steps {
            let mut deferred = Vec::new();
            for w in self.cone_windows(&runs, steps - 1 - s) {
                if progress.cancelled() {
                    return Err(EngineError::Cancelled);
                }
                let key = self.eps_key(s, w)?;
                if self.cache.peek(key).is_some() {
                    progress.window_read(s, steps, w);
                } else if store.contains(key) {
                    self.resolve_window(s, w, progress)?;
                } else if !self.claim_and_compute(store, s, w, progress)? {
                    deferred.push(w);
                }
            }
            self.await_windows(store, s, deferred, progress)?;
        }
        Ok(())
    }

    /// Claims window `w` of step `s` and computes it; false when another process holds it.
    fn claim_and_compute(
        &self,
        store: &SharedStore,
        s: usize,
        w: usize,
        progress: &dyn Progress,
    ) -> Result<bool> {
        match store.try_claim(self.eps_key(s, w)?) {
            Claim::Ours(lease) => {
                // Publishes before the lease goes, so a waiter never finds neither.
                self.resolve_window(s, w, progress)?;
                drop(lease);
            }
            Claim::Unavailable => {
                self.resolve_window(s, w, progress)?;
            }
            Claim::Theirs => return Ok(false),
        }
        Ok(true)
    }

    /// Brings window `w` of step `s` into the process cache: read from the store when published
    /// there (a damaged entry is refused and recomputed), else computed and published. Reports it
    /// to `progress` exactly once either way: as done when computed, as read otherwise.
    fn resolve_window(&self, s: usize, w: usize, progress: &dyn Progress) -> Result<()> {
        let watch = ReportedOnce {
            inner: progress,
            window: (s, w),
            reported: AtomicBool::new(false),
        };
        self.eps(s, w, &watch)?;
        if !watch.reported.load(Ordering::Relaxed) {
            progress.window_read(s, self.steps(), w);
        }
        Ok(())
    }

    /// Waits for the windows of step `s` that other processes claimed (see [`Self::render_cone`]).
    fn await_windows(
        &self,
        store: &SharedStore,
        s: usize,
        mut pending: Vec<usize>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let start = Instant::now();
        while !pending.is_empty() {
            if progress.cancelled() {
                return Err(EngineError::Cancelled);
            }
            let expired = start.elapsed() >= store.config().max_wait;
            let mut waiting = Vec::with_capacity(pending.len());
            for w in pending {
                if store.contains(self.eps_key(s, w)?) {
                    self.resolve_window(s, w, progress)?;
                } else if expired {
                    store.note_expired_wait();
                    self.resolve_window(s, w, progress)?;
                } else if !self.claim_and_compute(store, s, w, progress)? {
                    waiting.push(w);
                }
            }
            pending = waiting;
            if !pending.is_empty() {
                std::thread::sleep(store.config().poll_interval);
            }
        }
        Ok(())
    }

    /// `frames` as sorted runs of consecutive frames.
    fn frame_runs(&self, frames: &[usize]) -> Result<Vec<Range<usize>>> {
        if let Some(&f) = frames.iter().find(|&&f| f >= self.plan.len()) {
            return Err(EngineError::Input(format!(
                "frame {f} is outside the clip of {} frames",
                self.plan.len()
            )));
        }
        Ok(WindowPlan::runs(frames))
    }

    /// The windows whose predictions the frames of `runs` need `remaining` steps before the end
    /// (those covering the cone `remaining` steps wide), nearest to `runs` first, then by index.
    fn cone_windows(&self, runs: &[Range<usize>], remaining: usize) -> Vec<usize> {
        let needed = self.plan.cone_windows(runs, remaining);
        let gap = |w: &Range<usize>, r: &Range<usize>| {
            if w.end <= r.start {
                r.start - w.end + 1
            } else if r.end <= w.start {
                w.start - r.end + 1
            } else {
                0
            }
        };
        let distance = |w: usize| {
            let win = &self.plan.windows()[w];
            runs.iter().map(|r| gap(win, r)).min().unwrap_or(0)
        };
        let mut order: Vec<usize> = needed.into_iter().collect();
        order.sort_by_key(|&w| (distance(w), w));
        order
    }
}
