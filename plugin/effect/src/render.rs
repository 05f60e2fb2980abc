//! Render: with a model folder, the engine path (`body.rs`); without one, the Source passes
//! through as a plain RGBA `f32` [`Frame`], converting depth and layout only (e.g. Byte RGB in →
//! Float RGBA out, alpha 1 where the Source has none).
//!
//! Pixel I/O honours the bounds the host returns (not what we asked for), negative rowBytes and
//! any supported depth/layout, through `anchor_ofx::pixels`. `abort()` is checked on every row.
//!
//! Every buffer sized from host-given bounds (render window, region of definition, image bounds)
//! is sized through [`image_bytes`] first, which refuses bounds above [`MAX_IMAGE_SIDE`] pixels
//! per side or [`MAX_IMAGE_BYTES`] per buffer: a failed allocation aborts the host process, and
//! no `catch_unwind` can turn that into a message.
use super::error::EffectError;
use super::params::{resolve_model_folder, Settings, ENV_MODEL_FOLDER};
use super::{OUTPUT_CLIP, SOURCE_CLIP};
use anchor_ofx::{Image, ImageEffect, PixelView, PixelViewMut, Rect, Status};
use std::sync::atomic::{AtomicBool, Ordering};

/// Widest or tallest image, in pixels, that the effect allocates a buffer for. Four times the
/// width of 8K UHD: anything larger is a host's placeholder "infinite" region or a mistake.
pub const MAX_IMAGE_SIDE: usize = 32_768;

/// Largest buffer, in bytes, that the effect allocates for one image: 2 GiB, i.e. an RGBA
/// `f32` frame of 16384 × 8192 pixels (8K UHD takes 0.5 GiB). The engine works at its own
/// resolution (512 px by default), so larger frames only cost memory the diffusion does not use.
pub const MAX_IMAGE_BYTES: usize = 1 << 31;

/// Bytes of a `width × height` buffer of `bytes_per_pixel` for the `what` (`image`, `render
/// window`, `region of definition`) of `clip` at frame `time`, or
/// [`EffectError::ImageTooLarge`] when a side exceeds [`MAX_IMAGE_SIDE`] or the buffer
/// [`MAX_IMAGE_BYTES`]. Call it before allocating from host-given bounds.
pub fn image_bytes(
    clip: &'static str,
    what: &'static str,
    time: f64,
    width: usize,
    height: usize,
    bytes_per_pixel: usize,
) -> Result<usize, EffectError> {
    let bytes = width
        .checked_mul(height)
        .and_then(|px| px.checked_mul(bytes_per_pixel));
    match bytes {
        Some(b) if width <= MAX_IMAGE_SIDE && height <= MAX_IMAGE_SIDE && b <= MAX_IMAGE_BYTES => {
            Ok(b)
        }
        _ => Err(EffectError::ImageTooLarge {
            clip,
            what,
            time,
            width,
            height,
            bytes: (width as u128)
                .saturating_mul(height as u128)
                .saturating_mul(bytes_per_pixel as u128),
        }),
    }
}

/// A plain RGBA `f32` frame: 4 floats per pixel, rows from `bounds.y1` (bottom) upwards, in the
/// host's pixel coordinates. No OFX types: this is what the engine will consume and produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The pixels held (the render window).
    pub bounds: Rect,
    /// `bounds.width() * bounds.height() * 4` floats.
    pub rgba: Vec<f32>,
}

impl Frame {
    /// A transparent-black frame.
    pub fn new(bounds: Rect) -> Self {
        Self {
            bounds,
            rgba: vec![0.0; bounds.width() * bounds.height() * 4],
        }
    }

    /// A transparent-black frame for the Output clip's render window `window` at `time`, or
    /// [`EffectError::ImageTooLarge`] when the window is too large to hold ([`image_bytes`]).
    pub fn for_window(window: Rect, time: f64) -> Result<Self, EffectError> {
        Self::check_window(window, time)?;
        Ok(Self::new(window))
    }

    /// Whether a frame for the render window `window` at `time` may be allocated
    /// ([`image_bytes`] of the Output clip's render window, RGBA `f32`).
    pub fn check_window(window: Rect, time: f64) -> Result<(), EffectError> {
        let rgba_f32 = 4 * std::mem::size_of::<f32>();
        image_bytes(
            OUTPUT_CLIP,
            "render window",
            time,
            window.width(),
            window.height(),
            rgba_f32,
        )
        .map(drop)
    }

    /// Floats per row.
    fn stride(&self) -> usize {
        self.bounds.width() * 4
    }
}

/// The Render action: time `time`, render window `window` (pixel coordinates). With a model
/// folder the engine renders the body frame ([`super::body::render`]); without one (neither
/// `modelFolder` nor `MAKE_YOUR_ANCHOR_MODEL`) the Source passes through, and the user is told.
/// Renders frame `time` into `window`; `draft` is the host's draft render quality (a viewer or
/// scrub render), which renders a preview.
pub fn render(
    effect: ImageEffect,
    time: f64,
    window: Rect,
    draft: bool,
) -> Result<Status, EffectError> {
    let mut settings = Settings::read(effect.param_set()?, time)?;
    settings.preview |= draft;
    let env = std::env::var(ENV_MODEL_FOLDER).ok();
    match resolve_model_folder(&settings.model_folder, env.as_deref())? {
        Some(folder) => super::body::render(effect, time, window, &settings, &folder),
        None => {
            tell_pass_through(effect);
            pass_through(effect, time, window)
        }
    }
}

/// The text shown while no model folder is set.
pub const NO_MODEL_TEXT: &str = "No model folder is set, so Make Your Anchor passes the Source through unchanged: set modelFolder (or the MAKE_YOUR_ANCHOR_MODEL environment variable) to a Make-Your-Anchor model folder";

/// Log once per process, and show a persistent message on the instance, that we pass through.
fn tell_pass_through(effect: ImageEffect) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if !LOGGED.swap(true, Ordering::SeqCst) {
        log::info!("{NO_MODEL_TEXT}");
    }
    if let Err(e) = anchor_ofx::message::set_persistent_message(
        effect,
        anchor_ofx::MessageType::Warning,
        "org.makeyouranchor.Anchor.noModel",
        NO_MODEL_TEXT,
    ) {
        log::debug!("could not set the persistent message: {e}");
    }
}

/// Copy the Source to the Output, converting depth and layout (alpha 1 where Source has none).
fn pass_through(effect: ImageEffect, time: f64, window: Rect) -> Result<Status, EffectError> {
    let source_clip = effect.clip(SOURCE_CLIP)?;
    if !source_clip.is_connected()? {
        return Err(EffectError::SourceNotConnected);
    }
    let source = source_clip
        .image(time, None)?
        .ok_or(EffectError::NoSourceImage { time })?;
    let source_view = checked_view(&source, SOURCE_CLIP, time)?;
    let source_layout = source_view.layout();
    let frame = read_frame(effect, &source_view, window, time)?;
    drop(source);

    let output_clip = effect.clip(OUTPUT_CLIP)?;
    let mut output = output_clip
        .image(time, None)?
        .ok_or(EffectError::NoOutputImage { time })?;
    let mut output_view = checked_view_mut(&mut output, OUTPUT_CLIP, time)?;
    write_frame(effect, &frame, &mut output_view, time)?;
    log::debug!(
        "passed frame {time} through: window {window:?}, Source {source_layout:?} to Output {:?}",
        output_view.layout()
    );
    Ok(Status::Ok)
}

/// Check an image's format and size, and view its pixels.
fn checked_view<'a>(
    image: &'a Image,
    clip: &'static str,
    time: f64,
) -> Result<PixelView<'a>, EffectError> {
    check_image(image, clip, time)?;
    image.view().map_err(|e| bad_image(e, clip, time))
}

fn checked_view_mut<'a>(
    image: &'a mut Image,
    clip: &'static str,
    time: f64,
) -> Result<PixelViewMut<'a>, EffectError> {
    check_image(image, clip, time)?;
    image.view_mut().map_err(|e| bad_image(e, clip, time))
}

fn bad_image(e: anchor_ofx::Error, clip: &'static str, time: f64) -> EffectError {
    match e {
        anchor_ofx::Error::Pixels(p) => EffectError::BadImage {
            clip,
            time,
            detail: p.to_string(),
        },
        other => EffectError::Ofx(other),
    }
}

/// Reject unsupported depth/components, then empty bounds.
fn check_image(image: &Image, clip: &'static str, time: f64) -> Result<(), EffectError> {
    let depth = image.depth_name()?;
    let components = image.components_name()?;
    if anchor_ofx::BitDepth::from_ofx_name(&depth).is_err()
        || anchor_ofx::Components::from_ofx_name(&components).is_err()
    {
        return Err(EffectError::UnsupportedPixels {
            clip,
            time,
            depth,
            components,
        });
    }
    let bounds = image.bounds()?;
    if bounds.is_empty() {
        return Err(EffectError::EmptyImage {
            clip,
            time,
            width: bounds.width(),
            height: bounds.height(),
        });
    }
    Ok(())
}

/// Something that can say "stop": the host's `abort()`, or a stub in tests.
pub trait Abort {
    /// Whether to stop now.
    fn should_abort(&self) -> bool;
}

impl Abort for ImageEffect {
    fn should_abort(&self) -> bool {
        self.abort()
    }
}

/// Read `window` of `view` into a frame (transparent black outside the image's bounds), checking
/// `abort` before every row. A window too large to hold is refused ([`Frame::for_window`]).
pub fn read_frame(
    abort: impl Abort,
    view: &PixelView<'_>,
    window: Rect,
    time: f64,
) -> Result<Frame, EffectError> {
    let mut frame = Frame::for_window(window, time)?;
    let stride = frame.stride();
    if stride == 0 {
        return Ok(frame);
    }
    for (row, y) in frame
        .rgba
        .chunks_exact_mut(stride)
        .zip(window.y1..window.y2)
    {
        if abort.should_abort() {
            return Err(EffectError::Aborted { time });
        }
        view.read_row(y, window.x1, row);
    }
    Ok(frame)
}

/// Write a frame into `view` at the frame's bounds (clipped to the image), checking `abort`
/// before every row.
pub fn write_frame(
    abort: impl Abort,
    frame: &Frame,
    view: &mut PixelViewMut<'_>,
    time: f64,
) -> Result<(), EffectError> {
    let stride = frame.stride();
    if stride == 0 {
        return Ok(());
    }
    for (row, y) in frame
        .rgba
        .chunks_exact(stride)
        .zip(frame.bounds.y1..frame.bounds.y2)
    {
        if abort.should_abort() {
            return Err(EffectError::Aborted { time });
        }
        view.write_row(y, frame.bounds.x1, row);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anchor_ofx::{BitDepth, Components, PixelLayout};
    use std::cell::Cell;

    struct Never;
    impl Abort for Never {
        fn should_abort(&self) -> bool {
            false
        }
    }

    /// Aborts on the `n`-th check.
    struct After(Cell<u32>);
    impl Abort for &After {
        fn should_abort(&self) -> bool {
            let left = self.0.get();
            self.0.set(left.saturating_sub(1));
            left == 0
        }
    }

    #[test]
    fn byte_rgb_negative_rows_to_float_rgba_with_offset_window() {
        // Source: 2x2 Byte RGB at (10, 20), rows stored top-down (negative rowBytes, padded to 8).
        let mut src = vec![0u8; 16];
        src[0..6].copy_from_slice(&[1, 2, 3, 4, 5, 6]); // row y=21
        src[8..14].copy_from_slice(&[255, 0, 51, 0, 255, 102]); // row y=20
        let rgb8 = PixelLayout::new(BitDepth::Byte, Components::Rgb);
        let view = PixelView::new(&src, 8, Rect::new(10, 20, 12, 22), -8, rgb8).unwrap();
        // The host asks for a window one pixel wider on the left than the Source bounds.
        let window = Rect::new(9, 20, 12, 22);
        let frame = read_frame(Never, &view, window, 0.0).unwrap();
        assert_eq!(
            &frame.rgba[0..4],
            &[0.0, 0.0, 0.0, 0.0],
            "outside Source: transparent"
        );
        assert_eq!(
            &frame.rgba[4..8],
            &[1.0, 0.0, 0.2, 1.0],
            "alpha 1 where Source has none"
        );
        assert_eq!(&frame.rgba[8..12], &[0.0, 1.0, 0.4, 1.0]);
        assert_eq!(
            &frame.rgba[16..20],
            &[1.0 / 255.0, 2.0 / 255.0, 3.0 / 255.0, 1.0]
        );

        let mut out = vec![0u8; 3 * 2 * 16];
        let rgbaf = PixelLayout::new(BitDepth::Float, Components::Rgba);
        let mut out_view = PixelViewMut::new(&mut out, 0, window, 48, rgbaf).unwrap();
        write_frame(Never, &frame, &mut out_view, 0.0).unwrap();
        let floats: Vec<f32> = out
            .chunks_exact(4)
            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(
            floats, frame.rgba,
            "Float RGBA output holds the frame exactly"
        );
    }

    #[test]
    fn host_sized_buffers_above_the_caps_are_refused_before_allocating() {
        assert_eq!(
            image_bytes("Source", "image", 0.0, 1920, 1080, 16).ok(),
            Some(1920 * 1080 * 16)
        );
        // Exactly at the caps: 32768 pixels per side, 2 GiB per buffer.
        assert_eq!(
            image_bytes("Source", "image", 0.0, MAX_IMAGE_SIDE, 16384, 4).ok(),
            Some(MAX_IMAGE_BYTES)
        );
        let err = |w, h, bpp| image_bytes("Source", "image", 3.0, w, h, bpp).err();
        assert!(err(MAX_IMAGE_SIDE + 1, 1, 1).is_some(), "one side too wide");
        assert!(err(16384, 16385, 8).is_some(), "one row past 2 GiB");
        assert!(
            err(usize::MAX, usize::MAX, 16).is_some(),
            "overflow is refused, not wrapped"
        );
        // The absurd RoD of issue 14: 100000 x 100000 RGBA float.
        let e = Frame::for_window(Rect::new(0, 0, 100_000, 100_000), 12.0).unwrap_err();
        assert_eq!(e.status(), Status::ErrMemory);
        assert_eq!(e.message_id(), "org.makeyouranchor.Anchor.imageTooLarge");
        assert_eq!(
            e.to_string(),
            "The Output render window at frame 12 is 100000x100000 pixels, which would take 149.0 GiB of memory: Make Your Anchor holds images of at most 32768 pixels per side and 2.0 GiB per buffer. Render a smaller region, or lower the project or clip resolution"
        );
        let small = err(40_000, 2, 3).unwrap();
        assert_eq!(
            small.to_string(),
            "The Source image at frame 3 is 40000x2 pixels, which would take 240000 bytes of memory: Make Your Anchor holds images of at most 32768 pixels per side and 2.0 GiB per buffer. Render a smaller region, or lower the project or clip resolution"
        );
        // read_frame refuses before allocating the frame.
        let mem = vec![0u8; 4];
        let rgba8 = PixelLayout::new(BitDepth::Byte, Components::Rgba);
        let view = PixelView::new(&mem, 0, Rect::new(0, 0, 1, 1), 4, rgba8).unwrap();
        let huge = Rect::new(-50_000, -50_000, 50_000, 50_000);
        assert!(matches!(
            read_frame(Never, &view, huge, 0.0),
            Err(EffectError::ImageTooLarge {
                clip: "Output",
                width: 100_000,
                height: 100_000,
                ..
            })
        ));
    }

    #[test]
    fn abort_stops_reading_and_writing() {
        let mem = vec![0u8; 4 * 4 * 4];
        let rgba8 = PixelLayout::new(BitDepth::Byte, Components::Rgba);
        let view = PixelView::new(&mem, 0, Rect::new(0, 0, 4, 4), 16, rgba8).unwrap();
        let after_two = After(Cell::new(2));
        let err = read_frame(&after_two, &view, Rect::new(0, 0, 4, 4), 7.0).err();
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some("Rendering frame 7 was aborted by the host")
        );
        let frame = Frame::new(Rect::new(0, 0, 4, 4));
        let mut out = vec![9u8; 64];
        let mut out_view =
            PixelViewMut::new(&mut out, 0, Rect::new(0, 0, 4, 4), 16, rgba8).unwrap();
        let after_one = After(Cell::new(1));
        assert!(write_frame(&after_one, &frame, &mut out_view, 7.0).is_err());
        assert_eq!(
            &out[0..16],
            &[0u8; 16],
            "first row written before the abort"
        );
        assert_eq!(&out[16..32], &[9u8; 16], "later rows untouched");
    }
}
