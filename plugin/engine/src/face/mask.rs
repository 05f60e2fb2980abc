//! The inpainting mask of a face crop, in the reference's **inverted** convention
//! (the SD-inpainting pipeline's `mask > 0.5` keeps): 255 = keep (not face), 0 = face to regenerate.
//!
//! - From the face matte: the matte is warped into the crop with the alignment `M` (bilinear,
//!   border 0), pixels ≥ 128 are face, the face is dilated once with a 3×3 box (as the reference
//!   dilates its BiSeNet classes 1–13), then inverted.
//! - Without a matte, from a BiSeNet face parser when the user gave its checkpoint (the
//!   reference's own mask): the parser runs on the aligned crop of the generated body
//!   frame, classes 1–13 are face, dilated once 3×3, inverted ([`from_parser`]).
//! - Otherwise, from the landmarks: the crop is aligned to the FFHQ template, so the face
//!   always sits at the same place in it. The region is the ellipse centred at
//!   [`TEMPLATE_FACE_CENTRE`] with semi-axes [`TEMPLATE_FACE_AXES`] (crop-512 pixels, scaled by
//!   `crop / 512`): from the brows' top to below the chin and from cheek to cheek, the skin area
//!   the reference's classes 1–13 cover in FFHQ-aligned crops (hair and neck excluded).
//!
//! Precedence (first present wins): matte, parser, landmark template. The matte comes first
//! because it is the user's own ground truth of the head; the parser reads the generated pixels,
//! the template only assumes an average face.
use std::ops::RangeInclusive;

use super::warp::{warp_affine_u8, Affine};
use crate::networks::bisenet::FaceParser;
use crate::Result;

/// The CelebAMask-HQ classes the reference regenerates: skin, brows, eyes,
/// eyeglasses, ears, earring, nose, mouth, lips. Background (0), neck (14), necklace (15),
/// cloth (16), hair (17) and hat (18) are kept.
pub const FACE_CLASSES: RangeInclusive<u8> = 1..=13;

/// Centre of the landmark-based face ellipse in a 512 crop (between the template's eyes and
/// mouth, slightly low to reach the chin).
pub const TEMPLATE_FACE_CENTRE: [f64; 2] = [256.0, 300.0];
/// Semi-axes (x, y) of the landmark-based face ellipse in a 512 crop.
pub const TEMPLATE_FACE_AXES: [f64; 2] = [120.0, 150.0];

/// How much of a crop mask is face.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// No face pixel (the mask is all 255): nothing to regenerate.
    NoFace,
    /// Every pixel is face (the mask is all 0): the whole crop is regenerated from the mesh.
    AllFace,
    /// Both kinds of pixel.
    Partial,
}

/// Classifies a mask (255 = keep) by the reference's 0.5 binarisation (≥ 128 keeps).
pub fn coverage(mask: &[u8]) -> Coverage {
    let keep = mask.iter().filter(|&&v| v >= 128).count();
    if keep == mask.len() {
        Coverage::NoFace
    } else if keep == 0 {
        Coverage::AllFace
    } else {
        Coverage::Partial
    }
}

/// `cv2.dilate(img, np.ones((3, 3)))` on a one-channel binary-or-grey image (the image edge never
/// dilates: the default border is the minimum).
pub fn dilate3(img: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut out = vec![0u8; w * h];
    if w == 0 || h == 0 || img.len() != w * h {
        return out;
    }
    for y in 0..h {
        for x in 0..w {
            let mut m = 0u8;
            for yy in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for xx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    m = m.max(img[yy * w + xx]);
                }
            }
            out[y * w + x] = m;
        }
    }
    out
}

/// The crop mask from a face matte (`w × h`, one byte per pixel; ≥ 128 is face) and the
/// alignment `m` (frame → crop).
pub fn from_matte(matte: &[u8], w: usize, h: usize, m: &Affine, crop: usize) -> Vec<u8> {
    let warped = warp_affine_u8(matte, w, h, 1, m, crop, crop);
    let face: Vec<u8> = warped
        .iter()
        .map(|&v| if v >= 128 { 255 } else { 0 })
        .collect();
    dilate3(&face, crop, crop)
        .into_iter()
        .map(|v| 255 - v)
        .collect()
}

/// The crop mask from a parser's per-pixel classes (`w × h`): face = [`FACE_CLASSES`], dilated
/// once 3×3, inverted (255 = keep).
pub fn from_classes(classes: &[u8], w: usize, h: usize) -> Vec<u8> {
    let face: Vec<u8> = classes
        .iter()
        .map(|c| if FACE_CLASSES.contains(c) { 255 } else { 0 })
        .collect();
    dilate3(&face, w, h).into_iter().map(|v| 255 - v).collect()
}

/// The crop mask from the BiSeNet parser run on the aligned RGB crop (`crop × crop`) of the
/// generated body frame, as the reference's `get_mask.py` parses `raw_aligned`.
pub fn from_parser(parser: &FaceParser, crop_rgb: &[u8], crop: usize) -> Result<Vec<u8>> {
    let classes = parser.classes(crop_rgb, crop, crop)?;
    Ok(from_classes(&classes, crop, crop))
}

/// The crop mask from the landmark template (see the module docs).
pub fn from_template(crop: usize) -> Vec<u8> {
    let s = crop as f64 / 512.0;
    let (cx, cy) = (TEMPLATE_FACE_CENTRE[0] * s, TEMPLATE_FACE_CENTRE[1] * s);
    let (ax, ay) = (TEMPLATE_FACE_AXES[0] * s, TEMPLATE_FACE_AXES[1] * s);
    let mut out = vec![255u8; crop * crop];
    for y in 0..crop {
        for x in 0..crop {
            let (dx, dy) = ((x as f64 - cx) / ax, (y as f64 - cy) / ay);
            if dx * dx + dy * dy <= 1.0 {
                out[y * crop + x] = 0;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_mask_is_partial_and_inverted() {
        let m = from_template(512);
        assert_eq!(coverage(&m), Coverage::Partial);
        assert_eq!(m[0], 255, "corners are kept");
        assert_eq!(m[300 * 512 + 256], 0, "the face centre is regenerated");
        assert_eq!(coverage(&[255; 9]), Coverage::NoFace);
        assert_eq!(coverage(&[0; 9]), Coverage::AllFace);
    }

    #[test]
    fn class_mask_keeps_hair_and_neck_and_dilates_face() {
        let (w, h) = (5, 3);
        // Row 0: background, skin, lips, neck, hair; rows 1-2: hat.
        let mut classes = vec![18u8; w * h];
        classes[..5].copy_from_slice(&[0, 1, 13, 14, 17]);
        let m = from_classes(&classes, w, h);
        // Columns 0..=3 of rows 0-1 are face after the 3x3 dilation of columns 1-2 in row 0.
        let expect: Vec<u8> = vec![
            0, 0, 0, 0, 255, //
            0, 0, 0, 0, 255, //
            255, 255, 255, 255, 255,
        ];
        assert_eq!(m, expect);
    }

    #[test]
    fn matte_mask_is_dilated_by_one_pixel() {
        let (w, h) = (9, 9);
        let mut matte = vec![0u8; w * h];
        matte[4 * w + 4] = 255;
        let m = from_matte(&matte, w, h, &Affine::IDENTITY, 9);
        let face: Vec<usize> = (0..w * h).filter(|&i| m[i] == 0).collect();
        assert_eq!(face.len(), 9);
        assert!(face.contains(&(3 * w + 3)) && face.contains(&(5 * w + 5)));
    }
}
