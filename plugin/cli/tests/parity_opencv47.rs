//! Parity of the face path's OpenCV steps with opencv-python-headless 4.7.0.72, the version the
//! reference pins, on `tests/fixtures/opencv47.safetensors` (written by
//! `tests/fixtures/fixtures_opencv47.py` in its own environment, see its docstring):
//!
//! - `cv2.resize` `INTER_LINEAR` on 8-bit images (the vectorised x86 rounding): bit-exact;
//! - the mesh crop's JPEG round trip (`cv2.imencode('.jpg', q95)` then `cv2.imdecode`):
//!   ≥ 99.9 % of values equal, none off by more than 1/255;
//! - the paste-back (`face_blending.py` + `reverse2original.py`: resize, float32 `/255`, float32
//!   inverse warp, feathered float64 mix, truncation): ≥ 99 % of values equal, max 2/255.
//!
//! The input images are not stored: [`pattern`] rebuilds them from the same integer formula as the
//! script. Large outputs are stored as sampled rows plus a 64-bit FNV-1a digest of the whole
//! image; agreement is measured on the stored values and the digest says whether the rest matches
//! too. Measured numbers are printed (`cargo test --test parity_opencv47 -- --nocapture`).
use std::collections::HashMap;
use std::path::PathBuf;

use anchor_engine::face::blend::blend_back;
use anchor_engine::face::feather::FeatherSettings;
use anchor_engine::face::jpeg;
use anchor_engine::face::warp::{resize_linear_u8, Affine};
use safetensors::SafeTensors;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// `(src_w, src_h, dst_w, dst_h, channels)`, in the script's `RESIZE_CASES` order (the order
/// gives each case's pattern seed).
const RESIZE_CASES: &[(usize, usize, usize, usize, usize)] = &[
    (256, 256, 512, 512, 3),
    (128, 128, 512, 512, 3),
    (32, 32, 512, 512, 3),
    (256, 256, 512, 512, 1),
    (512, 512, 256, 256, 3),
    (37, 29, 511, 301, 3),
    (37, 29, 511, 301, 1),
    (100, 60, 47, 33, 3),
    (5, 7, 13, 3, 1),
    (7, 5, 3, 13, 3),
    (640, 360, 333, 187, 3),
];
/// The script's `JPEG_CASES` (width, height).
const JPEG_CASES: &[(usize, usize)] = &[(512, 512), (96, 80), (75, 53)];

/// The script's `pattern(w, h, c, seed)`: a ramp with a product term plus 5-bit hash noise.
fn pattern(w: usize, h: usize, c: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(w * h * c);
    let (wm, hm) = (w.max(2) as u64 - 1, h.max(2) as u64 - 1);
    for y in 0..h as u64 {
        for x in 0..w as u64 {
            for ch in 0..c as u64 {
                let i = (y * w as u64 + x) * c as u64 + ch + seed * 7919;
                let noise = (i.wrapping_mul(2_654_435_761) & 0xFFFF_FFFF) >> 27;
                let smooth = x * 181 / wm + y * 149 / hm + ch * 60 + (x * y) % 41;
                out.push(((smooth + noise) % 256) as u8);
            }
        }
    }
    out
}

/// The script's `mesh_like(w, h, seed)`: the pattern inside an ellipse on black.
fn mesh_like(w: usize, h: usize, seed: u64) -> Vec<u8> {
    let mut img = pattern(w, h, 3, seed);
    let (wi, hi) = (w as i64, h as i64);
    let r = (wi * hi * 4 / 5).pow(2);
    for y in 0..hi {
        for x in 0..wi {
            if ((2 * x - wi) * hi).pow(2) + ((2 * y - hi) * wi).pow(2) > r {
                let o = (y * wi + x) as usize * 3;
                img[o..o + 3].fill(0);
            }
        }
    }
    img
}

/// Swaps the first and third channel of 3-channel pixels (BGR ↔ RGB).
fn swap_rb(img: &[u8]) -> Vec<u8> {
    img.chunks_exact(3)
        .flat_map(|p| [p[2], p[1], p[0]])
        .collect()
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xCBF2_9CE4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

struct Fixture {
    bytes: Vec<u8>,
    meta: HashMap<String, String>,
}

/// One stored reference image: the stored values, which rows they are, and the digest.
struct Stored {
    values: Vec<u8>,
    rows: Option<Vec<usize>>,
    digest: u64,
}

impl Fixture {
    fn load() -> Result<Self, Box<dyn std::error::Error>> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/opencv47.safetensors");
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "cannot read {} ({e}); run tests/fixtures/fixtures_opencv47.py",
                path.display()
            )
        })?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)?;
        let meta = meta.metadata().clone().unwrap_or_default();
        assert_eq!(
            meta.get("opencv").map(String::as_str),
            Some("4.7.0"),
            "fixtures not made with OpenCV 4.7.0"
        );
        Ok(Self { bytes, meta })
    }

    fn tensor(&self, key: &str) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let st = SafeTensors::deserialize(&self.bytes)?;
        Ok(st
            .tensor(key)
            .map_err(|e| format!("fixture key {key}: {e}"))?
            .data()
            .to_vec())
    }

    fn stored(&self, key: &str) -> Result<Stored, Box<dyn std::error::Error>> {
        let st = SafeTensors::deserialize(&self.bytes)?;
        let rows = match st.tensor(&format!("{key}.rows")) {
            Ok(t) => Some(
                t.data()
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .collect(),
            ),
            Err(_) => None,
        };
        let digest = self
            .meta
            .get(&format!("{key}.fnv1a"))
            .ok_or_else(|| format!("fixture has no digest of {key}"))?
            .parse()?;
        Ok(Stored {
            values: self.tensor(key)?,
            rows,
            digest,
        })
    }
}

/// Agreement of `ours` (a whole `row_len`-byte-per-row image) with a stored reference: (values
/// compared, values equal, max difference, whole-image digest equal).
fn compare(ours: &[u8], row_len: usize, stored: &Stored) -> (usize, usize, u8, bool) {
    let picked: Vec<u8> = match &stored.rows {
        Some(rows) => rows
            .iter()
            .flat_map(|&r| ours[r * row_len..(r + 1) * row_len].iter().copied())
            .collect(),
        None => ours.to_vec(),
    };
    let n = stored.values.len().min(picked.len());
    let equal = picked
        .iter()
        .zip(&stored.values)
        .filter(|(a, b)| a == b)
        .count();
    let max = picked
        .iter()
        .zip(&stored.values)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    let complete = picked.len() == stored.values.len();
    (
        n,
        if complete { equal } else { 0 },
        max,
        fnv1a(ours) == stored.digest,
    )
}

#[test]
fn resize_is_bit_exact_with_opencv_4_7() -> TestResult {
    let fx = Fixture::load()?;
    for (n, &(w, h, ow, oh, c)) in RESIZE_CASES.iter().enumerate() {
        let src = pattern(w, h, c, 100 + n as u64);
        let ours = resize_linear_u8(&src, w, h, c, ow, oh);
        let key = format!("resize.{w}x{h}x{c}.{ow}x{oh}");
        let (total, equal, max, digest) = compare(&ours, ow * c, &fx.stored(&key)?);
        let pct = 100.0 * equal as f64 / total.max(1) as f64;
        println!("{key}: {pct:.4} % of {total} stored values equal, max diff {max}, whole-image digest equal: {digest}");
        assert!(
            equal == total && max == 0 && digest,
            "{key}: {pct:.4} % equal, max diff {max}, digest equal {digest}; expected bit-exact"
        );
    }
    Ok(())
}

#[test]
fn mesh_crop_jpeg_round_trip_matches_opencv_4_7() -> TestResult {
    let fx = Fixture::load()?;
    for (n, &(w, h)) in JPEG_CASES.iter().enumerate() {
        let bgr = mesh_like(w, h, 200 + n as u64);
        let ours = swap_rb(&jpeg::round_trip(&swap_rb(&bgr), w, h)?);
        let key = format!("jpeg.{w}x{h}");
        let (total, equal, max, digest) = compare(&ours, w * 3, &fx.stored(&key)?);
        let pct = 100.0 * equal as f64 / total.max(1) as f64;
        println!("{key}: {pct:.4} % of {total} stored values equal, max diff {max}, whole-image digest equal: {digest}");
        // Tolerance: ≥ 99.9 % equal and at most 1/255 off (libjpeg-turbo 3.1 here, 2.1.3 in OpenCV).
        assert!(
            pct >= 99.9 && max <= 1,
            "{key}: {pct:.4} % equal, max diff {max}"
        );
        let changed = ours.iter().zip(&bgr).filter(|(a, b)| a != b).count();
        assert!(
            changed > ours.len() / 10,
            "{key}: the round trip changed only {changed} values"
        );
    }
    Ok(())
}

#[test]
fn paste_back_matches_the_reference_blend_with_opencv_4_7() -> TestResult {
    let fx = Fixture::load()?;
    let meta = |k: &str| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(fx
            .meta
            .get(&format!("blend.{k}"))
            .ok_or_else(|| format!("no blend.{k}"))?
            .parse()?)
    };
    let (w, h, size, crop) = (
        meta("frame_w")?,
        meta("frame_h")?,
        meta("face")?,
        meta("crop")?,
    );
    let body = pattern(w, h, 3, 300);
    let face = pattern(size, size, 3, 301);
    let m: Vec<f64> = fx
        .tensor("blend.m")?
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect();
    let m = Affine([[m[0], m[1], m[2]], [m[3], m[4], m[5]]]);
    let ours = blend_back(
        &swap_rb(&body),
        w,
        h,
        &swap_rb(&face),
        size,
        &m,
        crop,
        &FeatherSettings::default(),
    )
    .ok_or("the blend matrix is singular")?;
    let ours = swap_rb(&ours);
    let reference = fx.tensor("blend.out")?;
    assert_eq!(ours.len(), reference.len());
    // The face region: the values the paste-back changes in the reference.
    let region: Vec<usize> = (0..reference.len())
        .filter(|&i| reference[i] != body[i])
        .collect();
    let equal = region.iter().filter(|&&i| ours[i] == reference[i]).count();
    let max = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    let all_equal = ours.iter().zip(&reference).filter(|(a, b)| a == b).count();
    let pct = 100.0 * equal as f64 / region.len().max(1) as f64;
    println!(
        "blend: face region {} values, {pct:.4} % equal; whole frame {:.4} % equal; max diff {max}",
        region.len(),
        100.0 * all_equal as f64 / reference.len() as f64
    );
    assert!(
        region.len() > 5000,
        "the blend fixture barely changes the body"
    );
    // Tolerance: ≥ 99 % of the face region equal, at most 2/255 off anywhere.
    assert!(
        pct >= 99.0 && max <= 2,
        "blend: {pct:.4} % of the face region equal, max diff {max}"
    );
    Ok(())
}
