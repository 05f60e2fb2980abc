//! Pixel views over host image memory, and conversion to and from plain RGBA `f32`.
//!
//! OFX images (OFX 1.5 `ofxImageEffect.h`, "Images"): the data pointer addresses pixel
//! `(bounds.x1, bounds.y1)`, the bottom-left; row `y` starts at `data + (y - y1) * rowBytes`, and
//! `rowBytes` may be **negative** (hosts such as MLT store rows top-down) and may include padding.
//! Bounds are what the host returned, which may differ from what was asked for; pixels outside
//! them read as transparent black and writes there are dropped.
//!
//! Depths: Byte (`u8`, 0..255), Short (`u16`, 0..65535), Half (`f16`), Float (`f32`); components
//! RGBA, RGB or Alpha. Integer depths map linearly to `[0, 1]`; writing clamps and rounds.
//! Missing channels read as: RGB → alpha 1; Alpha → `(0, 0, 0, a)`.
use half::f16;
use std::ffi::CStr;

/// Errors of pixel views.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PixelError {
    /// A bit depth string we do not handle.
    #[error("unsupported pixel depth {0:?}")]
    UnsupportedDepth(String),
    /// A components string we do not handle.
    #[error("unsupported pixel components {0:?}")]
    UnsupportedComponents(String),
    /// Bounds with x2 < x1 or y2 < y1.
    #[error("malformed image bounds ({x1}, {y1}, {x2}, {y2})")]
    BadBounds {
        /// Left.
        x1: i32,
        /// Bottom.
        y1: i32,
        /// Right (exclusive).
        x2: i32,
        /// Top (exclusive).
        y2: i32,
    },
    /// |rowBytes| is smaller than one row of pixels.
    #[error("rowBytes {row_bytes} is smaller than a row of {width} pixels of {pixel_bytes} bytes")]
    RowBytesTooSmall {
        /// The row stride given.
        row_bytes: isize,
        /// Image width in pixels.
        width: usize,
        /// Bytes per pixel.
        pixel_bytes: usize,
    },
    /// The geometry addresses memory outside the buffer.
    #[error("image geometry addresses bytes outside the {len}-byte buffer")]
    OutOfBuffer {
        /// Buffer length.
        len: usize,
    },
    /// A non-empty image with a null data pointer.
    #[error("the image has no pixel data (null pointer) for non-empty bounds")]
    NullData,
    /// An RGBA buffer whose length does not match its bounds.
    #[error("RGBA buffer holds {len} floats, bounds need {expected}")]
    BufferSize {
        /// Floats held.
        len: usize,
        /// Floats needed (4 per pixel).
        expected: usize,
    },
}

/// An integer pixel rectangle, x2/y2 exclusive (OFX `OfxRectI`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Rect {
    /// Left (inclusive).
    pub x1: i32,
    /// Bottom (inclusive).
    pub y1: i32,
    /// Right (exclusive).
    pub x2: i32,
    /// Top (exclusive).
    pub y2: i32,
}

impl Rect {
    /// A rectangle from its corners.
    pub const fn new(x1: i32, y1: i32, x2: i32, y2: i32) -> Self {
        Self { x1, y1, x2, y2 }
    }

    /// Width in pixels (0 when malformed).
    pub fn width(&self) -> usize {
        usize::try_from(i64::from(self.x2) - i64::from(self.x1)).unwrap_or(0)
    }

    /// Height in pixels (0 when malformed).
    pub fn height(&self) -> usize {
        usize::try_from(i64::from(self.y2) - i64::from(self.y1)).unwrap_or(0)
    }

    /// Whether the rectangle holds no pixel.
    pub fn is_empty(&self) -> bool {
        self.width() == 0 || self.height() == 0
    }

    /// The overlap of two rectangles (empty, anchored at `self`'s corner, when they do not meet).
    pub fn intersect(&self, other: &Rect) -> Rect {
        let r = Rect::new(
            self.x1.max(other.x1),
            self.y1.max(other.y1),
            self.x2.min(other.x2),
            self.y2.min(other.y2),
        );
        if r.x2 <= r.x1 || r.y2 <= r.y1 {
            Rect::new(self.x1, self.y1, self.x1, self.y1)
        } else {
            r
        }
    }

    /// Whether pixel `(x, y)` lies inside.
    pub fn contains(&self, x: i32, y: i32) -> bool {
        x >= self.x1 && x < self.x2 && y >= self.y1 && y < self.y2
    }

    fn check(&self) -> Result<(), PixelError> {
        if self.x2 < self.x1 || self.y2 < self.y1 {
            Err(PixelError::BadBounds {
                x1: self.x1,
                y1: self.y1,
                x2: self.x2,
                y2: self.y2,
            })
        } else {
            Ok(())
        }
    }
}

/// Bits per channel (`kOfxBitDepth*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BitDepth {
    /// 8-bit unsigned integer.
    Byte,
    /// 16-bit unsigned integer.
    Short,
    /// 16-bit IEEE float.
    Half,
    /// 32-bit IEEE float.
    Float,
}

impl BitDepth {
    /// All depths, in OFX order.
    pub const ALL: [BitDepth; 4] = [Self::Byte, Self::Short, Self::Half, Self::Float];

    /// Bytes per channel.
    pub fn bytes(self) -> usize {
        match self {
            Self::Byte => 1,
            Self::Short | Self::Half => 2,
            Self::Float => 4,
        }
    }

    /// The OFX name, e.g. `OfxBitDepthFloat`.
    pub fn ofx_name(self) -> &'static CStr {
        use crate::names::*;
        match self {
            Self::Byte => kOfxBitDepthByte,
            Self::Short => kOfxBitDepthShort,
            Self::Half => kOfxBitDepthHalf,
            Self::Float => kOfxBitDepthFloat,
        }
    }

    /// Parse an OFX depth name.
    pub fn from_ofx_name(name: &str) -> Result<Self, PixelError> {
        Self::ALL
            .into_iter()
            .find(|d| d.ofx_name().to_bytes() == name.as_bytes())
            .ok_or_else(|| PixelError::UnsupportedDepth(name.to_owned()))
    }
}

/// Channels per pixel (`kOfxImageComponent*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Components {
    /// Red, green, blue, alpha.
    Rgba,
    /// Red, green, blue.
    Rgb,
    /// Alpha only.
    Alpha,
}

impl Components {
    /// All layouts.
    pub const ALL: [Components; 3] = [Self::Rgba, Self::Rgb, Self::Alpha];

    /// Channels per pixel.
    pub fn count(self) -> usize {
        match self {
            Self::Rgba => 4,
            Self::Rgb => 3,
            Self::Alpha => 1,
        }
    }

    /// The OFX name, e.g. `OfxImageComponentRGBA`.
    pub fn ofx_name(self) -> &'static CStr {
        use crate::names::*;
        match self {
            Self::Rgba => kOfxImageComponentRGBA,
            Self::Rgb => kOfxImageComponentRGB,
            Self::Alpha => kOfxImageComponentAlpha,
        }
    }

    /// Parse an OFX components name.
    pub fn from_ofx_name(name: &str) -> Result<Self, PixelError> {
        Self::ALL
            .into_iter()
            .find(|c| c.ofx_name().to_bytes() == name.as_bytes())
            .ok_or_else(|| PixelError::UnsupportedComponents(name.to_owned()))
    }
}

/// Depth plus components: how one pixel is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PixelLayout {
    /// Bits per channel.
    pub depth: BitDepth,
    /// Channels per pixel.
    pub components: Components,
}

impl PixelLayout {
    /// A layout.
    pub const fn new(depth: BitDepth, components: Components) -> Self {
        Self { depth, components }
    }

    /// Bytes per pixel.
    pub fn pixel_bytes(&self) -> usize {
        self.depth.bytes() * self.components.count()
    }

    fn load(&self, bytes: &[u8], channel: usize) -> f32 {
        let at = channel * self.depth.bytes();
        match self.depth {
            BitDepth::Byte => f32::from(bytes[at]) / 255.0,
            BitDepth::Short => f32::from(u16::from_ne_bytes([bytes[at], bytes[at + 1]])) / 65535.0,
            BitDepth::Half => f16::from_ne_bytes([bytes[at], bytes[at + 1]]).to_f32(),
            BitDepth::Float => {
                f32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
            }
        }
    }

    fn store(&self, bytes: &mut [u8], channel: usize, v: f32) {
        let at = channel * self.depth.bytes();
        match self.depth {
            BitDepth::Byte => bytes[at] = quantise(v, 255.0) as u8,
            BitDepth::Short => {
                let q = quantise(v, 65535.0) as u16;
                bytes[at..at + 2].copy_from_slice(&q.to_ne_bytes());
            }
            BitDepth::Half => {
                bytes[at..at + 2].copy_from_slice(&f16::from_f32(v).to_ne_bytes());
            }
            BitDepth::Float => bytes[at..at + 4].copy_from_slice(&v.to_ne_bytes()),
        }
    }

    /// Decode one stored pixel to RGBA.
    fn decode(&self, px: &[u8]) -> [f32; 4] {
        match self.components {
            Components::Rgba => [
                self.load(px, 0),
                self.load(px, 1),
                self.load(px, 2),
                self.load(px, 3),
            ],
            Components::Rgb => [self.load(px, 0), self.load(px, 1), self.load(px, 2), 1.0],
            Components::Alpha => [0.0, 0.0, 0.0, self.load(px, 0)],
        }
    }

    /// Encode RGBA into one stored pixel (RGB drops alpha; Alpha keeps only alpha).
    fn encode(&self, px: &mut [u8], rgba: &[f32]) {
        match self.components {
            Components::Rgba => (0..4).for_each(|c| self.store(px, c, rgba[c])),
            Components::Rgb => (0..3).for_each(|c| self.store(px, c, rgba[c])),
            Components::Alpha => self.store(px, 0, rgba[3]),
        }
    }
}

/// Clamp to [0, 1], scale and round to nearest; NaN becomes 0.
fn quantise(v: f32, max: f32) -> f32 {
    if v.is_nan() {
        0.0
    } else {
        (v.clamp(0.0, 1.0) * max).round()
    }
}

/// Where rows live inside a byte slice.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    /// Offset of pixel (x1, y1) in the slice.
    origin: usize,
    bounds: Rect,
    row_bytes: isize,
    layout: PixelLayout,
}

impl Geometry {
    fn checked(
        len: usize,
        origin: usize,
        bounds: Rect,
        row_bytes: isize,
        layout: PixelLayout,
    ) -> Result<Self, PixelError> {
        bounds.check()?;
        let g = Self {
            origin,
            bounds,
            row_bytes,
            layout,
        };
        if bounds.is_empty() {
            return Ok(g);
        }
        let row_len = bounds.width() * layout.pixel_bytes();
        if row_bytes.unsigned_abs() < row_len {
            return Err(PixelError::RowBytesTooSmall {
                row_bytes,
                width: bounds.width(),
                pixel_bytes: layout.pixel_bytes(),
            });
        }
        // Row starts are linear in y, so checking the first and last rows covers all.
        for y in [bounds.y1, bounds.y2 - 1] {
            let start = g.row_start(y).ok_or(PixelError::OutOfBuffer { len })?;
            if start.checked_add(row_len).is_none_or(|end| end > len) {
                return Err(PixelError::OutOfBuffer { len });
            }
        }
        Ok(g)
    }

    /// Byte offset of pixel (x1, y) — `None` if it would fall before the slice.
    fn row_start(&self, y: i32) -> Option<usize> {
        let dy = isize::try_from(i64::from(y) - i64::from(self.bounds.y1)).ok()?;
        let off = dy.checked_mul(self.row_bytes)?;
        self.origin.checked_add_signed(off)
    }

    /// The in-bounds part of row `y` between `x_start` and `x_start + n`, as
    /// (index of first pixel in the caller's run, byte range in the slice, pixel count).
    fn span(&self, y: i32, x_start: i32, n: usize) -> Option<(usize, usize, usize)> {
        if y < self.bounds.y1 || y >= self.bounds.y2 {
            return None;
        }
        let x_end = i64::from(x_start) + n as i64;
        let lo = i64::from(x_start).max(i64::from(self.bounds.x1));
        let hi = x_end.min(i64::from(self.bounds.x2));
        if hi <= lo {
            return None;
        }
        let skip = usize::try_from(lo - i64::from(x_start)).ok()?;
        let count = usize::try_from(hi - lo).ok()?;
        let px_off = usize::try_from(lo - i64::from(self.bounds.x1)).ok()?;
        let start = self.row_start(y)? + px_off * self.layout.pixel_bytes();
        Some((skip, start, count))
    }
}

/// Read-only view of an image's pixels.
#[derive(Debug, Clone, Copy)]
pub struct PixelView<'a> {
    data: &'a [u8],
    geo: Geometry,
}

/// Writable view of an image's pixels.
#[derive(Debug)]
pub struct PixelViewMut<'a> {
    data: &'a mut [u8],
    geo: Geometry,
}

/// The byte extent of a raw image: (offset of the lowest row start from `ptr`, length).
fn raw_extent(bounds: Rect, row_bytes: isize, layout: PixelLayout) -> Option<(isize, usize)> {
    if bounds.is_empty() {
        return Some((0, 0));
    }
    let row_len = bounds.width().checked_mul(layout.pixel_bytes())?;
    let last = isize::try_from(bounds.height() - 1)
        .ok()?
        .checked_mul(row_bytes)?;
    let low = last.min(0);
    let len = last.unsigned_abs().checked_add(row_len)?;
    Some((low, len))
}

impl<'a> PixelView<'a> {
    /// A view over `data`, where pixel `(bounds.x1, bounds.y1)` starts at byte `origin` and row
    /// `y` at `origin + (y - y1) * row_bytes` (which may be negative). Fails if any row falls
    /// outside `data` or `|row_bytes|` is shorter than a row.
    pub fn new(
        data: &'a [u8],
        origin: usize,
        bounds: Rect,
        row_bytes: isize,
        layout: PixelLayout,
    ) -> Result<Self, PixelError> {
        let geo = Geometry::checked(data.len(), origin, bounds, row_bytes, layout)?;
        Ok(Self { data, geo })
    }

    /// A view over host memory: `ptr` addresses pixel `(bounds.x1, bounds.y1)` as in OFX.
    ///
    /// # Safety
    /// For the lifetime `'a`, every row of `bounds` at stride `row_bytes` from `ptr` must be
    /// readable memory not written by anyone else.
    pub unsafe fn from_raw(
        ptr: *const u8,
        bounds: Rect,
        row_bytes: isize,
        layout: PixelLayout,
    ) -> Result<Self, PixelError> {
        bounds.check()?;
        let (low, len) =
            raw_extent(bounds, row_bytes, layout).ok_or(PixelError::OutOfBuffer { len: 0 })?;
        if len == 0 {
            return Self::new(&[], 0, bounds, row_bytes, layout);
        }
        if ptr.is_null() {
            return Err(PixelError::NullData);
        }
        // SAFETY: caller guarantees the rows are readable; `low..low+len` spans exactly them.
        let data = unsafe { std::slice::from_raw_parts(ptr.offset(low), len) };
        Self::new(data, low.unsigned_abs(), bounds, row_bytes, layout)
    }

    /// The pixels' bounds.
    pub fn bounds(&self) -> Rect {
        self.geo.bounds
    }

    /// The pixel layout.
    pub fn layout(&self) -> PixelLayout {
        self.geo.layout
    }

    /// Pixel `(x, y)` as RGBA; transparent black outside the bounds.
    pub fn get(&self, x: i32, y: i32) -> [f32; 4] {
        let mut px = [0.0f32; 4];
        self.read_row(y, x, &mut px);
        px
    }

    /// Read `out.len() / 4` pixels of row `y` from `x_start` as RGBA into `out`; pixels outside
    /// the bounds become transparent black.
    pub fn read_row(&self, y: i32, x_start: i32, out: &mut [f32]) {
        let n = out.len() / 4;
        let Some((skip, start, count)) = self.geo.span(y, x_start, n) else {
            out.fill(0.0);
            return;
        };
        let pb = self.geo.layout.pixel_bytes();
        out[..skip * 4].fill(0.0);
        out[(skip + count) * 4..].fill(0.0);
        let src = &self.data[start..start + count * pb];
        for (px, dst) in src
            .chunks_exact(pb)
            .zip(out[skip * 4..].chunks_exact_mut(4))
        {
            dst.copy_from_slice(&self.geo.layout.decode(px));
        }
    }

    /// The pixels of `region` as an RGBA buffer (transparent black outside the bounds).
    pub fn to_rgba(&self, region: Rect) -> RgbaBuffer {
        let mut buf = RgbaBuffer::new(region);
        let w = region.width() * 4;
        if w > 0 {
            for (row, y) in buf.data.chunks_exact_mut(w).zip(region.y1..region.y2) {
                self.read_row(y, region.x1, row);
            }
        }
        buf
    }
}

impl<'a> PixelViewMut<'a> {
    /// A writable view; same geometry rules as [`PixelView::new`].
    pub fn new(
        data: &'a mut [u8],
        origin: usize,
        bounds: Rect,
        row_bytes: isize,
        layout: PixelLayout,
    ) -> Result<Self, PixelError> {
        let geo = Geometry::checked(data.len(), origin, bounds, row_bytes, layout)?;
        Ok(Self { data, geo })
    }

    /// A writable view over host memory; see [`PixelView::from_raw`].
    ///
    /// # Safety
    /// For the lifetime `'a`, every row of `bounds` at stride `row_bytes` from `ptr` must be
    /// writable memory that nobody else accesses.
    pub unsafe fn from_raw(
        ptr: *mut u8,
        bounds: Rect,
        row_bytes: isize,
        layout: PixelLayout,
    ) -> Result<Self, PixelError> {
        bounds.check()?;
        let (low, len) =
            raw_extent(bounds, row_bytes, layout).ok_or(PixelError::OutOfBuffer { len: 0 })?;
        if len == 0 {
            return Self::new(&mut [], 0, bounds, row_bytes, layout);
        }
        if ptr.is_null() {
            return Err(PixelError::NullData);
        }
        // SAFETY: caller guarantees exclusive writable rows; the slice spans exactly them.
        let data = unsafe { std::slice::from_raw_parts_mut(ptr.offset(low), len) };
        Self::new(data, low.unsigned_abs(), bounds, row_bytes, layout)
    }

    /// The pixels' bounds.
    pub fn bounds(&self) -> Rect {
        self.geo.bounds
    }

    /// The pixel layout.
    pub fn layout(&self) -> PixelLayout {
        self.geo.layout
    }

    /// A read-only view of the same pixels.
    pub fn as_view(&self) -> PixelView<'_> {
        PixelView {
            data: self.data,
            geo: self.geo,
        }
    }

    /// Write `src.len() / 4` RGBA pixels into row `y` from `x_start`; pixels outside the bounds
    /// are dropped, padding bytes are never touched.
    pub fn write_row(&mut self, y: i32, x_start: i32, src: &[f32]) {
        let n = src.len() / 4;
        let Some((skip, start, count)) = self.geo.span(y, x_start, n) else {
            return;
        };
        let pb = self.geo.layout.pixel_bytes();
        let layout = self.geo.layout;
        let dst = &mut self.data[start..start + count * pb];
        for (px, rgba) in dst
            .chunks_exact_mut(pb)
            .zip(src[skip * 4..].chunks_exact(4))
        {
            layout.encode(px, rgba);
        }
    }

    /// Write a whole RGBA buffer at its bounds (clipped to the view's bounds).
    pub fn write_rgba(&mut self, buf: &RgbaBuffer) {
        let w = buf.bounds.width() * 4;
        if w == 0 {
            return;
        }
        for (row, y) in buf.data.chunks_exact(w).zip(buf.bounds.y1..buf.bounds.y2) {
            self.write_row(y, buf.bounds.x1, row);
        }
    }
}

/// A plain RGBA `f32` image: 4 floats per pixel, rows from `bounds.y1` (bottom) upwards, as OFX
/// orders them.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbaBuffer {
    /// The pixel rectangle held.
    pub bounds: Rect,
    /// `bounds.width() * bounds.height() * 4` floats.
    pub data: Vec<f32>,
}

impl RgbaBuffer {
    /// A transparent-black buffer over `bounds`.
    pub fn new(bounds: Rect) -> Self {
        Self {
            bounds,
            data: vec![0.0; bounds.width() * bounds.height() * 4],
        }
    }

    /// Wrap existing data, checking its length.
    pub fn from_data(bounds: Rect, data: Vec<f32>) -> Result<Self, PixelError> {
        let expected = bounds.width() * bounds.height() * 4;
        if data.len() != expected {
            return Err(PixelError::BufferSize {
                len: data.len(),
                expected,
            });
        }
        Ok(Self { bounds, data })
    }

    /// Pixel `(x, y)`, or `None` outside the bounds.
    pub fn get(&self, x: i32, y: i32) -> Option<[f32; 4]> {
        if !self.bounds.contains(x, y) {
            return None;
        }
        let i = ((y - self.bounds.y1) as usize * self.bounds.width()
            + (x - self.bounds.x1) as usize)
            * 4;
        let p = &self.data[i..i + 4];
        Some([p[0], p[1], p[2], p[3]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RGBA8: PixelLayout = PixelLayout::new(BitDepth::Byte, Components::Rgba);

    /// A 3x2 RGBA8 image stored top-down (row y=1 first in memory), as MLT hands it over.
    fn top_down_rgba8() -> Vec<u8> {
        let mut mem = Vec::new();
        for y in [1u8, 0] {
            for x in 0..3u8 {
                mem.extend_from_slice(&[10 * x + y, 100 + y, 200, 255 - x]);
            }
            mem.extend_from_slice(&[0xEE; 4]); // row padding
        }
        mem
    }

    #[test]
    fn negative_row_bytes_reads_bottom_row_first() {
        let mem = top_down_rgba8();
        // data points at pixel (x1, y1) = bottom row, which is the second row in memory.
        let view = PixelView::new(&mem, 16, Rect::new(0, 0, 3, 2), -16, RGBA8).unwrap();
        assert_eq!(view.get(0, 0), [0.0, 100.0 / 255.0, 200.0 / 255.0, 1.0]);
        assert_eq!(
            view.get(2, 0),
            [20.0 / 255.0, 100.0 / 255.0, 200.0 / 255.0, 253.0 / 255.0]
        );
        assert_eq!(
            view.get(1, 1),
            [11.0 / 255.0, 101.0 / 255.0, 200.0 / 255.0, 254.0 / 255.0]
        );
        assert_eq!(view.get(3, 0), [0.0; 4], "outside bounds");
        assert_eq!(view.get(0, 2), [0.0; 4], "outside bounds");
    }

    #[test]
    fn negative_row_bytes_from_raw_pointer_matches_slice_view() {
        let mem = top_down_rgba8();
        // SAFETY: the pointer addresses the bottom row inside `mem`; rows at -16 stay inside.
        let raw = unsafe {
            PixelView::from_raw(mem.as_ptr().add(16), Rect::new(0, 0, 3, 2), -16, RGBA8).unwrap()
        };
        let region = Rect::new(0, 0, 3, 2);
        let expected = PixelView::new(&mem, 16, region, -16, RGBA8)
            .unwrap()
            .to_rgba(region);
        assert_eq!(raw.to_rgba(region), expected);
        assert_eq!(expected.get(1, 1).map(|p| p[0]), Some(11.0 / 255.0));
    }

    #[test]
    fn negative_row_bytes_write_goes_to_the_right_memory_row() {
        let mut mem = top_down_rgba8();
        {
            let mut view =
                PixelViewMut::new(&mut mem, 16, Rect::new(0, 0, 3, 2), -16, RGBA8).unwrap();
            view.write_row(1, 0, &[1.0, 0.0, 0.0, 1.0]); // top row, pixel 0
            view.write_row(0, 2, &[0.0, 0.0, 1.0, 0.5]); // bottom row, pixel 2
        }
        assert_eq!(&mem[0..4], &[255, 0, 0, 255], "top row is first in memory");
        assert_eq!(&mem[16 + 8..16 + 12], &[0, 0, 255, 128]);
        assert_eq!(&mem[12..16], &[0xEE; 4], "padding untouched");
        assert_eq!(&mem[28..32], &[0xEE; 4], "padding untouched");
    }

    #[test]
    fn offset_bounds_and_partial_regions() {
        // A 2x2 Float RGB image at bounds (-5, 10)-(-3, 12), tightly packed.
        let layout = PixelLayout::new(BitDepth::Float, Components::Rgb);
        let vals: Vec<f32> = (0..12).map(|i| i as f32 * 0.25).collect();
        let mem: Vec<u8> = vals.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let bounds = Rect::new(-5, 10, -3, 12);
        let view = PixelView::new(&mem, 0, bounds, 24, layout).unwrap();
        assert_eq!(view.get(-5, 10), [0.0, 0.25, 0.5, 1.0]);
        assert_eq!(view.get(-4, 11), [2.25, 2.5, 2.75, 1.0]);
        // Ask for a larger region than the host returned: outside reads transparent black.
        let region = Rect::new(-6, 9, -3, 12);
        let buf = view.to_rgba(region);
        assert_eq!(buf.data.len(), 3 * 3 * 4);
        assert_eq!(buf.get(-6, 9), Some([0.0; 4]));
        assert_eq!(buf.get(-5, 9), Some([0.0; 4]));
        assert_eq!(buf.get(-6, 10), Some([0.0; 4]));
        assert_eq!(buf.get(-5, 10), Some([0.0, 0.25, 0.5, 1.0]));
        assert_eq!(buf.get(-4, 10), Some([0.75, 1.0, 1.25, 1.0]));
        assert_eq!(buf.get(-4, 11), Some([2.25, 2.5, 2.75, 1.0]));
        assert_eq!(buf.get(-3, 11), None);
        // Read a row that starts left of the bounds and ends inside.
        let mut row = [9.0f32; 8];
        view.read_row(11, -6, &mut row);
        assert_eq!(row, [0.0, 0.0, 0.0, 0.0, 1.5, 1.75, 2.0, 1.0]);
    }

    #[test]
    fn write_clips_to_bounds() {
        let layout = PixelLayout::new(BitDepth::Byte, Components::Alpha);
        let mut mem = vec![7u8; 4];
        let mut view =
            PixelViewMut::new(&mut mem, 0, Rect::new(10, 20, 12, 22), 2, layout).unwrap();
        let mut buf = RgbaBuffer::new(Rect::new(9, 19, 13, 23));
        for (i, px) in buf.data.chunks_exact_mut(4).enumerate() {
            px[3] = i as f32 / 255.0;
        }
        view.write_rgba(&buf);
        // Buffer is 4 wide starting at (9, 19): (10,20) is index 1*4+1 = 5, (11,21) is 2*4+2 = 10.
        assert_eq!(mem, vec![5, 6, 9, 10]);
    }

    #[test]
    fn geometry_is_checked() {
        let mem = [0u8; 16];
        let bad_rb = PixelView::new(&mem, 0, Rect::new(0, 0, 2, 2), 4, RGBA8);
        assert!(matches!(bad_rb, Err(PixelError::RowBytesTooSmall { .. })));
        let too_far = PixelView::new(&mem, 0, Rect::new(0, 0, 2, 3), 8, RGBA8);
        assert_eq!(too_far.err(), Some(PixelError::OutOfBuffer { len: 16 }));
        let before_start = PixelView::new(&mem, 0, Rect::new(0, 0, 2, 2), -8, RGBA8);
        assert_eq!(
            before_start.err(),
            Some(PixelError::OutOfBuffer { len: 16 })
        );
        let bad_bounds = PixelView::new(&mem, 0, Rect::new(2, 0, 0, 2), 8, RGBA8);
        assert!(matches!(bad_bounds, Err(PixelError::BadBounds { .. })));
        // SAFETY: a null pointer is rejected before any read.
        let null =
            unsafe { PixelView::from_raw(std::ptr::null(), Rect::new(0, 0, 1, 1), 4, RGBA8) };
        assert_eq!(null.err(), Some(PixelError::NullData));
        // Empty bounds are fine and read as transparent black.
        let empty = PixelView::new(&[], 0, Rect::new(3, 3, 3, 3), 0, RGBA8).unwrap();
        assert_eq!(empty.get(3, 3), [0.0; 4]);
    }

    #[test]
    fn names_parse() {
        assert_eq!(
            BitDepth::from_ofx_name("OfxBitDepthHalf"),
            Ok(BitDepth::Half)
        );
        assert_eq!(
            Components::from_ofx_name("OfxImageComponentRGB"),
            Ok(Components::Rgb)
        );
        assert_eq!(
            BitDepth::from_ofx_name("OfxBitDepthNone"),
            Err(PixelError::UnsupportedDepth("OfxBitDepthNone".into()))
        );
        assert_eq!(
            Components::from_ofx_name("OfxImageComponentYUVA"),
            Err(PixelError::UnsupportedComponents(
                "OfxImageComponentYUVA".into()
            ))
        );
    }

    /// Values exactly representable at every depth: k/255 is not exact in 16 bits, so each depth
    /// gets its own grid of exact values.
    fn exact_values(depth: BitDepth) -> Vec<f32> {
        match depth {
            BitDepth::Byte => [0u8, 1, 64, 128, 200, 255]
                .iter()
                .map(|&v| f32::from(v) / 255.0)
                .collect(),
            BitDepth::Short => [0u16, 1, 257, 32768, 65534, 65535]
                .iter()
                .map(|&v| f32::from(v) / 65535.0)
                .collect(),
            BitDepth::Half => vec![0.0, 0.25, 0.5, 0.75, 1.0, 2.0],
            BitDepth::Float => vec![0.0, 0.1, 0.333, 1.0, 4.5, -0.25],
        }
    }

    #[test]
    fn round_trip_every_depth_and_layout_with_negative_and_padded_rows() {
        for depth in BitDepth::ALL {
            for comps in Components::ALL {
                let layout = PixelLayout::new(depth, comps);
                let vals = exact_values(depth);
                let bounds = Rect::new(-2, 3, 1, 5); // 3x2
                let mut src = RgbaBuffer::new(bounds);
                for (i, v) in src.data.iter_mut().enumerate() {
                    *v = vals[i % vals.len()];
                }
                let row_bytes = (bounds.width() * layout.pixel_bytes() + 3) as isize; // padded
                let mut mem = vec![0xABu8; row_bytes as usize * 2];
                // Negative stride: bottom row (y1) is the last row in memory.
                let origin = row_bytes as usize;
                let mut view =
                    PixelViewMut::new(&mut mem, origin, bounds, -row_bytes, layout).unwrap();
                view.write_rgba(&src);
                let back = view.as_view().to_rgba(bounds);
                for (i, (got, want)) in back.data.iter().zip(&src.data).enumerate() {
                    let channel = i % 4;
                    let expected = match (comps, channel) {
                        (Components::Rgb, 3) => 1.0,
                        (Components::Alpha, 0..=2) => 0.0,
                        _ => *want,
                    };
                    let tol = match depth {
                        BitDepth::Byte | BitDepth::Short => 1e-6,
                        _ => 0.0,
                    };
                    assert!(
                        (got - expected).abs() <= tol,
                        "{depth:?} {comps:?} value {i}: got {got}, want {expected}"
                    );
                }
                // Padding bytes at the end of each row are untouched.
                let row_len = bounds.width() * layout.pixel_bytes();
                for r in 0..2 {
                    let pad = &mem[r * row_bytes as usize + row_len..(r + 1) * row_bytes as usize];
                    assert_eq!(pad, &[0xAB; 3], "{depth:?} {comps:?} row {r} padding");
                }
            }
        }
    }

    #[test]
    fn integer_depths_clamp_and_round() {
        let mut mem = [0u8; 8];
        let layout = PixelLayout::new(BitDepth::Short, Components::Rgba);
        let mut view = PixelViewMut::new(&mut mem, 0, Rect::new(0, 0, 1, 1), 8, layout).unwrap();
        view.write_row(0, 0, &[-0.5, 1.5, 0.5, f32::NAN]);
        assert_eq!(u16::from_ne_bytes([mem[0], mem[1]]), 0);
        assert_eq!(u16::from_ne_bytes([mem[2], mem[3]]), 65535);
        assert_eq!(u16::from_ne_bytes([mem[4], mem[5]]), 32768); // 32767.5 rounds up
        assert_eq!(u16::from_ne_bytes([mem[6], mem[7]]), 0);
        let mut b = [0u8; 3];
        let rgb8 = PixelLayout::new(BitDepth::Byte, Components::Rgb);
        let mut view = PixelViewMut::new(&mut b, 0, Rect::new(0, 0, 1, 1), 3, rgb8).unwrap();
        view.write_row(0, 0, &[0.2, 0.5, 0.998, 0.0]);
        assert_eq!(b, [51, 128, 254]);
    }

    #[test]
    fn byte_rgb_to_float_rgba_conversion_writes_alpha_one() {
        let src_mem = [255u8, 0, 51, 0, 128, 255];
        let rgb8 = PixelLayout::new(BitDepth::Byte, Components::Rgb);
        let src = PixelView::new(&src_mem, 0, Rect::new(0, 0, 2, 1), 6, rgb8).unwrap();
        let mut dst_mem = vec![0u8; 32];
        let rgbaf = PixelLayout::new(BitDepth::Float, Components::Rgba);
        let mut dst = PixelViewMut::new(&mut dst_mem, 0, Rect::new(0, 0, 2, 1), 32, rgbaf).unwrap();
        dst.write_rgba(&src.to_rgba(Rect::new(0, 0, 2, 1)));
        let floats: Vec<f32> = dst_mem
            .chunks_exact(4)
            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(
            floats,
            vec![1.0, 0.0, 0.2, 1.0, 0.0, 128.0 / 255.0, 1.0, 1.0]
        );
    }
}
