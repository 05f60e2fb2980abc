//! Framing: how a plate of any shape meets the model's square working size, and the matte of the
//! mesh render's silhouette (issue 16).
//!
//! Make-Your-Anchor, as the reference implementation, works on a square (`res × res`, 512 by
//! default). A plate is rarely square, so a [`Framing`] says how the square is taken from the
//! plate, and how the square result goes back onto a plate of the input's size:
//!
//! | framing | into the model ([`Framing::frame_in`]) | back onto the plate ([`Framing::frame_out`]) |
//! |---|---|---|
//! | `squash` | resize both axes to `res × res` (the reference; distorts a non-square plate) | resize `res × res` to `w × h` |
//! | `fit` (default) | pad the plate to a `max(w, h)` square around its centre, then resize | resize to `max(w, h)`, then crop the centre |
//! | `region` | the square `x, y, size` of the plate (top-left corner and side in plate pixels), padded where it leaves the plate, then resized | resize to `size`, placed back at `x, y`; the plate outside the square is black |
//!
//! - **Pixels.** Interleaved 8-bit RGB (alpha: one byte), top row first, as everywhere in the
//!   engine. Every resize is [`resize_rgb8`] with PIL `LANCZOS`, the pipeline's resize, and is
//!   skipped when the sizes already agree. `squash` is therefore the pre-framing behaviour, byte
//!   for byte, and `fit` of a square plate is exactly `squash` (the padded square is the plate).
//! - **Padding** is black (0, 0, 0): the background of the mesh renders the model is conditioned
//!   on, so padded bars read as "no person" to the ControlNet. The bars come back black and are
//!   cropped away by `fit`.
//! - **Coverage.** [`Framing::coverage`] is the part of the plate the square covers: the whole
//!   plate for `squash` and `fit`, the square's intersection with the plate for `region`. Outside
//!   it a front end writes black with alpha 0, as a compositor expects of a generator over a
//!   matte ([`Framing::output_alpha`]).
//! - **Matte.** [`silhouette_matte`]: the mesh render's person is every pixel whose largest
//!   channel exceeds a small threshold ([`SILHOUETTE_THRESHOLD`]); the hard mask is feathered by a
//!   separable box filter, in integer arithmetic, so that the result is deterministic on every
//!   machine. [`premultiply_rgba8`] makes the premultiplied RGBA that hosts and PNG writers
//!   expect from a generator.
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use crate::job::ControlSource;
use crate::resample::{resize_rgb8, Filter};
use crate::{EngineError, Result};

/// Largest square side, in plate pixels, that a framing may take (a `region` larger than this
/// is refused): 16384² RGB is 768 MiB, and a region many times the plate only adds black.
pub const MAX_SQUARE_SIDE: usize = 16_384;

/// The threshold of [`silhouette_matte`]: a mesh-render pixel whose largest 8-bit channel
/// exceeds it is the person. The renders' background is black (0); 8 keeps dark shading of the
/// mesh inside while ignoring the low noise of a lossy encode.
pub const SILHOUETTE_THRESHOLD: u8 = 8;

/// The framing names, in the order front ends list them (the effect's `framing` options).
pub const FRAMING_NAMES: [&str; 3] = ["squash", "fit", "region"];

/// How a `w × h` plate is framed into the model's square working size and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// Resize both axes to the square (the reference's behaviour; a non-square plate is
    /// distorted).
    Squash,
    /// Pad the plate to a square around its centre (black bars), keeping its aspect.
    #[default]
    Fit,
    /// A square region of interest of the plate.
    Region {
        /// Left edge in plate pixels (may be negative: the square then leaves the plate).
        x: i64,
        /// Top edge in plate pixels, rows counted from the top (may be negative).
        y: i64,
        /// Side in plate pixels, 1 to [`MAX_SQUARE_SIDE`].
        size: usize,
    },
}

/// A square of plate pixels: top-left corner (may lie outside the plate) and side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Square {
    /// Left edge, in plate pixels.
    pub x: i64,
    /// Top edge, in plate pixels (rows from the top).
    pub y: i64,
    /// Side, in pixels.
    pub size: usize,
}

/// A rectangle of plate pixels, `x0..x1 × y0..y1` (rows from the top); empty when `x0 == x1` or
/// `y0 == y1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlateRect {
    /// First column.
    pub x0: usize,
    /// First row.
    pub y0: usize,
    /// One past the last column.
    pub x1: usize,
    /// One past the last row.
    pub y1: usize,
}

impl PlateRect {
    /// Whether plate pixel `(x, y)` lies inside.
    pub fn contains(&self, x: usize, y: usize) -> bool {
        (self.x0..self.x1).contains(&x) && (self.y0..self.y1).contains(&y)
    }
}

impl Framing {
    /// A `region` framing, checked: `size` must be 1 to [`MAX_SQUARE_SIDE`].
    pub fn region(x: i64, y: i64, size: usize) -> Result<Self> {
        if size == 0 || size > MAX_SQUARE_SIDE {
            return Err(EngineError::Input(format!(
                "the framing region's side is {size} pixels; expected 1 to {MAX_SQUARE_SIDE}"
            )));
        }
        Ok(Self::Region { x, y, size })
    }

    /// A framing from a front end's two settings: the name (`squash`, `fit` or `region`) and,
    /// for `region` only, its square as `X,Y,SIZE` (top-left corner and side in plate pixels).
    /// What the CLI's `--framing` and `--region` give.
    pub fn parse(name: &str, region: Option<&str>) -> Result<Self> {
        let framing = match (name.trim(), region) {
            ("squash", None) => Self::Squash,
            ("fit", None) => Self::Fit,
            ("region", Some(r)) => {
                let v: Vec<&str> = r.split(',').map(str::trim).collect();
                let bad = || {
                    EngineError::Input(format!(
                        "the framing region is {r:?}; expected X,Y,SIZE: the left column, top row \
                         and side of a square in plate pixels, e.g. 320,0,1080"
                    ))
                };
                let [x, y, size] = v.as_slice() else {
                    return Err(bad());
                };
                Self::region(
                    x.parse().map_err(|_| bad())?,
                    y.parse().map_err(|_| bad())?,
                    size.parse().map_err(|_| bad())?,
                )?
            }
            ("region", None) => {
                return Err(EngineError::Input(
                    "framing region needs its square: X,Y,SIZE in plate pixels".into(),
                ))
            }
            (n @ ("squash" | "fit"), Some(r)) => {
                return Err(EngineError::Input(format!(
                    "a region ({r}) is given, but the framing is {n}; use framing region"
                )))
            }
            (other, _) => {
                return Err(EngineError::Input(format!(
                    "unknown framing {other:?}; expected one of {}",
                    FRAMING_NAMES.join(", ")
                )))
            }
        };
        Ok(framing)
    }

    /// The framing's name: `squash`, `fit` or `region`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Squash => FRAMING_NAMES[0],
            Self::Fit => FRAMING_NAMES[1],
            Self::Region { .. } => FRAMING_NAMES[2],
        }
    }

    /// The square of plate pixels that becomes the working square, for a `w × h` plate; `None`
    /// for `squash`, which takes the whole plate whatever its shape.
    pub fn square(&self, w: usize, h: usize) -> Option<Square> {
        match *self {
            Self::Squash => None,
            Self::Fit => {
                let side = w.max(h);
                // The odd pixel of padding goes to the right / bottom.
                Some(Square {
                    x: -(((side - w) / 2) as i64),
                    y: -(((side - h) / 2) as i64),
                    size: side,
                })
            }
            Self::Region { x, y, size } => Some(Square { x, y, size }),
        }
    }

    /// The plate pixels that the rendered square covers (see the module docs).
    pub fn coverage(&self, w: usize, h: usize) -> PlateRect {
        match self.square(w, h) {
            None => PlateRect {
                x0: 0,
                y0: 0,
                x1: w,
                y1: h,
            },
            Some(sq) => {
                let (x0, x1) = overlap(sq.x, sq.size, w);
                let (y0, y1) = overlap(sq.y, sq.size, h);
                PlateRect { x0, y0, x1, y1 }
            }
        }
    }

    /// The `w × h` RGB plate as the model's `res × res` control frame.
    pub fn frame_in(&self, plate: &[u8], w: usize, h: usize, res: usize) -> Result<Vec<u8>> {
        check_rgb("plate", plate, w, h)?;
        check_side("working size", res)?;
        match self.square(w, h) {
            None => Ok(resize_or_copy(Cow::Borrowed(plate), w, h, res, res)),
            Some(sq) => {
                check_side("framing square", sq.size)?;
                let square = crop_square(plate, w, h, 3, sq);
                Ok(resize_or_copy(square, sq.size, sq.size, res, res))
            }
        }
    }

    /// The model's `res × res` RGB result back on a `w × h` plate: inside [`Self::coverage`] the
    /// square's pixels, black outside.
    pub fn frame_out(&self, square: &[u8], res: usize, w: usize, h: usize) -> Result<Vec<u8>> {
        check_rgb("working frame", square, res, res)?;
        check_side("plate width", w)?;
        check_side("plate height", h)?;
        let Some(sq) = self.square(w, h) else {
            return Ok(resize_or_copy(Cow::Borrowed(square), res, res, w, h));
        };
        check_side("framing square", sq.size)?;
        let big = resize_or_copy(Cow::Borrowed(square), res, res, sq.size, sq.size);
        let cover = self.coverage(w, h);
        let mut out = vec![0u8; w * h * 3];
        let row_bytes = (cover.x1 - cover.x0) * 3;
        if row_bytes == 0 {
            return Ok(out);
        }
        for y in cover.y0..cover.y1 {
            // Plate (x, y) is square (x - sq.x, y - sq.y), both within the square here.
            let sy = (y as i64 - sq.y) as usize;
            let sx = (cover.x0 as i64 - sq.x) as usize;
            let from = (sy * sq.size + sx) * 3;
            let to = (y * w + cover.x0) * 3;
            out[to..to + row_bytes].copy_from_slice(&big[from..from + row_bytes]);
        }
        Ok(out)
    }

    /// The output alpha of a `w × h` plate: `silhouette` (or opaque, 255, without one) inside
    /// [`Self::coverage`], 0 outside.
    pub fn output_alpha(&self, w: usize, h: usize, silhouette: Option<&[u8]>) -> Result<Vec<u8>> {
        if let Some(s) = silhouette {
            if s.len() != w * h {
                return Err(EngineError::Input(format!(
                    "the silhouette holds {} bytes, not {w}×{h}",
                    s.len()
                )));
            }
        }
        let cover = self.coverage(w, h);
        let mut alpha = vec![0u8; w * h];
        for y in cover.y0..cover.y1 {
            let row = y * w;
            for x in cover.x0..cover.x1 {
                alpha[row + x] = silhouette.map_or(255, |s| s[row + x]);
            }
        }
        Ok(alpha)
    }

    /// A point of a `w × h` plate (image coordinates: x right, y down, pixel centres at
    /// integers, as landmark files are) in the `res × res` working frame of this framing.
    pub fn point_to_working(&self, p: [f64; 2], w: usize, h: usize, res: usize) -> [f64; 2] {
        let r = res as f64;
        match self.square(w, h) {
            None => [
                (p[0] + 0.5) * r / w as f64 - 0.5,
                (p[1] + 0.5) * r / h as f64 - 0.5,
            ],
            Some(sq) => {
                let s = r / sq.size as f64;
                [
                    (p[0] - sq.x as f64 + 0.5) * s - 0.5,
                    (p[1] - sq.y as f64 + 0.5) * s - 0.5,
                ]
            }
        }
    }
}

/// `squash`, `fit`, or `region:X,Y,SIZE`.
impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Region { x, y, size } => write!(f, "region:{x},{y},{size}"),
            other => f.write_str(other.name()),
        }
    }
}

/// Parses what [`Display`](fmt::Display) writes: `squash`, `fit`, or `region:X,Y,SIZE`.
impl FromStr for Framing {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().split_once(':') {
            Some((name, region)) => Self::parse(name, Some(region)),
            None => Self::parse(s, None),
        }
    }
}

/// The columns (or rows) `0..n` of the plate that a span of `len` from `start` covers.
fn overlap(start: i64, len: usize, n: usize) -> (usize, usize) {
    let a = start.clamp(0, n as i64) as usize;
    let b = start.saturating_add(len as i64).clamp(0, n as i64) as usize;
    (a, b.max(a))
}

fn check_side(what: &str, side: usize) -> Result<()> {
    if side == 0 || side > MAX_SQUARE_SIDE {
        return Err(EngineError::Input(format!(
            "the {what} is {side} pixels; expected 1 to {MAX_SQUARE_SIDE}"
        )));
    }
    Ok(())
}

fn check_rgb(what: &str, rgb: &[u8], w: usize, h: usize) -> Result<()> {
    if w == 0 || h == 0 || rgb.len() != w * h * 3 {
        return Err(EngineError::Input(format!(
            "the {what} holds {} bytes, not {w}×{h} RGB",
            rgb.len()
        )));
    }
    Ok(())
}

/// PIL LANCZOS to `ow × oh`, or the pixels as they are when the sizes agree (as the pipeline).
fn resize_or_copy(rgb: Cow<'_, [u8]>, w: usize, h: usize, ow: usize, oh: usize) -> Vec<u8> {
    if (w, h) == (ow, oh) {
        rgb.into_owned()
    } else {
        resize_rgb8(&rgb, w, h, ow, oh, Filter::Lanczos)
    }
}

/// The `sq.size²` square of a `w × h` image of `channels` bytes per pixel, zero (black) where
/// it leaves the image; the image itself (not copied) when the square is exactly the image.
pub fn crop_square(data: &[u8], w: usize, h: usize, channels: usize, sq: Square) -> Cow<'_, [u8]> {
    if (sq.x, sq.y, sq.size) == (0, 0, w) && w == h {
        return Cow::Borrowed(data);
    }
    let mut out = vec![0u8; sq.size * sq.size * channels];
    let (x0, x1) = overlap(sq.x, sq.size, w);
    let (y0, y1) = overlap(sq.y, sq.size, h);
    let row_bytes = (x1 - x0) * channels;
    if row_bytes == 0 {
        return Cow::Owned(out);
    }
    for y in y0..y1 {
        let sy = (y as i64 - sq.y) as usize;
        let sx = (x0 as i64 - sq.x) as usize;
        let to = (sy * sq.size + sx) * channels;
        let from = (y * w + x0) * channels;
        out[to..to + row_bytes].copy_from_slice(&data[from..from + row_bytes]);
    }
    Cow::Owned(out)
}

/// The matte of a `w × h` RGB mesh render: 255 where the largest channel exceeds `threshold`
/// (the person), 0 elsewhere, then feathered by a separable box filter of radius `feather_px`
/// (a `(2r+1)²` mean, edge pixels repeated beyond the border, rounded to the nearest byte).
///
/// The box filter makes a linear ramp `2r+1` pixels wide across a straight edge, and leaves 255
/// and 0 exact wherever the whole `(2r+1)²` window is inside or outside the person: only pixels
/// within `r` (per axis) of the silhouette's edge are in between. Integer sums, so the matte is
/// the same on every machine. Repeating the edge pixels keeps a person cut by the frame edge
/// opaque there.
pub fn silhouette_matte(
    mesh_rgb: &[u8],
    w: usize,
    h: usize,
    threshold: u8,
    feather_px: usize,
) -> Vec<u8> {
    debug_assert_eq!(mesh_rgb.len(), w * h * 3);
    let hard: Vec<u8> = mesh_rgb
        .chunks_exact(3)
        .map(|p| {
            if p[0].max(p[1]).max(p[2]) > threshold {
                255
            } else {
                0
            }
        })
        .collect();
    if feather_px == 0 || w == 0 || h == 0 {
        return hard;
    }
    let r = feather_px;
    let n = (2 * r + 1) as u64;
    // Horizontal window sums (at most 255·n each), then vertical sums of those (255·n²).
    let mut rows = vec![0u64; w * h];
    for y in 0..h {
        box_sums(&hard[y * w..(y + 1) * w], r, &mut rows[y * w..(y + 1) * w]);
    }
    let mut column = vec![0u64; h];
    let mut sums = vec![0u64; h];
    let mut out = vec![0u8; w * h];
    let area = n * n;
    for x in 0..w {
        for y in 0..h {
            column[y] = rows[y * w + x];
        }
        box_sums(&column, r, &mut sums);
        for y in 0..h {
            out[y * w + x] = ((sums[y] + area / 2) / area) as u8;
        }
    }
    out
}

/// `out[i] = Σ_{k=-r..=r} v[clamp(i + k)]`: a running window sum with the ends repeated.
fn box_sums<T: Copy + Into<u64>>(v: &[T], r: usize, out: &mut [u64]) {
    let n = v.len();
    let at = |i: i64| -> u64 { v[i.clamp(0, n as i64 - 1) as usize].into() };
    let r = r as i64;
    let mut sum: u64 = (-r..=r).map(at).sum();
    for (i, o) in out.iter_mut().enumerate() {
        *o = sum;
        let i = i as i64;
        sum = sum + at(i + r + 1) - at(i - r);
    }
}

/// Interleaved RGB and one alpha byte per pixel as premultiplied RGBA:
/// `c' = round(c · a / 255)`, what a PNG of a premultiplied composite holds.
pub fn premultiply_rgba8(rgb: &[u8], alpha: &[u8]) -> Vec<u8> {
    debug_assert_eq!(rgb.len(), alpha.len() * 3);
    let mut out = Vec::with_capacity(alpha.len() * 4);
    for (p, &a) in rgb.chunks_exact(3).zip(alpha) {
        for &c in p {
            // (x + 127) / 255 rounds x / 255 to nearest: 255 is odd, so there are no ties.
            out.push(((c as u32 * a as u32 + 127) / 255) as u8);
        }
        out.push(a);
    }
    out
}

/// A clip of plate-size frames as the working-size control frames of one [`Framing`]: what a
/// front end hands the render job so that every frame of every window is framed alike (the job
/// keys the framed pixels, so a change of framing never reuses cached frames).
pub struct FramedSource<'a> {
    inner: &'a dyn ControlSource,
    framing: Framing,
    res: usize,
}

impl<'a> FramedSource<'a> {
    /// `inner`'s frames (any size) framed into `res × res` (the request's working resolution,
    /// [`crate::job::RenderSettings::working_resolution`]).
    pub fn new(inner: &'a dyn ControlSource, framing: Framing, res: usize) -> Self {
        Self {
            inner,
            framing,
            res,
        }
    }
}

impl ControlSource for FramedSource<'_> {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn rgb8(&self, f: usize) -> Result<(Vec<u8>, usize, usize)> {
        let (plate, w, h) = self.inner.rgb8(f)?;
        let framed = self
            .framing
            .frame_in(&plate, w, h, self.res)
            .map_err(|e| EngineError::Input(format!("control frame {f}: {e}")))?;
        Ok((framed, self.res, self.res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic textured `w × h` RGB image.
    fn plate(w: usize, h: usize) -> Vec<u8> {
        (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                [
                    (40 + (x * 7 + y * 3) % 200) as u8,
                    (30 + (x * y) % 190) as u8,
                    (60 + (x + 5 * y) % 180) as u8,
                ]
            })
            .collect()
    }

    #[test]
    fn names_parse_and_print() {
        assert_eq!(Framing::default(), Framing::Fit);
        for (text, framing) in [
            ("squash", Framing::Squash),
            ("fit", Framing::Fit),
            (
                "region:-10,20,300",
                Framing::Region {
                    x: -10,
                    y: 20,
                    size: 300,
                },
            ),
        ] {
            assert_eq!(text.parse::<Framing>().ok(), Some(framing), "{text}");
            assert_eq!(framing.to_string(), text);
        }
        assert_eq!(
            Framing::parse("region", Some("320, 0, 1080")).ok(),
            Some(Framing::Region {
                x: 320,
                y: 0,
                size: 1080
            })
        );
        let err = |r: Result<Framing>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            err("stretch".parse()),
            "invalid input: unknown framing \"stretch\"; expected one of squash, fit, region"
        );
        assert_eq!(
            err("region".parse()),
            "invalid input: framing region needs its square: X,Y,SIZE in plate pixels"
        );
        assert_eq!(
            err(Framing::parse("region", Some("1,2"))),
            "invalid input: the framing region is \"1,2\"; expected X,Y,SIZE: the left column, top row and side of a square in plate pixels, e.g. 320,0,1080"
        );
        assert_eq!(
            err(Framing::parse("region", Some("0,0,0"))),
            "invalid input: the framing region's side is 0 pixels; expected 1 to 16384"
        );
        assert!(Framing::parse("fit", Some("0,0,10")).is_err());
    }

    /// Squash is the pipeline's path before framing existed (`Controls::rgb8` in, the effect's
    /// resize out), byte for byte; fit of a square plate is squash.
    #[test]
    fn squash_is_the_old_resize_path_and_fit_of_a_square_is_squash() {
        let (w, h, res) = (80, 48, 64);
        let p = plate(w, h);
        let old_in = resize_rgb8(&p, w, h, res, res, Filter::Lanczos);
        let framed = Framing::Squash.frame_in(&p, w, h, res).unwrap();
        assert!(framed == old_in);
        let old_out = resize_rgb8(&old_in, res, res, w, h, Filter::Lanczos);
        assert!(Framing::Squash.frame_out(&framed, res, w, h).unwrap() == old_out);
        // Equal sizes are copied, as the pipeline does.
        let sq = plate(res, res);
        assert!(Framing::Squash.frame_in(&sq, res, res, res).unwrap() == sq);

        for side in [64usize, 45, 100] {
            let p = plate(side, side);
            let squash_in = Framing::Squash.frame_in(&p, side, side, res).unwrap();
            let fit_in = Framing::Fit.frame_in(&p, side, side, res).unwrap();
            assert!(fit_in == squash_in, "fit in, {side}²");
            let squash_out = Framing::Squash.frame_out(&fit_in, res, side, side).unwrap();
            let fit_out = Framing::Fit.frame_out(&fit_in, res, side, side).unwrap();
            assert!(fit_out == squash_out, "fit out, {side}²");
        }
    }

    #[test]
    fn fit_of_a_wide_plate_has_black_bars_and_comes_back_at_plate_size() {
        // 128×64 into 64²: the plate fills rows 16..48 of the square, black above and below.
        let (w, h, res) = (128usize, 64usize, 64usize);
        let p = plate(w, h);
        assert_eq!(
            Framing::Fit.square(w, h),
            Some(Square {
                x: 0,
                y: -32,
                size: 128
            })
        );
        let framed = Framing::Fit.frame_in(&p, w, h, res).unwrap();
        assert_eq!(framed.len(), res * res * 3);
        let row = |y: usize| &framed[y * res * 3..(y + 1) * res * 3];
        // Lanczos-3 at scale 2 reaches 3 output rows across the border: rows 0..13 and 51..64
        // see only padding.
        for y in (0..13).chain(51..64) {
            assert!(row(y).iter().all(|&v| v == 0), "row {y} is a bar");
        }
        for y in 19..45 {
            assert!(row(y).iter().all(|&v| v >= 20), "row {y} holds the plate");
        }
        // The plate's middle equals the padded square's resize, exactly.
        let mut padded = vec![0u8; 128 * 128 * 3];
        padded[32 * 128 * 3..96 * 128 * 3].copy_from_slice(&p);
        assert!(framed == resize_rgb8(&padded, 128, 128, res, res, Filter::Lanczos));

        let out = Framing::Fit.frame_out(&framed, res, w, h).unwrap();
        assert_eq!(out.len(), w * h * 3);
        let big = resize_rgb8(&framed, res, res, 128, 128, Filter::Lanczos);
        assert!(
            out[..] == big[32 * 128 * 3..96 * 128 * 3],
            "the centre rows"
        );
        assert_eq!(
            Framing::Fit.coverage(w, h),
            PlateRect {
                x0: 0,
                y0: 0,
                x1: w,
                y1: h
            }
        );
        // A tall plate pads the columns, the odd pixel on the right.
        assert_eq!(
            Framing::Fit.square(45, 80),
            Some(Square {
                x: -17,
                y: 0,
                size: 80
            })
        );
    }

    #[test]
    fn region_is_cropped_padded_and_placed_back() {
        let (w, h, res) = (100usize, 60usize, 32usize);
        let p = plate(w, h);
        // Inside the plate: exactly the crop, resized.
        let r = Framing::region(50, 10, 40).unwrap();
        let crop: Vec<u8> = (10..50)
            .flat_map(|y| p[(y * w + 50) * 3..(y * w + 90) * 3].to_vec())
            .collect();
        let framed = r.frame_in(&p, w, h, res).unwrap();
        assert!(framed == resize_rgb8(&crop, 40, 40, res, res, Filter::Lanczos));
        // Back: the square's 40² pixels at (50, 10), black elsewhere.
        let out = r.frame_out(&framed, res, w, h).unwrap();
        let big = resize_rgb8(&framed, res, res, 40, 40, Filter::Lanczos);
        for y in 0..h {
            for x in 0..w {
                let got = &out[(y * w + x) * 3..(y * w + x) * 3 + 3];
                if (50..90).contains(&x) && (10..50).contains(&y) {
                    let i = ((y - 10) * 40 + x - 50) * 3;
                    assert_eq!(got, &big[i..i + 3], "({x}, {y})");
                } else {
                    assert_eq!(got, &[0, 0, 0], "({x}, {y}) outside the region");
                }
            }
        }
        let alpha = r.output_alpha(w, h, None).unwrap();
        assert_eq!(alpha[10 * w + 50], 255);
        assert_eq!(alpha[49 * w + 89], 255);
        assert_eq!(alpha[10 * w + 49], 0);
        assert_eq!(alpha[50 * w + 50], 0);
        assert_eq!(alpha.iter().filter(|&&a| a == 255).count(), 40 * 40);

        // Leaving the plate at the top right: padded black, clamped on the way back.
        let r = Framing::region(80, -10, 32).unwrap();
        assert_eq!(
            r.coverage(w, h),
            PlateRect {
                x0: 80,
                y0: 0,
                x1: 100,
                y1: 22
            }
        );
        let sq = crop_square(&p, w, h, 3, r.square(w, h).unwrap());
        assert_eq!(&sq[..3], &[0, 0, 0], "padding");
        assert_eq!(
            &sq[(10 * 32) * 3..(10 * 32) * 3 + 3],
            &p[80 * 3..80 * 3 + 3]
        );
        assert_eq!(&sq[(10 * 32 + 20) * 3..(10 * 32 + 20) * 3 + 3], &[0, 0, 0]);
        let framed = r.frame_in(&p, w, h, res).unwrap();
        assert!(framed[..] == sq[..], "32² at 32 is not resized");
        let out = r.frame_out(&framed, res, w, h).unwrap();
        assert_eq!(
            &out[80 * 3..80 * 3 + 3],
            &sq[(10 * 32) * 3..(10 * 32) * 3 + 3]
        );
        assert_eq!(&out[(22 * w + 80) * 3..(22 * w + 80) * 3 + 3], &[0, 0, 0]);
        // Entirely outside: all black, nothing covered.
        let r = Framing::region(-50, 0, 10).unwrap();
        assert!(r.frame_in(&p, w, h, res).unwrap().iter().all(|&v| v == 0));
        assert!(r.output_alpha(w, h, None).unwrap().iter().all(|&a| a == 0));
    }

    #[test]
    fn points_map_into_the_working_square() {
        let close =
            |a: [f64; 2], b: [f64; 2]| (a[0] - b[0]).abs() < 1e-9 && (a[1] - b[1]).abs() < 1e-9;
        // Squash: x' = (x + 0.5)·s − 0.5 per axis (as the CLI scales landmark files).
        assert!(close(
            Framing::Squash.point_to_working([79.5, 47.5], 80, 48, 64),
            [63.5, 63.5]
        ));
        // Fit of 128×64 into 64: the plate's centre is the square's centre.
        assert!(close(
            Framing::Fit.point_to_working([63.5, 31.5], 128, 64, 64),
            [31.5, 31.5]
        ));
        // Region: its top-left pixel edge is the working square's.
        assert!(close(
            Framing::region(50, 10, 40)
                .unwrap()
                .point_to_working([49.5, 9.5], 100, 60, 32),
            [-0.5, -0.5]
        ));
    }

    /// A filled circle on black: 255 inside, 0 far outside, in between only near the edge.
    #[test]
    fn silhouette_of_a_circle_is_feathered_only_near_its_edge() {
        let (w, h) = (64usize, 48usize);
        let (cx, cy, radius) = (30.0f64, 22.0f64, 14.0f64);
        let dist = |x: usize, y: usize| ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt();
        let mesh: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                if dist(i % w, i / w) <= radius {
                    [180u8, 120, 90]
                } else {
                    // Dark noise below the threshold is background.
                    [(i % 7) as u8, 0, 3]
                }
            })
            .collect();
        let hard = silhouette_matte(&mesh, w, h, SILHOUETTE_THRESHOLD, 0);
        for y in 0..h {
            for x in 0..w {
                let want = if dist(x, y) <= radius { 255 } else { 0 };
                assert_eq!(hard[y * w + x], want, "hard ({x}, {y})");
            }
        }
        let r = 3usize;
        let soft = silhouette_matte(&mesh, w, h, SILHOUETTE_THRESHOLD, r);
        // The (2r+1)² window of a pixel reaches r·√2 from it; one more pixel for the
        // rasterised edge.
        let reach = r as f64 * std::f64::consts::SQRT_2 + 1.0;
        let mut between = 0;
        for y in 0..h {
            for x in 0..w {
                let (a, d) = (soft[y * w + x], dist(x, y));
                if d <= radius - reach {
                    assert_eq!(a, 255, "({x}, {y}) inside");
                } else if d >= radius + reach {
                    assert_eq!(a, 0, "({x}, {y}) outside");
                }
                if a != 0 && a != 255 {
                    between += 1;
                    assert!((d - radius).abs() < reach, "({x}, {y}) at {d:.2}: {a}");
                }
            }
        }
        assert!(between > 100, "a feathered ring ({between} pixels)");
        // Along a radius the matte falls monotonically from 255 to 0.
        let ray: Vec<u8> = (30..56).map(|x| soft[22 * w + x]).collect();
        assert!(ray.windows(2).all(|p| p[0] >= p[1]), "{ray:?}");
        assert_eq!((ray[0], ray[25]), (255, 0));
    }

    /// A straight edge: the box feather is the linear ramp (r + 1 + k) / (2r + 1).
    #[test]
    fn a_straight_edge_feathers_into_a_linear_ramp() {
        let (w, h, r) = (20usize, 5usize, 2usize);
        // The person is columns 10.. (and a border column that stays opaque).
        let mesh: Vec<u8> = (0..w * h)
            .flat_map(|i| if i % w >= 10 { [0, 200, 0] } else { [0, 0, 0] })
            .collect();
        let m = silhouette_matte(&mesh, w, h, SILHOUETTE_THRESHOLD, r);
        let row: Vec<u8> = m[2 * w..3 * w].to_vec();
        // Columns 8..=11 see 1, 2, 3, 4 of 5 inside columns: 51, 102, 153, 204.
        assert_eq!(&row[6..14], &[0, 0, 51, 102, 153, 204, 255, 255]);
        assert_eq!(row[19], 255, "edge pixels repeat beyond the border");
        assert!(m.chunks_exact(w).all(|r| r == &row[..]), "rows are alike");
    }

    #[test]
    fn premultiplied_rgba_rounds_to_nearest() {
        let rgb = [255, 128, 1, 200, 100, 50];
        let alpha = [128, 0];
        assert_eq!(
            premultiply_rgba8(&rgb, &alpha),
            [128, 64, 1, 128, 0, 0, 0, 0]
        );
    }

    #[test]
    fn a_framed_source_frames_every_frame_alike() {
        struct Plates;
        impl ControlSource for Plates {
            fn len(&self) -> usize {
                2
            }
            fn rgb8(&self, f: usize) -> Result<(Vec<u8>, usize, usize)> {
                let mut p = plate(90, 30);
                p[0] = f as u8;
                Ok((p, 90, 30))
            }
        }
        let framed = FramedSource::new(&Plates, Framing::Fit, 32);
        assert_eq!(framed.len(), 2);
        let (rgb, w, h) = framed.rgb8(1).unwrap();
        assert_eq!((w, h), (32, 32));
        let mut p = plate(90, 30);
        p[0] = 1;
        assert!(rgb == Framing::Fit.frame_in(&p, 90, 30, 32).unwrap());
    }
}
