//! The f32 GEMM of the linear layers on AVX-512 CPUs: `y = x·wᵀ + b` for the short, narrow
//! products of the attention and feed-forward projections (inner sizes 64–1024), where a general
//! GEMM's packing and blocking cost as much as its arithmetic.
//!
//! Per call, `wᵀ` is packed into panels of [`NR`] output features (`k × NR`, zero-padded), 16 × 16
//! blocks at a time through an in-register transpose; nothing is kept between calls, so the
//! weights are held once. The micro-kernel keeps an `MR × NR` tile of `y` in 24 AVX-512
//! registers, broadcasts `x` straight from its rows and streams the panel.
//!
//! Every output element is computed the same way whatever the split: its bias first, then one
//! fused multiply-add per input feature in order (a depth block continues from the stored partial
//! sum, which is exact). So the result never depends on the thread count, the work items or
//! the position of the row in its tile.
//!
//! x86-64 only (the module is not built elsewhere); other CPUs use the `gemm` crate's path.
#![cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::cpu::SharedMut;
use super::pool;

/// Output features per packed panel (two AVX-512 registers).
const NR: usize = 32;

/// Token rows per micro-tile: 2·MR accumulators plus two panel registers fit the 32 registers.
const MR: usize = 12;

/// Input features per depth block: a panel block (`KC × NR`, 32 KiB) stays in L1 while the
/// item's rows stream past it.
const KC: usize = 256;

/// Token rows per work item.
const RB: usize = 8 * MR;

/// Multiply-adds below which a product runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 20;

/// Whether this CPU runs the kernel (AVX-512 F).
pub(crate) fn available() -> bool {
    super::cpu::simd_level() >= 2
}

/// `y = x·wᵀ + b` for row-major `x: [tokens, d_in]`, `w: [d_out, d_in]` and `b: [d_out]`, on up
/// to `threads` threads. Call only where [`available`] is true.
pub(crate) fn linear(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    (tokens, d_in, d_out): (usize, usize, usize),
    threads: usize,
) -> Vec<f32> {
    assert!(available(), "gemm_f32::linear needs AVX-512");
    assert!(x.len() == tokens * d_in && w.len() == d_out * d_in);
    assert!(bias.is_none_or(|b| b.len() == d_out));
    if tokens * d_out == 0 || d_in == 0 {
        // No product: the bias alone (the depth loop below would write nothing).
        let b = bias.map_or_else(|| vec![0f32; d_out], <[f32]>::to_vec);
        return b.repeat(tokens);
    }
    // Every element of `y` and of the panels is written below before it is read, so neither is
    // zero-filled first (a pass over memory that costs as much as a small product).
    let mut y: Vec<f32> = Vec::with_capacity(tokens * d_out);
    let threads = if tokens * d_in * d_out < PARALLEL_MIN_MACS {
        1
    } else {
        threads.max(1)
    };
    let panels = d_out.div_ceil(NR);
    let mut bias_padded = vec![0f32; panels * NR];
    if let Some(b) = bias {
        bias_padded[..d_out].copy_from_slice(b);
    }
    // wᵀ in panels: panel p holds features p·NR.. as `d_in` rows of NR.
    let mut packed: Vec<f32> = Vec::with_capacity(panels * d_in * NR);
    let packed_ptr = SharedMut(packed.as_mut_ptr());
    pool::for_each(panels, threads.min(panels), |p| {
        // SAFETY: panel p's `d_in·NR` floats of the allocation, written by this item alone.
        unsafe { pack_panel(w, d_in, d_out, p * NR, packed_ptr.at(p * d_in * NR)) };
    });
    // SAFETY: the items above wrote every panel in full (zero padding included).
    unsafe { packed.set_len(panels * d_in * NR) };
    // Items: (block of RB rows, group of panels); short sequences split their panels too.
    let row_blocks = tokens.div_ceil(RB);
    let groups = if row_blocks >= 2 * threads {
        1
    } else {
        (2 * threads).div_ceil(row_blocks).min(panels)
    };
    let per_group = panels.div_ceil(groups);
    let groups = panels.div_ceil(per_group);
    let out = SharedMut(y.as_mut_ptr());
    let (packed, bias_padded) = (&packed[..], &bias_padded[..]);
    pool::for_each(row_blocks * groups, threads, |item| {
        let (r0, p0) = ((item / groups) * RB, (item % groups) * per_group);
        let (r1, p1) = ((r0 + RB).min(tokens), (p0 + per_group).min(panels));
        for k0 in (0..d_in).step_by(KC) {
            let kc = KC.min(d_in - k0);
            for p in p0..p1 {
                let cols = NR.min(d_out - p * NR);
                let panel = &packed[(p * d_in + k0) * NR..(p * d_in + k0 + kc) * NR];
                let init = if k0 == 0 {
                    Init::Bias(&bias_padded[p * NR..(p + 1) * NR])
                } else {
                    Init::Accumulate
                };
                for s in (r0..r1).step_by(MR) {
                    let rows = MR.min(r1 - s);
                    let a = &x[s * d_in + k0..];
                    // SAFETY: rows s..s+rows, features p·NR..p·NR+cols of y belong to this
                    // item; `a` holds `rows` rows of `d_in` from feature k0 (the last row ends
                    // at x's end); the panel block holds kc rows of NR.
                    unsafe {
                        tile(
                            rows,
                            a,
                            d_in,
                            panel,
                            kc,
                            out.at(s * d_out + p * NR),
                            d_out,
                            init,
                            cols,
                        )
                    };
                }
            }
        }
    });
    // SAFETY: the items cover every row block and panel group; the first depth block's tiles
    // wrote every element of their rows and features.
    unsafe { y.set_len(tokens * d_out) };
    y
}

/// Packs features `j0..j0+NR` of `w` (`d_out × d_in`) transposed: `dst[kk·NR + j] =
/// w[(j0 + j)·d_in + kk]`, zero past `d_out`. Writes through `dst` only (it may be
/// uninitialised).
///
/// # Safety
/// `dst` is valid for `d_in·NR` writes; `j0 < d_out`; AVX-512 F (see [`available`]).
unsafe fn pack_panel(w: &[f32], d_in: usize, d_out: usize, j0: usize, dst: *mut f32) {
    let full_k = d_in / 16 * 16;
    for jb in (0..NR).step_by(16) {
        let rows = 16.min(d_out.saturating_sub(j0 + jb));
        let at = |kk: usize, j: usize| dst.add(kk * NR + jb + j);
        if rows == 16 && full_k > 0 {
            for k0 in (0..full_k).step_by(16) {
                transpose16(w.as_ptr().add((j0 + jb) * d_in + k0), d_in, at(k0, 0), NR);
            }
            for kk in full_k..d_in {
                for j in 0..16 {
                    at(kk, j).write(w[(j0 + jb + j) * d_in + kk]);
                }
            }
        } else {
            for kk in 0..d_in {
                for j in 0..16 {
                    let v = if j < rows {
                        w[(j0 + jb + j) * d_in + kk]
                    } else {
                        0.0
                    };
                    at(kk, j).write(v);
                }
            }
        }
    }
}

/// Writes the transpose of the 16 × 16 block at `src` (row stride `lds`) to `dst` (row stride
/// `ldd`): four rounds of in-register shuffles (pairs, quads, 128-bit lanes, halves).
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src.add(i * lds)));
    // Within 128-bit lanes: interleave row pairs, then row-pair pairs: u[4g + q] lane L holds
    // column 4L + q of rows 4g..4g+4.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    let pd = _mm512_castps_pd;
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (g, q) = (i / 4, i % 4);
        // t[4g + 0] = lo(rows 4g, 4g+1), t[4g + 1] = hi(...), t[4g + 2] = lo(rows 4g+2, 4g+3).
        let (a, b) = (t[4 * g + q / 2], t[4 * g + 2 + q / 2]);
        _mm512_castpd_ps(if q % 2 == 0 {
            _mm512_unpacklo_pd(pd(a), pd(b))
        } else {
            _mm512_unpackhi_pd(pd(a), pd(b))
        })
    });
    // Across lanes: v[q][h][e] for quads g = (2h, 2h + 1) holds lanes (e, e + 2) of both.
    for q in 0..4 {
        let v = |h: usize, odd: bool| {
            let (a, b) = (u[4 * (2 * h) + q], u[4 * (2 * h + 1) + q]);
            if odd {
                _mm512_shuffle_f32x4::<0xdd>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            }
        };
        for odd in [false, true] {
            let (top, bottom) = (v(0, odd), v(1, odd));
            // Lane L = odd + 2·second: column 4L + q, all 16 rows.
            let first = _mm512_shuffle_f32x4::<0x88>(top, bottom);
            let second = _mm512_shuffle_f32x4::<0xdd>(top, bottom);
            let l = usize::from(odd);
            _mm512_storeu_ps(dst.add((4 * l + q) * ldd), first);
            _mm512_storeu_ps(dst.add((4 * (l + 2) + q) * ldd), second);
        }
    }
}

/// How a tile's accumulators start.
#[derive(Clone, Copy)]
enum Init<'a> {
    /// From the bias of the tile's NR features (zero-padded).
    Bias(&'a [f32]),
    /// From the partial sums already in `y` (depth blocks after the first).
    Accumulate,
}

/// `y[rows × cols] (row stride ldy) = init + a[rows × kc] (row stride lda) · panel[kc × NR]`.
///
/// # Safety
/// AVX-512 F; `a` holds `rows` rows of `kc` at stride `lda`; `panel` `kc·NR` floats; `y` `rows`
/// rows of `cols ≤ NR` at stride `ldy`.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    rows: usize,
    a: &[f32],
    lda: usize,
    panel: &[f32],
    kc: usize,
    y: *mut f32,
    ldy: usize,
    init: Init,
    cols: usize,
) {
    debug_assert!((1..=MR).contains(&rows) && panel.len() >= kc * NR);
    debug_assert!(a.len() >= (rows - 1) * lda + kc);
    macro_rules! dispatch {
        ($($r:literal)*) => {
            match rows {
                $($r => tile_rows::<$r>(a.as_ptr(), lda, panel.as_ptr(), kc, y, ldy, init, cols),)*
                _ => unreachable!("tile rows out of range"),
            }
        };
    }
    dispatch!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// [`tile`] for `R` rows. The second half of the tile's columns is addressed with `wrapping_add`:
/// where it lies past the end of `y` (narrow last panel, last row) its mask is empty and nothing
/// is accessed.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rows<const R: usize>(
    a: *const f32,
    lda: usize,
    panel: *const f32,
    kc: usize,
    y: *mut f32,
    ldy: usize,
    init: Init,
    cols: usize,
) {
    let mask = |lo: usize| -> __mmask16 {
        let n = cols.saturating_sub(lo).min(16);
        ((1u32 << n) - 1) as __mmask16
    };
    let (m0, m1) = (mask(0), mask(16));
    let mut acc0 = [_mm512_setzero_ps(); R];
    let mut acc1 = [_mm512_setzero_ps(); R];
    match init {
        Init::Bias(b) => {
            let (b0, b1) = (
                _mm512_loadu_ps(b.as_ptr()),
                _mm512_loadu_ps(b.as_ptr().add(16)),
            );
            for r in 0..R {
                acc0[r] = b0;
                acc1[r] = b1;
            }
        }
        Init::Accumulate => {
            for r in 0..R {
                acc0[r] = _mm512_maskz_loadu_ps(m0, y.add(r * ldy));
                acc1[r] = _mm512_maskz_loadu_ps(m1, y.wrapping_add(r * ldy + 16));
            }
        }
    }
    for kk in 0..kc {
        let b0 = _mm512_loadu_ps(panel.add(kk * NR));
        let b1 = _mm512_loadu_ps(panel.add(kk * NR + 16));
        for r in 0..R {
            let av = _mm512_set1_ps(*a.add(r * lda + kk));
            acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
            acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
        }
    }
    for r in 0..R {
        _mm512_mask_storeu_ps(y.add(r * ldy), m0, acc0[r]);
        _mm512_mask_storeu_ps(y.wrapping_add(r * ldy + 16), m1, acc1[r]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [−1, 1).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// The panels hold `wᵀ`, zero-padded, for full and partial blocks.
    #[test]
    fn packing_transposes() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        for (d_out, d_in) in [(32, 16), (64, 48), (40, 21), (7, 35), (96, 256)] {
            let w = values(d_out * d_in, 3);
            for p in 0..d_out.div_ceil(NR) {
                let mut dst = vec![f32::NAN; d_in * NR];
                // SAFETY: dst holds d_in·NR floats; AVX-512 checked above.
                unsafe { pack_panel(&w, d_in, d_out, p * NR, dst.as_mut_ptr()) };
                for kk in 0..d_in {
                    for j in 0..NR {
                        let f = p * NR + j;
                        let want = if f < d_out { w[f * d_in + kk] } else { 0.0 };
                        assert_eq!(
                            dst[kk * NR + j].to_bits(),
                            want.to_bits(),
                            "{d_out}x{d_in} p{p} k{kk} j{j}"
                        );
                    }
                }
            }
        }
    }

    /// Each element is its bias plus the in-order fused multiply-adds of its row and feature,
    /// bit for bit, for any thread count, with tails in every dimension and several depth blocks.
    #[test]
    fn linear_is_the_in_order_fused_sum() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        for (tokens, d_in, d_out, with_bias) in [
            (1, 8, 32, true),
            (13, 64, 64, false),
            (100, 320, 48, true),
            (250, 600, 70, true),
            (37, 17, 5, false),
            (3, 0, 40, true),
            (0, 8, 32, true),
        ] {
            let x = values(tokens * d_in, 1);
            let w = values(d_out * d_in, 2);
            let b = values(d_out, 4);
            let bias = with_bias.then_some(&b[..]);
            let want: Vec<f32> = (0..tokens * d_out)
                .map(|i| {
                    let (t, o) = (i / d_out, i % d_out);
                    let mut acc = bias.map_or(0.0, |b| b[o]);
                    for kk in 0..d_in {
                        acc = x[t * d_in + kk].mul_add(w[o * d_in + kk], acc);
                    }
                    acc
                })
                .collect();
            for threads in [1, 2, 3] {
                let got = linear(&x, &w, bias, (tokens, d_in, d_out), threads);
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        e.to_bits(),
                        "{tokens}x{d_in}->{d_out}, {threads} threads, element {i}: {g} vs {e}"
                    );
                }
            }
        }
    }
}
