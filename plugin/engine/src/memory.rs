//! Memory estimates of a request, made before any network batch runs: the working set of one
//! window batch (checked against a caller's memory limit, so an oversized request fails with an
//! actionable error instead of an allocator abort), and the cache bytes one frame request touches
//! (the floor under the cache budget, below which the memo thrashes).
//!
//! The batch estimate counts, for one CFG half of a window of `F` frames (the halves run one after
//! the other, `pipeline::BodyNetworks::predict`):
//! - the skip residuals the UNet keeps on its way down, and the same set the ControlNet returns:
//!   `conv_in` plus, per level `l`, `layers_per_block` tensors of `c_l × hw/4^l` and a downsample
//!   of `c_l × hw/4^(l+1)` (not after the last level);
//! - the transient peak of the widest level's transformer and resnets, `16 · c_0 · hw` per frame
//!   (q/k/v/out, the GEGLU `8 · c_0` projection and its product, norms): the attention never holds
//!   a score matrix (`networks::attention`), except the blocked path off the CPU, whose score
//!   blocks add `3 · SCORE_BLOCK_ELEMENTS` elements;
//!
//! and the VAE decode of one frame (`6 · c_0^vae · H · W`: the top decoder level's resnet
//! tensors). The estimate was checked against the measured UNet window (BENCHMARKS.md: 0.73 GiB
//! beyond the weights for 8 × 64² latents in f32, estimated 0.82 GiB without the ControlNet). It
//! is an estimate: a limit set a little above the real need may still fail on allocation, which
//! is then reported as out of memory too ([`crate::EngineError::OutOfMemory`]).
use std::collections::BTreeSet;

use candle_core::DType;

use super::model::BodyModel;
use super::networks::attention::SCORE_BLOCK_ELEMENTS;
use super::temporal::WindowPlan;

/// What one window batch of a request needs, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEstimate {
    /// Frames in the largest window.
    pub frames: usize,
    /// Working resolution (square).
    pub resolution: usize,
    /// The loaded networks' weights.
    pub weights: usize,
    /// Activations of one window batch, or of one frame's VAE decode when that is larger.
    pub working_set: usize,
}

impl BatchEstimate {
    /// Weights plus working set.
    pub fn total(&self) -> usize {
        self.weights.saturating_add(self.working_set)
    }
}

/// Bytes as MiB, rounded up (what a person would have to provide).
pub fn mib_ceil(bytes: usize) -> usize {
    bytes.div_ceil(1 << 20)
}

/// The estimate for windows of `frames` frames at `resolution` with `model`.
pub fn estimate_batch(model: &BodyModel, frames: usize, resolution: usize) -> BatchEstimate {
    // bf16 on the CPU keeps f32 weights and adds a bf16 copy of each matrix for its kernels.
    let cpu_bf16 = model.precision == DType::BF16 && model.dtype == DType::F32;
    let size = model.dtype.size_in_bytes() + if cpu_bf16 { 2 } else { 0 };
    let weights = model
        .reports
        .iter()
        // The text tower is dropped after the negative embedding is computed (model.rs).
        .filter(|(name, _)| name != "text_encoder")
        .map(|(name, r)| {
            let bytes = if name == "image_encoder" {
                DType::F32.size_in_bytes()
            } else {
                size
            };
            r.parameters.saturating_mul(bytes)
        })
        .sum();
    let factor = model.vae.config().downsample_factor().max(1);
    let side = resolution / factor;
    let hw = side * side;
    let topology = &model.unet.architecture().topology;
    let levels = topology.block_out_channels.len();
    let c0 = topology.block_out_channels.first().copied().unwrap_or(0);
    let mut skips = c0 * hw;
    for (l, &c) in topology.block_out_channels.iter().enumerate() {
        let area = hw >> (2 * l);
        let per_block = topology.layers_per_block.get(l).copied().unwrap_or(1);
        skips += per_block * c * area;
        if l + 1 < levels {
            skips += c * (area / 4);
        }
    }
    let per_frame = 2 * skips + 16 * c0 * hw;
    let mut batch = frames.saturating_mul(per_frame).saturating_mul(size);
    if !model.device.is_cpu() {
        batch = batch.saturating_add(3 * SCORE_BLOCK_ELEMENTS * size);
    }
    let vae_c0 = model
        .vae
        .config()
        .block_out_channels
        .first()
        .copied()
        .unwrap_or(0);
    let decode = 6 * vae_c0 * resolution * resolution * size;
    BatchEstimate {
        frames,
        resolution,
        weights,
        working_set: batch.max(decode),
    }
}

/// The cache bytes a request for `frame` creates over `steps` steps: every latent `x(s, g)` and
/// noise prediction `eps(s, w)` of its dependency cone, and the decoded image. With a budget at
/// least this large no entry of a request is evicted before the request has used it, so a request
/// never recomputes its own work; below it, evicted predictions are recomputed recursively and
/// the cost is not bounded by a small factor (BENCHMARKS.md, "Cache budget").
pub fn request_cache_bytes(
    plan: &WindowPlan,
    steps: usize,
    frame: usize,
    latent_bytes: usize,
    image_bytes: usize,
) -> usize {
    if frame >= plan.len() {
        return image_bytes;
    }
    let mut total = image_bytes;
    let mut frames = frame..frame + 1;
    for _level in (1..=steps).rev() {
        total += frames.len() * latent_bytes;
        let windows: BTreeSet<usize> = frames
            .clone()
            .flat_map(|g| plan.covering(g).iter().copied())
            .collect();
        // uncond + cond, one latent per frame each.
        total += windows
            .iter()
            .map(|&w| 2 * plan.windows()[w].len() * latent_bytes)
            .sum::<usize>();
        frames = plan.cone(frames, 1);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::temporal::{Fusion, Tail};

    #[test]
    fn request_cache_bytes_counts_the_cone() {
        // 30 frames, window 4, overlap 1 (windows every 3), 4 steps, 1-byte latents: frame 0
        // reads x(4, 0); eps(3, w0) over 0..4 → x(3, 0..4); eps(2, w0, w1) → x(2, 0..7);
        // eps(1, w0..w2) → x(1, 0..10); eps(0, w0..w3).
        let plan = WindowPlan::new(30, 4, 1, Tail::Paper, Fusion::Flat).unwrap();
        let latents = 1 + 4 + 7 + 10;
        let eps = 2 * 4 * (1 + 2 + 3 + 4);
        assert_eq!(request_cache_bytes(&plan, 4, 0, 1, 0), latents + eps);
        assert_eq!(
            request_cache_bytes(&plan, 4, 0, 1, 100),
            latents + eps + 100
        );
        // One-frame windows: each step is that frame alone.
        let single = WindowPlan::new(30, 1, 0, Tail::Paper, Fusion::Flat).unwrap();
        assert_eq!(request_cache_bytes(&single, 4, 7, 1, 0), 4 * (1 + 2));
    }

    #[test]
    fn mib_round_up() {
        assert_eq!(mib_ceil(1), 1);
        assert_eq!(mib_ceil(1 << 20), 1);
        assert_eq!(mib_ceil((1 << 20) + 1), 2);
    }
}
