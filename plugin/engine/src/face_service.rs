//! The process-global side of the face pass (issue 7): the face (head) models, loaded once per
//! process per model identity and shared by every instance, their head-appearance tokens, and a
//! content-keyed, single-flight cache of enhanced frames. The face twin of [`crate::service`]:
//! both front ends run the face pass as the render job's last step,
//! [`crate::job::face::FaceStep`], which uses this service.
//!
//! - **Models** are keyed by (folder, dtype, device) as the body models are
//!   (`engine::service`); the folder's identity ([`pipeline::folder_identity`] of its head
//!   layout: config bytes, weight sizes and mtimes) is recomputed on every request, and a changed
//!   identity reloads the model.
//! - **Frames** are memoised in one [`Cache`] under a key of everything that decides a pixel:
//!   the pass identity (model identity, face settings, head-appearance tokens), the body and mesh
//!   frames, the matte and landmarks, and the smoothed transform. Render clones, per-frame
//!   instances, concurrent renders and farm nodes therefore agree bit for bit, and a frame being
//!   enhanced by one thread is awaited by the others.
//! - **The accelerator runs one batch at a time, process-wide:** head-model loads, head-appearance
//!   encodes and per-frame inpaintings hold the body engine's lock
//!   ([`crate::service::Service::gate`]), so a face pass never overlaps a body
//!   batch. The temporal face takes it around each window batch and decode only, never while it
//!   reads body frames through the body service (which takes the same lock).
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Tensor};

use crate::device::{device_name, dtype_name, select_device, DeviceChoice};
use crate::face::landmarks::FivePoints;
use crate::face::{self, FacePass, FaceSettings, FaceStatus, Placement, RgbFrame, SkipReason};
use crate::job::BatchGate;
use crate::model::{DiffusionModel, ModelLayout, ModelPart};
use crate::pipeline;
use crate::registry::{self, Registry};
use crate::service::{ModelSlots, Slot};
use crate::temporal::{Cache, Counters, Entry, EntryKind, Key, KeyHasher, SharedStore};
use crate::{EngineError, Result};

/// Why the face pass failed, by phase, so the effect can say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum FaceError {
    /// The face model folder could not be loaded as a face model (absent components, a UNet
    /// that does not take 9 channels, bad weights).
    #[error("face model folder {}: {source}", folder.display())]
    Model {
        /// The folder.
        folder: PathBuf,
        /// The loader's error.
        source: EngineError,
    },
    /// Anything else: settings, device, pixels, networks.
    #[error(transparent)]
    Render(#[from] EngineError),
}

impl From<FaceError> for EngineError {
    /// A face model that cannot be loaded names its folder; out of memory and cancellation
    /// keep their kind.
    fn from(e: FaceError) -> Self {
        match e {
            FaceError::Render(e) => e,
            FaceError::Model { source, .. }
                if matches!(
                    source,
                    EngineError::OutOfMemory { .. } | EngineError::Cancelled
                ) =>
            {
                source
            }
            e @ FaceError::Model { .. } => EngineError::Input(e.to_string()),
        }
    }
}

impl From<candle_core::Error> for FaceError {
    fn from(e: candle_core::Error) -> Self {
        Self::Render(e.into())
    }
}

/// The face-pass settings of a request, as plain values.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceRequest {
    /// The face model folder.
    pub folder: PathBuf,
    /// Where the networks run.
    pub device: DeviceChoice,
    /// Network precision.
    pub dtype: DType,
    /// The pass settings (crop, inpainting, feather).
    pub settings: FaceSettings,
    /// Exponential smoothing weight on the new frame (`None` = off, the reference).
    pub smoothing: Option<f64>,
}

/// One frame's placement inputs at the working size, owned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FramePlacement {
    /// The matte (one byte per pixel, ≥ 128 = head), when the FaceMatte clip gave one.
    pub matte: Option<Vec<u8>>,
    /// Five landmarks in working-size pixels (OpenCV convention: y down, pixel centres at
    /// integers), from the point parameters or the landmarks file.
    pub landmarks: Option<FivePoints>,
}

impl FramePlacement {
    /// As the engine's borrowed placement.
    pub fn as_placement(&self) -> Placement<'_> {
        Placement {
            matte: self.matte.as_deref(),
            landmarks: self.landmarks,
        }
    }
}

/// What the face pass did to a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceOutcome {
    /// The final frame, RGB at the body frame's size.
    pub rgb: Vec<u8>,
    /// Enhanced, or passed through and why.
    pub status: FaceStatus,
    /// Whether this request ran the inpainting itself (false: from the cache or skipped).
    pub computed: bool,
}

/// A loaded face model.
pub(crate) struct Loaded {
    pub(crate) model: DiffusionModel,
    pub(crate) identity: Key,
}

/// The process's face models and face-frame cache.
pub struct FaceService {
    models: ModelSlots<Loaded>,
    /// Where head-appearance tokens and landmarks files are memoised: the process's
    /// [`crate::registry`], bounded by bytes (an animated FaceAppearance clip adds one token
    /// entry per frame) and freed by PurgeCaches.
    registry: Arc<Registry>,
    cache: Cache,
    /// The temporal face's window cache (noise predictions, latents, decoded crops).
    temporal: Cache,
    temporal_counters: Counters,
    loads: AtomicUsize,
    inpaintings: AtomicUsize,
}

/// The face caches' shares of the effect's cache budget (`cacheMiB`): a sixteenth for enhanced
/// face frames (each one working-size RGB frame, 0.75 MiB at 512²) and a quarter for the
/// temporal face's window cache (at 256² a window step of 16 crops holds about 1 MiB of noise
/// predictions and latents). The default 4 GiB gives 256 MiB and 1 GiB.
const FRAME_SHARE: usize = 16;
/// See [`FRAME_SHARE`].
const TEMPORAL_SHARE: usize = 4;
/// The least either cache gets, whatever the budget.
const MIN_CACHE_BYTES: usize = 64 << 20;

/// `(face frames, temporal face)` cache bytes for a cache budget of `cache_bytes`.
pub fn cache_shares(cache_bytes: usize) -> (usize, usize) {
    (
        (cache_bytes / FRAME_SHARE).max(MIN_CACHE_BYTES),
        (cache_bytes / TEMPORAL_SHARE).max(MIN_CACHE_BYTES),
    )
}

impl Default for FaceService {
    fn default() -> Self {
        Self {
            models: ModelSlots::default(),
            registry: registry::shared(),
            cache: Cache::new(cache_shares(crate::service::DEFAULT_CACHE_BYTES).0),
            temporal: Cache::new(cache_shares(crate::service::DEFAULT_CACHE_BYTES).1),
            temporal_counters: Counters::default(),
            loads: AtomicUsize::new(0),
            inpaintings: AtomicUsize::new(0),
        }
    }
}

/// The process's face service.
pub fn global() -> &'static FaceService {
    static SERVICE: OnceLock<FaceService> = OnceLock::new();
    SERVICE.get_or_init(FaceService::default)
}

/// Frames of history that exponential smoothing with weight `alpha` on the new frame reads: the
/// weight of older frames is below 1e-6, so a frame can be rendered alone (a farm node, a
/// scrub) at a bounded cost; frames within this distance of the clip start are exactly the
/// CLI's (`anchor render --face-smooth alpha`).
pub fn smoothing_history(alpha: f64) -> usize {
    let keep = 1.0 - alpha.clamp(0.0, 1.0);
    if keep <= 0.0 {
        return 0;
    }
    if keep >= 1.0 {
        return usize::MAX;
    }
    (1e-6f64.ln() / keep.ln()).ceil().max(0.0) as usize
}

impl FaceService {
    /// Face models loaded since the process started (a reload after an edit counts again).
    pub fn model_loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    /// Face inpaintings run since the process started.
    pub fn inpaintings(&self) -> usize {
        self.inpaintings.load(Ordering::SeqCst)
    }

    /// A service memoising its tokens and files in `registry` rather than the process's.
    #[cfg(test)]
    pub(crate) fn with_registry(registry: Arc<Registry>) -> Self {
        Self {
            registry,
            ..Self::default()
        }
    }

    /// Sizes the face caches from the cache budget (`cacheMiB`; the latest request's value
    /// wins, as for the body cache): see [`cache_shares`].
    pub fn set_cache_budget(&self, cache_bytes: usize) {
        let (frames, temporal) = cache_shares(cache_bytes);
        self.cache.set_budget(frames);
        self.temporal.set_budget(temporal);
    }

    /// Frees the face-frame cache, the face models (a running request keeps its model alive
    /// through its own reference) and the registry's memos (head tokens, photos, files; loaded
    /// parsers stay for [`crate::service::Service::purge`] to free when no render runs).
    pub fn purge(&self) {
        self.cache.purge();
        self.temporal.purge();
        self.models.clear();
        self.registry.purge(false);
    }

    fn model(
        &self,
        req: &FaceRequest,
        device: &Device,
    ) -> std::result::Result<Arc<Loaded>, FaceError> {
        let bad = |source| FaceError::Model {
            folder: req.folder.clone(),
            source,
        };
        let layout = ModelLayout::resolve_part(&req.folder, ModelPart::Head).map_err(bad)?;
        let identity = pipeline::folder_identity(&layout).map_err(bad)?;
        let slot: Slot = (
            req.folder.clone(),
            dtype_name(req.dtype),
            device_name(device),
        );
        self.models.get_or_load(slot, identity, || {
            let model = crate::service::global()
                .gate()
                .run(|| DiffusionModel::load_part(&req.folder, ModelPart::Head, req.dtype, device))
                .map_err(bad)?;
            // A body UNet (4 channels) loads fine but cannot inpaint: say so before any frame.
            face::inpaint::check_head_model(&model).map_err(bad)?;
            let loads = self.loads.fetch_add(1, Ordering::SeqCst) + 1;
            log::info!(
                "face model loaded from {} ({} on {}; {loads} face model load(s) in this process)",
                req.folder.display(),
                dtype_name(req.dtype),
                device_name(device)
            );
            Ok(Loaded { model, identity })
        })
    }

    /// Head-appearance tokens of an RGB photo, memoised in the registry by model identity,
    /// dtype, device and photo content.
    fn tokens(&self, loaded: &Loaded, photo: RgbFrame<'_>) -> Result<Tensor> {
        let model = &loaded.model;
        let key = KeyHasher::tagged("head-appearance")
            .key(loaded.identity)
            .str(dtype_name(model.dtype))
            .str(&device_name(&model.device))
            .u64(photo.width as u64)
            .u64(photo.height as u64)
            .bytes(photo.data)
            .finish();
        let tokens = self.registry.get_or_insert_with(
            registry::Kind::Tokens,
            key,
            None,
            registry::tensor_bytes,
            || {
                crate::service::global().gate().run(|| {
                    face::inpaint::encode_head_appearance(
                        model,
                        photo.data,
                        photo.width,
                        photo.height,
                    )
                })
            },
        )?;
        Ok(tokens.as_ref().clone())
    }

    /// Loads the face model of `req` now (a host's BeginSequenceRender), so that the first frame
    /// does not wait for its weights.
    pub fn prepare_model(&self, req: &FaceRequest) -> std::result::Result<(), FaceError> {
        let device = select_device(req.device)?;
        crate::device::check_dtype(&device, req.dtype)?;
        self.model(req, &device).map(|_| ())
    }

    /// The face model of `req` (loaded when absent) and the head-appearance tokens of `photo`.
    pub(crate) fn load(
        &self,
        req: &FaceRequest,
        photo: RgbFrame<'_>,
    ) -> std::result::Result<(Arc<Loaded>, Tensor), FaceError> {
        let device = select_device(req.device)?;
        crate::device::check_dtype(&device, req.dtype)?;
        let loaded = self.model(req, &device)?;
        let tokens = self.tokens(&loaded, photo)?;
        Ok((loaded, tokens))
    }

    /// Head-appearance tokens of `photo` for the face model of `req` (loaded when absent).
    #[cfg(test)]
    pub(crate) fn head_tokens(
        &self,
        req: &FaceRequest,
        photo: RgbFrame<'_>,
    ) -> std::result::Result<Tensor, FaceError> {
        Ok(self.load(req, photo)?.1)
    }

    /// Enhances the face of the body frame `body` (RGB, working size) with `pass`, `mesh` the
    /// mesh render at the same size.
    ///
    /// `history` holds the placements of the frames before this one (oldest first, at most
    /// [`smoothing_history`] of them) when `smoothing` is on; `current` is this frame's. A frame
    /// without a usable placement comes back unchanged with a [`FaceStatus::Skipped`] status.
    pub(crate) fn enhance_frame(
        &self,
        pass: &FacePass<'_>,
        smoothing: Option<f64>,
        (body, mesh): (RgbFrame<'_>, RgbFrame<'_>),
        history: &[FramePlacement],
        current: &FramePlacement,
        (gate, shared): (Option<&BatchGate>, Option<&SharedStore>),
    ) -> std::result::Result<FaceOutcome, FaceError> {
        let (w, h) = (body.width, body.height);
        let placement = current.as_placement();
        let resolved = match smoothing {
            None => pass.resolve(&placement, w, h),
            Some(alpha) => {
                let mut all: Vec<Placement> = history.iter().map(|p| p.as_placement()).collect();
                all.push(placement);
                pass.clip_transforms(&all, w, h, Some(alpha))
                    .pop()
                    .unwrap_or(Err(SkipReason::NoFace))
            }
        };
        // Passed through, with one warning per pass and kind of skip.
        let skipped = |reason| {
            let out = pass.pass_through(body, reason, None);
            FaceOutcome {
                rgb: out.rgb,
                status: out.status,
                computed: false,
            }
        };
        let resolved = match resolved {
            Ok(r) => r,
            Err(reason) => return Ok(skipped(reason)),
        };
        // The crop mask decides the skips that need the transform (no face pixel in the crop).
        // It needs no pixels and no parser run (valid with a parser, see `crop_mask`), so a cache
        // hit costs neither a warp nor a BiSeNet pass.
        if let Err(reason) = pass.crop_mask(&placement, &resolved, w, h) {
            return Ok(skipped(reason));
        }
        let mut k = KeyHasher::tagged("ofx-face-frame");
        k.key(pass.identity())
            .u64(w as u64)
            .u64(h as u64)
            .bytes(body.data)
            .bytes(mesh.data);
        match &current.matte {
            Some(m) => k.u64(1).bytes(m),
            None => k.u64(0),
        };
        match &current.landmarks {
            Some(p) => {
                k.u64(1);
                for v in p.iter().flatten() {
                    k.f64(*v);
                }
            }
            None => {
                k.u64(0);
            }
        }
        for v in resolved.transform.0.iter().flatten() {
            k.f64(*v);
        }
        let key = k.finish();
        let mut computed = false;
        let entry = self.cache.get_or_compute(key, || {
            // A farm job's other processes may have enhanced this frame already.
            if let Some(entry) = shared.and_then(|st| st.get(key, EntryKind::Image, &Device::Cpu)) {
                return Ok(entry);
            }
            computed = true;
            let out = BatchGate::run_opt(gate, || {
                pass.enhance_with(body, mesh, &placement, &resolved)
            })?;
            self.inpaintings.fetch_add(1, Ordering::SeqCst);
            let n = out.rgb.len();
            let entry = Entry::Image(Tensor::from_vec(out.rgb, n, &Device::Cpu)?);
            if let Some(st) = shared {
                st.publish(key, &entry);
            }
            Ok(entry)
        })?;
        let Entry::Image(t) = entry else {
            return Err(EngineError::Input("face cache holds a foreign entry".into()).into());
        };
        let rgb = t.to_vec1::<u8>()?;
        if rgb.len() != body.data.len() {
            return Err(EngineError::Input(format!(
                "the face pass returned {} bytes for a {w}×{h} frame",
                rgb.len()
            ))
            .into());
        }
        Ok(FaceOutcome {
            rgb,
            status: FaceStatus::Enhanced(resolved.source),
            computed,
        })
    }

    /// The temporal face's window cache and its counters.
    pub(crate) fn temporal_cache(&self) -> (&Cache, &Counters) {
        (&self.temporal, &self.temporal_counters)
    }

    /// Reads a landmarks file once per version (path, length, mtime) and keeps it in the
    /// registry (charged the file's length; an edited file replaces its old version).
    pub fn landmarks_file(&self, path: &Path) -> Result<Arc<face::landmarks::LandmarkTrack>> {
        let version =
            registry::file_version("landmarks-file", path).map_err(|e| EngineError::Io {
                path: path.to_path_buf(),
                source: e,
            })?;
        self.registry.get_or_insert_with(
            registry::Kind::File,
            version.key,
            Some(version.path_key),
            |_: &face::landmarks::LandmarkTrack| version.len as usize,
            || face::landmarks::LandmarkTrack::from_file(path),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn face_caches_take_their_share_of_the_budget() {
        // The default budget keeps the sizes the face caches always had.
        assert_eq!(cache_shares(4096 << 20), (256 << 20, 1024 << 20));
        assert_eq!(cache_shares(16384 << 20), (1024 << 20, 4096 << 20));
        // A small budget never starves them.
        assert_eq!(cache_shares(128 << 20), (64 << 20, 64 << 20));
    }

    #[test]
    fn smoothing_history_bounds_the_weight_of_older_frames() {
        assert_eq!(
            smoothing_history(1.0),
            0,
            "weight 1 on the new frame: no history"
        );
        assert_eq!(smoothing_history(0.5), 20, "0.5^20 < 1e-6");
        assert!(0.5f64.powi(20) < 1e-6 && 0.5f64.powi(19) >= 1e-6);
        assert_eq!(smoothing_history(0.05), 270);
        assert_eq!(smoothing_history(0.0), usize::MAX);
    }
}
