//! Host-side pixel buffers: allocation with any row layout (padding, negative rowBytes) and the
//! exact conversions between 8-bit RGBA files and OFX pixel depths and components.
//!
//! Conversion contract (the basis of the pixel-exact tests):
//! - into the plugin: byte `v`, short `v * 257`, half/float `v / 255`;
//! - out of the plugin: byte `x`, short `round(x * 255 / 65535)`, half/float
//!   `round(clamp(x, 0, 1) * 255)` (NaN reads as 0).
//!
//! So an 8-bit sequence passed through unchanged comes back bit-identical at every depth.

use std::alloc::Layout;

use image::RgbaImage;
use openfx::sys::generic::core::{
    kOfxBitDepthByte, kOfxBitDepthFloat, kOfxBitDepthHalf, kOfxBitDepthShort, OfxRectI,
};
use openfx::sys::image_effect_v1::image_effect::{
    kOfxImageComponentAlpha, kOfxImageComponentRGB, kOfxImageComponentRGBA,
};

use crate::error::HostError;

/// An OFX pixel depth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Depth {
    /// 8-bit unsigned.
    Byte,
    /// 16-bit unsigned.
    Short,
    /// 16-bit float.
    Half,
    /// 32-bit float.
    Float,
    /// Any other string (forced by `--raw-depth` to exercise a plugin's error path);
    /// buffers use 4 bytes per component, zero-filled.
    Other(String),
}

impl Depth {
    /// Parse a command-line name (`byte`, `short`, `half`, `float`) or an OFX depth string.
    pub fn parse(s: &str) -> Option<Depth> {
        match s {
            "byte" | "8" | "OfxBitDepthByte" => Some(Depth::Byte),
            "short" | "16" | "OfxBitDepthShort" => Some(Depth::Short),
            "half" | "OfxBitDepthHalf" => Some(Depth::Half),
            "float" | "32" | "OfxBitDepthFloat" => Some(Depth::Float),
            _ => None,
        }
    }

    /// The OFX property string.
    pub fn ofx_name(&self) -> String {
        let c = match self {
            Depth::Byte => kOfxBitDepthByte,
            Depth::Short => kOfxBitDepthShort,
            Depth::Half => kOfxBitDepthHalf,
            Depth::Float => kOfxBitDepthFloat,
            Depth::Other(s) => return s.clone(),
        };
        c.to_string_lossy().into_owned()
    }

    /// Bytes per component.
    pub fn bytes(&self) -> usize {
        match self {
            Depth::Byte => 1,
            Depth::Short | Depth::Half => 2,
            Depth::Float | Depth::Other(_) => 4,
        }
    }
}

/// OFX pixel components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Components {
    /// Red, green, blue, alpha.
    Rgba,
    /// Red, green, blue.
    Rgb,
    /// Alpha only.
    Alpha,
}

impl Components {
    /// Parse an OFX components string.
    pub fn from_ofx(s: &str) -> Option<Components> {
        let s = s.as_bytes();
        if s == kOfxImageComponentRGBA.to_bytes() {
            Some(Components::Rgba)
        } else if s == kOfxImageComponentRGB.to_bytes() {
            Some(Components::Rgb)
        } else if s == kOfxImageComponentAlpha.to_bytes() {
            Some(Components::Alpha)
        } else {
            None
        }
    }

    /// The OFX property string.
    pub fn ofx_name(&self) -> String {
        let c = match self {
            Components::Rgba => kOfxImageComponentRGBA,
            Components::Rgb => kOfxImageComponentRGB,
            Components::Alpha => kOfxImageComponentAlpha,
        };
        c.to_string_lossy().into_owned()
    }

    /// Number of channels.
    pub fn count(&self) -> usize {
        match self {
            Components::Rgba => 4,
            Components::Rgb => 3,
            Components::Alpha => 1,
        }
    }

    /// Which RGBA8 channel each component comes from.
    fn channels(&self) -> &'static [usize] {
        match self {
            Components::Rgba => &[0, 1, 2, 3],
            Components::Rgb => &[0, 1, 2],
            Components::Alpha => &[3],
        }
    }
}

/// How rows are laid out in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowLayout {
    /// Top row first in memory, so rowBytes is negative (MLT's bottom-left-origin buffers).
    pub negative_row_bytes: bool,
    /// Extra bytes at the end of every row.
    pub padding: usize,
}

/// A host-allocated image buffer, addressed the OFX way: `origin` is pixel (x1, y1), the
/// bottom-left corner, and row `y` starts at `origin + (y - y1) * row_bytes`.
#[derive(Debug)]
pub struct PixelBuffer {
    alloc: *mut u8,
    layout: Option<Layout>,
    /// Pixel bounds.
    pub bounds: OfxRectI,
    /// Signed distance between rows in bytes.
    pub row_bytes: isize,
    /// Address of pixel (x1, y1); null for an empty buffer.
    pub origin: *mut u8,
    /// Pixel depth.
    pub depth: Depth,
    /// Components.
    pub comps: Components,
}

// SAFETY: the buffer is plain memory owned by this struct; concurrent writes by the plugin
// are its own business (it writes only inside its render window).
unsafe impl Send for PixelBuffer {}
// SAFETY: see above.
unsafe impl Sync for PixelBuffer {}

impl Drop for PixelBuffer {
    fn drop(&mut self) {
        if let Some(layout) = self.layout {
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.alloc, layout) };
        }
    }
}

/// Width and height of a rect (0 when inverted).
pub fn rect_size(r: &OfxRectI) -> (usize, usize) {
    (
        (r.x2 as i64 - r.x1 as i64).max(0) as usize,
        (r.y2 as i64 - r.y1 as i64).max(0) as usize,
    )
}

impl PixelBuffer {
    /// Allocate a zeroed buffer.
    pub fn new(
        bounds: OfxRectI,
        depth: Depth,
        comps: Components,
        rows: RowLayout,
    ) -> Result<Self, HostError> {
        let (w, h) = rect_size(&bounds);
        let pixel = depth.bytes() * comps.count();
        let row = w * pixel + rows.padding;
        let total = row
            .checked_mul(h)
            .ok_or_else(|| HostError::Image(format!("image {w}x{h} too large")))?;
        if total == 0 || w == 0 || h == 0 {
            return Ok(PixelBuffer {
                alloc: std::ptr::null_mut(),
                layout: None,
                bounds,
                row_bytes: row as isize,
                origin: std::ptr::null_mut(),
                depth,
                comps,
            });
        }
        let layout = Layout::from_size_align(total, 64)
            .map_err(|e| HostError::Image(format!("bad image layout: {e}")))?;
        // SAFETY: layout has non-zero size.
        let alloc = unsafe { std::alloc::alloc_zeroed(layout) };
        if alloc.is_null() {
            return Err(HostError::Image(format!("out of memory for {total} bytes")));
        }
        let (origin, row_bytes) = if rows.negative_row_bytes {
            // Bottom row (y1) is the last row in memory.
            // SAFETY: (h - 1) * row < total.
            (unsafe { alloc.add((h - 1) * row) }, -(row as isize))
        } else {
            (alloc, row as isize)
        };
        Ok(PixelBuffer {
            alloc,
            layout: Some(layout),
            bounds,
            row_bytes,
            origin,
            depth,
            comps,
        })
    }

    /// Pointer to pixel (x, y) in OFX pixel coordinates (must be inside bounds).
    fn pixel_ptr(&self, x: i32, y: i32) -> *mut u8 {
        let dx = (x - self.bounds.x1) as isize;
        let dy = (y - self.bounds.y1) as isize;
        let pixel = (self.depth.bytes() * self.comps.count()) as isize;
        // SAFETY: callers stay inside bounds, so the offset is inside the allocation.
        unsafe { self.origin.offset(dy * self.row_bytes + dx * pixel) }
    }

    /// Fill from an 8-bit RGBA image whose top-left pixel is OFX pixel (x1, y2 - 1):
    /// file rows run top-down while OFX rows run bottom-up.
    pub fn fill_from_rgba8(&self, img: &RgbaImage) {
        self.fill_from_rgba8_as(img, false)
    }

    /// [`Self::fill_from_rgba8`]; with `linear`, half and float images get the sRGB-decoded
    /// (linear-light) values of the colour channels, as Natron and Nuke hand them over.
    pub fn fill_from_rgba8_as(&self, img: &RgbaImage, linear: bool) {
        let (w, h) = rect_size(&self.bounds);
        if self.origin.is_null() {
            return;
        }
        let w = w.min(img.width() as usize);
        let h = h.min(img.height() as usize);
        let chans = self.comps.channels();
        for row in 0..h {
            let y = self.bounds.y1 + (h - 1 - row) as i32;
            for col in 0..w {
                let px = img.get_pixel(col as u32, row as u32).0;
                let p = self.pixel_ptr(self.bounds.x1 + col as i32, y);
                for (k, &c) in chans.iter().enumerate() {
                    let v = px[c];
                    // SAFETY: inside the pixel, k < comps.count().
                    unsafe {
                        match self.depth {
                            Depth::Byte => *p.add(k) = v,
                            Depth::Short => (p as *mut u16).add(k).write(v as u16 * 257),
                            Depth::Half => (p as *mut u16)
                                .add(k)
                                .write(half::f16::from_f32(float_of(v, c, linear)).to_bits()),
                            Depth::Float => (p as *mut f32).add(k).write(float_of(v, c, linear)),
                            Depth::Other(_) => {}
                        }
                    }
                }
            }
        }
    }

    /// Read the buffer back as an 8-bit RGBA image (top row first). RGB gets alpha 255;
    /// Alpha is written as grey with alpha 255 so a mask is visible in any viewer.
    pub fn to_rgba8(&self) -> RgbaImage {
        self.to_rgba8_as(false)
    }

    /// [`Self::to_rgba8`]; with `linear`, half and float colour channels are sRGB-encoded.
    pub fn to_rgba8_as(&self, linear: bool) -> RgbaImage {
        let (w, h) = rect_size(&self.bounds);
        let mut img = RgbaImage::new(w as u32, h as u32);
        if self.origin.is_null() {
            return img;
        }
        let n = self.comps.count();
        for row in 0..h {
            let y = self.bounds.y1 + (h - 1 - row) as i32;
            for col in 0..w {
                let p = self.pixel_ptr(self.bounds.x1 + col as i32, y);
                let mut v = [0u8; 4];
                for (k, slot) in v.iter_mut().enumerate().take(n) {
                    let colour = linear && self.comps.channels()[k] < 3;
                    let enc = |x: f32| if colour { srgb_encode(x) } else { x };
                    // SAFETY: inside the pixel, k < comps.count().
                    *slot = unsafe {
                        match self.depth {
                            Depth::Byte => *p.add(k),
                            Depth::Short => {
                                let x = (p as *const u16).add(k).read() as u32;
                                ((x * 255 + 32767) / 65535) as u8
                            }
                            Depth::Half => float_to_u8(enc(half::f16::from_bits(
                                (p as *const u16).add(k).read(),
                            )
                            .to_f32())),
                            Depth::Float => float_to_u8(enc((p as *const f32).add(k).read())),
                            Depth::Other(_) => 0,
                        }
                    };
                }
                let px = match self.comps {
                    Components::Rgba => v,
                    Components::Rgb => [v[0], v[1], v[2], 255],
                    Components::Alpha => [v[0], v[0], v[0], 255],
                };
                img.put_pixel(col as u32, row as u32, image::Rgba(px));
            }
        }
        img
    }
}

/// The float value of 8-bit file value `v` on channel `c` (0-2 colour, 3 alpha): `v/255`, or
/// with `linear` its sRGB-decoded (IEC 61966-2-1) linear light for colour channels.
fn float_of(v: u8, c: usize, linear: bool) -> f32 {
    let e = v as f32 / 255.0;
    if !linear || c >= 3 {
        e
    } else if e <= 0.040_45 {
        e / 12.92
    } else {
        ((e + 0.055) / 1.055).powf(2.4)
    }
}

/// Linear light to sRGB encoding (IEC 61966-2-1).
fn srgb_encode(x: f32) -> f32 {
    if x <= 0.003_130_8 {
        x * 12.92
    } else {
        1.055 * x.max(0.0).powf(1.0 / 2.4) - 0.055
    }
}

/// `round(clamp(x, 0, 1) * 255)`, NaN → 0.
pub fn float_to_u8(x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    (x.clamp(0.0, 1.0) * 255.0).round() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_image(w: u32, h: u32) -> RgbaImage {
        RgbaImage::from_fn(w, h, |x, y| {
            image::Rgba([
                (x * 7 + y) as u8,
                (y * 13 + 3) as u8,
                ((x ^ y) * 5) as u8,
                (255 - x * 3) as u8,
            ])
        })
    }

    #[test]
    fn every_depth_and_layout_round_trips_exactly() {
        let img = test_image(67, 45);
        let bounds = OfxRectI {
            x1: -3,
            y1: 10,
            x2: 64,
            y2: 55,
        };
        for depth in [Depth::Byte, Depth::Short, Depth::Half, Depth::Float] {
            for negative in [false, true] {
                let rows = RowLayout {
                    negative_row_bytes: negative,
                    padding: 12,
                };
                let buf = PixelBuffer::new(bounds, depth.clone(), Components::Rgba, rows).unwrap();
                buf.fill_from_rgba8(&img);
                assert_eq!(buf.to_rgba8(), img, "{depth:?} negative={negative}");
                assert_eq!(buf.row_bytes < 0, negative);
            }
        }
    }

    #[test]
    fn negative_row_bytes_puts_bottom_row_last() {
        let img = test_image(3, 2);
        let bounds = OfxRectI {
            x1: 0,
            y1: 0,
            x2: 3,
            y2: 2,
        };
        let rows = RowLayout {
            negative_row_bytes: true,
            padding: 0,
        };
        let buf = PixelBuffer::new(bounds, Depth::Byte, Components::Rgba, rows).unwrap();
        buf.fill_from_rgba8(&img);
        // Memory starts with the top file row; origin (y = 0) is the bottom file row.
        let mem = unsafe { std::slice::from_raw_parts(buf.alloc, 24) };
        assert_eq!(&mem[0..4], &img.get_pixel(0, 0).0);
        let origin = unsafe { std::slice::from_raw_parts(buf.origin, 4) };
        assert_eq!(origin, &img.get_pixel(0, 1).0);
    }

    #[test]
    fn float_contract() {
        assert_eq!(float_to_u8(f32::NAN), 0);
        assert_eq!(float_to_u8(2.0), 255);
        assert_eq!(float_to_u8(-1.0), 0);
        for v in 0..=255u8 {
            assert_eq!(float_to_u8(v as f32 / 255.0), v);
        }
    }
}
