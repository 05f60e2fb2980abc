//! OpenCV-compatible geometric resampling for the face path (spec §5.1, §5.4, §7.13):
//! `cv2.warpAffine` with `INTER_LINEAR` and a constant border of 0, the analytic inverse of a
//! 2×3 affine map, and `cv2.resize` with `INTER_LINEAR`.
//!
//! `warpAffine` inverts `M` (`invertAffineTransform`) and, for each destination pixel, computes the
//! source position in fixed point: `X = (round(M'₀₀·x·1024) + round((M'₀₁·y + M'₀₂)·1024) + 16) >> 5`,
//! so positions are quantised to 1/32 pixel (`AB_BITS = 10`, `INTER_BITS = 5`). 8-bit images then
//! take bilinear weights on a 2¹⁵ scale with rounding; float images take the same quantised
//! weights in floating point. A neighbour outside the image reads the border value 0. Reproducing
//! the quantisation keeps our crops within one 8-bit level of OpenCV's.
//!
//! OpenCV 4.11 replaced the 8-bit path with one that samples at unquantised positions in floating
//! point and rounds ([`warp_affine_u8_float`]); the two differ by up to a few levels on sharp
//! edges. The reference pins OpenCV 4.7, so the pipeline uses the fixed-point [`warp_affine_u8`];
//! the float path exists so parity can be checked against the OpenCV our fixtures are made with.

/// A 2×3 affine map `[x', y'] = [[a, b, c], [d, e, f]] · [x, y, 1]` (pixel centres at integers,
/// as OpenCV).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine(pub [[f64; 3]; 2]);

impl Affine {
    /// The identity.
    pub const IDENTITY: Affine = Affine([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]);

    /// Maps a point.
    pub fn apply(&self, x: f64, y: f64) -> [f64; 2] {
        let m = &self.0;
        [
            m[0][0] * x + m[0][1] * y + m[0][2],
            m[1][0] * x + m[1][1] * y + m[1][2],
        ]
    }

    /// True when every coefficient is finite.
    pub fn is_finite(&self) -> bool {
        self.0.iter().flatten().all(|v| v.is_finite())
    }

    /// The analytic inverse (`cv2.invertAffineTransform`, and `reverse2original.py:88-96`);
    /// `None` when the linear part is singular.
    pub fn invert(&self) -> Option<Affine> {
        let [[a, b, c], [d, e, f]] = self.0;
        let det = a * e - b * d;
        if det == 0.0 || !det.is_finite() {
            return None;
        }
        let r = 1.0 / det;
        let (a11, a22, a12, a21) = (e * r, a * r, -b * r, -d * r);
        let b1 = -a11 * c - a12 * f;
        let b2 = -a21 * c - a22 * f;
        let inv = Affine([[a11, a12, b1], [a21, a22, b2]]);
        inv.is_finite().then_some(inv)
    }

    /// The similarity's scale `sqrt(det)` (for logging and sanity checks).
    pub fn scale(&self) -> f64 {
        let [[a, b, _], [d, e, _]] = self.0;
        (a * e - b * d).abs().sqrt()
    }
}

const AB_BITS: u32 = 10;
const AB_SCALE: f64 = (1 << AB_BITS) as f64;
const INTER_BITS: u32 = 5;
const INTER_TAB: i64 = 1 << INTER_BITS;
const ROUND_DELTA: i64 = (AB_SCALE as i64) / INTER_TAB / 2;

/// `cvRound` on a double: round half to even, saturated to i32 as `saturate_cast<int>`.
fn cv_round(v: f64) -> i64 {
    let r = v.round_ties_even();
    r.clamp(i32::MIN as f64, i32::MAX as f64) as i64
}

/// For each destination pixel of an `out_w × out_h` image, the fixed-point source position
/// `(X, Y)` in 1/32 pixel, as `warpAffine` computes it from `m` (the forward map).
fn source_positions(m: &Affine, out_w: usize, out_h: usize) -> Option<Vec<(i64, i64)>> {
    source_positions_in(m, 0..out_w, 0..out_h)
}

/// [`source_positions`] for the destination pixels of a sub-rectangle, computed exactly as for
/// the whole image (positions depend on the absolute pixel coordinates).
fn source_positions_in(
    m: &Affine,
    xs: std::ops::Range<usize>,
    ys: std::ops::Range<usize>,
) -> Option<Vec<(i64, i64)>> {
    let (out_w, out_h) = (xs.len(), ys.len());
    let inv = m.invert()?;
    let [[a, b, c], [d, e, f]] = inv.0;
    let adelta: Vec<i64> = xs
        .clone()
        .map(|x| cv_round(a * x as f64 * AB_SCALE))
        .collect();
    let bdelta: Vec<i64> = xs.map(|x| cv_round(d * x as f64 * AB_SCALE)).collect();
    let shift = AB_BITS - INTER_BITS;
    let mut out = Vec::with_capacity(out_w * out_h);
    for y in ys {
        let x0 = cv_round((b * y as f64 + c) * AB_SCALE) + ROUND_DELTA;
        let y0 = cv_round((e * y as f64 + f) * AB_SCALE) + ROUND_DELTA;
        for (ad, bd) in adelta.iter().zip(&bdelta) {
            out.push(((x0 + ad) >> shift, (y0 + bd) >> shift));
        }
    }
    Some(out)
}

/// `cv2.warpAffine(src, m, (out_w, out_h), flags=INTER_LINEAR, borderValue=0)` for 8-bit images
/// of `channels` interleaved channels. A singular `m` gives an all-zero image.
pub fn warp_affine_u8(
    src: &[u8],
    w: usize,
    h: usize,
    channels: usize,
    m: &Affine,
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    let mut out = vec![0u8; out_w * out_h * channels];
    if src.len() < w * h * channels {
        return out;
    }
    let Some(pos) = source_positions(m, out_w, out_h) else {
        return out;
    };
    let read = |x: i64, y: i64, ch: usize| -> i64 {
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            0
        } else {
            src[(y as usize * w + x as usize) * channels + ch] as i64
        }
    };
    for (i, &(px, py)) in pos.iter().enumerate() {
        let (sx, sy) = (px >> INTER_BITS, py >> INTER_BITS);
        let (fx, fy) = (px & (INTER_TAB - 1), py & (INTER_TAB - 1));
        if sx >= w as i64 || sx + 1 < 0 || sy >= h as i64 || sy + 1 < 0 {
            continue;
        }
        // Bilinear weights on the 2¹⁵ scale: (32−fx)(32−fy)·32 etc., summing to 32768.
        let w00 = (INTER_TAB - fx) * (INTER_TAB - fy) * 32;
        let w01 = fx * (INTER_TAB - fy) * 32;
        let w10 = (INTER_TAB - fx) * fy * 32;
        let w11 = fx * fy * 32;
        for ch in 0..channels {
            let v = read(sx, sy, ch) * w00
                + read(sx + 1, sy, ch) * w01
                + read(sx, sy + 1, ch) * w10
                + read(sx + 1, sy + 1, ch) * w11;
            out[i * channels + ch] = ((v + (1 << 14)) >> 15).clamp(0, 255) as u8;
        }
    }
    out
}

/// `cv2.warpAffine` on 8-bit images as OpenCV ≥ 4.11 computes it: bilinear at the exact
/// (unquantised) source position, rounded half to even, border 0.
pub fn warp_affine_u8_float(
    src: &[u8],
    w: usize,
    h: usize,
    channels: usize,
    m: &Affine,
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    let mut out = vec![0u8; out_w * out_h * channels];
    let Some(inv) = m.invert().filter(|_| src.len() >= w * h * channels) else {
        return out;
    };
    let read = |x: i64, y: i64, ch: usize| -> f64 {
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            0.0
        } else {
            src[(y as usize * w + x as usize) * channels + ch] as f64
        }
    };
    for y in 0..out_h {
        for x in 0..out_w {
            let [px, py] = inv.apply(x as f64, y as f64);
            let (fx0, fy0) = (px.floor(), py.floor());
            let (sx, sy) = (fx0 as i64, fy0 as i64);
            let (fx, fy) = (px - fx0, py - fy0);
            for ch in 0..channels {
                let v = read(sx, sy, ch) * (1.0 - fx) * (1.0 - fy)
                    + read(sx + 1, sy, ch) * fx * (1.0 - fy)
                    + read(sx, sy + 1, ch) * (1.0 - fx) * fy
                    + read(sx + 1, sy + 1, ch) * fx * fy;
                out[(y * out_w + x) * channels + ch] = v.round_ties_even().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// `cv2.warpAffine` on a float (f64) image, `INTER_LINEAR`, border 0: the same 1/32-pixel
/// positions, floating-point weights.
pub fn warp_affine_f64(
    src: &[f64],
    w: usize,
    h: usize,
    channels: usize,
    m: &Affine,
    out_w: usize,
    out_h: usize,
) -> Vec<f64> {
    warp_affine_f64_in(src, w, h, channels, m, 0..out_w, 0..out_h)
}

/// [`warp_affine_f64`] restricted to the destination rectangle `xs × ys` (row-major
/// `xs.len() × ys.len()` output), bit-identical to the same pixels of the whole warp.
pub fn warp_affine_f64_in(
    src: &[f64],
    w: usize,
    h: usize,
    channels: usize,
    m: &Affine,
    xs: std::ops::Range<usize>,
    ys: std::ops::Range<usize>,
) -> Vec<f64> {
    let mut out = vec![0.0; xs.len() * ys.len() * channels];
    if src.len() < w * h * channels {
        return out;
    }
    let Some(pos) = source_positions_in(m, xs, ys) else {
        return out;
    };
    let read = |x: i64, y: i64, ch: usize| -> f64 {
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            0.0
        } else {
            src[(y as usize * w + x as usize) * channels + ch]
        }
    };
    let t = INTER_TAB as f64;
    for (i, &(px, py)) in pos.iter().enumerate() {
        let (sx, sy) = (px >> INTER_BITS, py >> INTER_BITS);
        if sx >= w as i64 || sx + 1 < 0 || sy >= h as i64 || sy + 1 < 0 {
            continue;
        }
        let fx = (px & (INTER_TAB - 1)) as f64 / t;
        let fy = (py & (INTER_TAB - 1)) as f64 / t;
        let (w00, w01, w10, w11) = (
            (1.0 - fx) * (1.0 - fy),
            fx * (1.0 - fy),
            (1.0 - fx) * fy,
            fx * fy,
        );
        for ch in 0..channels {
            out[i * channels + ch] = read(sx, sy, ch) * w00
                + read(sx + 1, sy, ch) * w01
                + read(sx, sy + 1, ch) * w10
                + read(sx + 1, sy + 1, ch) * w11;
        }
    }
    out
}

/// `cv2.resize(src, (out_w, out_h), interpolation=INTER_LINEAR)` for 8-bit images.
///
/// An exact 2× reduction in both directions takes OpenCV's area fast path (the rounded mean of
/// each 2×2 block, spec §5.3). Otherwise the source position is `(x + 0.5)·scale − 0.5`, clamped
/// at the edges, with 11-bit weights in each direction and one rounding shift of 22 bits at the
/// end (OpenCV's scalar path; its SIMD path may differ by one level).
pub fn resize_linear_u8(
    src: &[u8],
    w: usize,
    h: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    if out_w == w && out_h == h {
        return src.to_vec();
    }
    let c = channels;
    if w == 0 || h == 0 || src.len() < w * h * c {
        return vec![0u8; out_w * out_h * c];
    }
    if w == 2 * out_w && h == 2 * out_h {
        let mut out = vec![0u8; out_w * out_h * c];
        for y in 0..out_h {
            for x in 0..out_w {
                for ch in 0..c {
                    let at = |xx: usize, yy: usize| src[(yy * w + xx) * c + ch] as u32;
                    let s = at(2 * x, 2 * y)
                        + at(2 * x + 1, 2 * y)
                        + at(2 * x, 2 * y + 1)
                        + at(2 * x + 1, 2 * y + 1);
                    out[(y * out_w + x) * c + ch] = ((s + 2) >> 2) as u8;
                }
            }
        }
        return out;
    }
    const COEF: f64 = 2048.0;
    let taps = |n_in: usize, n_out: usize| -> Vec<(usize, usize, i64, i64)> {
        let scale = n_in as f64 / n_out as f64;
        (0..n_out)
            .map(|d| {
                let f = (d as f64 + 0.5) * scale - 0.5;
                let mut s = f.floor() as i64;
                let mut frac = f - s as f64;
                if s < 0 {
                    s = 0;
                    frac = 0.0;
                }
                if s >= n_in as i64 - 1 {
                    s = n_in as i64 - 1;
                    frac = 0.0;
                }
                let c0 = ((1.0 - frac) * COEF).round_ties_even() as i64;
                let s1 = (s as usize + 1).min(n_in - 1);
                (s as usize, s1, c0, COEF as i64 - c0)
            })
            .collect()
    };
    let xt = taps(w, out_w);
    let yt = taps(h, out_h);
    // Horizontal pass into integer rows (values scaled by 2048).
    let rows: Vec<Vec<i64>> = (0..h)
        .map(|y| {
            let mut r = vec![0i64; out_w * c];
            for (x, &(s0, s1, c0, c1)) in xt.iter().enumerate() {
                for ch in 0..c {
                    r[x * c + ch] = src[(y * w + s0) * c + ch] as i64 * c0
                        + src[(y * w + s1) * c + ch] as i64 * c1;
                }
            }
            r
        })
        .collect();
    let mut out = vec![0u8; out_w * out_h * c];
    for (y, &(s0, s1, c0, c1)) in yt.iter().enumerate() {
        for i in 0..out_w * c {
            let v = rows[s0][i] * c0 + rows[s1][i] * c1;
            out[y * out_w * c + i] = ((v + (1 << 21)) >> 22).clamp(0, 255) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_warp_is_exact_and_inverse_round_trips() {
        let src: Vec<u8> = (0..12 * 9 * 3).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(
            warp_affine_u8(&src, 12, 9, 3, &Affine::IDENTITY, 12, 9),
            src
        );
        let m = Affine([[0.9, -0.2, 3.0], [0.2, 0.9, -1.0]]);
        let inv = m.invert().unwrap_or(Affine::IDENTITY);
        let p = inv.apply(m.apply(5.0, 7.0)[0], m.apply(5.0, 7.0)[1]);
        assert!((p[0] - 5.0).abs() < 1e-12 && (p[1] - 7.0).abs() < 1e-12);
    }

    #[test]
    fn half_size_resize_is_the_rounded_block_mean() {
        let src = [10u8, 11, 20, 21, 12, 13, 22, 24];
        assert_eq!(resize_linear_u8(&src, 4, 2, 1, 2, 1), vec![12, 22]);
    }
}
