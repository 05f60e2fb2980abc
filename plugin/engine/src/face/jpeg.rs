//! The JPEG round trip of the mesh crop: `face_alignment.py` saves the aligned mesh crop as
//! `aligned/<n>.jpg` with `cv2.imwrite` and `inference_face_inpainting.py` reads it back with
//! `cv2.imread` before it conditions the head ControlNet, so the ControlNet sees the crop with
//! JPEG's losses. [`round_trip`] reproduces that with libjpeg-turbo, the codec OpenCV 4.7 bundles
//! (2.1.3 there; the DCT, colour conversion, subsampling and upsampling below are bit-exact across
//! its versions and SIMD paths).
//!
//! OpenCV's `imwrite` settings for a 3-channel image: quality 95 (`IMWRITE_JPEG_QUALITY`'s
//! default), `jpeg_set_defaults` otherwise: YCbCr with 4:2:0 chroma subsampling, baseline
//! (not progressive), no Huffman optimisation, the accurate integer DCT (`JDCT_ISLOW`). `imread`
//! decodes with libjpeg's defaults: the integer DCT and fancy (triangular) chroma upsampling.
//! Colour order does not matter: OpenCV hands libjpeg BGR as `JCS_EXT_BGR`, we hand it RGB as RGB,
//! and the YCbCr planes are the same.

use turbojpeg::{Compressor, Decompressor, Image, PixelFormat, Subsamp};

/// `cv2.imwrite`'s default JPEG quality.
pub const OPENCV_JPEG_QUALITY: i32 = 95;

/// Encodes an 8-bit RGB image (`w × h`, row-major) as `cv2.imwrite(..., .jpg)` does and decodes
/// it as `cv2.imread` does. Errors name the failing step.
pub fn round_trip(rgb: &[u8], w: usize, h: usize) -> Result<Vec<u8>, String> {
    if w == 0 || h == 0 || rgb.len() != w * h * 3 {
        return Err(format!(
            "the JPEG round trip needs a {w}×{h} RGB image of {} bytes, got {} bytes",
            w * h * 3,
            rgb.len()
        ));
    }
    let encoded = encode(rgb, w, h)
        .map_err(|e| format!("libjpeg-turbo could not encode the {w}×{h} mesh crop: {e}"))?;
    decode(&encoded, w, h).map_err(|e| {
        format!("libjpeg-turbo could not decode the {w}×{h} mesh crop it encoded: {e}")
    })
}

fn encode(rgb: &[u8], w: usize, h: usize) -> turbojpeg::Result<Vec<u8>> {
    let mut compressor = Compressor::new()?;
    compressor.set_quality(OPENCV_JPEG_QUALITY)?;
    compressor.set_subsamp(Subsamp::Sub2x2)?;
    compressor.set_optimize(false)?;
    compressor.set_progressive(false)?;
    compressor.compress_to_vec(Image {
        pixels: rgb,
        width: w,
        pitch: w * 3,
        height: h,
        format: PixelFormat::RGB,
    })
}

fn decode(jpeg: &[u8], w: usize, h: usize) -> turbojpeg::Result<Vec<u8>> {
    let mut decompressor = Decompressor::new()?;
    decompressor.set_fast_upsample(false)?;
    let mut out = vec![0u8; w * h * 3];
    decompressor.decompress(
        jpeg,
        Image {
            pixels: &mut out[..],
            width: w,
            pitch: w * 3,
            height: h,
            format: PixelFormat::RGB,
        },
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_a_flat_image_and_rejects_a_short_buffer() {
        let flat = vec![128u8; 24 * 16 * 3];
        let back = round_trip(&flat, 24, 16).unwrap_or_default();
        assert_eq!(back, flat);
        assert!(round_trip(&flat[..10], 24, 16).is_err());
    }
}
