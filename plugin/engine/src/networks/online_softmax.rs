//! The online-softmax step of the fused CPU attention, with AVX-512: for one key tile of scores,
//! the exponentials, their row sums and the running maximum of flash attention (Dao et al. 2022,
//! arXiv 2205.14135, §3.1).
//!
//! Two things make it several times faster than a plain loop over `exp`:
//! - `e^((x − m)·scale)` is computed as `2^(x·c − m·c)` with `c = scale·log₂e` folded into one
//!   FMA, `2^f` by a polynomial and `2^n` by `vscalefps`;
//! - the shift `m` is the running maximum of the *earlier* key tiles, and a tile's scores may rise
//!   up to 2^16 above it before its exponentials are redone with the new maximum. So most tiles
//!   need no separate pass for their maximum, and the accumulated `p·v` rows are rescaled only
//!   when the shift moves. `p`, `l` and `acc` always share one shift, which cancels in `acc / l`;
//!   2^16 per term keeps any row's sum far inside f32's range, and relative precision does not
//!   depend on magnitude.
//!
//! [`step_f32`] serves the f32 attention (probabilities written back in place), [`step_bf16`]
//! the bf16 one (probabilities rounded to bf16 for the AMX / AVX-512 BF16 `p·v`).

/// One key tile's step for the f32 attention: `s` (rows × `cols` scores, row-major) becomes
/// `p = exp((s − m)·scale)` in place for each row's running shift `m`; `l` gains the row sums,
/// `acc` (rows × `dv`) is rescaled when a shift moves, and `m` is updated. Returns false (and
/// does nothing) where the processor lacks AVX-512F: the caller then runs its portable step.
#[allow(clippy::too_many_arguments)]
pub(crate) fn step_f32(
    s: &mut [f32],
    cols: usize,
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
    dv: usize,
    scale: f32,
) -> bool {
    let rows = m.len();
    assert!(s.len() >= rows * cols && l.len() >= rows && acc.len() >= rows * dv);
    #[cfg(target_arch = "x86_64")]
    if super::cpu::simd_level() >= 2 {
        // SAFETY: AVX-512F is present (checked above); sizes checked above.
        unsafe { avx512::step_f32(s, cols, m, l, acc, dv, scale) };
        return true;
    }
    let _ = (s, cols, l, acc, dv, scale);
    false
}

/// One key tile's step for the bf16 attention: from the scores `s` (rows of `lds` floats, of
/// which `cols` are real keys), writes `p = exp((s − m)·scale)` as bf16 rows of `cp` (zeros past
/// `cols`) for each row's running shift `m`; `l` gains the row sums, `acc` (rows × `dvp`) is
/// rescaled when a shift moves, and `m` is updated. Only the bf16 kernels call it, and they
/// imply AVX-512 BF16.
#[allow(clippy::too_many_arguments)]
pub(crate) fn step_bf16(
    s: &[f32],
    lds: usize,
    p: &mut [u16],
    cols: usize,
    cp: usize,
    rows: usize,
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
    dvp: usize,
    scale: f32,
) {
    assert!(
        s.len() >= rows * lds
            && lds >= cp
            && p.len() >= rows * cp
            && acc.len() >= rows * dvp
            && m.len() >= rows
            && l.len() >= rows
            && cp.is_multiple_of(32)
            && cols <= cp
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: only reached through a bf16 kernel, which needs AVX-512 BF16; sizes checked above.
    unsafe {
        avx512::step_bf16(s, lds, p, cols, cp, rows, m, l, acc, dvp, scale)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (s, lds, p, cols, cp, rows, m, l, acc, dvp, scale);
        unreachable!("no bf16 kernel off x86_64")
    }
}

/// How far (in powers of two) a tile's scores may rise above the running maximum before its
/// exponentials are redone with the new maximum.
const LAZY_LOG2: f32 = 16.0;

/// The bookkeeping after one row's exponentials: the sum `sum` was taken with `shift`; the row's
/// previous shift was `m_old` (−∞ before the first tile).
#[inline(always)]
fn settle(shift: f32, sum: f32, m_old: f32, scale: f32, l: &mut f32, acc_row: &mut [f32]) {
    if m_old == f32::NEG_INFINITY {
        *l = sum;
    } else if shift == m_old {
        *l += sum;
    } else {
        // Exact exp for the rescaling: its error would compound over the key tiles.
        let correction = ((m_old - shift) * scale).exp();
        *l = *l * correction + sum;
        for a in acc_row {
            *a *= correction;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{settle, LAZY_LOG2};
    use std::arch::x86_64::*;

    /// `2^u` on 16 lanes: `u = n + f` with `n` the nearest integer and `|f| ≤ 1/2`, `2^f` by its
    /// degree-6 Taylor polynomial (relative error below 2e-7, f32's own rounding), `2^n` applied
    /// by `vscalefps` (which gives 0 for very negative `u`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp2_16(u: __m512) -> __m512 {
        let n = _mm512_roundscale_ps::<0x08>(u);
        let f = _mm512_sub_ps(u, n);
        let mut y = _mm512_set1_ps(1.540_353e-4);
        for c in [
            1.333_355_8e-3,
            9.618_129e-3,
            5.550_411e-2,
            2.402_265e-1,
            6.931_472e-1,
            1.0,
        ] {
            y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(y, n)
    }

    /// The maximum of a row's `full` whole vectors and its `tail` (mask of the rest), with four
    /// running maxima (one would wait on the latency of each `vmaxps`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn row_max(row: *const f32, full: usize, tail: __mmask16) -> f32 {
        let mut vm = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
        let mut j = 0;
        while j + 64 <= full {
            for (q, v) in vm.iter_mut().enumerate() {
                *v = _mm512_max_ps(*v, _mm512_loadu_ps(row.add(j + 16 * q)));
            }
            j += 64;
        }
        while j < full {
            vm[0] = _mm512_max_ps(vm[0], _mm512_loadu_ps(row.add(j)));
            j += 16;
        }
        let mut v = _mm512_max_ps(_mm512_max_ps(vm[0], vm[1]), _mm512_max_ps(vm[2], vm[3]));
        if tail != 0 {
            v = _mm512_mask_max_ps(v, tail, v, _mm512_maskz_loadu_ps(tail, row.add(full)));
        }
        _mm512_reduce_max_ps(v)
    }

    /// Lane group `j` of a row: its scores' `2^(x·c − shift)` (zeros outside the scores), with
    /// the scores' maximum folded into `vmax`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn lanes(
        row: *const f32,
        j: usize,
        full: usize,
        tail: __mmask16,
        c: __m512,
        shift: __m512,
        vmax: &mut __m512,
    ) -> __m512 {
        if j + 16 <= full {
            let x = _mm512_loadu_ps(row.add(j));
            *vmax = _mm512_max_ps(*vmax, x);
            exp2_16(_mm512_fmsub_ps(x, c, shift))
        } else if j == full && tail != 0 {
            let x = _mm512_maskz_loadu_ps(tail, row.add(j));
            *vmax = _mm512_mask_max_ps(*vmax, tail, *vmax, x);
            _mm512_maskz_mov_ps(tail, exp2_16(_mm512_fmsub_ps(x, c, shift)))
        } else {
            _mm512_setzero_ps()
        }
    }

    /// bf16 probabilities of one row into `prow` (`cp` of them, a multiple of 32); returns their
    /// sum and the row's maximum score.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn exp_row_bf16(
        row: *const f32,
        prow: *mut u16,
        full: usize,
        tail: __mmask16,
        cp: usize,
        c: __m512,
        shift: __m512,
    ) -> (f32, f32) {
        let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let (mut m0, mut m1) = (
            _mm512_set1_ps(f32::NEG_INFINITY),
            _mm512_set1_ps(f32::NEG_INFINITY),
        );
        for j in (0..cp).step_by(32) {
            let e0 = lanes(row, j, full, tail, c, shift, &mut m0);
            let e1 = lanes(row, j + 16, full, tail, c, shift, &mut m1);
            s0 = _mm512_add_ps(s0, e0);
            s1 = _mm512_add_ps(s1, e1);
            // One conversion packs both halves.
            let bf: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(e1, e0));
            _mm512_storeu_si512(prow.add(j) as *mut _, bf);
        }
        (
            _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)),
            _mm512_reduce_max_ps(_mm512_max_ps(m0, m1)),
        )
    }

    /// f32 probabilities of one row, in place over its scores; returns their sum and the row's
    /// maximum score (read before it is overwritten).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp_row_f32(
        row: *mut f32,
        full: usize,
        tail: __mmask16,
        c: __m512,
        shift: __m512,
    ) -> (f32, f32) {
        let (mut s0, mut m0) = (_mm512_setzero_ps(), _mm512_set1_ps(f32::NEG_INFINITY));
        let (mut s1, mut m1) = (_mm512_setzero_ps(), _mm512_set1_ps(f32::NEG_INFINITY));
        let mut j = 0;
        while j + 32 <= full {
            let e0 = lanes(row, j, full, tail, c, shift, &mut m0);
            let e1 = lanes(row, j + 16, full, tail, c, shift, &mut m1);
            s0 = _mm512_add_ps(s0, e0);
            s1 = _mm512_add_ps(s1, e1);
            _mm512_storeu_ps(row.add(j), e0);
            _mm512_storeu_ps(row.add(j + 16), e1);
            j += 32;
        }
        while j < full {
            let e = lanes(row, j, full, tail, c, shift, &mut m0);
            s0 = _mm512_add_ps(s0, e);
            _mm512_storeu_ps(row.add(j), e);
            j += 16;
        }
        if tail != 0 {
            let e = lanes(row, full, full, tail, c, shift, &mut m1);
            s1 = _mm512_add_ps(s1, e);
            _mm512_mask_storeu_ps(row.add(full), tail, e);
        }
        (
            _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)),
            _mm512_reduce_max_ps(_mm512_max_ps(m0, m1)),
        )
    }

    /// The shift a row starts a tile with: the running maximum, or before the first tile the
    /// tile's own maximum.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn first_shift(row: *const f32, full: usize, tail: __mmask16, m_old: f32) -> f32 {
        if m_old == f32::NEG_INFINITY {
            row_max(row, full, tail)
        } else {
            m_old
        }
    }

    /// See [`super::step_bf16`].
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn step_bf16(
        s: &[f32],
        lds: usize,
        p: &mut [u16],
        cols: usize,
        cp: usize,
        rows: usize,
        m: &mut [f32],
        l: &mut [f32],
        acc: &mut [f32],
        dvp: usize,
        scale: f32,
    ) {
        let full = cols / 16 * 16;
        let tail: __mmask16 = ((1u32 << (cols - full)) - 1) as __mmask16;
        let c = scale * std::f32::consts::LOG2_E;
        let vc = _mm512_set1_ps(c);
        for r in 0..rows {
            let (row, prow) = (s.as_ptr().add(r * lds), p.as_mut_ptr().add(r * cp));
            let m_old = m[r];
            let mut shift = first_shift(row, full, tail, m_old);
            let (mut sum, block_max) =
                exp_row_bf16(row, prow, full, tail, cp, vc, _mm512_set1_ps(shift * c));
            if (block_max - shift) * c > LAZY_LOG2 {
                shift = block_max;
                sum = exp_row_bf16(row, prow, full, tail, cp, vc, _mm512_set1_ps(shift * c)).0;
            }
            settle(
                shift,
                sum,
                m_old,
                scale,
                &mut l[r],
                &mut acc[r * dvp..(r + 1) * dvp],
            );
            m[r] = shift;
        }
    }

    /// See [`super::step_f32`]. The probabilities overwrite the scores, so each row's maximum
    /// is read first (one cheap pass) to choose the shift before the exponentials.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn step_f32(
        s: &mut [f32],
        cols: usize,
        m: &mut [f32],
        l: &mut [f32],
        acc: &mut [f32],
        dv: usize,
        scale: f32,
    ) {
        let full = cols / 16 * 16;
        let tail: __mmask16 = ((1u32 << (cols - full)) - 1) as __mmask16;
        let c = scale * std::f32::consts::LOG2_E;
        let vc = _mm512_set1_ps(c);
        for (r, srow) in s.chunks_exact_mut(cols).take(m.len()).enumerate() {
            let row = srow.as_mut_ptr();
            let m_old = m[r];
            let block_max = row_max(row, full, tail);
            let shift = if m_old == f32::NEG_INFINITY || (block_max - m_old) * c > LAZY_LOG2 {
                block_max
            } else {
                m_old
            };
            let sum = exp_row_f32(row, full, tail, vc, _mm512_set1_ps(shift * c)).0;
            settle(
                shift,
                sum,
                m_old,
                scale,
                &mut l[r],
                &mut acc[r * dv..(r + 1) * dv],
            );
            m[r] = shift;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::networks::attention::{attention, naive_attention};
    use candle_core::{DType, Device, Result, Tensor};

    fn rel(a: &Tensor, b: &Tensor) -> Result<f32> {
        let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        Ok(d / b.abs()?.max_all()?.to_scalar::<f32>()?)
    }

    /// The f32 attention (whichever step this processor runs) against the naive one, with keys
    /// whose scores rise far above the first tile's (the shift moves and the rows rescale) and a
    /// last tile of 76 keys.
    #[test]
    fn the_f32_attention_matches_the_naive_one_when_maxima_rise() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (3, 200, 40), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (3, 1100, 40), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (3, 1100, 24), &dev)?;
        let scale = 1.0 / 40f64.sqrt();
        for boost in [1.0, 12.0, 40.0] {
            let gain = Tensor::cat(
                &[
                    Tensor::ones((3, 600, 40), DType::F32, &dev)?,
                    (Tensor::ones((3, 500, 40), DType::F32, &dev)? * boost)?,
                ],
                1,
            )?;
            let k = (&k * &gain)?;
            let e = rel(
                &attention(&q, &k, &v, scale)?,
                &naive_attention(&q, &k, &v, scale)?,
            )?;
            assert!(e < 2e-5, "boost {boost}: {e}");
        }
        Ok(())
    }
}
