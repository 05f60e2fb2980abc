//! CPU kernels for the blocked attention: a row softmax and a shifted exponential that use a
//! vectorisable `exp` (Cephes-style range reduction + polynomial, ~1 ulp) instead of one libm call
//! per score, split over threads by rows. candle's own softmax calls scalar `expf` per element,
//! which dominated the full-frame attention on CPU.
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// Rows × columns below which threading is not worth it.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// `e^x` for `x ≤ 88`; 0 below -87.3. Relative error ~2e-7 (Cephes `expf` polynomial).
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // Round to nearest with the 1.5·2^23 trick: vectorises where `round()` would not.
    const MAGIC: f32 = 12_582_912.0;
    let xc = if x > 88.0 { 88.0 } else { x };
    let xc = if xc < -87.3 { -87.3 } else { xc };
    let n = (xc * LOG2E + MAGIC) - MAGIC;
    let r = xc - n * C1 - n * C2;
    let r2 = r * r;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r2 + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        y * scale
    }
}

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(chunks.remainder()) {
        m = if v > m { v } else { m };
    }
    m
}

/// Writes `exp((src - shift)·scale)` into `dst` and returns the row sum.
#[inline(always)]
fn exp_row(src: &[f32], dst: &mut [f32], shift: f32, scale: f32) -> f32 {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = exp_approx((s - shift) * scale);
    }
    let mut acc = [0f32; 8];
    let mut chunks = dst.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[inline(always)]
fn softmax_rows_generic(src: &[f32], dst: &mut [f32], cols: usize, scale: f32) {
    for (s, d) in src.chunks_exact(cols).zip(dst.chunks_exact_mut(cols)) {
        let sum = exp_row(s, d, row_max(s), scale);
        let inv = 1.0 / sum;
        for v in d.iter_mut() {
            *v *= inv;
        }
    }
}

#[inline(always)]
fn exp_shifted_rows_generic(src: &[f32], shifts: &[f32], dst: &mut [f32], cols: usize, scale: f32) {
    for ((s, d), &m) in src
        .chunks_exact(cols)
        .zip(dst.chunks_exact_mut(cols))
        .zip(shifts)
    {
        exp_row(s, d, m, scale);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_rows_avx2(src: &[f32], dst: &mut [f32], cols: usize, scale: f32) {
    softmax_rows_generic(src, dst, cols, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_rows_avx2(
    src: &[f32],
    shifts: &[f32],
    dst: &mut [f32],
    cols: usize,
    scale: f32,
) {
    exp_shifted_rows_generic(src, shifts, dst, cols, scale)
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn softmax_rows(src: &[f32], dst: &mut [f32], cols: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        unsafe { softmax_rows_avx2(src, dst, cols, scale) };
        return;
    }
    softmax_rows_generic(src, dst, cols, scale)
}

fn exp_shifted_rows(src: &[f32], shifts: &[f32], dst: &mut [f32], cols: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        unsafe { exp_shifted_rows_avx2(src, shifts, dst, cols, scale) };
        return;
    }
    exp_shifted_rows_generic(src, shifts, dst, cols, scale)
}

/// Splits `rows` rows of `cols` into per-thread row ranges and runs `f(first_row, src, dst)`.
fn parallel_rows(
    src: &[f32],
    dst: &mut [f32],
    cols: usize,
    f: impl Fn(usize, &[f32], &mut [f32]) + Sync,
) {
    let rows = src.len() / cols.max(1);
    let threads = if src.len() < PARALLEL_MIN_ELEMENTS {
        1
    } else {
        candle_core::utils::get_num_threads().clamp(1, rows.max(1))
    };
    if threads <= 1 {
        f(0, src, dst);
        return;
    }
    let per = rows.div_ceil(threads);
    std::thread::scope(|scope| {
        for (i, (s, d)) in src
            .chunks(per * cols)
            .zip(dst.chunks_mut(per * cols))
            .enumerate()
        {
            let f = &f;
            scope.spawn(move || f(i * per, s, d));
        }
    });
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{what}: f32 only"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// `softmax(scale · s)` over the last dimension (f32, contiguous, CPU; scale > 0).
struct FastSoftmax {
    scale: f32,
}

impl CustomOp1 for FastSoftmax {
    fn name(&self) -> &'static str {
        "mya-fast-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(s, l, self.name())?;
        let cols = l.dims().last().copied().unwrap_or(1).max(1);
        let mut dst = vec![0f32; src.len()];
        let scale = self.scale;
        parallel_rows(src, &mut dst, cols, |_, s, d| {
            softmax_rows(s, d, cols, scale)
        });
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }
}

/// `exp((s - m)·scale)` with `s: [.., R, C]` and one shift per row `m: [.., R, 1]` (f32,
/// contiguous, CPU).
struct ExpShifted {
    scale: f32,
}

impl CustomOp2 for ExpShifted {
    fn name(&self) -> &'static str {
        "mya-exp-shifted"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(s1, l1, self.name())?;
        let shifts = contiguous_f32(s2, l2, self.name())?;
        let cols = l1.dims().last().copied().unwrap_or(1).max(1);
        if shifts.len() * cols != src.len() {
            candle_core::bail!(
                "{}: {} shifts for {} rows",
                self.name(),
                shifts.len(),
                src.len() / cols
            );
        }
        let mut dst = vec![0f32; src.len()];
        let scale = self.scale;
        parallel_rows(src, &mut dst, cols, |row0, s, d| {
            let rows = s.len() / cols;
            exp_shifted_rows(s, &shifts[row0..row0 + rows], d, cols, scale)
        });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }
}

/// Whether the fast CPU kernels apply to `t` (f32 on the CPU).
pub(crate) fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// `softmax(scale · t)` over the last dimension of an f32 CPU tensor (`scale > 0`).
pub(crate) fn softmax_last_dim(t: &Tensor, scale: f32) -> Result<Tensor> {
    t.contiguous()?.apply_op1_no_bwd(&FastSoftmax { scale })
}

/// `exp((s - m)·scale)` for an f32 CPU tensor `s: [.., C]` and row shifts `m: [.., 1]`.
pub(crate) fn exp_shifted(s: &Tensor, m: &Tensor, scale: f32) -> Result<Tensor> {
    s.contiguous()?
        .apply_op2_no_bwd(&m.contiguous()?, &ExpShifted { scale })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn exp_approx_is_accurate() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = x.exp();
            let rel = ((exp_approx(x) - want) / want).abs();
            worst = worst.max(rel);
            x += 0.001_3;
        }
        assert!(worst < 4e-7, "worst relative error {worst:e}");
        assert_eq!(exp_approx(-100.0), 0.0);
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn kernels_match_candle() -> Result<()> {
        let s = (Tensor::randn(0f32, 1.0, (3, 70, 301), &Device::Cpu)? * 4.0)?;
        let want = candle_nn::ops::softmax_last_dim(&(&s * 0.3)?)?;
        let got = softmax_last_dim(&s, 0.3)?;
        let err = (got - &want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(err < 1e-6, "softmax error {err}");
        let m = s.max_keepdim(2)?;
        let want = (s.broadcast_sub(&m)? * 0.3)?.exp()?;
        let got = exp_shifted(&s, &m, 0.3)?;
        let err = (got - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(err < 1e-6, "exp_shifted error {err}");
        Ok(())
    }
}
