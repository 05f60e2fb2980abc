//! GroupNorm whose statistics can span several consecutive batch entries (the frames of a window).
//!
//! diffusers applies `torch.nn.GroupNorm` per image; the inflated 3D UNet of Make-Your-Anchor applies
//! the same module to the 5-D tensor `(b, c, f, h, w)`, so each (batch, group) statistic is taken
//! over `(c/G, f, h, w)`: jointly over all frames of the window. With `frames = 1`
//! this is the plain 2D GroupNorm.
//!
//! Inference on the CPU in f32 (contiguous input, no gradient tracked) runs a fused, threaded
//! kernel (`GroupNormCpu`): each (window, group) is one work item. It takes the statistics in one
//! pass over memory (two passes over each cached block, blocks merged in f64), then writes
//! `x·scale + shift` per channel (and, for [`GroupNorm::forward_frames_silu`], the SiLU that
//! follows every ResNet GroupNorm) in a second pass, as torch's CPU kernel does. Other devices
//! and dtypes, strided inputs and training use candle's tensor ops.
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use super::attention_cpu::exp_approx;
use crate::profile::{self, Op};

/// `torch.nn.GroupNorm(num_groups, num_channels, eps, affine=True)`; keys `weight`, `bias`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    num_groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Loads `weight` and `bias` (both `[num_channels]`).
    pub fn new(num_groups: usize, num_channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        if num_groups == 0 || !num_channels.is_multiple_of(num_groups) {
            candle_core::bail!(
                "GroupNorm at {}: {num_channels} channels are not divisible into {num_groups} groups",
                vb.prefix()
            );
        }
        let weight = vb.get(num_channels, "weight")?;
        let bias = vb.get(num_channels, "bias")?;
        Ok(Self {
            weight,
            bias,
            num_groups,
            eps,
        })
    }

    /// Normalises `x: [B, C, H, W]`; statistics are shared by each run of `frames` consecutive
    /// batch entries (`B` must be a multiple of `frames`). Computed in f32 with a two-pass
    /// variance (in the CPU kernel: per cached block, with the blocks merged in f64).
    pub fn forward_frames(&self, x: &Tensor, frames: usize) -> Result<Tensor> {
        let _p = profile::scope(Op::GroupNorm);
        self.forward_impl(x, frames, false)
    }

    /// `silu(self.forward_frames(x, frames))`, fused into the normalisation on the CPU.
    pub fn forward_frames_silu(&self, x: &Tensor, frames: usize) -> Result<Tensor> {
        let _p = profile::scope(Op::GroupNorm);
        self.forward_impl(x, frames, true)
    }

    fn forward_impl(&self, x: &Tensor, frames: usize, silu: bool) -> Result<Tensor> {
        let (b, c, _, _) = x.dims4()?;
        if frames == 0 || !b.is_multiple_of(frames) {
            candle_core::bail!(
                "GroupNorm: batch {b} is not a whole number of {frames}-frame windows"
            );
        }
        if c != self.weight.elem_count() {
            candle_core::bail!(
                "GroupNorm: input has {c} channels, the weight {}",
                self.weight.elem_count()
            );
        }
        let fast = x.device().is_cpu()
            && x.dtype() == DType::F32
            && x.is_contiguous()
            && !super::differentiable::needs_grad(&[x, &self.weight, &self.bias]);
        if fast {
            let op = GroupNormCpu {
                gamma: self.weight.to_dtype(DType::F32)?.to_vec1()?,
                beta: self.bias.to_dtype(DType::F32)?.to_vec1()?,
                groups: self.num_groups,
                frames,
                eps: self.eps,
                silu,
            };
            return x.apply_op1_no_bwd(&op);
        }
        let y = self.forward_tensor_ops(x, frames)?;
        if silu {
            profile::time(Op::Activation, || y.silu())
        } else {
            Ok(y)
        }
    }

    /// The reference path in candle tensor ops (any device and dtype; differentiable).
    fn forward_tensor_ops(&self, x: &Tensor, frames: usize) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let g = self.num_groups;
        let cg = c / g;
        let windows = b / frames;
        // [windows, frames, groups, elements]; reduce over frames (1) and elements (3).
        let xg = xf.reshape((windows, frames, g, cg * h * w))?;
        let count = (frames * cg * h * w) as f64;
        let mean = (xg.sum_keepdim(3)?.sum_keepdim(1)? / count)?;
        let var = (xg
            .broadcast_sub(&mean)?
            .sqr()?
            .sum_keepdim(3)?
            .sum_keepdim(1)?
            / count)?;
        let inv_std = (var + self.eps)?.sqrt()?.recip()?;
        // Like torch's kernel: y = x·scale + shift with per-(window, channel) scale = γ/σ and
        // shift = β − μ·scale, so only two full-size temporaries exist.
        let per_channel = |t: &Tensor| -> Result<Tensor> {
            t.reshape((windows, 1, g, 1))?
                .broadcast_as((windows, 1, g, cg))?
                .reshape((windows, 1, c, 1))
        };
        let gamma = self.weight.to_dtype(DType::F32)?.reshape((1, 1, c, 1))?;
        let beta = self.bias.to_dtype(DType::F32)?.reshape((1, 1, c, 1))?;
        let scale = per_channel(&inv_std)?.broadcast_mul(&gamma)?;
        let shift = beta.broadcast_sub(&per_channel(&mean)?.mul(&scale)?)?;
        xf.reshape((windows, frames, c, h * w))?
            .broadcast_mul(&scale)?
            .broadcast_add(&shift)?
            .reshape((b, c, h, w))?
            .to_dtype(dtype)
    }
}

/// Elements below which the kernel runs on the calling thread (thread start-up costs tens of µs).
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

/// Elements summed in f32 lanes before the partial sum is added to the f64 total: bounds the f32
/// rounding of the statistics whatever the group size.
const F32_BLOCK: usize = 1024;

/// Elements whose mean and squared deviations are taken in two passes while they stay in the L1
/// cache (16 KiB) before being merged into the group's statistics.
const STAT_BLOCK: usize = 4096;

/// Sum of `f(x)` over `xs`: f32 lanes per block of [`F32_BLOCK`], blocks added in f64.
#[inline(always)]
fn block_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0f64;
    for block in xs.chunks(F32_BLOCK) {
        let mut acc = [0f32; 16];
        let mut chunks = block.chunks_exact(16);
        for c in &mut chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += f(v);
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
        total += f64::from(acc.iter().sum::<f32>() + tail);
    }
    total
}

/// Sum of `xs`.
#[inline(always)]
fn sum_generic(xs: &[f32]) -> f64 {
    block_sum(xs, |v| v)
}

/// Sum of `(x − mean)²` over `xs`.
#[inline(always)]
fn sq_dev_generic(xs: &[f32], mean: f32) -> f64 {
    block_sum(xs, |v| {
        let d = v - mean;
        d * d
    })
}

/// `dst = src·scale + shift`, then `silu` (`y / (1 + e^−y)`, as torch's `silu`) if asked.
#[inline(always)]
fn affine_generic(src: &[f32], dst: &mut [f32], scale: f32, shift: f32, silu: bool) {
    if silu {
        for (d, &s) in dst.iter_mut().zip(src) {
            let y = s * scale + shift;
            *d = y / (1.0 + exp_approx(-y));
        }
    } else {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s * scale + shift;
        }
    }
}

/// The inner loops compiled for AVX2 + FMA and for AVX-512, chosen at run time.
#[cfg(target_arch = "x86_64")]
macro_rules! simd_kernels {
    ($name:ident, $features:literal) => {
        mod $name {
            #[target_feature(enable = $features)]
            pub(super) unsafe fn sum(xs: &[f32]) -> f64 {
                super::sum_generic(xs)
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn sq_dev(xs: &[f32], mean: f32) -> f64 {
                super::sq_dev_generic(xs, mean)
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn affine(
                src: &[f32],
                dst: &mut [f32],
                scale: f32,
                shift: f32,
                silu: bool,
            ) {
                super::affine_generic(src, dst, scale, shift, silu)
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
simd_kernels!(avx2, "avx2,fma");
#[cfg(target_arch = "x86_64")]
simd_kernels!(avx512, "avx512f,avx2,fma");

/// Instruction sets of the inner loops.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kernels {
    Generic,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernels {
    fn detect() -> Self {
        match super::cpu::simd_level() {
            #[cfg(target_arch = "x86_64")]
            2 => Kernels::Avx512,
            #[cfg(target_arch = "x86_64")]
            1 => Kernels::Avx2,
            _ => Kernels::Generic,
        }
    }

    fn sum(self, xs: &[f32]) -> f64 {
        match self {
            Kernels::Generic => sum_generic(xs),
            // SAFETY: the CPU supports these instructions (`detect`).
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 => unsafe { avx2::sum(xs) },
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => unsafe { avx512::sum(xs) },
        }
    }

    fn sq_dev(self, xs: &[f32], mean: f32) -> f64 {
        match self {
            Kernels::Generic => sq_dev_generic(xs, mean),
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 => unsafe { avx2::sq_dev(xs, mean) },
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => unsafe { avx512::sq_dev(xs, mean) },
        }
    }

    fn affine(self, src: &[f32], dst: &mut [f32], scale: f32, shift: f32, silu: bool) {
        match self {
            Kernels::Generic => affine_generic(src, dst, scale, shift, silu),
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 => unsafe { avx2::affine(src, dst, scale, shift, silu) },
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => unsafe { avx512::affine(src, dst, scale, shift, silu) },
        }
    }
}

/// One work item: the group index, and that group's input and output chunks in frame order.
type Item<'a> = (usize, Vec<&'a [f32]>, Vec<&'a mut [f32]>);

/// The fused CPU GroupNorm (+ SiLU) on a contiguous f32 `[B, C, H, W]` storage.
struct GroupNormCpu {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    groups: usize,
    frames: usize,
    eps: f64,
    silu: bool,
}

impl GroupNormCpu {
    /// Normalises one (window, group): `src[f]` and `dst[f]` are that group's `cg` channel planes
    /// of `hw` elements in frame `f` of the window.
    fn item(&self, k: Kernels, group: usize, src: &[&[f32]], dst: &mut [&mut [f32]], hw: usize) {
        let count: usize = src.iter().map(|s| s.len()).sum();
        if count == 0 {
            return;
        }
        // Per block of STAT_BLOCK elements (in cache), a two-pass mean and sum of squared
        // deviations; the blocks are merged in f64 with Chan et al.'s pairwise update. One pass
        // over memory with the accuracy of a two-pass variance (torch's CPU kernel is also one
        // pass, with Welford moments).
        let (mut n, mut mean, mut m2) = (0f64, 0f64, 0f64);
        for block in src.iter().flat_map(|s| s.chunks(STAT_BLOCK)) {
            let nb = block.len() as f64;
            let mean_b = k.sum(block) / nb;
            let m2_b = k.sq_dev(block, mean_b as f32);
            let delta = mean_b - mean;
            let total = n + nb;
            mean += delta * nb / total;
            m2 += m2_b + delta * delta * n * nb / total;
            n = total;
        }
        let var = m2 / count as f64;
        let inv_std = 1.0 / (var + self.eps).sqrt();
        let cg = self.gamma.len() / self.groups;
        for (s, d) in src.iter().zip(dst.iter_mut()) {
            for (j, (sp, dp)) in s.chunks(hw).zip(d.chunks_mut(hw)).enumerate() {
                let ch = group * cg + j;
                let scale = f64::from(self.gamma[ch]) * inv_std;
                let shift = f64::from(self.beta[ch]) - mean * scale;
                k.affine(sp, dp, scale as f32, shift as f32, self.silu);
            }
        }
    }
}

impl CustomOp1 for GroupNormCpu {
    fn name(&self) -> &'static str {
        "mya-group-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let data = s.as_slice::<f32>()?;
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("{}: non-contiguous input", self.name())
        };
        let x = &data[start..end];
        let (b, c, h, w) = l.shape().dims4()?;
        let (g, frames) = (self.groups, self.frames);
        if g == 0
            || !c.is_multiple_of(g)
            || frames == 0
            || !b.is_multiple_of(frames)
            || self.gamma.len() != c
        {
            candle_core::bail!("{}: bad shape {:?} for {g} groups", self.name(), l.dims())
        }
        let hw = h * w;
        let chunk = (c / g) * hw;
        let mut out = vec![0f32; x.len()];
        if chunk == 0 {
            return Ok((CpuStorage::F32(out), l.shape().clone()));
        }
        // Work item (window, group): its `frames` chunks of `cg` planes, in frame order. Batch
        // entry `bi`, group `gi` is chunk `bi·G + gi` of both buffers.
        let windows = b / frames;
        let mut items: Vec<Item> = (0..windows * g)
            .map(|i| {
                (
                    i % g,
                    Vec::with_capacity(frames),
                    Vec::with_capacity(frames),
                )
            })
            .collect();
        for (i, (src, dst)) in x.chunks(chunk).zip(out.chunks_mut(chunk)).enumerate() {
            let (bi, gi) = (i / g, i % g);
            let item = &mut items[(bi / frames) * g + gi];
            item.1.push(src);
            item.2.push(dst);
        }
        let kernels = Kernels::detect();
        let threads = if x.len() < PARALLEL_MIN_ELEMENTS {
            1
        } else {
            candle_core::utils::get_num_threads().clamp(1, items.len())
        };
        // Items go through the kernels' shared pool: the caller waits only for the items a
        // worker has started, never for a worker that the scheduler has not woken yet.
        let slots: Vec<_> = items
            .into_iter()
            .map(|it| std::sync::Mutex::new(Some(it)))
            .collect();
        super::pool::for_each(slots.len(), threads, |i| {
            let next = slots[i].lock().ok().and_then(|mut slot| slot.take());
            if let Some((group, src, mut dst)) = next {
                self.item(kernels, group, &src, &mut dst, hw);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    fn norm(groups: usize, c: usize, eps: f64) -> Result<GroupNorm> {
        let dev = Device::Cpu;
        let mut map = HashMap::new();
        map.insert(
            "weight".to_string(),
            Tensor::randn(0f32, 1.0, c, &dev)?.affine(0.5, 1.0)?,
        );
        map.insert("bias".to_string(), Tensor::randn(0f32, 0.5, c, &dev)?);
        let vb = VarBuilder::from_tensors(map, DType::F32, &dev);
        GroupNorm::new(groups, c, eps, vb)
    }

    /// Scalar f64 reference of the windowed GroupNorm (+ SiLU).
    fn reference(gn: &GroupNorm, x: &Tensor, frames: usize, silu: bool) -> Result<Vec<f64>> {
        let (b, c, h, w) = x.dims4()?;
        let xs: Vec<f64> = x.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
        let gamma: Vec<f64> = gn.weight.to_dtype(DType::F64)?.to_vec1()?;
        let beta: Vec<f64> = gn.bias.to_dtype(DType::F64)?.to_vec1()?;
        let (g, hw) = (gn.num_groups, h * w);
        let cg = c / g;
        let mut out = vec![0f64; xs.len()];
        for win in 0..b / frames {
            for gi in 0..g {
                let idx = |f: usize| {
                    let base = ((win * frames + f) * c + gi * cg) * hw;
                    base..base + cg * hw
                };
                let n = (frames * cg * hw) as f64;
                let mean = (0..frames).flat_map(|f| xs[idx(f)].iter()).sum::<f64>() / n;
                let var = (0..frames)
                    .flat_map(|f| xs[idx(f)].iter())
                    .map(|v| (v - mean) * (v - mean))
                    .sum::<f64>()
                    / n;
                let inv = 1.0 / (var + gn.eps).sqrt();
                for f in 0..frames {
                    for (j, i) in idx(f).enumerate() {
                        let ch = gi * cg + j / hw;
                        let y = (xs[i] - mean) * inv * gamma[ch] + beta[ch];
                        out[i] = if silu { y / (1.0 + (-y).exp()) } else { y };
                    }
                }
            }
        }
        Ok(out)
    }

    fn max_err(got: &Tensor, want: &[f64]) -> Result<(f64, f64)> {
        let got: Vec<f32> = got.flatten_all()?.to_vec1()?;
        let err = got
            .iter()
            .zip(want)
            .map(|(&a, &b)| (f64::from(a) - b).abs())
            .fold(0.0, f64::max);
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        Ok((err, scale))
    }

    /// The fused kernel against the tensor-op path and an f64 reference, with and without SiLU,
    /// over window and per-frame layouts, both eps values the networks use, and an input whose
    /// mean is large against its spread (where a one-pass variance would lose digits).
    #[test]
    fn fused_kernel_matches_tensor_ops() -> Result<()> {
        let dev = Device::Cpu;
        let cases = [
            // (batch, channels, h, w, frames, groups, eps, offset)
            (4, 64, 8, 8, 4, 32, 1e-5, 0.0),
            (4, 64, 8, 8, 1, 32, 1e-6, 0.0),
            (6, 96, 16, 16, 3, 32, 1e-5, 0.0),
            (2, 320, 32, 32, 2, 32, 1e-6, 0.0),
            (8, 128, 9, 7, 4, 32, 1e-5, 20.0),
            (3, 12, 5, 5, 1, 4, 1e-5, 0.0),
            (2, 64, 3, 3, 2, 32, 1e-6, 0.0),
        ];
        for (b, c, h, w, frames, groups, eps, offset) in cases {
            let gn = norm(groups, c, eps)?;
            let x = (Tensor::randn(0f32, 2.0, (b, c, h, w), &dev)? + offset)?;
            for silu in [false, true] {
                let want = reference(&gn, &x, frames, silu)?;
                let fused = if silu {
                    gn.forward_frames_silu(&x, frames)?
                } else {
                    gn.forward_frames(&x, frames)?
                };
                let mut old = gn.forward_tensor_ops(&x, frames)?;
                if silu {
                    old = old.silu()?;
                }
                let (fused_err, scale) = max_err(&fused, &want)?;
                let (old_err, _) = max_err(&old, &want)?;
                let diff = (&fused - &old)?
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f32>()?;
                let case = format!("{b}×{c}×{h}×{w}, frames {frames}, G {groups}, silu {silu}");
                println!("{case}: fused {fused_err:.2e}, tensor ops {old_err:.2e}, |fused−old| {diff:.2e}");
                // Within 1e-5 of the output's magnitude of both the f64 reference and the old
                // path; and no worse than the old path's own error (plus f32 output rounding).
                let tol = 1e-5 * scale.max(1.0);
                assert!(fused_err <= tol, "{case}: vs f64 {fused_err} > {tol}");
                assert!(
                    f64::from(diff) <= tol,
                    "{case}: vs tensor ops {diff} > {tol}"
                );
                assert!(
                    fused_err <= 2.0 * old_err + 4.0 * f64::from(f32::EPSILON) * scale.max(1.0),
                    "{case}: fused {fused_err} worse than tensor ops {old_err}"
                );
            }
        }
        Ok(())
    }

    /// Strided inputs, f16 and tracked (training) inputs take the tensor-op path.
    #[test]
    fn other_inputs_fall_back() -> Result<()> {
        let dev = Device::Cpu;
        let gn = norm(4, 8, 1e-5)?;
        let x = Tensor::randn(0f32, 1.0, (2, 8, 6, 5), &dev)?;
        let strided = x.transpose(2, 3)?;
        assert!(!strided.is_contiguous());
        let want = gn.forward_frames(&strided.contiguous()?, 2)?;
        let got = gn.forward_frames_silu(&strided, 2)?;
        let diff = (got - want.silu()?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "strided: {diff}");
        let half = gn.forward_frames(&x.to_dtype(DType::F16)?, 1)?;
        assert_eq!(half.dtype(), DType::F16);
        let diff = (half.to_dtype(DType::F32)? - gn.forward_frames(&x, 1)?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-2, "f16: {diff}");
        Ok(())
    }
}
