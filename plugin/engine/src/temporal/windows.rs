//! Window planning for batch-overlapped temporal denoising.
//!
//! The reference starts a window at every multiple of the stride `W − O` below the clip length `L`
//! and truncates the tail (`pipeline_controlvideo.py:652-657`): windows `[j, min(j+W, L))`. Windows
//! are anchored to the clip's own frame range, so every process of a farm split agrees on them.
use std::collections::BTreeSet;
use std::ops::Range;

use crate::{EngineError, Result};

/// What to do with the clip's last, possibly short, window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Tail {
    /// As the reference: short and redundant tail windows are kept.
    #[default]
    Paper,
    /// Shift a short last window back so it has full length; drop windows that become duplicates.
    Full,
}

/// How overlapping windows' noise predictions are weighted per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Fusion {
    /// The reference: a plain mean over the covering windows.
    #[default]
    Flat,
    /// Weights rise linearly towards the window centre (`min(i+1, F−i)`).
    Pyramid,
    /// Weight 1 in the window body, ramping linearly across the `overlap` frames at each end.
    OverlapLinear,
}

impl std::str::FromStr for Tail {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "paper" => Ok(Self::Paper),
            "full" => Ok(Self::Full),
            _ => Err(EngineError::Input(format!(
                "tail must be paper or full, got {s:?}"
            ))),
        }
    }
}

impl std::str::FromStr for Fusion {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "flat" => Ok(Self::Flat),
            "pyramid" => Ok(Self::Pyramid),
            "overlap-linear" => Ok(Self::OverlapLinear),
            _ => Err(EngineError::Input(format!(
                "fusion must be flat, pyramid or overlap-linear, got {s:?}"
            ))),
        }
    }
}

/// The windows of one clip, and which windows cover each frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPlan {
    len: usize,
    window: usize,
    overlap: usize,
    fusion: Fusion,
    windows: Vec<Range<usize>>,
    /// For each frame, the indices of the windows covering it, ascending.
    covering: Vec<Vec<usize>>,
}

impl WindowPlan {
    /// Plans the windows of a clip of `len` frames.
    pub fn new(
        len: usize,
        window: usize,
        overlap: usize,
        tail: Tail,
        fusion: Fusion,
    ) -> Result<Self> {
        if len == 0 {
            return Err(EngineError::Input("the clip has no frames".into()));
        }
        if window < 1 {
            return Err(EngineError::Input(format!(
                "window must be at least 1, got {window}"
            )));
        }
        if overlap >= window {
            return Err(EngineError::Input(format!(
                "overlap ({overlap}) must be smaller than window ({window})"
            )));
        }
        let stride = window - overlap;
        let mut windows: Vec<Range<usize>> = Vec::new();
        for start in (0..len).step_by(stride) {
            let mut w = start..(start + window).min(len);
            if tail == Tail::Full && w.len() < window {
                w = len.saturating_sub(window)..len;
            }
            if windows.last() != Some(&w) {
                windows.push(w);
            }
        }
        let mut covering = vec![Vec::new(); len];
        for (i, w) in windows.iter().enumerate() {
            for f in w.clone() {
                covering[f].push(i);
            }
        }
        Ok(Self {
            len,
            window,
            overlap,
            fusion,
            windows,
            covering,
        })
    }

    /// Number of frames of the clip.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a plan has at least one frame.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The windows, in ascending start order.
    pub fn windows(&self) -> &[Range<usize>] {
        &self.windows
    }

    /// Indices of the windows covering `frame`, ascending.
    pub fn covering(&self, frame: usize) -> &[usize] {
        &self.covering[frame]
    }

    /// The fusion weight of the `index`-th frame of window `w` (the reference uses 1 everywhere).
    pub fn weight(&self, w: usize, index: usize) -> f64 {
        let n = self.windows[w].len();
        match self.fusion {
            Fusion::Flat => 1.0,
            Fusion::Pyramid => (index + 1).min(n - index) as f64,
            Fusion::OverlapLinear => {
                let ramp = (self.overlap + 1) as f64;
                let rise = (index + 1) as f64 / ramp;
                let fall = (n - index) as f64 / ramp;
                rise.min(fall).min(1.0)
            }
        }
    }

    /// The fusion mode.
    pub fn fusion(&self) -> Fusion {
        self.fusion
    }

    /// The frames whose latents at step `s` are needed to produce `frames` at step `s + steps`:
    /// the dependency cone, which widens by one stride on each side per step.
    pub fn cone(&self, frames: Range<usize>, steps: usize) -> Range<usize> {
        let mut r = frames;
        for _ in 0..steps {
            let lo = self.covering[r.start]
                .iter()
                .map(|&w| self.windows[w].start)
                .min();
            let hi = self.covering[r.end - 1]
                .iter()
                .map(|&w| self.windows[w].end)
                .max();
            match (lo, hi) {
                (Some(lo), Some(hi)) => r = lo.min(r.start)..hi.max(r.end),
                _ => break,
            }
        }
        r
    }

    /// `frames` (sorted or not, repeats allowed) as ascending runs of consecutive frames.
    pub fn runs(frames: &[usize]) -> Vec<Range<usize>> {
        let mut sorted = frames.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut runs: Vec<Range<usize>> = Vec::new();
        for f in sorted {
            match runs.last_mut() {
                Some(r) if r.end == f => r.end = f + 1,
                _ => runs.push(f..f + 1),
            }
        }
        runs
    }

    /// The windows whose predictions the frames of `runs` need `remaining` steps before the
    /// end: those covering the frames' cone of `remaining` steps.
    pub fn cone_windows(&self, runs: &[Range<usize>], remaining: usize) -> BTreeSet<usize> {
        let mut needed = BTreeSet::new();
        for r in runs.iter().filter(|r| !r.is_empty() && r.end <= self.len()) {
            for f in self.cone(r.clone(), remaining) {
                needed.extend(self.covering(f).iter().copied());
            }
        }
        needed
    }

    /// The window batches a render of `frames` runs over `steps` steps when nothing is cached:
    /// the windows of each step's cone.
    pub fn cone_batches(&self, frames: &[usize], steps: usize) -> u64 {
        let runs = Self::runs(frames);
        (0..steps)
            .map(|remaining| self.cone_windows(&runs, remaining).len() as u64)
            .sum()
    }

    /// Window length and overlap the plan was made with.
    pub fn shape(&self) -> (usize, usize) {
        (self.window, self.overlap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batches_of_a_cone_grow_by_a_stride_per_step() {
        // 24 frames, windows 4 / overlap 1: 8 windows.
        let plan = WindowPlan::new(24, 4, 1, Tail::Paper, Fusion::Flat).unwrap();
        let n = plan.windows().len() as u64;
        assert_eq!(plan.cone_batches(&(0..24).collect::<Vec<_>>(), 4), 4 * n);
        // Frame 0 alone: the windows covering it at the last step, then one more window per
        // step further back.
        let last = plan.covering(0).len() as u64;
        assert_eq!(plan.cone_batches(&[0], 1), last);
        let four = plan.cone_batches(&[0], 4);
        assert!(four > 4 * last && four < 4 * n, "{four}");
        // Order and repeats do not matter.
        assert_eq!(
            plan.cone_batches(&[3, 1, 2, 2], 4),
            plan.cone_batches(&[1, 2, 3], 4)
        );
        assert_eq!(WindowPlan::runs(&[5, 1, 2, 9, 3]), vec![1..4, 5..6, 9..10]);
    }

    fn starts(p: &WindowPlan) -> Vec<(usize, usize)> {
        p.windows().iter().map(|w| (w.start, w.end)).collect()
    }

    #[test]
    fn paper_tail_matches_reference_examples() {
        // L=119 → …, [96-111], [108-118]; L=121 ends with the single frame [120].
        let p = WindowPlan::new(119, 16, 4, Tail::Paper, Fusion::Flat).unwrap();
        assert_eq!(p.windows().len(), 10);
        assert_eq!(p.windows()[8], 96..112);
        assert_eq!(p.windows()[9], 108..119);
        let p = WindowPlan::new(121, 16, 4, Tail::Paper, Fusion::Flat).unwrap();
        assert_eq!(p.windows().last(), Some(&(120..121)));
        let p = WindowPlan::new(11, 4, 1, Tail::Paper, Fusion::Flat).unwrap();
        assert_eq!(starts(&p), vec![(0, 4), (3, 7), (6, 10), (9, 11)]);
        assert_eq!(p.covering(3), &[0, 1]);
        assert_eq!(p.covering(10), &[3]);
    }

    #[test]
    fn full_tail_shifts_and_dedups() {
        let p = WindowPlan::new(11, 4, 1, Tail::Full, Fusion::Flat).unwrap();
        assert_eq!(starts(&p), vec![(0, 4), (3, 7), (6, 10), (7, 11)]);
        let p = WindowPlan::new(28, 16, 4, Tail::Full, Fusion::Flat).unwrap();
        assert_eq!(starts(&p), vec![(0, 16), (12, 28)]);
        let p = WindowPlan::new(3, 16, 4, Tail::Full, Fusion::Flat).unwrap();
        assert_eq!(starts(&p), vec![(0, 3)]);
    }

    #[test]
    fn bad_plans_are_named_errors() {
        assert!(WindowPlan::new(0, 4, 1, Tail::Paper, Fusion::Flat).is_err());
        let e = WindowPlan::new(5, 0, 0, Tail::Paper, Fusion::Flat).unwrap_err();
        assert!(e.to_string().contains("window must be at least 1"), "{e}");
        let e = WindowPlan::new(5, 4, 4, Tail::Paper, Fusion::Flat).unwrap_err();
        assert!(
            e.to_string()
                .contains("overlap (4) must be smaller than window (4)"),
            "{e}"
        );
    }

    #[test]
    fn weights() {
        let p = WindowPlan::new(8, 5, 2, Tail::Paper, Fusion::Pyramid).unwrap();
        let w: Vec<f64> = (0..5).map(|i| p.weight(0, i)).collect();
        assert_eq!(w, vec![1.0, 2.0, 3.0, 2.0, 1.0]);
        let p = WindowPlan::new(8, 5, 2, Tail::Paper, Fusion::OverlapLinear).unwrap();
        let w: Vec<f64> = (0..5).map(|i| p.weight(0, i)).collect();
        assert_eq!(w, vec![1.0 / 3.0, 2.0 / 3.0, 1.0, 2.0 / 3.0, 1.0 / 3.0]);
    }

    #[test]
    fn cone_widens_one_stride_per_step() {
        let p = WindowPlan::new(200, 4, 1, Tail::Paper, Fusion::Flat).unwrap();
        // frame 100 is in window [99,103) only; one step back needs 99..103, two steps 96..106.
        assert_eq!(p.cone(100..101, 1), 99..103);
        assert_eq!(p.cone(100..101, 2), 96..106);
        assert_eq!(p.cone(0..1, 50), 0..151);
    }
}
