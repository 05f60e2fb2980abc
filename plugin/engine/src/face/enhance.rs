//! The per-frame face pass ([`FacePass`]): placement → crop → mask → inpaint → blend back,
//! with graceful degradation and a content-keyed memo.
//!
//! A frame's result is a pure function of its body pixels, mesh pixels, placement (transform and
//! crop mask), the model and the settings: the seeds are fixed and shared by all frames, so the
//! order in which frames are requested, the thread count and a farm split never change a pixel.
//! Results are memoised under a key of exactly those inputs.
//!
//! Degradation: a frame with no usable placement (empty matte and no landmarks, degenerate or
//! out-of-frame landmarks, a crop mask without face pixels) returns the body frame unchanged with
//! a [`FaceStatus::Skipped`] status; the first frame of each kind logs one warning per pass (one
//! pass per clip), and [`FacePass::warnings`] lists them.
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::Tensor;
use parking_lot::Mutex;

use crate::model::DiffusionModel;
use crate::networks::bisenet::FaceParser;
use crate::temporal::{Key, KeyHasher};
use crate::{EngineError, Result};

use super::align;
use super::blend::blend_back;
use super::feather::FeatherSettings;
use super::inpaint::{HeadInpainter, InpaintSettings};
use super::jpeg;
use super::landmarks::{self, FivePoints, LandmarkProblem};
use super::mask::{self, Coverage};
use super::warp::{resize_linear_u8, warp_affine_u8, Affine};

/// Settings of the face pass (the reference values by default).
#[derive(Debug, Clone, PartialEq)]
pub struct FaceSettings {
    /// Side of the aligned crop in frame-resampled pixels (512).
    pub crop: usize,
    /// The inpainting diffusion's settings.
    pub inpaint: InpaintSettings,
    /// The paste-back feather.
    pub feather: FeatherSettings,
    /// An optional BiSeNet face-parsing checkpoint (face-parsing.PyTorch `79999_iter.pth` as
    /// published, a re-saved `.pth`, or `.safetensors`): when set, frames without a matte get
    /// the reference's parsed mask instead of the landmark template. Mask precedence:
    /// matte, parser, template (see `mask`).
    pub parser: Option<PathBuf>,
    /// Put the mesh crop through a JPEG round trip before it conditions the head ControlNet
    /// (on by default): the reference saves it as `aligned/<n>.jpg` with `cv2.imwrite`
    /// (quality 95) and reads it back, so its ControlNet was trained and run on JPEG'd crops.
    pub mesh_jpeg: bool,
}

impl Default for FaceSettings {
    fn default() -> Self {
        Self {
            crop: 512,
            inpaint: InpaintSettings::default(),
            feather: FeatherSettings::default(),
            parser: None,
            mesh_jpeg: true,
        }
    }
}

/// An 8-bit interleaved RGB frame.
#[derive(Debug, Clone, Copy)]
pub struct RgbFrame<'a> {
    /// `width · height · 3` bytes, row-major.
    pub data: &'a [u8],
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

impl RgbFrame<'_> {
    fn check(&self, what: &str) -> Result<()> {
        if self.width == 0 || self.height == 0 || self.data.len() != self.width * self.height * 3 {
            return Err(EngineError::Input(format!(
                "{what} frame is {}×{} with {} bytes; expected width·height·3",
                self.width,
                self.height,
                self.data.len()
            )));
        }
        Ok(())
    }
}

/// Where the face is in one frame: the sources of issue 7 in priority order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Placement<'a> {
    /// A face matte of the frame's size (one byte per pixel, ≥ 128 = head).
    pub matte: Option<&'a [u8]>,
    /// Five landmarks (see [`landmarks`]).
    pub landmarks: Option<FivePoints>,
}

/// Which source placed the crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementSource {
    /// The matte's box and principal axis; the matte is also the mask.
    Matte,
    /// The landmarks (Umeyama to the FFHQ template); the mask is the face parser's when one is
    /// loaded, else the template ellipse.
    Landmarks,
}

/// Why a frame was passed through unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// No matte pixel and no landmarks.
    NoFace,
    /// The landmarks cannot place a crop.
    Landmarks(LandmarkProblem),
    /// The crop mask has no face pixel (all 255 = keep): nothing to regenerate.
    EmptyMask,
    /// The placement gave a singular or non-finite transform.
    Singular,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoFace => f.write_str("no face (empty matte and no landmarks)"),
            Self::Landmarks(p) => write!(f, "unusable landmarks: {p}"),
            Self::EmptyMask => f.write_str("the face mask of the crop holds no face pixel"),
            Self::Singular => f.write_str("the face placement gives a singular transform"),
        }
    }
}

impl std::error::Error for SkipReason {}

/// What happened to a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaceStatus {
    /// The face was re-rendered and blended in.
    Enhanced(PlacementSource),
    /// The body frame passed through unchanged.
    Skipped(SkipReason),
}

/// One frame's result.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceResult {
    /// The final frame, the body frame's size.
    pub rgb: Vec<u8>,
    /// What happened.
    pub status: FaceStatus,
    /// The alignment used (frame → crop), when there was one.
    pub transform: Option<Affine>,
}

/// A resolved placement: transform, source and the crop's mask (255 = keep).
#[derive(Debug, Clone)]
pub struct ResolvedPlacement {
    /// Frame → crop.
    pub transform: Affine,
    /// Which source gave it.
    pub source: PlacementSource,
}

/// One frame's working-size crops.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceCrops {
    /// The body crop, RGB `size × size`.
    pub image: Vec<u8>,
    /// The mesh crop (the ControlNet's control), RGB `size × size`.
    pub control: Vec<u8>,
    /// The mask, 255 = keep, `size × size`.
    pub mask: Vec<u8>,
    /// The alignment used.
    pub transform: Affine,
}

impl FaceCrops {
    /// A content key of the crops under a pass identity.
    pub fn key(&self, identity: Key) -> Key {
        let mut k = KeyHasher::tagged("face-crops");
        k.key(identity)
            .bytes(&self.image)
            .bytes(&self.control)
            .bytes(&self.mask);
        for v in self.transform.0.iter().flatten() {
            k.f64(*v);
        }
        k.finish()
    }
}

/// Most results the memo keeps (each a full frame).
const MEMO_CAPACITY: usize = 32;

/// The face pass of one clip and one head appearance.
///
/// ```text
/// let model = DiffusionModel::load_part(dir, ModelPart::Head, DType::F32, &device)?;
/// let tokens = inpaint::encode_head_appearance(&model, &head_rgb, w, h)?;
/// let pass = FacePass::new(&model, &tokens, FaceSettings::default(), model_key)?;
/// let out = pass.enhance(body, mesh, &Placement { matte: None, landmarks: Some(points) })?;
/// ```
pub struct FacePass<'m> {
    inpainter: HeadInpainter<'m>,
    settings: FaceSettings,
    /// The loaded [`FaceSettings::parser`].
    parser: Option<FaceParser>,
    /// Whether the parser fallback warning was logged.
    parser_warned: AtomicBool,
    /// Whether the mesh-crop JPEG failure warning was logged.
    jpeg_warned: AtomicBool,
    identity: Key,
    memo: Mutex<HashMap<Key, Arc<FaceResult>>>,
    warned: Mutex<HashSet<SkipReason>>,
    warnings: Mutex<Vec<String>>,
}

impl<'m> FacePass<'m> {
    /// Sets up the pass. `model` must be a face model (9-channel UNet, else a named `Config`
    /// error); `appearance` are the head tokens `(1, N, D)`; `model_key` identifies the weights.
    pub fn new(
        model: &'m DiffusionModel,
        appearance: &Tensor,
        settings: FaceSettings,
        model_key: Key,
    ) -> Result<Self> {
        let inpainter = HeadInpainter::new(model, appearance, settings.inpaint.clone())?;
        Self::with_inpainter(inpainter, settings, model_key, appearance)
    }

    /// Sets up the pass around a prepared inpainter (e.g. with injected noise).
    pub fn with_inpainter(
        inpainter: HeadInpainter<'m>,
        settings: FaceSettings,
        model_key: Key,
        appearance: &Tensor,
    ) -> Result<Self> {
        if settings.crop == 0 || settings.inpaint.size == 0 {
            return Err(EngineError::Input(format!(
                "face crop {} and inpainting size {} must be positive",
                settings.crop, settings.inpaint.size
            )));
        }
        if settings.feather.blur.is_multiple_of(2) {
            return Err(EngineError::Input(format!(
                "the feather's Gaussian kernel side must be odd, got {}",
                settings.feather.blur
            )));
        }
        // The parser runs on the head model's device (a 512² ResNet-18: cheap next to the UNet).
        let parser = match &settings.parser {
            Some(path) => Some(FaceParser::load_shared(path, &inpainter.model().device)?),
            None => None,
        };
        let mut h = KeyHasher::tagged("face-pass");
        h.key(model_key);
        h.str(&format!("{settings:?}"));
        // The parser file's version, so that an edited checkpoint is not served stale frames.
        if let Some(path) = &settings.parser {
            h.str(&FaceParser::version(path).unwrap_or_default());
        }
        h.f32s(
            &appearance
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        Ok(Self {
            inpainter,
            settings,
            parser,
            parser_warned: AtomicBool::new(false),
            jpeg_warned: AtomicBool::new(false),
            identity: h.finish(),
            memo: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
            warnings: Mutex::new(Vec::new()),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &FaceSettings {
        &self.settings
    }

    /// The warnings logged so far (one per kind of skipped frame).
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().clone()
    }

    /// The crop transform of a `w × h` frame from the first usable source (issue 7: the matte,
    /// then the landmarks).
    pub fn resolve(
        &self,
        placement: &Placement,
        w: usize,
        h: usize,
    ) -> std::result::Result<ResolvedPlacement, SkipReason> {
        let crop = self.settings.crop;
        if let Some(m) = placement.matte.filter(|m| m.len() == w * h) {
            if let Some(frame) = align::measure_matte(m, w, h) {
                return align::from_matte_frame(&frame, crop)
                    .map(|transform| ResolvedPlacement {
                        transform,
                        source: PlacementSource::Matte,
                    })
                    .ok_or(SkipReason::Singular);
            }
        }
        match placement.landmarks {
            None => Err(SkipReason::NoFace),
            Some(points) => {
                landmarks::check(&points, w, h).map_err(SkipReason::Landmarks)?;
                align::from_landmarks(&points, crop)
                    .map(|transform| ResolvedPlacement {
                        transform,
                        source: PlacementSource::Landmarks,
                    })
                    .ok_or(SkipReason::Singular)
            }
        }
    }

    fn skip(&self, body: &RgbFrame, reason: SkipReason, transform: Option<Affine>) -> FaceResult {
        if self.warned.lock().insert(reason) {
            let msg = format!("face pass: {reason}; the body frame passes through unchanged");
            log::warn!("{msg}");
            self.warnings.lock().push(msg);
        }
        FaceResult {
            rgb: body.data.to_vec(),
            status: FaceStatus::Skipped(reason),
            transform,
        }
    }

    /// Enhances the face of one frame: `body` is the generated frame, `mesh` the mesh render of
    /// the same size (the ControlNet's control), `placement` where the face is.
    pub fn enhance(
        &self,
        body: RgbFrame,
        mesh: RgbFrame,
        placement: &Placement,
    ) -> Result<FaceResult> {
        body.check("body")?;
        match self.resolve(placement, body.width, body.height) {
            Ok(r) => self.enhance_with(body, mesh, placement, &r),
            Err(reason) => Ok(self.skip(&body, reason, None)),
        }
    }

    /// [`Self::enhance`] with an explicit (e.g. temporally smoothed) transform.
    pub fn enhance_with(
        &self,
        body: RgbFrame,
        mesh: RgbFrame,
        placement: &Placement,
        resolved: &ResolvedPlacement,
    ) -> Result<FaceResult> {
        body.check("body")?;
        mesh.check("mesh")?;
        let (w, h) = (body.width, body.height);
        if (mesh.width, mesh.height) != (w, h) {
            return Err(EngineError::Input(format!(
                "mesh frame is {}×{} but the body frame is {w}×{h}",
                mesh.width, mesh.height
            )));
        }
        let m = resolved.transform;
        let crops = match self.crops(body, mesh, placement, resolved) {
            Ok(c) => c,
            Err(reason) => return Ok(self.skip(&body, reason, Some(m))),
        };
        // The blend reads the whole body frame, so it is part of the key.
        let key = KeyHasher::tagged("face-frame")
            .key(crops.key(self.identity))
            .u64(w as u64)
            .u64(h as u64)
            .bytes(body.data)
            .finish();
        if let Some(r) = self.memo.lock().get(&key) {
            return Ok((**r).clone());
        }
        let (image, control, mask_small) = (&crops.image, &crops.control, &crops.mask);
        let face = self.inpainter.inpaint(image, mask_small, control)?;
        let rgb = blend_back(
            body.data,
            w,
            h,
            &face,
            self.settings.inpaint.size,
            &m,
            self.settings.crop,
            &self.settings.feather,
        )
        .ok_or_else(|| EngineError::Input("face transform is singular".into()))?;
        let result = FaceResult {
            rgb,
            status: FaceStatus::Enhanced(resolved.source),
            transform: Some(m),
        };
        let mut memo = self.memo.lock();
        if memo.len() >= MEMO_CAPACITY {
            memo.clear();
        }
        memo.insert(key, Arc::new(result.clone()));
        Ok(result)
    }

    /// The head inpainter.
    pub fn inpainter(&self) -> &HeadInpainter<'m> {
        &self.inpainter
    }

    /// The pass identity (model, settings, appearance).
    pub fn identity(&self) -> Key {
        self.identity
    }

    /// Logs `reason` once per pass and returns the body frame unchanged.
    pub fn pass_through(
        &self,
        body: RgbFrame,
        reason: SkipReason,
        transform: Option<Affine>,
    ) -> FaceResult {
        self.skip(&body, reason, transform)
    }

    /// The working-size crops of one frame: the body crop, the mesh crop and
    /// the mask (255 = keep), all `size × size`; `Err` when the frame must pass through.
    pub fn crops(
        &self,
        body: RgbFrame,
        mesh: RgbFrame,
        placement: &Placement,
        resolved: &ResolvedPlacement,
    ) -> std::result::Result<FaceCrops, SkipReason> {
        let (w, h) = (body.width, body.height);
        let m = resolved.transform;
        if !m.is_finite() || m.invert().is_none() {
            return Err(SkipReason::Singular);
        }
        let crop = self.settings.crop;
        let size = self.settings.inpaint.size;
        // The reference's alignment: the same M crops the mesh render and the generated body frame.
        let mut mesh_crop = warp_affine_u8(mesh.data, w, h, 3, &m, crop, crop);
        // The reference writes the crop-size mesh crop as JPEG and reads it back before the
        // resize to the working size (`aligned/<n>.jpg`).
        if self.settings.mesh_jpeg {
            match jpeg::round_trip(&mesh_crop, crop, crop) {
                Ok(decoded) => mesh_crop = decoded,
                Err(e) => self.warn_jpeg(&e),
            }
        }
        let body_crop = warp_affine_u8(body.data, w, h, 3, &m, crop, crop);
        // As the reference's `get_mask.py`, the parser reads the aligned crop of the generated body frame.
        let mask = self.crop_mask_with(placement, resolved, w, h, Some(&body_crop))?;
        // As in the reference, every head input is cv2-resized to the working size.
        Ok(FaceCrops {
            control: resize_linear_u8(&mesh_crop, crop, crop, 3, size, size),
            image: resize_linear_u8(&body_crop, crop, crop, 3, size, size),
            mask,
            transform: m,
        })
    }

    /// Logs once per pass that the mesh crop skipped its JPEG round trip.
    fn warn_jpeg(&self, problem: &str) {
        if !self.jpeg_warned.swap(true, Ordering::Relaxed) {
            let msg = format!(
                "face pass: {problem}; the mesh crop conditions the face model without its JPEG round trip"
            );
            log::warn!("{msg}");
            self.warnings.lock().push(msg);
        }
    }

    /// The working-size crop mask (255 = keep) of a placement in a `w × h` frame from the matte
    /// or the landmark template (no pixels needed, so it can vet a whole clip up front); `Err`
    /// when it has no face pixel. With a parser, [`Self::crops`] replaces the template by the
    /// parsed mask, and falls back to the template when the parser finds no face, so this check
    /// stays valid.
    pub fn crop_mask(
        &self,
        placement: &Placement,
        resolved: &ResolvedPlacement,
        w: usize,
        h: usize,
    ) -> std::result::Result<Vec<u8>, SkipReason> {
        self.crop_mask_with(placement, resolved, w, h, None)
    }

    /// Whether a face parser is loaded.
    pub fn has_parser(&self) -> bool {
        self.parser.is_some()
    }

    /// [`Self::crop_mask`] with the crop-size RGB body crop for the parser. Precedence: the
    /// matte, then the parser (when loaded and given the crop), then the landmark template.
    fn crop_mask_with(
        &self,
        placement: &Placement,
        resolved: &ResolvedPlacement,
        w: usize,
        h: usize,
        body_crop: Option<&[u8]>,
    ) -> std::result::Result<Vec<u8>, SkipReason> {
        let crop = self.settings.crop;
        let size = self.settings.inpaint.size;
        let mask_crop = match (resolved.source, placement.matte) {
            (PlacementSource::Matte, Some(matte)) if matte.len() == w * h => {
                mask::from_matte(matte, w, h, &resolved.transform, crop)
            }
            _ => match (&self.parser, body_crop) {
                (Some(parser), Some(rgb)) => self.parsed_or_template(parser, rgb, crop),
                _ => mask::from_template(crop),
            },
        };
        let small = resize_linear_u8(&mask_crop, crop, crop, 1, size, size);
        if mask::coverage(&small) == Coverage::NoFace {
            return Err(SkipReason::EmptyMask);
        }
        Ok(small)
    }

    /// The parser's crop mask; the template when the parser fails or finds no face (one warning
    /// per pass), so a frame the template would enhance is never dropped by the parser.
    fn parsed_or_template(&self, parser: &FaceParser, rgb: &[u8], crop: usize) -> Vec<u8> {
        let problem = match mask::from_parser(parser, rgb, crop) {
            Ok(m) if mask::coverage(&m) != Coverage::NoFace => return m,
            Ok(_) => "the face parser found no face in the crop".to_string(),
            Err(e) => format!("the face parser failed ({e})"),
        };
        if !self.parser_warned.swap(true, Ordering::Relaxed) {
            let msg = format!("face pass: {problem}; using the landmark template mask instead");
            log::warn!("{msg}");
            self.warnings.lock().push(msg);
        }
        mask::from_template(crop)
    }

    /// The transforms of a whole clip (`w × h` frames), optionally smoothed over time with
    /// exponential weight `smoothing` on the new frame (`None` = off, the reference).
    pub fn clip_transforms(
        &self,
        placements: &[Placement],
        w: usize,
        h: usize,
        smoothing: Option<f64>,
    ) -> Vec<std::result::Result<ResolvedPlacement, SkipReason>> {
        let raw: Vec<_> = placements.iter().map(|p| self.resolve(p, w, h)).collect();
        let Some(alpha) = smoothing else {
            return raw;
        };
        let ts: Vec<Option<Affine>> = raw
            .iter()
            .map(|r| r.as_ref().ok().map(|r| r.transform))
            .collect();
        let smooth = align::smooth_transforms(&ts, alpha, self.settings.crop);
        raw.into_iter()
            .zip(smooth)
            .map(|(r, s)| {
                r.map(|mut r| {
                    if let Some(s) = s {
                        r.transform = s;
                    }
                    r
                })
            })
            .collect()
    }
}
