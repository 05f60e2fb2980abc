//! CPU kernels for the blocked attention: a row softmax and a shifted exponential that use a
//! vectorisable `exp` (Cephes-style range reduction + polynomial, ~1 ulp) instead of one libm call
//! per score, split over threads by rows. candle's own softmax calls scalar `expf` per element,
//! which dominated the full-frame attention on CPU.
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::cpu::contiguous_f32;

/// Rows × columns below which threading is not worth it.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// `e^x` for `x ≤ 88` (clamped there), 0 below -87.3; relative error ~2e-7 (the Cephes `expf`
/// range reduction and polynomial), written so that it vectorises.
#[inline(always)]
pub(super) fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // Round to nearest with the 1.5·2^23 trick: vectorises where `round()` would not.
    const MAGIC: f32 = 12_582_912.0;
    let xc = if x > 88.0 { 88.0 } else { x };
    let xc = if xc < -87.3 { -87.3 } else { xc };
    let shifted = xc * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = xc - n * C1 - n * C2;
    let r2 = r * r;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r2 + r + 1.0;
    // 2^n from the integer `n` held in the low mantissa bits of `shifted` (|n| ≤ 127), without a
    // float-to-int cast: Rust's saturating `as i32` keeps LLVM from vectorising the loop.
    // (Wrapping arithmetic: overflow checks in test builds would stop the vectorisation too.)
    let n_int = (shifted.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn softmax_rows_avx512(src: &[f32], dst: &mut [f32], cols: usize, scale: f32) {
    softmax_rows_generic(src, dst, cols, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn exp_shifted_rows_avx512(
    src: &[f32],
    shifts: &[f32],
    dst: &mut [f32],
    cols: usize,
    scale: f32,
) {
    exp_shifted_rows_generic(src, shifts, dst, cols, scale)
}

/// AVX-512 doubles the vector width of the exponentials. The arithmetic is the same (Rust does
/// not contract into FMAs, and the partial sums keep their fixed 8-lane order), so the result
/// is bit-identical to the AVX2 and generic builds.
fn has_avx512() -> bool {
    super::cpu::simd_level() >= 2
}

fn has_avx2() -> bool {
    super::cpu::simd_level() >= 1
}

fn softmax_rows(src: &[f32], dst: &mut [f32], cols: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked at run time).
        unsafe { softmax_rows_avx512(src, dst, cols, scale) };
        return;
    }
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
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked at run time).
        unsafe { exp_shifted_rows_avx512(src, shifts, dst, cols, scale) };
        return;
    }
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

/// Query rows per tile of the fused kernel.
const FUSED_QUERY_TILE: usize = 256;
/// Key rows per tile: the `[256, 1024]` f32 score tile (1 MiB) stays in a core's 2 MiB L2, and
/// each `gemm` call is large enough to amortise its packing (the `bf16_kernels` benchmark's f32
/// attention shapes ran 10–15 % faster than with 128 × 512 tiles).
const FUSED_KEY_TILE: usize = 1024;

/// One query tile's online-softmax update after `s = q·kᵀ` for one key tile: turns `s` into
/// `exp((s - m_new)·scale)` in place, rescales `acc` and `l`, and updates `m`.
#[inline(always)]
fn online_update_generic(
    s: &mut [f32],
    cols: usize,
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
    dv: usize,
    scale: f32,
) {
    for (r, row) in s.chunks_exact_mut(cols).enumerate() {
        let m_old = m[r];
        let block_max = row_max(row);
        let m_new = if block_max > m_old { block_max } else { m_old };
        for v in row.iter_mut() {
            *v = exp_approx((*v - m_new) * scale);
        }
        let mut sums = [0f32; 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            for (a, &v) in sums.iter_mut().zip(c) {
                *a += v;
            }
        }
        let sum = sums.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
        // Exact exp for the rescaling: its error would compound over the key tiles.
        let correction = if m_old == f32::NEG_INFINITY {
            0.0
        } else {
            ((m_old - m_new) * scale).exp()
        };
        l[r] = l[r] * correction + sum;
        if correction != 1.0 {
            for a in &mut acc[r * dv..(r + 1) * dv] {
                *a *= correction;
            }
        }
        m[r] = m_new;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn online_update_avx2(
    s: &mut [f32],
    cols: usize,
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
    dv: usize,
    scale: f32,
) {
    online_update_generic(s, cols, m, l, acc, dv, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn online_update_avx512(
    s: &mut [f32],
    cols: usize,
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
    dv: usize,
    scale: f32,
) {
    online_update_generic(s, cols, m, l, acc, dv, scale)
}

fn online_update(
    s: &mut [f32],
    cols: usize,
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
    dv: usize,
    scale: f32,
) {
    // AVX-512: the fused step (2^x with vscalefps, lazy running maximum).
    if super::online_softmax::step_f32(s, cols, m, l, acc, dv, scale) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked at run time).
        unsafe { online_update_avx512(s, cols, m, l, acc, dv, scale) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        unsafe { online_update_avx2(s, cols, m, l, acc, dv, scale) };
        return;
    }
    online_update_generic(s, cols, m, l, acc, dv, scale)
}

/// Sizes of one fused attention problem.
#[derive(Debug, Clone, Copy)]
struct Dims {
    lk: usize,
    d: usize,
    dv: usize,
}

/// Attention for one query tile of one batch entry: `out = softmax(q kᵀ·scale) v`, walking key
/// tiles with two small GEMMs each (scores, then `p·v` accumulated), nothing larger than a tile.
fn attend_tile(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    dims: Dims,
    scale: f32,
    s: &mut Vec<f32>,
) {
    let Dims { lk, d, dv } = dims;
    // Worker-thread time of the GEMMs and of the softmax/rescale (read only while profiling).
    let profiling = crate::profile::enabled();
    let (mut gemm_ns, mut softmax_ns) = (0u64, 0u64);
    let lap = |from: &mut Option<std::time::Instant>, acc: &mut u64| {
        if let Some(t) = from {
            let now = std::time::Instant::now();
            *acc += (now - *t).as_nanos() as u64;
            *t = now;
        }
    };
    let mut clock = profiling.then(std::time::Instant::now);
    let rows = q.len() / d;
    let mut m = vec![f32::NEG_INFINITY; rows];
    let mut l = vec![0f32; rows];
    out.fill(0.0);
    for start in (0..lk).step_by(FUSED_KEY_TILE) {
        let cols = FUSED_KEY_TILE.min(lk - start);
        s.resize(rows * cols, 0.0);
        let kt = &k[start * d..(start + cols) * d];
        let vt = &v[start * dv..(start + cols) * dv];
        // Both GEMMs are computed transposed (`sᵀ = kt·qᵀ`, `outᵀ += vtᵀ·sᵀ`): the row-major
        // `s` and `out` are then column-major results with unit stride along `gemm`'s output
        // rows, the layout its kernels write directly, and `qᵀ`, `vtᵀ`, `sᵀ` are read in place.
        // SAFETY: every pointer/stride pair addresses memory inside the slices: s is rows×cols
        // (row-major) written as sᵀ (cols×rows, column stride cols), kt cols×d (row stride d),
        // q rows×d read as qᵀ (d×rows, column stride d).
        unsafe {
            gemm::gemm(
                cols,
                rows,
                d,
                s.as_mut_ptr(),
                cols as isize,
                1,
                false,
                kt.as_ptr(),
                1,
                d as isize,
                q.as_ptr(),
                d as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        lap(&mut clock, &mut gemm_ns);
        online_update(s, cols, &mut m, &mut l, out, dv, scale);
        lap(&mut clock, &mut softmax_ns);
        // SAFETY: out rows×dv (row-major) written as outᵀ (dv×rows, column stride dv); vt
        // cols×dv read as vtᵀ (dv×cols, column stride dv); s read as sᵀ (cols×rows, column
        // stride cols).
        unsafe {
            gemm::gemm(
                dv,
                rows,
                cols,
                out.as_mut_ptr(),
                dv as isize,
                1,
                true,
                vt.as_ptr(),
                dv as isize,
                1,
                s.as_ptr(),
                cols as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        lap(&mut clock, &mut gemm_ns);
    }
    for (row, &sum) in out.chunks_exact_mut(dv).zip(&l) {
        let inv = 1.0 / sum;
        for x in row {
            *x *= inv;
        }
    }
    lap(&mut clock, &mut softmax_ns);
    if profiling {
        crate::profile::add_worker_time(crate::profile::Part::AttentionGemm, gemm_ns);
        crate::profile::add_worker_time(crate::profile::Part::AttentionSoftmax, softmax_ns);
    }
}

/// Fused attention `softmax(q kᵀ·scale) v` for `q: [n, lq, d]`, `k: [n, lk, d]`, `v: [n, lk, dv]`
/// (f32, CPU): query tiles are spread over threads, and each holds only a score tile.
struct FusedAttention {
    scale: f32,
}

/// `(n, lq, d, lk, dv)` of an attention's `q: [n, lq, d]`, `k: [n, lk, d]`, `v: [n, lk, dv]`,
/// or an error naming `what` when they do not agree (or a size is 0).
pub(super) fn attention_dims(
    l1: &Layout,
    l2: &Layout,
    l3: &Layout,
    what: &str,
) -> Result<(usize, usize, usize, usize, usize)> {
    let (n, lq, d) = l1.shape().dims3()?;
    let (nk, lk, dk) = l2.shape().dims3()?;
    let (nv, lv, dv) = l3.shape().dims3()?;
    if nk != n || nv != n || dk != d || lv != lk || lk == 0 || d == 0 || dv == 0 {
        candle_core::bail!(
            "{what}: q {:?}, k {:?}, v {:?} do not agree",
            l1.dims(),
            l2.dims(),
            l3.dims()
        );
    }
    Ok((n, lq, d, lk, dv))
}

impl candle_core::CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "mya-fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            contiguous_f32(s1, l1, self.name())?,
            contiguous_f32(s2, l2, self.name())?,
            contiguous_f32(s3, l3, self.name())?,
        );
        let (n, lq, d, lk, dv) = attention_dims(l1, l2, l3, self.name())?;
        let dims = Dims { lk, d, dv };
        let mut out = vec![0f32; n * lq * dv];
        // Work items: (batch entry, first query row, output rows), disjoint in `out`.
        let mut items = Vec::new();
        for (b, out_b) in out.chunks_mut(lq * dv).enumerate() {
            for (t, out_t) in out_b.chunks_mut(FUSED_QUERY_TILE * dv).enumerate() {
                items.push((b, t * FUSED_QUERY_TILE, out_t));
            }
        }
        let threads = candle_core::utils::get_num_threads().clamp(1, items.len().max(1));
        let slots: Vec<_> = items
            .into_iter()
            .map(|it| std::sync::Mutex::new(Some(it)))
            .collect();
        let scale = self.scale;
        // The kernels' shared pool: the caller waits only for tiles a worker has started.
        super::pool::for_each(slots.len(), threads, |i| {
            let next = slots[i].lock().ok().and_then(|mut slot| slot.take());
            let Some((b, q0, out_t)) = next else { return };
            super::pool::with_scratch(|[s, _, _]| {
                let rows = out_t.len() / dv;
                let qt = &q[(b * lq + q0) * d..(b * lq + q0 + rows) * d];
                let kb = &k[b * lk * d..(b + 1) * lk * d];
                let vb = &v[b * lk * dv..(b + 1) * lk * dv];
                attend_tile(qt, kb, vb, out_t, dims, scale, s);
            });
        });
        Ok((CpuStorage::F32(out), Shape::from_dims(&[n, lq, dv])))
    }
}

/// Fused attention on the CPU (f32): `q: [n, lq, d]`, `k: [n, lk, d]`, `v: [n, lk, dv]`.
pub(crate) fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    q.contiguous()?.apply_op3_no_bwd(
        &k.contiguous()?,
        &v.contiguous()?,
        &FusedAttention {
            scale: scale as f32,
        },
    )
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
