//! An opt-in, per-operation wall-time profile of the networks' forward passes.
//!
//! Off by default: `ANCHOR_PROFILE=1` in the environment (read once, at the first scope) or
//! [`enable`] turns it on. While it is off, a [`scope`] guard costs one relaxed atomic load and
//! records nothing.
//!
//! A scope measures the wall time of its call site on the calling thread (the kernels' worker
//! threads are inside it), and time is *exclusive*: a scope opened inside another is subtracted
//! from the outer one, so the rows of [`report`] add up to at most the profiled wall time. This
//! is what `torch.profiler`'s "self CPU time" reports for the same call tree.
//!
//! Thread-summed counters ([`add_worker_time`]) split a kernel's wall time between its parts
//! (e.g. the fused attention's GEMMs and its softmax/rescale), measured inside its worker threads.
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Kinds of operation the profile tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// 2-D convolutions (the inference im2col + GEMM kernel and candle's).
    Conv2d,
    /// Linear layers and plain matrix products.
    Matmul,
    /// Scaled dot-product attention kernels (scores, softmax, `p·v`).
    Attention,
    /// GroupNorm (with the SiLU when it is fused into it).
    GroupNorm,
    /// LayerNorm.
    LayerNorm,
    /// Stand-alone activations: SiLU, GELU, the GEGLU gate product.
    Activation,
    /// Element-wise arithmetic and layout work: residual adds, concatenation, transposes and
    /// contiguous copies, dtype casts.
    Elementwise,
    /// Nearest upsampling and the padding before a strided downsampling convolution.
    Resample,
    /// Timestep embedding and anything else small.
    Other,
}

/// Parts of a kernel whose time is summed over its worker threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// The fused attention's `q·kᵀ` and `p·v` GEMMs.
    AttentionGemm,
    /// The fused attention's online softmax: row max, exponentials, sums and rescaling.
    AttentionSoftmax,
    /// The convolution kernel's GEMMs.
    ConvGemm,
    /// The convolution kernel's data movement: im2col, or the Winograd transforms.
    ConvTransform,
}

const OPS: [Op; 9] = [
    Op::Conv2d,
    Op::Matmul,
    Op::Attention,
    Op::GroupNorm,
    Op::LayerNorm,
    Op::Activation,
    Op::Elementwise,
    Op::Resample,
    Op::Other,
];

const PARTS: [Part; 4] = [
    Part::AttentionGemm,
    Part::AttentionSoftmax,
    Part::ConvGemm,
    Part::ConvTransform,
];

impl Op {
    /// The row label in [`report`] (the same words as the PyTorch side of the benchmark).
    pub fn name(self) -> &'static str {
        match self {
            Op::Conv2d => "conv2d",
            Op::Matmul => "matmul/linear",
            Op::Attention => "attention",
            Op::GroupNorm => "group_norm",
            Op::LayerNorm => "layer_norm",
            Op::Activation => "activation",
            Op::Elementwise => "elementwise/layout",
            Op::Resample => "resample",
            Op::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// 0: not read yet, 1: off, 2: on.
static STATE: AtomicU8 = AtomicU8::new(0);

static TOTAL_NS: [AtomicU64; OPS.len()] = [const { AtomicU64::new(0) }; OPS.len()];
static CALLS: [AtomicU64; OPS.len()] = [const { AtomicU64::new(0) }; OPS.len()];
static PART_NS: [AtomicU64; PARTS.len()] = [const { AtomicU64::new(0) }; PARTS.len()];

thread_local! {
    /// Time spent in scopes nested inside the innermost open scope of this thread.
    static CHILD_NS: Cell<u64> = const { Cell::new(0) };
}

/// Whether the profile is recording.
#[inline]
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        2 => true,
        1 => false,
        _ => init(),
    }
}

#[cold]
fn init() -> bool {
    let on = std::env::var("ANCHOR_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0");
    // Another thread (or `enable`) may have decided first; keep its decision.
    let _ = STATE.compare_exchange(
        0,
        if on { 2 } else { 1 },
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    STATE.load(Ordering::Relaxed) == 2
}

/// Turns recording on (whatever `ANCHOR_PROFILE` says).
pub fn enable() {
    STATE.store(2, Ordering::Relaxed);
}

/// Clears the table.
pub fn reset() {
    for a in TOTAL_NS.iter().chain(&CALLS).chain(&PART_NS) {
        a.store(0, Ordering::Relaxed);
    }
}

/// A running measurement; records its exclusive wall time when dropped.
#[must_use = "a scope measures until it is dropped"]
pub struct Scope {
    start: Option<(Op, Instant, u64)>,
}

/// Opens a scope of kind `op` (a no-op guard while the profile is off).
#[inline]
pub fn scope(op: Op) -> Scope {
    if !enabled() {
        return Scope { start: None };
    }
    // Children of this scope accumulate from zero; the outer scope's count is restored on drop.
    let outer_children = CHILD_NS.with(|c| c.replace(0));
    Scope {
        start: Some((op, Instant::now(), outer_children)),
    }
}

impl Drop for Scope {
    #[inline]
    fn drop(&mut self) {
        if let Some((op, start, outer_children)) = self.start {
            let elapsed = start.elapsed().as_nanos() as u64;
            let children = CHILD_NS.with(|c| c.replace(outer_children + elapsed));
            let i = op.index();
            TOTAL_NS[i].fetch_add(elapsed.saturating_sub(children), Ordering::Relaxed);
            CALLS[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs `f` inside a scope of kind `op`.
#[inline]
pub fn time<T>(op: Op, f: impl FnOnce() -> T) -> T {
    let _s = scope(op);
    f()
}

/// Adds `ns` of worker-thread time to a kernel part (callers check [`enabled`] first, so that
/// nothing reads the clock while the profile is off).
#[inline]
pub fn add_worker_time(part: Part, ns: u64) {
    let i = PARTS.iter().position(|&p| p == part).unwrap_or(0);
    PART_NS[i].fetch_add(ns, Ordering::Relaxed);
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Label.
    pub name: String,
    /// Exclusive wall time.
    pub time: Duration,
    /// Scopes closed.
    pub calls: u64,
}

/// The table, largest first. When the fused attention or the convolution kernel recorded their
/// parts, the op's row is split into two rows in proportion to the parts' worker-thread times.
pub fn rows() -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let part = |p: usize| PART_NS[p].load(Ordering::Relaxed);
    for op in OPS {
        let ns = TOTAL_NS[op.index()].load(Ordering::Relaxed);
        let calls = CALLS[op.index()].load(Ordering::Relaxed);
        if calls == 0 {
            continue;
        }
        let split = match op {
            Op::Attention => Some((
                part(0),
                part(1),
                "attention: q·kᵀ, p·v GEMMs",
                "attention: softmax, rescale",
            )),
            Op::Conv2d => Some((
                part(2),
                part(3),
                "conv2d: GEMMs",
                "conv2d: im2col / Winograd transforms",
            )),
            _ => None,
        };
        if let Some((a, b, name_a, name_b)) = split.filter(|(a, b, ..)| a + b > 0) {
            let b_ns = (ns as f64 * b as f64 / (a + b) as f64) as u64;
            rows.push(Row {
                name: name_a.into(),
                time: Duration::from_nanos(ns - b_ns),
                calls,
            });
            rows.push(Row {
                name: name_b.into(),
                time: Duration::from_nanos(b_ns),
                calls,
            });
        } else {
            rows.push(Row {
                name: op.name().into(),
                time: Duration::from_nanos(ns),
                calls,
            });
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.time));
    rows
}

/// A Markdown table of [`rows`] with each row's share of `window` (the wall time of the profiled
/// run) and a last row for the time no scope covered.
pub fn report(window: Duration) -> String {
    let rows = rows();
    let total = window.as_secs_f64().max(1e-12);
    let mut out =
        String::from("| op kind | time (s) | % of window | calls |\n|---|---:|---:|---:|\n");
    let mut covered = 0.0;
    for r in &rows {
        let s = r.time.as_secs_f64();
        covered += s;
        out += &format!(
            "| {} | {:.3} | {:.1} | {} |\n",
            r.name,
            s,
            100.0 * s / total,
            r.calls
        );
    }
    let rest = (total - covered).max(0.0);
    out += &format!(
        "| (not in a scope) | {:.3} | {:.1} | |\n| **window** | {:.3} | 100.0 | |\n",
        rest,
        100.0 * rest / total,
        total
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_scopes_are_exclusive() {
        enable();
        reset();
        let t0 = Instant::now();
        {
            let _outer = scope(Op::Other);
            std::thread::sleep(Duration::from_millis(20));
            {
                let _inner = scope(Op::Resample);
                std::thread::sleep(Duration::from_millis(30));
            }
        }
        let wall = t0.elapsed();
        let get = |name: &str| {
            rows()
                .into_iter()
                .find(|r| r.name == name)
                .map(|r| r.time.as_secs_f64())
                .unwrap_or(0.0)
        };
        let (outer, inner) = (get("other"), get("resample"));
        assert!(outer >= 0.019, "outer exclusive {outer}");
        assert!(inner >= 0.029, "inner {inner}");
        // Were the inner time counted in the outer scope too, the two would exceed the wall time.
        assert!(
            outer + inner <= wall.as_secs_f64() + 1e-6,
            "{outer} + {inner} > {wall:?}"
        );
        assert!(report(wall).contains("| resample |"));
    }
}
