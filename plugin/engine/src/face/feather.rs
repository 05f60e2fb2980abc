//! The feathered paste-back mask (`reverse2original.py`, `use_mask=False`).
//!
//! A white `crop × crop` image (255) is warped into the frame with the inverse alignment
//! (bilinear, border 0); values above 20 become 255; the result is eroded with a 40×40 box
//! (`cv2.erode`, anchor (20, 20): the window spans x−20..x+19, pixels outside the image never
//! erode) and blurred with a 41×41 Gaussian (`cv2.GaussianBlur`, σ = 0 → 0.3·((41−1)/2 − 1) + 0.8
//! = 6.5, `BORDER_REFLECT_101`), then divided by 255. Everything runs in f64, as numpy does.
use super::warp::{warp_affine_f64_in, Affine};

/// The reference's erosion box side.
pub const ERODE_SIZE: usize = 40;
/// The reference's Gaussian kernel side.
pub const BLUR_SIZE: usize = 41;
/// Warped white values above this become 255.
pub const WHITE_THRESHOLD: f64 = 20.0;

/// Feather settings (the reference values by default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatherSettings {
    /// Erosion box side (40).
    pub erode: usize,
    /// Gaussian kernel side, odd (41).
    pub blur: usize,
}

impl Default for FeatherSettings {
    fn default() -> Self {
        Self {
            erode: ERODE_SIZE,
            blur: BLUR_SIZE,
        }
    }
}

/// `cv2.erode(img, np.ones((k, k)))` on a one-channel f64 image, default anchor `(k/2, k/2)` and
/// the default border (the maximum value, so the image edge never erodes). The box is separable:
/// a horizontal then a vertical running minimum.
pub fn erode_box(img: &[f64], w: usize, h: usize, k: usize) -> Vec<f64> {
    if k <= 1 || w == 0 || h == 0 || img.len() != w * h {
        return img.to_vec();
    }
    let anchor = k / 2;
    let window = |i: usize, n: usize| {
        let lo = i.saturating_sub(anchor);
        let hi = (i + (k - 1 - anchor)).min(n - 1);
        (lo, hi)
    };
    let mut tmp = vec![0.0; w * h];
    for y in 0..h {
        let row = &img[y * w..(y + 1) * w];
        for x in 0..w {
            let (lo, hi) = window(x, w);
            tmp[y * w + x] = row[lo..=hi].iter().copied().fold(f64::INFINITY, f64::min);
        }
    }
    let mut out = vec![0.0; w * h];
    for x in 0..w {
        for y in 0..h {
            let (lo, hi) = window(y, h);
            out[y * w + x] = (lo..=hi)
                .map(|yy| tmp[yy * w + x])
                .fold(f64::INFINITY, f64::min);
        }
    }
    out
}

/// `cv2.getGaussianKernel(k, 0)`: σ = 0.3·((k − 1)/2 − 1) + 0.8, normalised to sum 1 (f64).
pub fn gaussian_kernel(k: usize) -> Vec<f64> {
    let sigma = 0.3 * ((k as f64 - 1.0) * 0.5 - 1.0) + 0.8;
    let scale = -0.5 / (sigma * sigma);
    let c = (k as f64 - 1.0) * 0.5;
    let raw: Vec<f64> = (0..k)
        .map(|i| {
            let x = i as f64 - c;
            (scale * x * x).exp()
        })
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter().map(|v| v / sum).collect()
}

/// `BORDER_REFLECT_101` index (`gfedcb|abcdefgh|gfedcba`).
fn reflect101(i: i64, n: usize) -> usize {
    let n = n as i64;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let mut i = i.rem_euclid(period);
    if i >= n {
        i = period - i;
    }
    i as usize
}

/// `cv2.GaussianBlur(img, (k, k), 0)` on a one-channel f64 image, `BORDER_REFLECT_101`
/// (rows, then columns, as `sepFilter2D`).
pub fn gaussian_blur(img: &[f64], w: usize, h: usize, k: usize) -> Vec<f64> {
    if k <= 1 || w == 0 || h == 0 || img.len() != w * h {
        return img.to_vec();
    }
    let kern = gaussian_kernel(k);
    let r = (k / 2) as i64;
    let mut tmp = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0;
            for (j, kv) in kern.iter().enumerate() {
                s += kv * img[y * w + reflect101(x as i64 + j as i64 - r, w)];
            }
            tmp[y * w + x] = s;
        }
    }
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0;
            for (j, kv) in kern.iter().enumerate() {
                s += kv * tmp[reflect101(y as i64 + j as i64 - r, h) * w + x];
            }
            out[y * w + x] = s;
        }
    }
    out
}

/// The paste-back weight in [0, 1] for a `frame_w × frame_h` frame: the white crop square warped
/// back with `inverse` (crop → frame), thresholded, eroded and blurred (see the module docs).
pub fn feather_mask(
    crop: usize,
    inverse: &Affine,
    frame_w: usize,
    frame_h: usize,
    settings: &FeatherSettings,
) -> Vec<f64> {
    let mut out = vec![0.0; frame_w * frame_h];
    let Some((xs, ys)) = feather_region(crop, inverse, frame_w, frame_h, settings) else {
        return out;
    };
    let (rw, rh) = (xs.len(), ys.len());
    let white = vec![255.0; crop * crop];
    let mut m = warp_affine_f64_in(&white, crop, crop, 1, inverse, xs.clone(), ys.clone());
    for v in &mut m {
        if *v > WHITE_THRESHOLD {
            *v = 255.0;
        }
    }
    let m = erode_box(&m, rw, rh, settings.erode);
    let m = gaussian_blur(&m, rw, rh, settings.blur);
    for (j, row) in m.chunks(rw).enumerate() {
        let o = (ys.start + j) * frame_w + xs.start;
        for (d, v) in out[o..o + rw].iter_mut().zip(row) {
            *d = v / 255.0;
        }
    }
    out
}

/// The frame rectangle outside which the feather is exactly 0: the warped square's bounding box
/// grown by `erode + blur + 4` pixels, clamped to the frame.
///
/// Working on that rectangle alone gives the same values as the whole frame: beyond the square's
/// box every pre-erosion value is 0, so where the rectangle ends inside the frame the erosion
/// window and the reflected blur window only ever read zeros there, as they would on the whole
/// frame; where it reaches the frame edge, the edge rules are the frame's own.
pub fn feather_region(
    crop: usize,
    inverse: &Affine,
    frame_w: usize,
    frame_h: usize,
    settings: &FeatherSettings,
) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    let c = crop as f64;
    let corners = [[-1.0, -1.0], [c, -1.0], [-1.0, c], [c, c]].map(|[x, y]| inverse.apply(x, y));
    if corners.iter().flatten().any(|v| !v.is_finite()) {
        return None;
    }
    let margin = (settings.erode + settings.blur + 4) as f64;
    let lo_x = corners.iter().map(|p| p[0]).fold(f64::MAX, f64::min) - margin;
    let hi_x = corners.iter().map(|p| p[0]).fold(f64::MIN, f64::max) + margin;
    let lo_y = corners.iter().map(|p| p[1]).fold(f64::MAX, f64::min) - margin;
    let hi_y = corners.iter().map(|p| p[1]).fold(f64::MIN, f64::max) + margin;
    let clamp = |v: f64, n: usize| v.floor().clamp(0.0, n as f64) as usize;
    let xs = clamp(lo_x, frame_w)..clamp(hi_x + 1.0, frame_w);
    let ys = clamp(lo_y, frame_h)..clamp(hi_y + 1.0, frame_h);
    (!xs.is_empty() && !ys.is_empty()).then_some((xs, ys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_matches_the_documented_sigma() {
        let k = gaussian_kernel(41);
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let ratio = k[20 + 13] / k[20];
        assert!((ratio - (-(13.0f64 * 13.0) / (2.0 * 6.5 * 6.5)).exp()).abs() < 1e-12);
        assert_eq!(reflect101(-1, 5), 1);
        assert_eq!(reflect101(5, 5), 3);
    }

    #[test]
    fn the_region_gives_the_whole_frame_values() {
        use super::super::warp::warp_affine_f64;
        // A small square far from the frame edges, and one touching an edge.
        for inv in [
            Affine([[0.5, -0.1, 150.0], [0.1, 0.5, 90.0]]),
            Affine([[0.6, 0.05, -10.0], [-0.05, 0.6, 40.0]]),
        ] {
            let s = FeatherSettings::default();
            let (w, h, crop) = (320, 200, 128);
            let fast = feather_mask(crop, &inv, w, h, &s);
            let white = vec![255.0; crop * crop];
            let mut m = warp_affine_f64(&white, crop, crop, 1, &inv, w, h);
            m.iter_mut()
                .filter(|v| **v > WHITE_THRESHOLD)
                .for_each(|v| *v = 255.0);
            let full: Vec<f64> = gaussian_blur(&erode_box(&m, w, h, s.erode), w, h, s.blur)
                .into_iter()
                .map(|v| v / 255.0)
                .collect();
            let err = fast
                .iter()
                .zip(&full)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-12, "region feather differs by {err}");
            assert!(full.iter().any(|&v| v > 0.5));
        }
    }

    #[test]
    fn erosion_window_is_anchored_at_half_the_box() {
        // A single zero at x = 30 erodes every x with x − 20 ≤ 30 ≤ x + 19, i.e. 11..=50.
        let mut img = vec![1.0; 64];
        img[30] = 0.0;
        let e = erode_box(&img, 64, 1, 40);
        let zeros: Vec<usize> = (0..64).filter(|&i| e[i] == 0.0).collect();
        assert_eq!(zeros.first(), Some(&11));
        assert_eq!(zeros.last(), Some(&50));
    }
}
