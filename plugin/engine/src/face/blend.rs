//! Pasting the inpainted face back into the body frame (`face_blending.py`).
//!
//! As `face_blending.py` and `util/reverse2original.py` (`use_mask=False`) do it: the 8-bit face
//! result (inpainting size, 256²) is resized to the crop (512²) with `cv2.resize` bilinear,
//! converted to float32 and divided by 255 in float32 (`_totensor`: `.float().div(255)`), warped
//! into the frame with the inverse alignment as a float32 image (bilinear, border 0), widened to
//! float64 and scaled by 255, and mixed with the feathered square mask:
//! `out = trunc(mask · (face · 255) + (1 − mask) · body)` in float64, truncated to 8 bits as
//! numpy's `astype(uint8)` does. The whole crop square is pasted (`use_mask=False`).
use super::feather::{feather_mask, feather_region, FeatherSettings};
use super::warp::{resize_linear_u8, warp_affine_f32_in, Affine};

/// Blends `face` (`face_size²` RGB) into `body` (`w × h` RGB) for the alignment `m` (frame →
/// crop of side `crop`). Returns the new frame, or `None` when `m` is singular.
#[allow(clippy::too_many_arguments)]
pub fn blend_back(
    body: &[u8],
    w: usize,
    h: usize,
    face: &[u8],
    face_size: usize,
    m: &Affine,
    crop: usize,
    feather: &FeatherSettings,
) -> Option<Vec<u8>> {
    let inverse = m.invert()?;
    let mask = feather_mask(crop, &inverse, w, h, feather);
    // Outside the feather's region the mask is exactly 0 and `out = body`: warp only inside.
    let Some((xs, ys)) = feather_region(crop, &inverse, w, h, feather) else {
        return Some(body.to_vec());
    };
    let face_crop = resize_linear_u8(face, face_size, face_size, 3, crop, crop);
    let face_f: Vec<f32> = face_crop.iter().map(|&v| v as f32 / 255.0).collect();
    let target = warp_affine_f32_in(&face_f, crop, crop, 3, &inverse, xs.clone(), ys.clone());
    let mut out = body.to_vec();
    let rw = xs.len();
    for (j, y) in ys.enumerate() {
        let o = (y * w + xs.start) * 3;
        let row = mix(
            &body[o..o + rw * 3],
            &target[j * rw * 3..(j + 1) * rw * 3],
            &mask[y * w + xs.start..y * w + xs.end],
        );
        out[o..o + rw * 3].copy_from_slice(&row);
    }
    Some(out)
}

/// `trunc(mask · (target · 255) + (1 − mask) · body)` per channel in float64 (`target` in
/// [0, 1], float32 as the reference's warped tensor), evaluated in the reference's order.
pub fn mix(body: &[u8], target: &[f32], mask: &[f64]) -> Vec<u8> {
    body.iter()
        .zip(target)
        .enumerate()
        .map(|(i, (&b, &t))| {
            let k = mask[i / 3];
            let v = k * (t as f64 * 255.0) + (1.0 - k) * b as f64;
            v.clamp(0.0, 255.0) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_zero_keeps_the_body_and_one_takes_the_face() {
        let body = [10u8, 20, 30, 40, 50, 60];
        let target = [1.0, 0.5, 0.2, 1.0, 0.5, 0.2];
        assert_eq!(
            mix(&body, &target, &[0.0, 1.0]),
            vec![10, 20, 30, 255, 127, 51]
        );
    }
}
