//! The effect's bridge to the engine: the Source clip as the engine's lazily fetched control
//! frames, the Appearance clip (or the model's default photo), host progress and abort as the
//! engine's [`Progress`], and the rendered body frame written back at the Source's RoD.
//!
//! - **Frames and windows.** The Source clip's frame range (`kOfxImageEffectPropFrameRange`) is
//!   the clip: index `i` is time `range.min + i`, so windows are anchored to the clip whatever
//!   frames a host (or a farm node) asks for, and Resolve's timeline frames (e.g. 86400…) map to
//!   indices 0…. GetFramesNeeded answers with the engine's dependency cone as one range. A host
//!   without the clip's range (MLT 7.40) gives the effect's, else the frame being rendered alone.
//! - **Pixels in.** Any depth/layout is read through `anchor_ofx::pixels`, top row first, converted
//!   to 8-bit sRGB (see `colour`), then resized to the working resolution with PIL LANCZOS by the
//!   engine exactly as `anchor render` resizes PNG frames; for 8-bit sRGB input the control
//!   frames are therefore bit-identical to the CLI's. Higher depths are quantised to 8 bits first,
//!   as the reference only ever sees 8-bit PNGs.
//!   A render fetches each Source frame of its cone once (the engine keeps a request's
//!   working-resolution pixels), not again for every window batch that reads it.
//! - **Framing** (issue 16, `engine::framing`). Each Source frame the engine fetches is framed
//!   into the working square here, before the engine sees it, so every frame of every window is
//!   framed alike and the engine keys the framed pixels (a change of framing never reuses cached
//!   frames): `fit` (the default) pads the plate to a square around its centre, `region` takes
//!   the square of `regionCenter`/`regionSize` read at that frame's own time (they animate),
//!   `squash` resizes both axes as the original does. For a square plate `fit` is `squash`, byte
//!   for byte. The region's canonical centre (y up) becomes plate pixels (rows from the top)
//!   through the Source RoD at that time, at pixel aspect 1 like the rest of the effect.
//!   With `faceEnhance` on, a framing other than squash (fit of a square plate aside) runs as
//!   squash, with a warning once: the face pass places the face on the squashed frame.
//! - **Pixels out.** The 8-bit frame (the reference's floor quantisation) is framed back from
//!   the working square onto the Source RoD with the same Pillow LANCZOS filter (no resize when
//!   the sizes agree), decoded to the host's encoding and written in the Output depth. Alpha
//!   (`outputAlpha`): `opaque` is 1 over the plate (0 outside a region, where the colour is
//!   black), `silhouette` is the Source frame's mesh silhouette at the plate size, feathered by
//!   `matteFeather` (`engine::framing::silhouette_matte`), also 0 outside a region. The colour
//!   is premultiplied by alpha in the host's encoding, and GetClipPreferences declares the
//!   Output premultiplied (opaque when alpha is 1 everywhere).
//! - **No temporal access** (MLT): windows of one frame (window 1, overlap 0), so only frame `t`
//!   is ever read; the user is warned once per process.
use super::colour::{self, Encoding};
use super::error::EffectError;
use super::params::{self, Settings};
use super::render::{image_bytes, write_frame, Frame};
use super::state;
use super::{APPEARANCE_CLIP, OUTPUT_CLIP, SOURCE_CLIP};
use crate::engine::device::DeviceChoice;
use crate::engine::framing::{self, Framing};
use crate::engine::resample::{resize_rgb8, Filter};
use crate::engine::service::{self, Appearance, ControlSource, RenderSettings, ServiceError};
use crate::engine::temporal::{Fusion, Progress, Tail};
use crate::engine::{EngineError, Result as EngineResult};
use anchor_ofx::message::{self, MessageType};
use anchor_ofx::names::kOfxImageEffectContextGeneral;
use anchor_ofx::{Clip, ImageEffect, ParamSet, Rect, Status};
use candle_core::DType;
use openfx::sys::generic::core::OfxRangeD;
use parking_lot::Mutex;
use std::ffi::CStr;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The text of the one-time warning for hosts without temporal clip access.
pub const NO_TEMPORAL_WARNING: &str = "The host gives Make Your Anchor no temporal clip access, so it cannot read the neighbouring frames a window needs: every frame is denoised on its own (window 1), which flickers more. Use a host with temporal clip access (Natron, Resolve) for the temporally consistent result";

/// The environment variable holding the memory limit in MiB (weights + one window batch).
pub const ENV_MEMORY_MIB: &str = "MAKE_YOUR_ANCHOR_MEMORY_MIB";

/// The text of the warning posted when `cacheMiB` is below what one frame request touches.
pub fn cache_floor_warning(requested_mib: usize, floor_mib: usize) -> String {
    format!(
        "cacheMiB is {requested_mib} MiB, below the {floor_mib} MiB that one frame's temporal denoising keeps in the cache at these settings: Make Your Anchor uses {floor_mib} MiB, because a smaller cache would recompute evicted windows over and over. Set cacheMiB to at least {floor_mib}"
    )
}

/// The memory limit of `MAKE_YOUR_ANCHOR_MEMORY_MIB` in bytes: unset, empty or 0 means no limit;
/// a value that is not a whole number of MiB is ignored with a warning (logged once).
pub fn memory_limit(value: Option<&str>) -> Option<usize> {
    let v = value?.trim();
    if v.is_empty() {
        return None;
    }
    match v.parse::<usize>() {
        Ok(0) => None,
        Ok(mib) => Some(mib.saturating_mul(1 << 20)),
        Err(_) => {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::SeqCst) {
                log::warn!("{ENV_MEMORY_MIB}={v:?} is not a whole number of MiB: no memory limit");
            }
            None
        }
    }
}

/// The engine settings of `settings` for a host with (or without) temporal clip access.
pub fn render_settings(settings: &Settings, folder: &Path, temporal: bool) -> RenderSettings {
    let pos = |v: i32| usize::try_from(v).unwrap_or(0);
    let (window, overlap) = if temporal {
        (pos(settings.window), pos(settings.overlap))
    } else {
        (1, 0)
    };
    RenderSettings {
        folder: folder.to_path_buf(),
        device: match settings.device {
            params::Device::Auto => DeviceChoice::Auto,
            params::Device::Cpu => DeviceChoice::Cpu,
            params::Device::Cuda(n) => DeviceChoice::Cuda(n as usize),
        },
        dtype: match settings.precision {
            params::Precision::F32 => DType::F32,
            params::Precision::F16 => DType::F16,
            params::Precision::Bf16 => DType::BF16,
        },
        steps: pos(settings.steps).max(1),
        guidance: settings.guidance,
        control_scale: settings.control_scale,
        control_residuals: settings.control_residuals,
        window,
        overlap,
        fusion: match settings.fusion {
            params::Fusion::Flat => Fusion::Flat,
            params::Fusion::Pyramid => Fusion::Pyramid,
            params::Fusion::OverlapLinear => Fusion::OverlapLinear,
        },
        tail: match settings.tail {
            params::Tail::Paper => Tail::Paper,
            params::Tail::Full => Tail::Full,
        },
        resolution: pos(settings.resolution),
        seed: settings.seed.max(0) as u64,
        cache_bytes: pos(settings.cache_mib).saturating_mul(1 << 20),
        memory_limit: memory_limit(std::env::var(ENV_MEMORY_MIB).ok().as_deref()),
        preview: settings.preview,
    }
}

/// The Source clip's frames: first frame and count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipFrames {
    /// `kOfxImageEffectPropFrameRange` min.
    pub first: f64,
    /// `kOfxImageEffectPropFrameRange` max.
    pub last: f64,
}

impl ClipFrames {
    /// The Source clip's frames for a render at `time`: the clip's frame range
    /// (`kOfxImageEffectPropFrameRange`), else the effect's, else `time` alone. MLT 7.40 sets the
    /// range on neither (only in the Begin/EndSequenceRender arguments, as [t, t]), and its
    /// `clipGetImage` returns frame `t` whatever time is asked, so a clip of the one frame being
    /// rendered is exactly what such a host can give. A range that is not a finite min ≤ max
    /// counts as absent. Never fails: the range only anchors windows.
    pub fn of(effect: ImageEffect, clip: &Clip, time: f64) -> Self {
        let usable = |r: anchor_ofx::Result<OfxRangeD>| match r {
            Ok(r) if r.min.is_finite() && r.max.is_finite() && r.min <= r.max => Ok(r),
            Ok(r) => Err(format!("the range {}-{} holds no frame", r.min, r.max)),
            Err(e) => Err(e.to_string()),
        };
        let range =
            usable(clip.frame_range()).or_else(|clip_why| match usable(effect.frame_range()) {
                Ok(r) => {
                    log_fallback(&format!(
                        "the Source clip's frame range is unusable ({clip_why}): using the \
                         effect's frame range {}-{}",
                        r.min, r.max
                    ));
                    Ok(r)
                }
                Err(effect_why) => {
                    log_fallback(&format!(
                        "neither the Source clip's frame range ({clip_why}) nor the effect's \
                         ({effect_why}) is usable: each frame is rendered as a clip of its own"
                    ));
                    Err(())
                }
            });
        match range {
            Ok(r) => Self {
                first: r.min,
                last: r.max,
            },
            Err(()) => Self {
                first: time,
                last: time,
            },
        }
    }

    /// Frames in the clip.
    pub fn len(&self) -> usize {
        let n = (self.last - self.first).round() + 1.0;
        if n.is_finite() && n >= 1.0 {
            n as usize
        } else {
            0
        }
    }

    /// True when the range holds no frame (a host bug).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The clip index of `time`, when `time` is one of the clip's frames.
    pub fn index(&self, time: f64) -> Result<usize, EffectError> {
        let i = time - self.first;
        let r = i.round();
        if (i - r).abs() > 1e-6 || r < 0.0 || r as usize >= self.len() {
            return Err(EffectError::FrameOutsideClip {
                time,
                first: self.first,
                last: self.last,
            });
        }
        Ok(r as usize)
    }

    /// The time of clip index `i`.
    pub fn time(&self, i: usize) -> f64 {
        self.first + i as f64
    }
}

/// Log a frame-range fallback: once at info level per process, then at debug level (hosts
/// without the range hit it on every frame).
fn log_fallback(text: &str) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if LOGGED.swap(true, Ordering::SeqCst) {
        log::debug!("{text}");
    } else {
        log::info!("{text}");
    }
}

/// GetFramesNeeded: the Source frames (as one inclusive range of times) that a render at `time`
/// reads, or `None` when only `time` itself is read.
pub fn frames_needed(
    settings: &Settings,
    folder: &Path,
    temporal: bool,
    clip: &ClipFrames,
    time: f64,
) -> Option<(f64, f64)> {
    if !temporal {
        return None;
    }
    let i = clip.index(time).ok()?;
    let rs = render_settings(settings, folder, temporal);
    let Range { start, end } = rs.frames_needed(clip.len(), i).ok()?;
    Some((clip.time(start), clip.time(end.saturating_sub(1))))
}

/// An image as interleaved 8-bit sRGB, top row first.
pub(super) fn image_rgb8(
    clip: &Clip,
    time: f64,
    name: &'static str,
    encoding: Encoding,
) -> EngineResult<Option<(Vec<u8>, usize, usize)>> {
    let host = |e: anchor_ofx::Error| EngineError::Input(format!("{name} at frame {time}: {e}"));
    let Some(img) = clip.image(time, None).map_err(host)? else {
        return Ok(None);
    };
    let view = img.view().map_err(host)?;
    let b = view.bounds();
    let (w, h) = (b.width(), b.height());
    if w == 0 || h == 0 {
        return Err(EngineError::Input(format!(
            "the {name} image at frame {time} is empty ({w}x{h} pixels)"
        )));
    }
    let bytes =
        image_bytes(name, "image", time, w, h, 3).map_err(|e| EngineError::Input(e.to_string()))?;
    let mut row = vec![0f32; w * 4];
    let mut rgb = Vec::with_capacity(bytes);
    for y in (b.y1..b.y2).rev() {
        view.read_row(y, b.x1, &mut row);
        for px in row.chunks_exact(4) {
            for &v in &px[..3] {
                rgb.push(colour::to_srgb8(v, encoding));
            }
        }
    }
    Ok(Some((rgb, w, h)))
}

/// Interleaved 8-bit RGB, top row first: `(pixels, width, height)`.
type Plate = (Vec<u8>, usize, usize);

/// The engine framing of `mode` for a plate whose pixel RoD is `rod`; for `region`, the square
/// of `region` (canonical coordinates, y up: centre and side, the plate's centre and shorter
/// side where the parameters leave them) in plate pixels (rows from the top).
pub fn engine_framing(
    mode: params::Framing,
    region: params::RegionParams,
    rod: Rect,
) -> EngineResult<Framing> {
    Ok(match mode {
        params::Framing::Squash => Framing::Squash,
        params::Framing::Fit => Framing::Fit,
        params::Framing::Region => {
            let side = if region.size >= 0.5 && region.size.is_finite() {
                region.size.round()
            } else {
                rod.width().min(rod.height()).max(1) as f64
            };
            let [cx, cy] = region.center.unwrap_or([
                (f64::from(rod.x1) + f64::from(rod.x2)) / 2.0,
                (f64::from(rod.y1) + f64::from(rod.y2)) / 2.0,
            ]);
            let left = cx - side / 2.0 - f64::from(rod.x1);
            let top = f64::from(rod.y2) - (cy + side / 2.0);
            Framing::region(left.round() as i64, top.round() as i64, side as usize)?
        }
    })
}

/// The Source clip as the engine's control frames, each framed into the working square.
struct SourceFrames {
    effect: ImageEffect,
    clip: Clip,
    frames: ClipFrames,
    encoding: Encoding,
    /// `clipGetImage` calls made for the engine by this render (logged at debug level).
    fetches: AtomicUsize,
    /// The framing (the region is read at each frame's own time from `params`).
    framing: params::Framing,
    params: ParamSet,
    /// The working resolution; `None` when the settings hold no valid one (the engine then
    /// refuses the request with its own message before it reads a frame).
    res: Option<usize>,
    /// The clip index whose plate the render keeps for the silhouette matte, and the plate.
    keep: Option<usize>,
    kept: Mutex<Option<Plate>>,
}

impl SourceFrames {
    /// The engine framing of clip frame `f` (time `t`): the region at `t`, placed on the RoD
    /// at `t`.
    fn framing_at(&self, t: f64) -> EngineResult<Framing> {
        if self.framing != params::Framing::Region {
            return engine_framing(self.framing, Default::default(), Rect::new(0, 0, 1, 1));
        }
        let rod = source_rod(&self.clip, t).map_err(|e| EngineError::Input(e.to_string()))?;
        engine_framing(self.framing, params::region_at(self.params, t), rod)
    }

    /// Frame `f` as the host gives it (the plate), fetched for the engine.
    fn plate(&self, f: usize) -> EngineResult<Plate> {
        // A render reads its whole cone to key it before the first batch: honour an abort
        // during that phase too.
        if self.effect.abort() {
            return Err(EngineError::Cancelled);
        }
        let t = self.frames.time(f);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        image_rgb8(&self.clip, t, SOURCE_CLIP, self.encoding)?.ok_or_else(|| {
            EngineError::Input(format!(
                "the host returned no Source image at frame {t}, which the temporal window needs"
            ))
        })
    }
}

impl ControlSource for SourceFrames {
    fn len(&self) -> usize {
        self.frames.len()
    }

    fn rgb8(&self, f: usize) -> EngineResult<(Vec<u8>, usize, usize)> {
        let (plate, w, h) = self.plate(f)?;
        if self.keep == Some(f) {
            *self.kept.lock() = Some((plate.clone(), w, h));
        }
        let Some(res) = self.res else {
            return Ok((plate, w, h));
        };
        let t = self.frames.time(f);
        let framed = self
            .framing_at(t)
            .and_then(|framing| framing.frame_in(&plate, w, h, res))
            .map_err(|e| EngineError::Input(format!("Source frame {t}: {e}")))?;
        Ok((framed, res, res))
    }
}

/// Host progress bar and abort as the engine's progress.
struct HostProgress {
    effect: ImageEffect,
    bar: Option<Mutex<anchor_ofx::Progress>>,
    total: usize,
    done: AtomicUsize,
    cancelled: AtomicBool,
}

// SAFETY: the progress suite is called from the render thread that owns this value, and OFX
// allows suite calls on an instance from render threads; the mutex serialises them.
unsafe impl Send for HostProgress {}
unsafe impl Sync for HostProgress {}

impl Progress for HostProgress {
    fn window_done(&self, _step: usize, _steps: usize, _window: usize) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(bar) = &self.bar {
            let fraction = done as f64 / self.total.max(done) as f64;
            match bar.lock().update(fraction) {
                Ok(true) => {}
                Ok(false) => {
                    log::info!("progress: the host asked to cancel");
                    self.cancelled.store(true, Ordering::SeqCst);
                }
                Err(e) => log::debug!("progress update failed: {e}"),
            }
        }
    }

    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst) || self.effect.abort()
    }
}

/// The host's abort flag as the engine's progress (no bar): body frames the temporal face reads.
struct AbortOnly(ImageEffect);

impl Progress for AbortOnly {
    fn window_done(&self, _step: usize, _steps: usize, _window: usize) {}

    fn cancelled(&self) -> bool {
        self.0.abort()
    }
}

/// Post the no-temporal-access warning once per process.
fn warn_no_temporal(effect: ImageEffect) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if WARNED.swap(true, Ordering::SeqCst) {
        return;
    }
    log::warn!("{NO_TEMPORAL_WARNING}");
    if let Err(e) = message::message(
        effect,
        MessageType::Warning,
        "org.makeyouranchor.Anchor.noTemporalAccess",
        NO_TEMPORAL_WARNING,
    ) {
        log::debug!("could not post the warning: {e}");
    }
}

/// Turn an engine failure into the effect's error for frame `time`.
fn effect_error(e: ServiceError, time: f64) -> EffectError {
    match e {
        ServiceError::OutOfMemory { detail }
        | ServiceError::Model {
            source: EngineError::OutOfMemory { detail },
            ..
        }
        | ServiceError::Appearance(EngineError::OutOfMemory { detail })
        | ServiceError::Render(EngineError::OutOfMemory { detail }) => {
            EffectError::OutOfMemory { time, detail }
        }
        ServiceError::Model { folder, source } => EffectError::IncompatibleModel {
            path: folder,
            detail: source.to_string(),
        },
        ServiceError::Appearance(source) => EffectError::NoAppearance {
            time,
            detail: source.to_string(),
        },
        ServiceError::Render(EngineError::Cancelled) => EffectError::Aborted { time },
        ServiceError::Render(source) => EffectError::Engine {
            time,
            detail: source.to_string(),
        },
    }
}

/// Post the cache-floor warning once per process (the budget is process-wide).
fn warn_cache_floor(effect: ImageEffect, requested: usize, floor: usize) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if WARNED.swap(true, Ordering::SeqCst) {
        return;
    }
    let text = cache_floor_warning(requested >> 20, crate::engine::memory::mib_ceil(floor));
    log::warn!("{text}");
    if let Err(e) = message::message(
        effect,
        MessageType::Warning,
        "org.makeyouranchor.Anchor.cacheFloor",
        &text,
    ) {
        log::debug!("could not post the warning: {e}");
    }
}

/// Render the body frame at `time` into the Output clip.
/// The Source clip's region of definition at `time` in whole pixels, refused when empty or too
/// large to hold as an RGB buffer.
fn source_rod(clip: &Clip, time: f64) -> Result<Rect, EffectError> {
    let rod = clip.region_of_definition(time)?;
    let rod = Rect::new(
        rod.x1.floor() as i32,
        rod.y1.floor() as i32,
        rod.x2.ceil() as i32,
        rod.y2.ceil() as i32,
    );
    let (w, h) = (rod.width(), rod.height());
    if w == 0 || h == 0 {
        return Err(EffectError::EmptyImage {
            clip: SOURCE_CLIP,
            time,
            width: w,
            height: h,
        });
    }
    image_bytes(SOURCE_CLIP, "region of definition", time, w, h, 3)?;
    Ok(rod)
}

/// The progress total of frame `index`: the window batches of its cone, step by step (fewer
/// run when cached or shared); a preview runs one window.
fn batches_at_most(rs: &RenderSettings, len: usize, index: usize) -> usize {
    if rs.preview {
        return rs.steps;
    }
    match rs.plan(len) {
        Ok(plan) => plan.cone_batches(&[index], rs.steps) as usize,
        Err(_) => rs.steps,
    }
}

/// A failed body request as the effect's error at `time`.
fn body_error(e: ServiceError, time: f64, rs: &RenderSettings) -> EffectError {
    log::debug!(
        "frame {time}: no frame ({e}); {} network call(s) in this process",
        service::global().network_calls()
    );
    match effect_error(e, time) {
        // The engine's estimate against the limit this variable set (not an allocator failure):
        // name where the limit comes from.
        EffectError::OutOfMemory { time, detail }
            if rs.memory_limit.is_some() && detail.ends_with("are available") =>
        {
            EffectError::OutOfMemory {
                time,
                detail: format!("{detail} ({ENV_MEMORY_MIB})"),
            }
        }
        e => e,
    }
}

/// The render window's RGBA pixels: the sRGB-encoded `rgb` frame (top row first, the `rod`'s
/// size), in the host's `encoding`, where the window meets the RoD, transparent black
/// elsewhere. With `alpha` (one byte per pixel, as `rgb`) the colour is premultiplied by it;
/// without, alpha is 1.
fn place_on_rod(
    window: Rect,
    rod: Rect,
    rgb: &[u8],
    alpha: Option<&[u8]>,
    encoding: Encoding,
) -> Frame {
    let mut out = Frame::new(window);
    let w = rod.width();
    let stride = window.width() * 4;
    if stride > 0 {
        for (row, y) in out.rgba.chunks_exact_mut(stride).zip(window.y1..window.y2) {
            if y < rod.y1 || y >= rod.y2 {
                continue;
            }
            let r = (rod.y2 - 1 - y) as usize;
            for (px, x) in row.chunks_exact_mut(4).zip(window.x1..window.x2) {
                if x < rod.x1 || x >= rod.x2 {
                    continue;
                }
                let p = r * w + (x - rod.x1) as usize;
                let a = alpha.map_or(1.0, |a| f32::from(a[p]) / 255.0);
                for c in 0..3 {
                    px[c] = colour::from_srgb8(rgb[p * 3 + c], encoding) * a;
                }
                px[3] = a;
            }
        }
    }
    out
}

/// Loads the model of the instance's settings at `time` (BeginSequenceRender), so that the
/// host's first Render does not also wait for the weights to be read. Never fails the action:
/// without a model folder there is nothing to load, and a folder that cannot be loaded is
/// reported by the Render that meets it, with its message.
pub fn prepare(effect: ImageEffect, time: f64) {
    let result = (|| -> Result<(), EffectError> {
        let settings = Settings::read(effect.param_set()?, time)?;
        let env = std::env::var(params::ENV_MODEL_FOLDER).ok();
        let Some(folder) = params::resolve_model_folder(&settings.model_folder, env.as_deref())?
        else {
            return Ok(());
        };
        let temporal = state::with(|g| g.host.temporal_clip_access);
        let rs = render_settings(&settings, &folder, temporal);
        let started = std::time::Instant::now();
        match service::global().prepare(&rs) {
            Ok(()) => log::debug!(
                "BeginSequenceRender: model {} ready in {:.2} s",
                folder.display(),
                started.elapsed().as_secs_f64()
            ),
            Err(e) => log::debug!(
                "BeginSequenceRender: model {} not loaded ahead ({e}); the first Render reports it",
                folder.display()
            ),
        }
        super::face::prepare(&settings, &rs);
        Ok(())
    })();
    if let Err(e) = result {
        log::debug!("BeginSequenceRender: no model loaded ahead: {e}");
    }
}

pub fn render(
    effect: ImageEffect,
    time: f64,
    window: Rect,
    settings: &Settings,
    folder: &Path,
) -> Result<Status, EffectError> {
    // Refuse a render window too large to hold before any work (the frame is filled at the end).
    Frame::check_window(window, time)?;
    let host = state::with(|g| g.host.clone());
    let source_clip = effect.clip(SOURCE_CLIP)?;
    if !source_clip.is_connected()? {
        return Err(EffectError::SourceNotConnected);
    }
    let frames = ClipFrames::of(effect, &source_clip, time);
    let index = frames.index(time)?;
    let temporal = host.temporal_clip_access;
    let rs = render_settings(settings, folder, temporal);
    if !temporal && settings.window > 1 {
        warn_no_temporal(effect);
    }
    let encoding = source_encoding(&source_clip, settings, &host.name, time);
    log::debug!(
        "frame {time}: clip index {index} of {} (range {}-{}), {encoding:?} pixels, window {} overlap {}",
        frames.len(),
        frames.first,
        frames.last,
        rs.window,
        rs.overlap
    );

    // The appearance still, fetched at the render time (it is not animated).
    let general = effect.context()?.as_bytes() == kOfxImageEffectContextGeneral.to_bytes();
    let appearance_rgb = appearance_still(effect, general, time, encoding)?;
    let appearance = match &appearance_rgb {
        Some((data, width, height)) => Appearance::Rgb8 {
            data,
            width: *width,
            height: *height,
        },
        None => Appearance::ModelDefault,
    };

    // The frame goes back to the Source RoD: read it before the engine runs, so that an empty or
    // oversized RoD (or framing square) is refused before any work (buffers are sized from it).
    let rod = source_rod(&source_clip, time)?;
    let (w, h) = (rod.width(), rod.height());
    let mode = framing_for(effect, settings, w, h);
    let framing_now =
        engine_framing(mode, settings.region, rod).map_err(|e| EffectError::Engine {
            time,
            detail: e.to_string(),
        })?;
    if let Some(sq) = framing_now.square(w, h) {
        image_bytes(SOURCE_CLIP, "framing square", time, sq.size, sq.size, 3)?;
    }
    log::debug!("frame {time}: framing {framing_now} of the {w}x{h} Source");
    let source = SourceFrames {
        effect,
        clip: source_clip,
        frames,
        encoding,
        fetches: AtomicUsize::new(0),
        framing: mode,
        params: effect.param_set()?,
        res: rs.working_resolution().ok(),
        keep: (settings.output_alpha == params::OutputAlpha::Silhouette).then_some(index),
        kept: Mutex::new(None),
    };
    let total = batches_at_most(&rs, frames.len(), index);
    let bar = anchor_ofx::Progress::start(effect, "Make Your Anchor", "org.makeyouranchor.Anchor")
        .unwrap_or_else(|e| {
            log::debug!("no progress bar: {e}");
            None
        });
    let progress = HostProgress {
        effect,
        bar: bar.map(Mutex::new),
        total,
        done: AtomicUsize::new(0),
        cancelled: AtomicBool::new(false),
    };
    let engine = service::global();
    // The farm-wide cache, when the parameter or the environment names one.
    let env_shared = std::env::var(params::ENV_SHARED_CACHE).ok();
    let shared = params::resolve_shared_cache(&settings.shared_cache_folder, env_shared.as_deref());
    engine.set_shared_cache(shared.as_deref());
    let result = engine.render_frame(&rs, appearance, &source, index, &progress);
    drop(progress);
    let frame = result.map_err(|e| body_error(e, time, &rs))?;
    log::debug!(
        "frame {time}: {} Source fetch(es) by this render",
        source.fetches.load(Ordering::Relaxed)
    );
    if let Some(floor) = frame.cache_floor {
        warn_cache_floor(effect, rs.cache_bytes, floor);
    }
    log::debug!(
        "frame {time}: {} network call(s) by this render, {} in this process",
        frame.network_calls,
        engine.network_calls()
    );

    // Issue 7: the face pass on the body frame at the working resolution. The temporal face
    // reads other frames' body frames through the same (cached) engine requests.
    let abort_only = AbortOnly(effect);
    let body_at = |f: usize| -> EngineResult<Vec<u8>> {
        engine
            .render_frame(&rs, appearance, &source, f, &abort_only)
            .map(|r| r.rgb)
            .map_err(|e| match e {
                ServiceError::Render(EngineError::Cancelled) => EngineError::Cancelled,
                // Stays out of memory, so the face pass reports it as such.
                ServiceError::OutOfMemory { detail } => EngineError::OutOfMemory {
                    detail: format!("body frame {f}: {detail}"),
                },
                e => EngineError::Input(format!("body frame {f}: {e}")),
            })
    };
    let body = if settings.face_enhance {
        let face = super::face::FaceFrame {
            effect,
            settings,
            body: &rs,
            source: &source.clip,
            frames: source.frames,
            index,
            time,
            encoding,
            general,
            temporal,
            body_photo: appearance_rgb.as_ref(),
            body_at: &body_at,
        };
        super::face::enhance(&face, frame.rgb, frame.size)?
    } else {
        frame.rgb
    };
    let rgb = framing_now
        .frame_out(&body, frame.size, w, h)
        .map_err(|e| EffectError::Engine {
            time,
            detail: e.to_string(),
        })?;
    let alpha = output_alpha(&source, settings, &framing_now, index, time, (w, h))?;
    // Its size was checked before the engine ran (`Frame::check_window` above).
    let out = place_on_rod(window, rod, &rgb, alpha.as_deref(), encoding);
    write_output(effect, &out, time)?;
    Ok(Status::Ok)
}

/// The text of the one-time warning that the face pass runs on squashed frames.
pub fn face_framing_warning(framing: params::Framing) -> String {
    let name = match framing {
        params::Framing::Squash => "squash",
        params::Framing::Fit => "fit",
        params::Framing::Region => "region",
    };
    format!(
        "Face Enhance places the face on the squashed frame, so Make Your Anchor renders this non-square plate with framing squash instead of {name} while faceEnhance is on. Turn faceEnhance off to keep the plate's shape"
    )
}

/// The framing a render uses: `settings.framing`, except that with `faceEnhance` on any
/// framing that is not squash for this `w × h` plate runs as squash (warned once), since the
/// face pass places the face on the squashed frame.
fn framing_for(effect: ImageEffect, settings: &Settings, w: usize, h: usize) -> params::Framing {
    let f = settings.framing;
    let is_squash = f == params::Framing::Squash || (f == params::Framing::Fit && w == h);
    if !settings.face_enhance || is_squash {
        return f;
    }
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::SeqCst) {
        let text = face_framing_warning(f);
        log::warn!("{text}");
        if let Err(e) = message::message(
            effect,
            MessageType::Warning,
            "org.makeyouranchor.Anchor.faceFraming",
            &text,
        ) {
            log::debug!("could not post the warning: {e}");
        }
    }
    params::Framing::Squash
}

/// The Output's alpha on the `w × h` plate (`None`: 1 everywhere): the framing's coverage,
/// times the Source frame's silhouette with `outputAlpha` silhouette.
fn output_alpha(
    source: &SourceFrames,
    settings: &Settings,
    framing: &Framing,
    index: usize,
    time: f64,
    (w, h): (usize, usize),
) -> Result<Option<Vec<u8>>, EffectError> {
    let silhouette = match settings.output_alpha {
        params::OutputAlpha::Opaque => {
            let full = framing.coverage(w, h);
            if (full.x0, full.y0, full.x1, full.y1) == (0, 0, w, h) {
                return Ok(None);
            }
            None
        }
        params::OutputAlpha::Silhouette => {
            // The plate the engine fetched for this frame, else (a cached request) fetched now.
            let kept = source.kept.lock().take();
            let (mesh, mw, mh) = match kept {
                Some(p) => p,
                None => source
                    .plate(index)
                    .map_err(|e| effect_error(ServiceError::Render(e), time))?,
            };
            let mesh = if (mw, mh) == (w, h) {
                mesh
            } else {
                resize_rgb8(&mesh, mw, mh, w, h, Filter::Lanczos)
            };
            let feather = usize::try_from(settings.matte_feather).unwrap_or(0);
            Some(framing::silhouette_matte(
                &mesh,
                w,
                h,
                framing::SILHOUETTE_THRESHOLD,
                feather,
            ))
        }
    };
    framing
        .output_alpha(w, h, silhouette.as_deref())
        .map(Some)
        .map_err(|e| EffectError::Engine {
            time,
            detail: e.to_string(),
        })
}

/// The Output's premultiplication for GetClipPreferences: opaque when the alpha is 1 over the
/// whole frame (`outputAlpha` opaque, framing squash or fit), premultiplied otherwise. Values the
/// host cannot give take the table defaults (fit, opaque).
pub fn output_premultiplication(params: ParamSet) -> &'static CStr {
    use anchor_ofx::names::{kOfxImageOpaque, kOfxImagePreMultiplied};
    let read =
        |name: &str, default: i32| params.param(name).and_then(|p| p.int()).unwrap_or(default);
    let region = read(params::FRAMING, 1) == 2;
    let silhouette = read(params::OUTPUT_ALPHA, 0) == 1;
    if region || silhouette {
        kOfxImagePreMultiplied
    } else {
        kOfxImageOpaque
    }
}

/// How the Source's pixels are encoded. The clip's depth only picks the default transfer
/// (colour::decide); the images carry their own depth, so a host without it (or with a depth we
/// do not know) reads as Byte.
fn source_encoding(source_clip: &Clip, settings: &Settings, host: &str, time: f64) -> Encoding {
    let depth = source_clip
        .pixel_depth()
        .inspect_err(|e| log::debug!("frame {time}: no Source clip depth ({e}); assuming Byte"))
        .ok()
        .and_then(|d| anchor_ofx::BitDepth::from_ofx_name(&d).ok())
        .unwrap_or(anchor_ofx::BitDepth::Byte);
    let clip_cs = source_clip
        .properties()
        .get_string(
            openfx::sys::image_effect_v1::colour::kOfxImageClipPropColourspace,
            0,
        )
        .ok();
    colour::decide(settings.colour, clip_cs.as_deref(), host, depth)
}

/// The Appearance clip's image at `time` (General context, connected), as 8-bit sRGB.
fn appearance_still(
    effect: ImageEffect,
    general: bool,
    time: f64,
    encoding: Encoding,
) -> Result<Option<(Vec<u8>, usize, usize)>, EffectError> {
    if !general {
        return Ok(None);
    }
    let clip = effect.clip(APPEARANCE_CLIP)?;
    if !clip.is_connected()? {
        return Ok(None);
    }
    image_rgb8(&clip, time, APPEARANCE_CLIP, encoding)
        .map_err(|e| effect_error(ServiceError::Appearance(e), time))
}

/// Writes `out` into the Output clip's image at `time`.
fn write_output(effect: ImageEffect, out: &Frame, time: f64) -> Result<(), EffectError> {
    let output_clip = effect.clip(OUTPUT_CLIP)?;
    let mut output = output_clip
        .image(time, None)?
        .ok_or(EffectError::NoOutputImage { time })?;
    let mut view = output.view_mut().map_err(|e| EffectError::BadImage {
        clip: OUTPUT_CLIP,
        time,
        detail: e.to_string(),
    })?;
    write_frame(effect, out, &mut view, time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_become_effect_errors_with_their_texts() {
        let oom = effect_error(
            ServiceError::from(candle_core::Error::Msg(
                "CUDA_ERROR_OUT_OF_MEMORY: out of memory".into(),
            )),
            4.0,
        );
        assert_eq!(
            oom.to_string(),
            "Out of memory while rendering frame 4 (CUDA_ERROR_OUT_OF_MEMORY: out of memory): lower resolution (the working resolution) or window (frames per window), choose f16 precision, or lower cacheMiB"
        );
        assert_eq!(oom.status(), Status::ErrMemory);
        // Any phase's allocation failure is out of memory, not a missing appearance.
        let appearance = effect_error(
            ServiceError::Appearance(EngineError::OutOfMemory {
                detail: "CUBLAS_STATUS_ALLOC_FAILED".into(),
            }),
            5.0,
        );
        assert_eq!(
            appearance.to_string(),
            "Out of memory while rendering frame 5 (CUBLAS_STATUS_ALLOC_FAILED): lower resolution (the working resolution) or window (frames per window), choose f16 precision, or lower cacheMiB"
        );
        let limit = effect_error(
            ServiceError::OutOfMemory {
                detail: "a window batch needs about 9 MiB, but only 1 MiB are available".into(),
            },
            7.0,
        );
        assert_eq!(
            limit.to_string(),
            "Out of memory while rendering frame 7 (a window batch needs about 9 MiB, but only 1 MiB are available): lower resolution (the working resolution) or window (frames per window), choose f16 precision, or lower cacheMiB"
        );
        assert_eq!(limit.status(), Status::ErrMemory);
        assert_eq!(memory_limit(None), None);
        assert_eq!(memory_limit(Some(" ")), None);
        assert_eq!(memory_limit(Some("0")), None);
        assert_eq!(memory_limit(Some("512")), Some(512 << 20));
        assert_eq!(memory_limit(Some("lots")), None);
        let cancelled = effect_error(ServiceError::Render(EngineError::Cancelled), 2.0);
        assert_eq!(
            cancelled.to_string(),
            "Rendering frame 2 was aborted by the host"
        );
        assert_eq!(cancelled.message_type(), MessageType::Log);
        let model = effect_error(
            ServiceError::Model {
                folder: "/m".into(),
                source: EngineError::config("/m/unet/config.json", "bad"),
            },
            0.0,
        );
        assert_eq!(
            model.to_string(),
            "The model folder /m is not a usable Make-Your-Anchor model (invalid config /m/unet/config.json: bad): choose a folder holding unet/, controlnet/, vae/, scheduler/, text_encoder/ and image_encoder/ (check it with `anchor inspect --model`)"
        );
        assert_eq!(model.status(), Status::Failed);
    }

    #[test]
    fn frames_needed_answers_the_cone_as_times() {
        let mut s = Settings {
            model_folder: String::new(),
            seed: 42,
            steps: 4,
            guidance: 7.5,
            control_scale: 2.0,
            control_residuals: Default::default(),
            window: 4,
            overlap: 1,
            fusion: params::Fusion::Flat,
            tail: params::Tail::Paper,
            resolution: 64,
            face_enhance: false,
            face_model_folder: String::new(),
            face_points: None,
            face_landmarks_file: String::new(),
            face_parser: String::new(),
            face_smoothing: 0.0,
            face_temporal: false,
            face_window: 16,
            face_overlap: 4,
            face_crop: 512,
            face_size: 256,
            face_steps: 20,
            face_guidance: 3.5,
            face_control_scale: 1.0,
            face_seed: 999,
            face_erode: 40,
            face_blur: 41,
            face_mesh_jpeg: true,
            device: params::Device::Cpu,
            precision: params::Precision::F32,
            cache_mib: 64,
            shared_cache_folder: String::new(),
            preview: false,
            colour: colour::ColourChoice::Auto,
            framing: params::Framing::Fit,
            region: Default::default(),
            output_alpha: params::OutputAlpha::Opaque,
            matte_feather: 2,
        };
        let clip = ClipFrames {
            first: 86400.0,
            last: 86429.0,
        };
        let m = Path::new("/m");
        assert_eq!(
            frames_needed(&s, m, true, &clip, 86415.0),
            Some((86403.0, 86427.0))
        );
        assert_eq!(frames_needed(&s, m, false, &clip, 86415.0), None);
        assert_eq!(frames_needed(&s, m, true, &clip, 90000.0), None);
        s.overlap = 4;
        assert_eq!(
            frames_needed(&s, m, true, &clip, 86415.0),
            None,
            "bad settings"
        );
    }

    #[test]
    fn the_region_parameters_become_a_square_of_plate_pixels() {
        let region = |center: Option<[f64; 2]>, size: f64| params::RegionParams { center, size };
        let framing = |r, rod| engine_framing(params::Framing::Region, r, rod).ok();
        // Canonical y up → rows from the top: the 40-pixel square centred at (100, 60) of a
        // 160×90 plate spans columns 80..120 and rows 10..50.
        let rod = Rect::new(0, 0, 160, 90);
        assert_eq!(
            framing(region(Some([100.0, 60.0]), 40.0), rod),
            Some(Framing::Region {
                x: 80,
                y: 10,
                size: 40
            })
        );
        // A RoD that does not start at the origin: plate pixels count from its corner.
        assert_eq!(
            framing(
                region(Some([110.0, 80.0]), 40.0),
                Rect::new(10, 20, 170, 110)
            ),
            Some(Framing::Region {
                x: 80,
                y: 10,
                size: 40
            })
        );
        // Unset: the plate's centre and its shorter side.
        assert_eq!(
            framing(region(None, 0.0), rod),
            Some(Framing::Region {
                x: 35,
                y: 0,
                size: 90
            })
        );
        assert!(framing(region(None, 1e9), rod).is_none(), "too large");
        for (mode, want) in [
            (params::Framing::Squash, Framing::Squash),
            (params::Framing::Fit, Framing::Fit),
        ] {
            assert_eq!(
                engine_framing(mode, region(Some([1.0, 2.0]), 3.0), rod).ok(),
                Some(want)
            );
        }
        assert_eq!(
            face_framing_warning(params::Framing::Fit),
            "Face Enhance places the face on the squashed frame, so Make Your Anchor renders this non-square plate with framing squash instead of fit while faceEnhance is on. Turn faceEnhance off to keep the plate's shape"
        );
    }

    #[test]
    fn clip_frames_map_timeline_frames_to_indices() {
        let c = ClipFrames {
            first: 86400.0,
            last: 86429.0,
        };
        assert_eq!(c.len(), 30);
        assert_eq!(c.index(86400.0).ok(), Some(0));
        assert_eq!(c.index(86429.0).ok(), Some(29));
        assert_eq!(c.time(5), 86405.0);
        assert_eq!(
            c.index(86430.0).err().map(|e| e.to_string()).as_deref(),
            Some("Frame 86430 is outside the Source clip's frame range 86400-86429: Make Your Anchor renders only frames of the mesh-render track")
        );
        assert!(c.index(86400.5).is_err());
        assert!(c.index(86399.0).is_err());
    }
}
