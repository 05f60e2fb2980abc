//! Face alignment: the similarity transform `M` that maps the frame to the aligned face crop.
//!
//! - From five landmarks: the least-squares similarity (rotation, uniform scale, translation;
//!   Umeyama 1991 with scale, as `skimage.transform.SimilarityTransform.estimate`) onto the FFHQ
//!   5-point template scaled by `crop / 512`.
//! - From a face matte: the matte's principal axis gives the rotation (the head's long axis is
//!   made vertical), and its extent along that axis and its centre give scale and translation,
//!   so that the head fills [`MATTE_HEAD_FRACTION`] of the crop height, centred at
//!   [`MATTE_HEAD_CENTRE`].
use super::warp::Affine;

/// The FFHQ 5-point template at crop 512 (`face_align_ffhqandnewarc.py:40-41`): image-left eye,
/// image-right eye, nose tip, image-left and image-right mouth corners.
pub const FFHQ_TEMPLATE_512: [[f64; 2]; 5] = [
    [192.98138, 239.94708],
    [318.90277, 240.1936],
    [256.63416, 314.01935],
    [201.26117, 371.41043],
    [313.08905, 371.15118],
];

/// Fraction of the crop height the head matte's extent along its long axis is scaled to.
///
/// In FFHQ-aligned crops the head (hair to chin) spans about 0.8 of the crop height. Measured on
/// `anchor synth` presenters (two identities, head mattes against their landmarks' Umeyama
/// placement, near-frontal poses): 0.79–0.81, centre (0.47–0.50, 0.47–0.49), angle within about
/// 1°. Over wide pose ranges and more identities the matte placement stays within 0.2 of the crop
/// and 6° of the landmark placement (`face_pass.rs`): hair volume and head turns move the face
/// inside the silhouette. Landmarks place the crop more precisely when both exist.
pub const MATTE_HEAD_FRACTION: f64 = 0.8;

/// Where the centre of the head matte's oriented bounding box goes, as fractions of the crop side
/// (x, y); calibrated as [`MATTE_HEAD_FRACTION`]. The template's eye-mouth centre sits below it,
/// at (0.5, 0.59).
pub const MATTE_HEAD_CENTRE: [f64; 2] = [0.5, 0.48];

/// The template scaled to a crop of `crop` pixels (`ffhq_src * crop / 512`).
pub fn template(crop: usize) -> [[f64; 2]; 5] {
    let s = crop as f64 / 512.0;
    FFHQ_TEMPLATE_512.map(|[x, y]| [x * s, y * s])
}

/// The least-squares similarity mapping `src[i]` to `dst[i]` (Umeyama with scale).
///
/// For two dimensions the optimum over scaled rotations `[[a, −b], [b, a]]` has the closed form
/// `a = Σ(x·u + y·v) / Σ|p|²`, `b = Σ(x·v − y·u) / Σ|p|²` on centred points `p = (x, y)`,
/// `q = (u, v)`. It is the unique minimiser whenever the source points are not all coincident, so
/// it equals skimage's SVD route (including its reflection guard, which only ever picks a proper
/// rotation). Returns `None` when the source points coincide (skimage returns NaNs there).
pub fn similarity_lstsq(src: &[[f64; 2]], dst: &[[f64; 2]]) -> Option<Affine> {
    let n = src.len();
    if n == 0 || n != dst.len() {
        return None;
    }
    let mean = |pts: &[[f64; 2]]| {
        let (sx, sy) = pts
            .iter()
            .fold((0.0, 0.0), |(ax, ay), p| (ax + p[0], ay + p[1]));
        [sx / n as f64, sy / n as f64]
    };
    let ms = mean(src);
    let md = mean(dst);
    let (mut num_a, mut num_b, mut var) = (0.0, 0.0, 0.0);
    for (p, q) in src.iter().zip(dst) {
        let (x, y) = (p[0] - ms[0], p[1] - ms[1]);
        let (u, v) = (q[0] - md[0], q[1] - md[1]);
        num_a += x * u + y * v;
        num_b += x * v - y * u;
        var += x * x + y * y;
    }
    if var.is_nan() || var <= 1e-12 * (1.0 + ms[0].abs() + ms[1].abs()) {
        return None;
    }
    let a = num_a / var;
    let b = num_b / var;
    let tx = md[0] - (a * ms[0] - b * ms[1]);
    let ty = md[1] - (b * ms[0] + a * ms[1]);
    let m = Affine([[a, -b, tx], [b, a, ty]]);
    m.is_finite().then_some(m)
}

/// `M` from five landmarks to the template at `crop`.
pub fn from_landmarks(landmarks: &[[f64; 2]; 5], crop: usize) -> Option<Affine> {
    similarity_lstsq(landmarks, &template(crop))
}

/// The oriented extent of a matte: centroid, long-axis direction (pointing up in the image) and
/// the extents along the long axis and across it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatteFrame {
    /// Centre of the oriented bounding box, in pixels (pixel centres at integers, as cv2).
    pub centre: [f64; 2],
    /// Unit vector along the long axis, with a negative y component (pointing up).
    pub up: [f64; 2],
    /// Extent along `up`, in pixels (at least one pixel).
    pub length: f64,
    /// Extent across `up`, in pixels (at least one pixel).
    pub width: f64,
    /// Pixels counted.
    pub pixels: usize,
}

/// Measures the matte (`w × h`, one byte per pixel, ≥ 128 is head); `None` when it is empty.
///
/// The principal axis is the eigenvector of the pixel covariance with the larger eigenvalue; the
/// extents come from projecting every pixel (±0.5 for its footprint) onto the two axes, i.e. the
/// bounding box in the rotated frame.
pub fn measure_matte(matte: &[u8], w: usize, h: usize) -> Option<MatteFrame> {
    if matte.len() != w * h {
        return None;
    }
    let (mut n, mut sx, mut sy) = (0usize, 0.0f64, 0.0f64);
    for y in 0..h {
        for x in 0..w {
            if matte[y * w + x] >= 128 {
                n += 1;
                sx += x as f64;
                sy += y as f64;
            }
        }
    }
    if n == 0 {
        return None;
    }
    let (cx, cy) = (sx / n as f64, sy / n as f64);
    let (mut cxx, mut cxy, mut cyy) = (0.0, 0.0, 0.0);
    for y in 0..h {
        for x in 0..w {
            if matte[y * w + x] >= 128 {
                let (dx, dy) = (x as f64 - cx, y as f64 - cy);
                cxx += dx * dx;
                cxy += dx * dy;
                cyy += dy * dy;
            }
        }
    }
    // Orientation of the major axis of the 2×2 covariance.
    let theta = 0.5 * (2.0 * cxy).atan2(cxx - cyy);
    let mut up = [theta.cos(), theta.sin()];
    // A head is taller than wide; when the covariance is (nearly) isotropic the angle is arbitrary,
    // so prefer the image vertical.
    let spread = ((cxx - cyy).powi(2) + 4.0 * cxy * cxy).sqrt();
    if spread < 1e-3 * (cxx + cyy) {
        up = [0.0, -1.0];
    }
    // A near-horizontal major axis means a wide blob: the head's long axis is the other one when
    // it is closer to vertical.
    if up[0].abs() > up[1].abs() {
        up = [-up[1], up[0]];
    }
    if up[1] > 0.0 {
        up = [-up[0], -up[1]];
    }
    let across = [-up[1], up[0]];
    let (mut lo_u, mut hi_u, mut lo_a, mut hi_a) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for y in 0..h {
        for x in 0..w {
            if matte[y * w + x] >= 128 {
                let (dx, dy) = (x as f64 - cx, y as f64 - cy);
                let pu = dx * up[0] + dy * up[1];
                let pa = dx * across[0] + dy * across[1];
                lo_u = lo_u.min(pu);
                hi_u = hi_u.max(pu);
                lo_a = lo_a.min(pa);
                hi_a = hi_a.max(pa);
            }
        }
    }
    let mid_u = 0.5 * (lo_u + hi_u);
    let mid_a = 0.5 * (lo_a + hi_a);
    let centre = [
        cx + mid_u * up[0] + mid_a * across[0],
        cy + mid_u * up[1] + mid_a * across[1],
    ];
    Some(MatteFrame {
        centre,
        up,
        length: hi_u - lo_u + 1.0,
        width: hi_a - lo_a + 1.0,
        pixels: n,
    })
}

/// `M` from a matte frame: rotate the long axis to the image vertical, scale its length to
/// [`MATTE_HEAD_FRACTION`] of the crop and move the box centre to [`MATTE_HEAD_CENTRE`].
pub fn from_matte_frame(frame: &MatteFrame, crop: usize) -> Option<Affine> {
    let c = crop as f64;
    let s = MATTE_HEAD_FRACTION * c / frame.length.max(1.0);
    // The rotation R maps `up` to (0, −1): R = [[−u_y, u_x], [−u_x, −u_y]] (a proper rotation).
    let (ux, uy) = (frame.up[0], frame.up[1]);
    let a = -uy * s;
    let b = -ux * s;
    // R·p with R = [[a, −b], [b, a]] / s: check (a·ux − b·uy, b·ux + a·uy) = s·(−uy·ux + ux·uy,
    // −ux² − uy²) = (0, −s).
    let (px, py) = (frame.centre[0], frame.centre[1]);
    let tx = MATTE_HEAD_CENTRE[0] * c - (a * px - b * py);
    let ty = MATTE_HEAD_CENTRE[1] * c - (b * px + a * py);
    let m = Affine([[a, -b, tx], [b, a, ty]]);
    m.is_finite().then_some(m)
}

/// `M` from a matte (`w × h`, one byte per pixel); `None` when the matte is empty.
pub fn from_matte(matte: &[u8], w: usize, h: usize, crop: usize) -> Option<Affine> {
    from_matte_frame(&measure_matte(matte, w, h)?, crop)
}

/// Exponential smoothing of a sequence of similarity transforms (an option, off for parity): a
/// jittery crop flickers. Each transform is decomposed into (log scale, angle, translation of the
/// frame point that maps to the crop centre) and smoothed with weight `alpha` on the new value.
pub fn smooth_transforms(
    transforms: &[Option<Affine>],
    alpha: f64,
    crop: usize,
) -> Vec<Option<Affine>> {
    let alpha = alpha.clamp(0.0, 1.0);
    let c = crop as f64 / 2.0;
    let mut state: Option<[f64; 4]> = None;
    transforms
        .iter()
        .map(|t| {
            let m = (*t)?;
            let [[a, _, _], [b, _, _]] = m.0;
            let scale = (a * a + b * b).sqrt();
            let angle = b.atan2(a);
            let inv = m.invert()?;
            let centre = inv.apply(c, c);
            let now = [scale.ln(), angle, centre[0], centre[1]];
            let s = match state {
                None => now,
                Some(prev) => {
                    // Unwrap the angle so the average never crosses ±π.
                    let mut d = now[1] - prev[1];
                    d -= (d / std::f64::consts::TAU).round() * std::f64::consts::TAU;
                    [
                        prev[0] + alpha * (now[0] - prev[0]),
                        prev[1] + alpha * d,
                        prev[2] + alpha * (now[2] - prev[2]),
                        prev[3] + alpha * (now[3] - prev[3]),
                    ]
                }
            };
            state = Some(s);
            let scale = s[0].exp();
            let (a, b) = (scale * s[1].cos(), scale * s[1].sin());
            let tx = c - (a * s[2] - b * s[3]);
            let ty = c - (b * s[2] + a * s[3]);
            Some(Affine([[a, -b, tx], [b, a, ty]]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_similarity_is_recovered() {
        let m = Affine([[0.8, -0.3, 12.0], [0.3, 0.8, -4.0]]);
        let src = [
            [10.0, 20.0],
            [40.0, 22.0],
            [25.0, 35.0],
            [12.0, 50.0],
            [38.0, 51.0],
        ];
        let dst = src.map(|[x, y]| m.apply(x, y));
        let e = similarity_lstsq(&src, &dst)
            .ok_or("degenerate")
            .unwrap_or_else(|e| panic!("{e}"));
        for r in 0..2 {
            for c in 0..3 {
                assert!((e.0[r][c] - m.0[r][c]).abs() < 1e-12, "{e:?}");
            }
        }
        assert!(similarity_lstsq(&[[1.0, 1.0]; 5], &dst).is_none());
    }

    #[test]
    fn matte_of_an_upright_ellipse_is_centred_and_unrotated() {
        let (w, h) = (80usize, 100usize);
        let mut m = vec![0u8; w * h];
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = ((x as f64 - 40.0) / 15.0, (y as f64 - 45.0) / 25.0);
                if dx * dx + dy * dy <= 1.0 {
                    m[y * w + x] = 255;
                }
            }
        }
        let f = measure_matte(&m, w, h).unwrap_or_else(|| panic!("empty"));
        assert!((f.centre[0] - 40.0).abs() < 0.51 && (f.centre[1] - 45.0).abs() < 0.51);
        assert!(
            f.up[0].abs() < 1e-9 && (f.up[1] + 1.0).abs() < 1e-9,
            "{f:?}"
        );
        assert!((f.length - 51.0).abs() < 1e-9, "{f:?}");
        let a = from_matte_frame(&f, 512).unwrap_or_else(|| panic!("degenerate"));
        let c = a.apply(f.centre[0], f.centre[1]);
        assert!((c[0] - 256.0).abs() < 1e-9 && (c[1] - 0.48 * 512.0).abs() < 1e-9);
        assert!(a.0[0][1].abs() < 1e-12 && a.0[0][0] > 0.0);
    }

    #[test]
    fn smoothing_with_alpha_one_is_the_identity() {
        let ts = vec![
            Some(Affine([[0.8, -0.3, 12.0], [0.3, 0.8, -4.0]])),
            None,
            Some(Affine([[1.1, 0.2, 2.0], [-0.2, 1.1, 7.0]])),
        ];
        let s = smooth_transforms(&ts, 1.0, 512);
        for (a, b) in ts.iter().zip(&s) {
            match (a, b) {
                (Some(a), Some(b)) => {
                    for r in 0..2 {
                        for c in 0..3 {
                            assert!((a.0[r][c] - b.0[r][c]).abs() < 1e-9);
                        }
                    }
                }
                (None, None) => {}
                _ => panic!("presence changed"),
            }
        }
    }
}
