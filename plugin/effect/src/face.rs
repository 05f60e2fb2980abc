//! The face pass behind Render (issue 7): after the body frame, the face is placed,
//! re-rendered with the face model and blended back (`face_service.rs`, the engine's
//! `engine::face`). This file only gathers the inputs from the host.
//!
//! - **Placement**, per frame, from the first source present (issue 7): the `FaceMatte` clip when
//!   connected and non-empty (its box and principal axis; the matte is also the mask), else the
//!   five point parameters when `faceUsePoints` is on at that frame, else the frame's entry in
//!   `faceLandmarksFile`. The engine falls back from an empty matte to the landmarks itself.
//! - **Coordinates.** The point parameters are OFX positions: canonical coordinates, y up,
//!   origin at the bottom-left of the project, a pixel covering `[i, i+1)`. The reference's
//!   landmarks (and the landmarks file) are image coordinates: x right, y down from the top row,
//!   pixel centres at integers (OpenCV). A point `(X, Y)` on a Source with RoD `(x1, y1, x2, y2)`
//!   and pixel aspect ratio `par` is the image point `x = (X − x1) / par − 0.5`,
//!   `y = y2 − Y − 0.5`; both are then scaled to the working square as `anchor render` scales
//!   file landmarks: `x' = (x + 0.5)·s − 0.5`.
//! - **Matte.** An Alpha-only FaceMatte image gives its alpha; an RGB(A) one the Rec. 709 luma of
//!   its RGB (as `anchor render --face-matte` reads PNGs), quantised to 8 bits without any
//!   colour transfer (a matte is data), then resized to the working square bilinearly.
//! - **Mesh** = the Source frame at the working resolution (PIL LANCZOS, as the body's control).
//! - **Head reference** = the `FaceAppearance` clip when connected, else the face model folder's
//!   `head.png`, else the body's reference (the Appearance clip, else the body model folder's
//!   `appearance.png`): the same order as `anchor render` (`--face-appearance`, `head.png`,
//!   `--appearance`).
//! - **Frames without a face** pass the body frame through; one warning per clip and kind goes to
//!   the message suite and the log.
//! - **Temporal face** (`faceTemporal`, beyond the paper): the clip's face crops are denoised
//!   jointly in windows (`engine::face::temporal`), with every frame's placement resolved (and
//!   smoothed from the clip start, exactly as the CLI); the body frames of other frames come from
//!   the body engine's cache. Needs temporal clip access; without it the per-frame pass runs,
//!   with a warning once.
//! - **Smoothing** (`faceSmoothing` s > 0) smooths the crop transform exponentially with weight
//!   `1 − s` on the new frame (`anchor render --face-smooth 1−s`), over the placements of the
//!   previous frames of the clip, bounded by [`face_service::smoothing_history`] so that any frame
//!   renders alone; matte history needs temporal clip access.
use super::body::{image_rgb8, ClipFrames};
use super::colour::Encoding;
use super::error::EffectError;
use super::params::{self, Settings};
use super::{FACE_APPEARANCE_CLIP, FACE_MATTE_CLIP, SOURCE_CLIP};
use crate::engine::face::feather::FeatherSettings;
use crate::engine::face::inpaint::InpaintSettings;
use crate::engine::face::landmarks::{FivePoints, LandmarkTrack};
use crate::engine::face::temporal::FaceClipSource;
use crate::engine::face::warp::resize_linear_u8;
use crate::engine::face::{FaceSettings, FaceStatus, SkipReason};
use crate::engine::face_service::{self, FaceError, FaceRequest, FramePlacement};
use crate::engine::job::face::{head_reference, FaceMode, FaceStep};
use crate::engine::model::ModelLayout;
use crate::engine::pipeline;
use crate::engine::resample::{resize_rgb8, Filter};
use crate::engine::service::RenderSettings;
use crate::engine::{EngineError, Result as EngineResult};
use anchor_ofx::message::{self, MessageType};
use anchor_ofx::{Clip, Components, ImageEffect, ParamSet};
use openfx::sys::generic::core::OfxRectD;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the face pass needs from the body render of one frame.
pub struct FaceFrame<'a> {
    /// The instance.
    pub effect: ImageEffect,
    /// Parameters at the render time.
    pub settings: &'a Settings,
    /// The body request (device, dtype, model folder).
    pub body: &'a RenderSettings,
    /// The Source clip.
    pub source: &'a Clip,
    /// The Source clip's frames.
    pub frames: ClipFrames,
    /// Clip index of the frame.
    pub index: usize,
    /// Render time.
    pub time: f64,
    /// Encoding of the host's pixels.
    pub encoding: Encoding,
    /// General context (FaceMatte and FaceAppearance exist).
    pub general: bool,
    /// The host grants temporal clip access.
    pub temporal: bool,
    /// The body's reference photo from the Appearance clip, when connected.
    pub body_photo: Option<&'a (Vec<u8>, usize, usize)>,
    /// The body frame of another clip frame (RGB, working size), for the temporal face.
    pub body_at: &'a (dyn Fn(usize) -> EngineResult<Vec<u8>> + Send + Sync),
}

/// The face model folder of `param`: an existing directory, else an error saying what to set.
pub fn resolve_face_folder(param: &str) -> Result<PathBuf, EffectError> {
    let p = param.trim();
    if p.is_empty() {
        return Err(EffectError::FaceModelFolderMissing { path: None });
    }
    let path = PathBuf::from(p);
    if path.is_dir() {
        Ok(path)
    } else {
        Err(EffectError::FaceModelFolderMissing { path: Some(path) })
    }
}

/// The engine's face settings of `settings` (the reference's values by default).
pub fn face_settings(settings: &Settings) -> FaceSettings {
    let pos = |v: i32| usize::try_from(v).unwrap_or(0);
    FaceSettings {
        crop: pos(settings.face_crop),
        inpaint: InpaintSettings {
            size: pos(settings.face_size),
            steps: pos(settings.face_steps).max(1),
            guidance: settings.face_guidance,
            control_scale: settings.face_control_scale,
            seed: settings.face_seed.max(0) as u64,
            ..Default::default()
        },
        feather: FeatherSettings {
            erode: pos(settings.face_erode),
            blur: pos(settings.face_blur),
        },
        parser: Some(settings.face_parser.trim())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        mesh_jpeg: settings.face_mesh_jpeg,
    }
}

/// The face-pass request of `settings` with the face model `folder`, on the body's device and
/// precision.
pub fn face_request(settings: &Settings, body: &RenderSettings, folder: &Path) -> FaceRequest {
    FaceRequest {
        folder: folder.to_path_buf(),
        device: body.device,
        dtype: body.dtype,
        settings: face_settings(settings),
        smoothing: smoothing_weight(settings.face_smoothing),
    }
}

/// Loads the face model of `settings` ahead of the first Render (BeginSequenceRender), when the
/// face pass is on. Best effort: a folder that cannot be loaded is reported by the Render that
/// meets it.
pub fn prepare(settings: &Settings, body: &RenderSettings) {
    if !settings.face_enhance {
        return;
    }
    let Ok(folder) = resolve_face_folder(&settings.face_model_folder) else {
        return;
    };
    let started = std::time::Instant::now();
    match face_service::global().prepare_model(&face_request(settings, body, &folder)) {
        Ok(()) => log::debug!(
            "BeginSequenceRender: face model {} ready in {:.2} s",
            folder.display(),
            started.elapsed().as_secs_f64()
        ),
        Err(e) => log::debug!(
            "BeginSequenceRender: face model {} not loaded ahead ({e})",
            folder.display()
        ),
    }
}

/// The smoothing weight on the new frame of `faceSmoothing` (`None`: off).
pub fn smoothing_weight(smoothing: f64) -> Option<f64> {
    (smoothing.is_finite() && smoothing > 0.0).then(|| 1.0 - smoothing.min(1.0))
}

/// An OFX point (canonical, y up) as a working-size image point (y down, pixel centres at
/// integers) of a Source with RoD `rod` (canonical), pixel aspect ratio `par` and working side
/// `size` (see the module docs).
pub fn point_to_working(p: [f64; 2], rod: &OfxRectD, par: f64, size: usize) -> [f64; 2] {
    let par = if par.is_finite() && par > 0.0 {
        par
    } else {
        1.0
    };
    let w = ((rod.x2 - rod.x1) / par).round().max(1.0);
    let h = (rod.y2 - rod.y1).round().max(1.0);
    let x = (p[0] - rod.x1) / par - 0.5;
    let y = rod.y2 - p[1] - 0.5;
    file_to_working([x, y], w, h, size)
}

/// A Source-pixel image point (the landmarks file's convention) of a `w × h` Source as a
/// working-size point, exactly as `anchor render` scales its landmarks.
pub fn file_to_working(p: [f64; 2], w: f64, h: f64, size: usize) -> [f64; 2] {
    let (sx, sy) = (size as f64 / w, size as f64 / h);
    [(p[0] + 0.5) * sx - 0.5, (p[1] + 0.5) * sy - 0.5]
}

/// 8-bit quantisation without a transfer function (a matte is data, not colour).
fn q8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// The Rec. 709 luma of 8-bit RGB as the `image` crate computes it (`to_luma8`).
fn luma8(r: u8, g: u8, b: u8) -> u8 {
    ((2126 * r as u32 + 7152 * g as u32 + 722 * b as u32) / 10000) as u8
}

/// The FaceMatte image at `time` as one byte per pixel, top row first: `(matte, w, h)`.
fn image_matte8(clip: &Clip, time: f64) -> EngineResult<Option<(Vec<u8>, usize, usize)>> {
    let host = |e: anchor_ofx::Error| {
        EngineError::Input(format!("{FACE_MATTE_CLIP} at frame {time}: {e}"))
    };
    let Some(img) = clip.image(time, None).map_err(host)? else {
        return Ok(None);
    };
    let alpha_only = img.components().map_err(host)? == Components::Alpha;
    let view = img.view().map_err(host)?;
    let b = view.bounds();
    let (w, h) = (b.width(), b.height());
    if w == 0 || h == 0 {
        return Ok(None);
    }
    let bytes = super::render::image_bytes(FACE_MATTE_CLIP, "image", time, w, h, 1)
        .map_err(|e| EngineError::Input(e.to_string()))?;
    let mut row = vec![0f32; w * 4];
    let mut out = Vec::with_capacity(bytes);
    for y in (b.y1..b.y2).rev() {
        view.read_row(y, b.x1, &mut row);
        for px in row.chunks_exact(4) {
            out.push(if alpha_only {
                q8(px[3])
            } else {
                luma8(q8(px[0]), q8(px[1]), q8(px[2]))
            });
        }
    }
    Ok(Some((out, w, h)))
}

/// Reads the placement inputs of clip frames for one render.
struct Placements<'a> {
    frame: &'a FaceFrame<'a>,
    params: ParamSet,
    matte: Option<Clip>,
    track: Option<Arc<LandmarkTrack>>,
    rod: OfxRectD,
    par: f64,
    size: usize,
}

impl Placements<'_> {
    /// The placement of clip frame `f` at time `t`; `points` are the point parameters there.
    fn at(&self, f: usize, points: Option<[[f64; 2]; 5]>) -> Result<FramePlacement, EffectError> {
        let t = self.frame.frames.time(f);
        let s = self.size;
        let matte = match &self.matte {
            Some(clip) => image_matte8(clip, t)
                .map_err(|e| EffectError::Engine {
                    time: t,
                    detail: e.to_string(),
                })?
                .map(|(m, w, h)| {
                    if (w, h) == (s, s) {
                        m
                    } else {
                        resize_linear_u8(&m, w, h, 1, s, s)
                    }
                }),
            None => None,
        };
        let from_points: Option<FivePoints> =
            points.map(|p| p.map(|q| point_to_working(q, &self.rod, self.par, s)));
        let landmarks = from_points.or_else(|| {
            let track = self.track.as_ref()?;
            let pts = track.get(&format!("{f:06}"), f)?;
            let w = ((self.rod.x2 - self.rod.x1) / self.par).round().max(1.0);
            let h = (self.rod.y2 - self.rod.y1).round().max(1.0);
            Some(pts.map(|q| file_to_working(q, w, h, s)))
        });
        Ok(FramePlacement { matte, landmarks })
    }
}

/// Run the face pass on the body frame `body` (RGB, `size × size`) of `frame`.
pub fn enhance(frame: &FaceFrame<'_>, body: Vec<u8>, size: usize) -> Result<Vec<u8>, EffectError> {
    let time = frame.time;
    let settings = frame.settings;
    let folder = resolve_face_folder(&settings.face_model_folder)?;
    let request = face_request(settings, frame.body, &folder);
    let effect = frame.effect;

    // The head reference photo.
    let face_photo = if frame.general {
        let clip = effect.clip(FACE_APPEARANCE_CLIP)?;
        if clip.is_connected()? {
            image_rgb8(&clip, time, FACE_APPEARANCE_CLIP, frame.encoding).map_err(|e| {
                EffectError::NoAppearance {
                    time,
                    detail: e.to_string(),
                }
            })?
        } else {
            None
        }
    } else {
        None
    };
    let no_photo = |e: EngineError| EffectError::NoAppearance {
        time,
        detail: e.to_string(),
    };
    let photo = head_reference(face_photo.map(Arc::new), &folder, || {
        match frame.body_photo {
            Some(p) => Ok(Arc::new(p.clone())),
            None => default_photo_of(&frame.body.folder),
        }
    })
    .map_err(no_photo)?;

    // The mesh: the Source frame at the working size, as the body's control frame.
    let (mesh, mw, mh) = image_rgb8(frame.source, time, SOURCE_CLIP, frame.encoding)
        .map_err(|e| EffectError::Engine {
            time,
            detail: e.to_string(),
        })?
        .ok_or(EffectError::NoSourceImage { time })?;
    let mesh = if (mw, mh) == (size, size) {
        mesh
    } else {
        resize_rgb8(&mesh, mw, mh, size, size, Filter::Lanczos)
    };

    // Placement inputs.
    let params = effect.param_set()?;
    let matte = if frame.general {
        let clip = effect.clip(FACE_MATTE_CLIP)?;
        clip.is_connected()?.then_some(clip)
    } else {
        None
    };
    let track = landmarks_track(&settings.face_landmarks_file)?;
    let rod = frame.source.region_of_definition(time)?;
    let par = frame
        .source
        .properties()
        .get_double(anchor_ofx::names::kOfxImagePropPixelAspectRatio, 0)
        .unwrap_or(1.0);
    let placements = Placements {
        frame,
        params,
        matte,
        track,
        rod,
        par,
        size,
    };
    let service = face_service::global();
    service.set_cache_budget(frame.body.cache_bytes);
    if settings.face_temporal && !frame.temporal {
        warn_no_temporal_face(effect);
    }
    let mode = if settings.face_temporal && frame.temporal {
        let pos = |v: i32| usize::try_from(v).unwrap_or(0);
        FaceMode::Temporal {
            window: pos(settings.face_window).max(1),
            overlap: pos(settings.face_overlap),
        }
    } else {
        FaceMode::PerFrame
    };
    let gate = crate::engine::service::global().gate();
    let step = FaceStep::new(service, request, photo, mode, Some(gate))
        .with_shared(crate::engine::service::global().shared_cache());
    let clip = OfxFaceClip {
        placements: &placements,
        body_now: &body,
    };
    let outcome = step
        .run(&clip, |faces| faces.frame(frame.index, &body, &mesh))
        .map_err(|e| face_error(e, time))?;
    Ok(finish(frame, &folder, outcome))
}

/// Log the outcome, warn about a frame without a face, and return the final frame.
fn finish(frame: &FaceFrame<'_>, folder: &Path, outcome: face_service::FaceOutcome) -> Vec<u8> {
    log::debug!(
        "frame {}: face {:?} ({}; {} face inpainting(s) in this process)",
        frame.time,
        outcome.status,
        if outcome.computed {
            "computed"
        } else {
            "not computed here"
        },
        face_service::global().inpaintings()
    );
    if let FaceStatus::Skipped(reason) = outcome.status {
        warn_once(frame.effect, frame, folder, reason);
    }
    outcome.rgb
}

/// The text of the one-time warning when `faceTemporal` cannot run.
pub const NO_TEMPORAL_FACE_WARNING: &str = "Temporal Face needs temporal clip access, which this host does not give: Make Your Anchor enhances each face on its own (the per-frame pass of the reference). Use a host with temporal clip access (Natron, Resolve) for the temporal face";

/// Post the temporal-face warning once per process.
fn warn_no_temporal_face(effect: ImageEffect) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if WARNED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    log::warn!("{NO_TEMPORAL_FACE_WARNING}");
    if let Err(e) = message::message(
        effect,
        MessageType::Warning,
        "org.makeyouranchor.Anchor.noTemporalFace",
        NO_TEMPORAL_FACE_WARNING,
    ) {
        log::debug!("could not post the warning: {e}");
    }
}

/// The clip as the temporal face's source: body frames from the body engine (cached), mesh
/// frames from the Source, placements as for the per-frame pass.
struct OfxFaceClip<'a> {
    placements: &'a Placements<'a>,
    /// The body frame being rendered (no second request for it).
    body_now: &'a [u8],
}

impl FaceClipSource for OfxFaceClip<'_> {
    fn len(&self) -> usize {
        self.placements.frame.frames.len()
    }

    fn size(&self) -> (usize, usize) {
        (self.placements.size, self.placements.size)
    }

    fn body(&self, f: usize) -> EngineResult<Vec<u8>> {
        if f == self.placements.frame.index {
            Ok(self.body_now.to_vec())
        } else {
            (self.placements.frame.body_at)(f)
        }
    }

    fn mesh(&self, f: usize) -> EngineResult<Vec<u8>> {
        let frame = self.placements.frame;
        if frame.effect.abort() {
            return Err(EngineError::Cancelled);
        }
        let t = frame.frames.time(f);
        let s = self.placements.size;
        let (rgb, w, h) =
            image_rgb8(frame.source, t, SOURCE_CLIP, frame.encoding)?.ok_or_else(|| {
                EngineError::Input(format!(
                    "the host returned no Source image at frame {t}, which the temporal face needs"
                ))
            })?;
        Ok(if (w, h) == (s, s) {
            rgb
        } else {
            resize_rgb8(&rgb, w, h, s, s, Filter::Lanczos)
        })
    }

    fn placement(&self, f: usize) -> EngineResult<(Option<Vec<u8>>, Option<FivePoints>)> {
        let frame = self.placements.frame;
        let points = if f == frame.index {
            frame.settings.face_points
        } else {
            params::face_points_at(self.placements.params, frame.frames.time(f))
        };
        let p = self
            .placements
            .at(f, points)
            .map_err(|e| EngineError::Input(e.to_string()))?;
        Ok((p.matte, p.landmarks))
    }
    /// Other frames' mattes need temporal clip access: without it only the landmarks of the
    /// earlier frames smooth the crop.
    fn history_placement(&self, f: usize) -> EngineResult<(Option<Vec<u8>>, Option<FivePoints>)> {
        if self.placements.frame.temporal {
            return self.placement(f);
        }
        let no_matte = Placements {
            matte: None,
            track: self.placements.track.clone(),
            ..*self.placements
        };
        let frame = self.placements.frame;
        let points = params::face_points_at(no_matte.params, frame.frames.time(f));
        let p = no_matte
            .at(f, points)
            .map_err(|e| EngineError::Input(e.to_string()))?;
        Ok((p.matte, p.landmarks))
    }
}

/// The model folder's default reference photo (`appearance.png`), decoded once.
fn default_photo_of(folder: &Path) -> EngineResult<std::sync::Arc<(Vec<u8>, usize, usize)>> {
    let layout = ModelLayout::resolve(folder)?;
    pipeline::read_default_appearance(&layout, crate::engine::registry::global())
}

/// The `faceLandmarksFile` track, read once per file version; `None` when the parameter is
/// empty.
fn landmarks_track(file: &str) -> Result<Option<Arc<LandmarkTrack>>, EffectError> {
    let file = file.trim();
    if file.is_empty() {
        return Ok(None);
    }
    let path = Path::new(file);
    face_service::global()
        .landmarks_file(path)
        .map(Some)
        .map_err(|e| EffectError::FaceLandmarks {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
}

/// A face-pass failure as the effect's error at `time`.
fn face_error(e: FaceError, time: f64) -> EffectError {
    match e {
        FaceError::Model {
            source: EngineError::OutOfMemory { detail },
            ..
        }
        | FaceError::Render(EngineError::OutOfMemory { detail }) => EffectError::OutOfMemory {
            time,
            detail: format!("face pass: {detail}"),
        },
        FaceError::Model { folder, source } => EffectError::IncompatibleFaceModel {
            path: folder,
            detail: source.to_string(),
        },
        FaceError::Render(EngineError::Cancelled) => EffectError::Aborted { time },
        FaceError::Render(source) => EffectError::Engine {
            time,
            detail: format!("face pass: {source}"),
        },
    }
}

/// The text of the warning for frames whose face cannot be placed.
pub fn no_face_warning(time: f64, reason: &SkipReason) -> String {
    format!(
        "Face Enhance passes the body frame through at frame {time}: {reason}. Make Your Anchor warns once per clip for each such case: connect a FaceMatte input, turn on Use Face Points and place the five points, or list the frame in faceLandmarksFile"
    )
}

/// Post the no-face warning once per (clip, face model, kind of skip) in this process: render
/// clones and per-frame instances of one clip share it.
fn warn_once(effect: ImageEffect, frame: &FaceFrame<'_>, folder: &Path, reason: SkipReason) {
    static WARNED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let key = format!(
        "{}|{}|{}|{}|{reason:?}",
        frame.frames.first,
        frame.frames.last,
        frame.body.folder.display(),
        folder.display()
    );
    if !WARNED.lock().get_or_insert_with(HashSet::new).insert(key) {
        return;
    }
    let text = no_face_warning(frame.time, &reason);
    log::warn!("{text}");
    if let Err(e) = message::message(
        effect,
        MessageType::Warning,
        "org.makeyouranchor.Anchor.noFace",
        &text,
    ) {
        log::debug!("could not post the warning: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_map_from_ofx_to_the_working_square() {
        // A 64×48 Source at the origin: the centre of the top-left pixel is OFX (0.5, 47.5)
        // and image (0, 0); the working square is 64 (x unscaled, y scaled by 4/3).
        let rod = OfxRectD {
            x1: 0.0,
            y1: 0.0,
            x2: 64.0,
            y2: 48.0,
        };
        assert_eq!(
            point_to_working([0.5, 47.5], &rod, 1.0, 64),
            [0.0, file_to_working([0.0, 0.0], 64.0, 48.0, 64)[1]]
        );
        assert_eq!(
            file_to_working([0.0, 0.0], 64.0, 48.0, 64),
            [0.0, 0.5 * 64.0 / 48.0 - 0.5]
        );
        // Exactly the file's landmark for dyadic values, with the RoD offset and y flipped.
        let rod = OfxRectD {
            x1: 10.0,
            y1: 5.0,
            x2: 74.0,
            y2: 69.0,
        };
        let file = [20.25, 30.5];
        let ofx = [file[0] + 0.5 + 10.0, 69.0 - file[1] - 0.5];
        assert_eq!(point_to_working(ofx, &rod, 1.0, 64), file);
        // Anamorphic: canonical x is pixel x times the aspect ratio.
        let rod = OfxRectD {
            x1: 0.0,
            y1: 0.0,
            x2: 128.0,
            y2: 64.0,
        };
        assert_eq!(
            point_to_working([2.0 * 8.5, 60.5], &rod, 2.0, 64),
            [8.0, 3.0]
        );
    }

    #[test]
    fn matte_luma_is_the_image_crate_rule() {
        assert_eq!(luma8(255, 255, 255), 255);
        assert_eq!(luma8(128, 128, 128), 128);
        assert_eq!(luma8(255, 0, 0), 54);
        assert_eq!(q8(0.5), 128);
        assert_eq!(q8(-1.0), 0);
        assert_eq!(q8(f32::NAN), 0);
    }

    #[test]
    fn smoothing_and_folder_settings() {
        assert_eq!(smoothing_weight(0.0), None, "off by default");
        assert_eq!(smoothing_weight(0.25), Some(0.75));
        assert_eq!(smoothing_weight(f64::NAN), None);
        assert!(matches!(
            resolve_face_folder("  "),
            Err(EffectError::FaceModelFolderMissing { path: None })
        ));
        assert!(matches!(
            resolve_face_folder("/no/such/face-model"),
            Err(EffectError::FaceModelFolderMissing { path: Some(_) })
        ));
    }
}
