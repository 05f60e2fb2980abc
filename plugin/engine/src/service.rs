//! Process-global engine state for hosts that ask for one frame at a time: the model table
//! (one load per model identity, shared by every caller), the shared content-keyed [`Cache`] and
//! [`Counters`], the single accelerator lock, and purge.
//!
//! No OFX types here: the OpenFX effect hands frames in through [`ControlSource`] and progress /
//! cancel through [`Progress`]; the same calls work from tests without a host.
//!
//! - **Models** are keyed by (folder, dtype, device). On every request the folder's identity
//!   ([`pipeline::folder_identity`]: config bytes, weight sizes and mtimes) is recomputed; a
//!   changed identity reloads the model, and renders still holding the old one finish with it.
//! - **Frames** are memoised in one [`Cache`] whose keys are content (model identity, settings,
//!   control-frame pixels, noise), so render clones, per-frame instances and concurrent renders of
//!   one instance share work, and a frame being computed by one thread is awaited by the others
//!   (the cache's single flight).
//! - **The accelerator** runs one network batch at a time: every UNet/ControlNet batch, VAE decode
//!   and CLIP encode takes [`Service::accelerator`], so concurrent requests interleave batches
//!   rather than oversubscribing the device.
//! - **Memos** of appearance tokens and reference photos live in the process's resource
//!   registry ([`crate::registry`]), bounded by its share of the cache budget.
//! - **Purge** ([`Service::purge`]) frees the cache and the registry's memos, and the models
//!   (ours and the registry's loaded parsers) when no request is running.
use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Tensor};
use parking_lot::Mutex;

use super::device::{device_name, dtype_name, select_device, DeviceChoice};
use super::memory;
use super::model::{BodyModel, ModelLayout};
use super::networks::unet::ControlResiduals;
use super::pipeline::{self, BodyNetworks, DdimStep};
use super::registry::{self, Registry};
use super::resample::{resize_rgb8, Filter};
use super::sampler::ddim::DdimScheduler;
use super::temporal::{
    Cache, ControlFrames, Counters, Fusion, Key, KeyHasher, Progress, SamplingParams, Tail,
    TemporalDenoiser, WindowNetworks, WindowPlan,
};
use super::{EngineError, Result};

/// Everything about a request that changes its frames, as plain values.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderSettings {
    /// The model folder.
    pub folder: PathBuf,
    /// Where the networks run.
    pub device: DeviceChoice,
    /// Network precision.
    pub dtype: DType,
    /// DDIM steps.
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub guidance: f64,
    /// ControlNet conditioning scale.
    pub control_scale: f64,
    /// How the ControlNet residuals enter the UNet.
    pub control_residuals: ControlResiduals,
    /// Frames per window.
    pub window: usize,
    /// Frames shared by neighbouring windows.
    pub overlap: usize,
    /// Blending of overlapping windows.
    pub fusion: Fusion,
    /// Last-window rule.
    pub tail: Tail,
    /// Requested working resolution (square; rounded down to a multiple of 32).
    pub resolution: usize,
    /// Seed of the initial noise.
    pub seed: u64,
    /// Cache budget in bytes (process-wide; the latest request's value wins), shared by the
    /// resource registry, which takes [`registry::share_of`] it, and the frame cache, which gets
    /// the rest, raised to the bytes one request touches when below them
    /// ([`memory::request_cache_bytes`]).
    pub cache_bytes: usize,
    /// Memory the request may use (weights + one window batch's working set), when limited:
    /// a request whose estimate exceeds it fails before its first batch with
    /// [`ServiceError::OutOfMemory`] ([`memory::estimate_batch`]).
    pub memory_limit: Option<usize>,
}

impl RenderSettings {
    /// The working resolution after the reference's rounding.
    pub fn working_resolution(&self) -> Result<usize> {
        Ok(pipeline::check_resolution(self.resolution)?.0)
    }

    /// The window plan of a clip of `len` frames.
    pub fn plan(&self, len: usize) -> Result<WindowPlan> {
        WindowPlan::new(len, self.window, self.overlap, self.tail, self.fusion)
    }

    /// The frames (clip indices) whose control images a request for `frame` reads: the
    /// dependency cone of `frame` over all steps. Needs no model.
    pub fn frames_needed(&self, len: usize, frame: usize) -> Result<Range<usize>> {
        if frame >= len {
            return Err(EngineError::Input(format!(
                "frame {frame} is outside the clip of {len} frames"
            )));
        }
        Ok(self.plan(len)?.cone(frame..frame + 1, self.steps))
    }
}

/// The mesh-render frames of a clip, as the caller can fetch them.
pub trait ControlSource: Send + Sync {
    /// Frames in the clip (they anchor the windows).
    fn len(&self) -> usize;
    /// True when the clip has no frames.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Frame `f` as interleaved 8-bit RGB, top row first: `(pixels, width, height)`.
    fn rgb8(&self, f: usize) -> Result<(Vec<u8>, usize, usize)>;
}

/// The reference photo of a request.
#[derive(Debug, Clone, Copy)]
pub enum Appearance<'a> {
    /// Interleaved 8-bit RGB, top row first.
    Rgb8 {
        /// `width * height * 3` bytes.
        data: &'a [u8],
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
    },
    /// The model folder's default photo ([`pipeline::DEFAULT_APPEARANCE`]).
    ModelDefault,
}

/// One rendered frame at the working resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedFrame {
    /// Interleaved 8-bit RGB, top row first (the reference's floor quantisation).
    pub rgb: Vec<u8>,
    /// Width = height = the working resolution.
    pub size: usize,
    /// Network batches this request ran itself (0 when everything came from the cache).
    pub network_calls: u64,
    /// When the requested cache budget was below what this request touches, the budget used
    /// instead (bytes); `None` when the requested budget was large enough.
    pub cache_floor: Option<usize>,
}

/// Why a request failed, by phase, so callers can say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The model folder could not be resolved or loaded (absent components, bad configs or
    /// weights, mismatched widths).
    #[error("model folder {}: {source}", folder.display())]
    Model {
        /// The folder.
        folder: PathBuf,
        /// The loader's error.
        source: EngineError,
    },
    /// The appearance image is absent or unreadable.
    #[error("appearance: {0}")]
    Appearance(EngineError),
    /// The request needs more memory than it may use (found before its first batch), or an
    /// allocation failed in any phase ([`EngineError::OutOfMemory`]).
    #[error("out of memory: {detail}")]
    OutOfMemory {
        /// What was needed and what was available, or the allocator's message.
        detail: String,
    },
    /// Anything else: settings, device, control frames, networks, cancel.
    #[error(transparent)]
    Render(EngineError),
}

impl ServiceError {
    /// Whether the failure was a lack of memory: the estimate above the limit, or an
    /// allocation failure ([`EngineError::OutOfMemory`]) reported by any phase.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(
            self,
            Self::OutOfMemory { .. }
                | Self::Model {
                    source: EngineError::OutOfMemory { .. },
                    ..
                }
                | Self::Appearance(EngineError::OutOfMemory { .. })
                | Self::Render(EngineError::OutOfMemory { .. })
        )
    }

    /// Allocation failures of any phase as [`ServiceError::OutOfMemory`], naming the phase;
    /// other errors as they are.
    fn classify(self) -> Self {
        match self {
            Self::Model {
                folder,
                source: EngineError::OutOfMemory { detail },
            } => Self::OutOfMemory {
                detail: format!(
                    "the allocator failed while loading the model folder {}: {detail}",
                    folder.display()
                ),
            },
            Self::Appearance(EngineError::OutOfMemory { detail }) => Self::OutOfMemory {
                detail: format!("the allocator failed while encoding the appearance: {detail}"),
            },
            Self::Render(EngineError::OutOfMemory { detail }) => Self::OutOfMemory {
                detail: format!("the allocator failed: {detail}"),
            },
            e => e,
        }
    }
}

impl From<candle_core::Error> for ServiceError {
    fn from(e: candle_core::Error) -> Self {
        Self::Render(e.into())
    }
}

impl From<EngineError> for ServiceError {
    fn from(e: EngineError) -> Self {
        Self::Render(e)
    }
}

/// A loaded model and its identity.
struct Loaded {
    model: BodyModel,
    identity: Key,
}

/// (folder, dtype, device): one slot of a model table.
pub type Slot = (PathBuf, &'static str, String);

/// Models loaded once per [`Slot`] and reloaded when their folder's identity changes (configs,
/// weight sizes and mtimes). One load runs at a time; a second request for the same model waits
/// for it and then finds it. Shared by the body service and the effect's face service.
pub struct ModelSlots<T> {
    models: Mutex<HashMap<Slot, (Key, Arc<T>)>>,
    loading: Mutex<()>,
}

impl<T> Default for ModelSlots<T> {
    fn default() -> Self {
        Self {
            models: Mutex::new(HashMap::new()),
            loading: Mutex::new(()),
        }
    }
}

impl<T> ModelSlots<T> {
    /// The model of `slot` whose folder has `identity`, loading it with `load` when it is absent
    /// or its folder changed on disk.
    pub fn get_or_load<E>(
        &self,
        slot: Slot,
        identity: Key,
        load: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<Arc<T>, E> {
        let current = |models: &HashMap<Slot, (Key, Arc<T>)>| {
            models
                .get(&slot)
                .filter(|(k, _)| *k == identity)
                .map(|(_, m)| m.clone())
        };
        if let Some(m) = current(&self.models.lock()) {
            return Ok(m);
        }
        let _loading = self.loading.lock();
        if let Some(m) = current(&self.models.lock()) {
            return Ok(m);
        }
        if self.models.lock().remove(&slot).is_some() {
            log::info!(
                "model folder {} changed on disk: reloading",
                slot.0.display()
            );
        }
        let model = Arc::new(load()?);
        self.models.lock().insert(slot, (identity, model.clone()));
        Ok(model)
    }

    /// Models loaded now.
    pub fn len(&self) -> usize {
        self.models.lock().len()
    }

    /// True when no model is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every model (a running request keeps its own through its `Arc`); returns how many.
    pub fn clear(&self) -> usize {
        let mut models = self.models.lock();
        let n = models.len();
        models.clear();
        n
    }
}

/// The process-global engine.
pub struct Service {
    models: ModelSlots<Loaded>,
    /// Where appearance tokens and reference photos are memoised: the process's
    /// [`crate::registry`], bounded by bytes (an animated Appearance clip adds one token entry
    /// per frame), given its share of the cache budget by each request and freed by purge.
    registry: Arc<Registry>,
    cache: Cache,
    counters: Counters,
    accelerator: Mutex<()>,
    active: AtomicUsize,
    loads: AtomicUsize,
    /// Batches on the accelerator now, and the most ever seen (a check that the lock holds).
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// Default cache budget until a request sets one.
pub(crate) const DEFAULT_CACHE_BYTES: usize = 4096 << 20;

impl Default for Service {
    fn default() -> Self {
        Self {
            models: ModelSlots::default(),
            registry: registry::shared(),
            cache: Cache::new(DEFAULT_CACHE_BYTES - registry::share_of(DEFAULT_CACHE_BYTES)),
            counters: Counters::default(),
            accelerator: Mutex::new(()),
            active: AtomicUsize::new(0),
            loads: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        }
    }
}

/// The process's engine.
pub fn global() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    SERVICE.get_or_init(Service::default)
}

/// Counts a running request; the count drops when this is dropped, whatever happens.
struct Active<'a>(&'a AtomicUsize);
impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The networks with the accelerator lock around each batch.
struct Serialised<'a> {
    nets: &'a BodyNetworks<'a>,
    service: &'a Service,
}

impl Serialised<'_> {
    fn run<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _g = self.service.accelerator.lock();
        let s = self.service;
        let n = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(n, Ordering::SeqCst);
        let r = f();
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        r
    }
}

impl WindowNetworks for Serialised<'_> {
    fn predict(
        &self,
        latents: &Tensor,
        timestep: usize,
        control: &Tensor,
        control_scale: f64,
    ) -> Result<(Tensor, Tensor)> {
        self.run(|| self.nets.predict(latents, timestep, control, control_scale))
    }

    fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        self.run(|| self.nets.decode(latent))
    }

    fn identity(&self) -> Key {
        self.nets.identity()
    }
}

/// Bytes of working-resolution control pixels one request keeps, so that each frame is fetched
/// from the caller once per request rather than once for its key and again for every window
/// batch that reads it (a host fetch is a `clipGetImage`, a pixel conversion and a resize). At
/// 512² this holds about 340 frames, more than the dependency cone of 20 steps of 16/4 windows;
/// frames beyond it are fetched again when read.
const PIXEL_MEMO_BYTES: usize = 256 << 20;

/// A [`ControlSource`] as the engine's [`ControlFrames`]: resized to the working size with PIL
/// LANCZOS and keyed exactly as the CLI's [`pipeline::PoseSequence`].
struct Controls<'a> {
    source: &'a dyn ControlSource,
    size: usize,
    dtype: DType,
    device: Device,
    keys: Mutex<HashMap<usize, Key>>,
    /// Working-resolution pixels fetched by this request, within [`PIXEL_MEMO_BYTES`].
    pixels: Mutex<PixelMemo>,
}

/// Frame index → working-resolution RGB, and the bytes held.
type PixelMemo = (HashMap<usize, Arc<Vec<u8>>>, usize);

impl Controls<'_> {
    /// Frame `f` at the working size, fetched once per request while the memo has room.
    fn pixels(&self, f: usize) -> Result<Arc<Vec<u8>>> {
        if let Some(p) = self.pixels.lock().0.get(&f) {
            return Ok(p.clone());
        }
        let p = Arc::new(self.rgb8(f)?);
        let mut memo = self.pixels.lock();
        if memo.1 + p.len() <= PIXEL_MEMO_BYTES {
            memo.1 += p.len();
            memo.0.insert(f, p.clone());
        }
        Ok(p)
    }

    fn rgb8(&self, f: usize) -> Result<Vec<u8>> {
        if f >= self.source.len() {
            return Err(EngineError::Input(format!(
                "frame {f} is outside the clip of {}",
                self.source.len()
            )));
        }
        let (rgb, w, h) = self.source.rgb8(f)?;
        if rgb.len() != w * h * 3 || w == 0 || h == 0 {
            return Err(EngineError::Input(format!(
                "control frame {f} holds {} bytes, not {w}×{h} RGB",
                rgb.len()
            )));
        }
        let s = self.size;
        Ok(if (w, h) == (s, s) {
            rgb
        } else {
            resize_rgb8(&rgb, w, h, s, s, Filter::Lanczos)
        })
    }
}

impl ControlFrames for Controls<'_> {
    fn len(&self) -> usize {
        self.source.len()
    }

    fn key(&self, f: usize) -> Result<Key> {
        if let Some(&k) = self.keys.lock().get(&f) {
            return Ok(k);
        }
        let s = self.size as u64;
        let k = KeyHasher::tagged("pose")
            .u64(s)
            .u64(s)
            .bytes(&self.pixels(f)?)
            .finish();
        self.keys.lock().insert(f, k);
        Ok(k)
    }

    fn frame(&self, f: usize) -> Result<Tensor> {
        pipeline::rgb8_to_tensor(
            &self.pixels(f)?,
            self.size,
            self.size,
            self.dtype,
            &self.device,
        )
    }
}

impl Service {
    /// The shared frame cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Holds the accelerator for network work outside this service (the face pass), so that the
    /// whole process runs one batch at a time. Never hold it while calling back into this
    /// service: the lock is not re-entrant.
    pub fn lock_accelerator(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.accelerator.lock()
    }

    /// The accelerator lock itself, for engines that take it per batch (the temporal face).
    pub fn accelerator(&self) -> &Mutex<()> {
        &self.accelerator
    }

    /// Work counters since the process started.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Network batches run since the process started.
    pub fn network_calls(&self) -> u64 {
        self.counters.network_calls.load(Ordering::Relaxed)
    }

    /// Requests running now.
    pub fn active_requests(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Model loads since the process started (a reload after an edit counts again).
    pub fn model_loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    /// The most network batches or decodes ever running at once (1: the accelerator lock
    /// serialises them).
    pub fn max_batches_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Models loaded now.
    pub fn loaded_models(&self) -> usize {
        self.models.len()
    }

    /// The resource registry this service memoises tokens and photos in (the process's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A service memoising in `registry` rather than the process's.
    #[cfg(test)]
    pub(crate) fn with_registry(registry: Arc<Registry>) -> Self {
        Self {
            registry,
            ..Self::default()
        }
    }

    /// Frees every cached frame and every registry memo (tokens, photos, files), and the models
    /// (the body models and the registry's loaded parsers) too when no request is running (a
    /// running request keeps its model alive through its own reference either way). Returns
    /// whether the models were freed.
    pub fn purge(&self) -> bool {
        self.cache.purge();
        let idle = self.active.load(Ordering::SeqCst) == 0;
        let memos = self.registry.purge(idle);
        if idle {
            let n = self.models.clear();
            log::info!(
                "purged the frame cache and {n} model(s); the resource registry freed {} \
                 entr(ies) of {} bytes",
                memos.entries,
                memos.bytes
            );
        } else {
            log::info!(
                "purged the frame cache and {} registry entr(ies) of {} bytes; models kept \
                 while renders run",
                memos.entries,
                memos.bytes
            );
        }
        idle
    }

    /// The model of `settings`, loaded once per (folder, dtype, device) and reloaded when the
    /// folder's identity changes.
    fn model(
        &self,
        settings: &RenderSettings,
        device: &Device,
    ) -> std::result::Result<Arc<Loaded>, ServiceError> {
        let bad = |source| ServiceError::Model {
            folder: settings.folder.clone(),
            source,
        };
        let layout = ModelLayout::resolve(&settings.folder).map_err(bad)?;
        let identity = pipeline::folder_identity(&layout).map_err(bad)?;
        let slot: Slot = (
            settings.folder.clone(),
            dtype_name(settings.dtype),
            device_name(device),
        );
        self.models.get_or_load(slot, identity, || {
            let model = {
                let _g = self.accelerator.lock();
                BodyModel::load(&settings.folder, settings.dtype, device).map_err(bad)?
            };
            self.loads.fetch_add(1, Ordering::SeqCst);
            Ok(Loaded { model, identity })
        })
    }

    /// Appearance tokens of `appearance`, memoised in the registry by model identity, dtype,
    /// device and photo content (the model's default photo is read through the registry too).
    fn appearance(&self, loaded: &Loaded, appearance: Appearance<'_>) -> Result<Tensor> {
        let owned;
        let (data, w, h) = match appearance {
            Appearance::Rgb8 {
                data,
                width,
                height,
            } => (data, width, height),
            Appearance::ModelDefault => {
                owned = pipeline::read_default_appearance(&loaded.model.layout, &self.registry)?;
                (&owned.0[..], owned.1, owned.2)
            }
        };
        if data.len() != w * h * 3 || w == 0 || h == 0 {
            return Err(EngineError::Input(format!(
                "appearance image holds {} bytes, not {w}×{h} RGB",
                data.len()
            )));
        }
        let model = &loaded.model;
        let key = KeyHasher::tagged("appearance")
            .key(loaded.identity)
            .str(dtype_name(model.dtype))
            .str(&device_name(&model.device))
            .u64(w as u64)
            .u64(h as u64)
            .bytes(data)
            .finish();
        let tokens = self.registry.get_or_insert_with(
            registry::Kind::Tokens,
            key,
            None,
            registry::tensor_bytes,
            || {
                let _g = self.accelerator.lock();
                Ok::<_, EngineError>(
                    model
                        .image_encoder
                        .encode_image(data, w, h)?
                        .to_dtype(model.dtype)?,
                )
            },
        )?;
        Ok(tokens.as_ref().clone())
    }

    /// Appearance tokens of `appearance` for the model of `settings` (loaded when absent).
    #[cfg(test)]
    pub(crate) fn appearance_tokens(
        &self,
        settings: &RenderSettings,
        appearance: Appearance<'_>,
    ) -> std::result::Result<Tensor, ServiceError> {
        let device = select_device(settings.device)?;
        let loaded = self.model(settings, &device)?;
        Ok(self.appearance(&loaded, appearance)?)
    }

    /// Renders frame `frame` (an index into `control`'s clip) with the batch-overlapped
    /// temporal denoiser, exactly as `anchor render` does for the same inputs.
    ///
    /// Before the first batch, the largest window batch's memory is estimated and checked
    /// against `settings.memory_limit`, and the cache budget is raised to what this request
    /// touches when it is below; allocation failures of any phase come back as
    /// [`ServiceError::OutOfMemory`].
    pub fn render_frame(
        &self,
        settings: &RenderSettings,
        appearance: Appearance<'_>,
        control: &dyn ControlSource,
        frame: usize,
        progress: &dyn Progress,
    ) -> std::result::Result<RenderedFrame, ServiceError> {
        self.render_frame_inner(settings, appearance, control, frame, progress)
            .map_err(ServiceError::classify)
    }

    /// Loads the model `settings` name (on its device, in its precision) into the process-wide
    /// model slots without rendering anything, so that the first frame a host asks for does not
    /// also pay for reading the weights. A later request with the same folder, dtype and device
    /// finds the model loaded; an edited folder is reloaded then, as usual. Counts as a running
    /// request while it loads, so a concurrent purge keeps the model.
    pub fn prepare(&self, settings: &RenderSettings) -> std::result::Result<(), ServiceError> {
        self.active.fetch_add(1, Ordering::SeqCst);
        let _active = Active(&self.active);
        let device = select_device(settings.device)?;
        super::device::check_dtype(&device, settings.dtype)?;
        self.model(settings, &device)
            .map(|_| ())
            .map_err(ServiceError::classify)
    }

    fn render_frame_inner(
        &self,
        settings: &RenderSettings,
        appearance: Appearance<'_>,
        control: &dyn ControlSource,
        frame: usize,
        progress: &dyn Progress,
    ) -> std::result::Result<RenderedFrame, ServiceError> {
        self.active.fetch_add(1, Ordering::SeqCst);
        let _active = Active(&self.active);
        let res = settings.working_resolution()?;
        let plan = settings.plan(control.len())?;
        if frame >= plan.len() {
            return Err(EngineError::Input(format!(
                "frame {frame} is outside the clip of {} frames",
                plan.len()
            ))
            .into());
        }
        if progress.cancelled() {
            return Err(EngineError::Cancelled.into());
        }
        let device = select_device(settings.device)?;
        // Before the load, so that an impossible combination is not blamed on the model.
        super::device::check_dtype(&device, settings.dtype)?;
        let loaded = self.model(settings, &device)?;
        let model = &loaded.model;
        let tokens = self
            .appearance(&loaded, appearance)
            .map_err(ServiceError::Appearance)?;
        let nets = BodyNetworks::new(model, &tokens, loaded.identity, settings.control_residuals)?;
        let largest = plan.windows().iter().map(|w| w.len()).max().unwrap_or(1);
        let need = memory::estimate_batch(model, largest, res);
        log::debug!(
            "memory estimate: a window batch of {largest} frame(s) at {res}x{res} needs about \
             {} MiB (weights {} MiB + working set {} MiB); limit {}",
            memory::mib_ceil(need.total()),
            memory::mib_ceil(need.weights),
            memory::mib_ceil(need.working_set),
            settings
                .memory_limit
                .map(|l| format!("{} MiB", l >> 20))
                .unwrap_or_else(|| "none".into())
        );
        if let Some(limit) = settings.memory_limit {
            if need.total() > limit {
                return Err(ServiceError::OutOfMemory {
                    detail: format!(
                        "a window batch of {largest} frame(s) at {res}x{res} in {} needs about \
                         {} MiB (model weights {} MiB + working set {} MiB), but only {} MiB \
                         are available",
                        dtype_name(model.dtype),
                        memory::mib_ceil(need.total()),
                        memory::mib_ceil(need.weights),
                        memory::mib_ceil(need.working_set),
                        limit >> 20
                    ),
                });
            }
        }
        let latent_ch = model.unet.architecture().in_channels();
        let factor = model.vae.config().downsample_factor();
        let latent_bytes =
            latent_ch * (res / factor) * (res / factor) * model.dtype.size_in_bytes();
        let image_bytes = 3 * res * res * DType::F32.size_in_bytes();
        let floor =
            memory::request_cache_bytes(&plan, settings.steps, frame, latent_bytes, image_bytes);
        let cache_floor = (settings.cache_bytes < floor).then_some(floor);
        if cache_floor.is_some() {
            log::debug!(
                "cache budget {} bytes is below the {floor} bytes frame {frame} touches: using {floor}",
                settings.cache_bytes
            );
        }
        // The registry's share is carved out of the budget; the frame cache gets the rest, but
        // never less than what this request touches.
        let registry_bytes = registry::share_of(settings.cache_bytes);
        self.registry.set_budget(registry_bytes);
        self.cache.set_budget(
            settings
                .cache_bytes
                .saturating_sub(registry_bytes)
                .max(floor),
        );
        let serialised = Serialised {
            nets: &nets,
            service: self,
        };
        let scheduler = DdimStep(DdimScheduler::new(
            model.configs.scheduler.clone(),
            settings.steps,
        )?);
        let (noise, noise_key) =
            pipeline::initial_noise(settings.seed, None, (latent_ch, res / factor, res / factor))?;
        let noise = noise.to_dtype(model.dtype)?.to_device(&model.device)?;
        let controls = Controls {
            source: control,
            size: res,
            dtype: model.dtype,
            device: model.device.clone(),
            keys: Mutex::new(HashMap::new()),
            pixels: Mutex::new((HashMap::new(), 0)),
        };
        let params = SamplingParams {
            guidance: settings.guidance,
            control_scale: settings.control_scale,
        };
        let mine = Counted {
            inner: progress,
            calls: AtomicUsize::new(0),
        };
        let denoiser = TemporalDenoiser::new(
            &serialised,
            &scheduler,
            &controls,
            &self.cache,
            &self.counters,
            plan,
            params,
            noise,
            noise_key,
        )?;
        let img = denoiser.image(frame, &mine)?;
        // Quantisation would floor NaN to black silently: a non-finite frame is an error.
        let values = img.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(EngineError::Input(format!(
                "the networks produced {bad} non-finite value(s) (NaN or infinity) in frame \
                 {frame}; with f16 or bf16 precision, choose f32"
            ))
            .into());
        }
        let (rgb, w, h) = pipeline::image_to_rgb8(&img)?;
        if (w, h) != (res, res) {
            return Err(EngineError::Input(format!(
                "internal: decoded {w}×{h}, expected {res}×{res}"
            ))
            .into());
        }
        Ok(RenderedFrame {
            rgb,
            size: res,
            network_calls: mine.calls.load(Ordering::Relaxed) as u64,
            cache_floor,
        })
    }
}

/// Counts the batches one request ran itself, passing progress through.
struct Counted<'a> {
    inner: &'a dyn Progress,
    calls: AtomicUsize,
}

impl Progress for Counted<'_> {
    fn window_done(&self, step: usize, steps: usize, window: usize) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.window_done(step, steps, window);
    }

    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::temporal::NoProgress;
    use std::path::Path;

    fn tiny() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny")
    }

    /// Five synthetic 48×40 control frames (resized to 64² by the service).
    struct Synthetic;
    impl ControlSource for Synthetic {
        fn len(&self) -> usize {
            5
        }
        fn rgb8(&self, f: usize) -> Result<(Vec<u8>, usize, usize)> {
            let (w, h) = (48, 40);
            let mut v = Vec::with_capacity(w * h * 3);
            for y in 0..h {
                for x in 0..w {
                    v.extend([(x * 5 + f * 20) as u8, (y * 6) as u8, ((x + y) * 3) as u8]);
                }
            }
            Ok((v, w, h))
        }
    }

    fn settings(folder: &Path) -> RenderSettings {
        RenderSettings {
            folder: folder.to_path_buf(),
            device: DeviceChoice::Cpu,
            dtype: DType::F32,
            steps: 2,
            guidance: 7.5,
            control_scale: 2.0,
            control_residuals: ControlResiduals::Original,
            window: 2,
            overlap: 0,
            fusion: Fusion::Flat,
            tail: Tail::Paper,
            resolution: 64,
            seed: 42,
            cache_bytes: 256 << 20,
            memory_limit: None,
        }
    }

    const PHOTO: [u8; 12] = [200, 30, 40, 10, 220, 30, 0, 0, 255, 128, 128, 128];

    fn photo() -> Appearance<'static> {
        Appearance::Rgb8 {
            data: &PHOTO,
            width: 2,
            height: 2,
        }
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dst = to.join(e.file_name());
            if e.path().is_dir() {
                copy_dir(&e.path(), &dst);
            } else {
                std::fs::copy(e.path(), dst).unwrap();
            }
        }
    }

    #[test]
    fn concurrent_requests_share_one_pass_and_match_sequential() {
        let s = settings(&tiny());
        let sequential = Service::default();
        let want: Vec<Vec<u8>> = (0..5)
            .map(|f| {
                sequential
                    .render_frame(&s, photo(), &Synthetic, f, &NoProgress)
                    .unwrap()
                    .rgb
            })
            .collect();
        // 3 windows ([0,2), [2,4), [4,5)) × 2 steps.
        assert_eq!(sequential.network_calls(), 6);
        let shared = Service::default();
        let got: Vec<Mutex<Vec<u8>>> = (0..5).map(|_| Mutex::new(Vec::new())).collect();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (shared, s, got) = (&shared, &s, &got);
                scope.spawn(move || {
                    for f in [4, 0, 2, 1, 3] {
                        let f = (f + t) % 5;
                        let r = shared.render_frame(s, photo(), &Synthetic, f, &NoProgress);
                        *got[f].lock() = r.unwrap().rgb;
                    }
                });
            }
        });
        for (f, g) in got.iter().enumerate() {
            assert_eq!(*g.lock(), want[f], "frame {f}");
        }
        assert_eq!(shared.network_calls(), 6, "single flight: no batch twice");
        assert_eq!(shared.model_loads(), 1, "one load shared by every thread");
        assert_eq!(shared.max_batches_in_flight(), 1, "one batch at a time");
    }

    #[test]
    fn models_load_once_reload_after_an_edit_and_purge_frees_them() {
        let dir = std::env::temp_dir().join(format!("anchor-service-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        copy_dir(&tiny(), &dir);
        let s = settings(&dir);
        let svc = Service::default();
        let a = svc
            .render_frame(&s, photo(), &Synthetic, 0, &NoProgress)
            .unwrap();
        let b = svc
            .render_frame(&s, photo(), &Synthetic, 1, &NoProgress)
            .unwrap();
        assert_eq!((svc.model_loads(), svc.loaded_models()), (1, 1));
        assert_eq!(
            a.network_calls + b.network_calls,
            2,
            "frame 1 reuses window 0"
        );
        // Touch the UNet weights: same bytes, new mtime, so a new identity.
        let w = dir.join("unet/diffusion_pytorch_model.safetensors");
        let f = std::fs::File::options().write(true).open(&w).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        drop(f);
        let c = svc
            .render_frame(&s, photo(), &Synthetic, 0, &NoProgress)
            .unwrap();
        assert_eq!(
            svc.model_loads(),
            2,
            "the edit is detected and the model reloaded"
        );
        assert_eq!(svc.loaded_models(), 1, "the old model is dropped");
        assert_eq!(
            c.network_calls, 2,
            "new identity: frames are recomputed, never served stale"
        );
        assert_eq!(c.rgb, a.rgb, "same weights, same frame");
        // A config edit changes the identity too.
        let cfg = dir.join("scheduler/scheduler_config.json");
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg, format!("{text}\n")).unwrap();
        svc.render_frame(&s, photo(), &Synthetic, 0, &NoProgress)
            .unwrap();
        assert_eq!(svc.model_loads(), 3);
        assert!(svc.purge(), "no render running: models are freed");
        assert_eq!(svc.loaded_models(), 0);
        assert_eq!(svc.cache().stats().bytes, 0);
        svc.render_frame(&s, photo(), &Synthetic, 0, &NoProgress)
            .unwrap();
        assert_eq!(svc.model_loads(), 4, "loaded again after a purge");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Cancels once `after` batches are done.
    struct CancelAfter {
        after: usize,
        done: AtomicUsize,
    }
    impl Progress for CancelAfter {
        fn window_done(&self, _: usize, _: usize, _: usize) {
            self.done.fetch_add(1, Ordering::SeqCst);
        }
        fn cancelled(&self) -> bool {
            self.done.load(Ordering::SeqCst) >= self.after
        }
    }

    #[test]
    fn cancel_stops_between_batches_and_the_next_request_is_exact() {
        let s = settings(&tiny());
        let want = Service::default()
            .render_frame(&s, photo(), &Synthetic, 2, &NoProgress)
            .unwrap();
        let svc = Service::default();
        let cancel = CancelAfter {
            after: 1,
            done: AtomicUsize::new(0),
        };
        let e = svc
            .render_frame(&s, photo(), &Synthetic, 2, &cancel)
            .err()
            .unwrap();
        assert!(
            matches!(e, ServiceError::Render(EngineError::Cancelled)),
            "{e}"
        );
        assert_eq!(svc.network_calls(), 1, "no batch after the cancel");
        assert_eq!(svc.active_requests(), 0);
        let again = svc
            .render_frame(&s, photo(), &Synthetic, 2, &NoProgress)
            .unwrap();
        assert_eq!(again.rgb, want.rgb, "the rerun is exact");
        assert_eq!(
            svc.network_calls(),
            want.network_calls,
            "the finished batch is reused, nothing is computed twice"
        );
    }

    #[test]
    fn errors_name_their_phase() {
        let svc = Service::default();
        let missing = settings(Path::new("/no/such/model"));
        let e = svc
            .render_frame(&missing, photo(), &Synthetic, 0, &NoProgress)
            .err()
            .unwrap();
        assert!(matches!(e, ServiceError::Model { .. }), "{e}");
        let e = svc
            .render_frame(
                &settings(&tiny()),
                Appearance::ModelDefault,
                &Synthetic,
                0,
                &NoProgress,
            )
            .err()
            .unwrap();
        assert!(matches!(e, ServiceError::Appearance(_)), "{e}");
        assert!(e.to_string().contains("appearance.png"), "{e}");
        let mut bad = settings(&tiny());
        bad.overlap = 2;
        let e = svc
            .render_frame(&bad, photo(), &Synthetic, 0, &NoProgress)
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "invalid input: overlap (2) must be smaller than window (2)"
        );
        let mut bf16 = settings(&tiny());
        bf16.dtype = DType::BF16;
        let e = svc
            .render_frame(&bf16, photo(), &Synthetic, 0, &NoProgress)
            .err()
            .unwrap();
        assert!(
            matches!(e, ServiceError::Render(EngineError::Device(_))),
            "a device problem, not a model problem: {e}"
        );
        // A CUDA allocation failure, entering through the engine's one candle conversion.
        let cuda = "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")";
        let oom = ServiceError::from(candle_core::Error::Msg(cuda.into()));
        assert!(oom.is_out_of_memory(), "{oom}");
        assert!(
            matches!(&oom, ServiceError::Render(EngineError::OutOfMemory { detail }) if detail == cuda),
            "{oom:?}"
        );
        let ServiceError::OutOfMemory { detail } = oom.classify() else {
            panic!("an allocation failure classifies as out of memory")
        };
        assert_eq!(detail, format!("the allocator failed: {cuda}"));
        assert!(!ServiceError::Render(EngineError::Cancelled).is_out_of_memory());
        // Text alone is not a kind: an invalid input that mentions memory stays an input error.
        let input = ServiceError::Render(EngineError::Input("out of memory".into()));
        assert!(!input.is_out_of_memory());
        assert!(matches!(
            input.classify(),
            ServiceError::Render(EngineError::Input(_))
        ));
    }

    #[test]
    fn a_batch_above_the_memory_limit_fails_before_its_first_batch() {
        let mut s = settings(&tiny());
        let model = BodyModel::load(&tiny(), DType::F32, &Device::Cpu).unwrap();
        let need = memory::estimate_batch(&model, 2, 64);
        assert!(need.weights > 0 && need.working_set > 0, "{need:?}");
        let svc = Service::default();
        s.memory_limit = Some(need.total() - 1);
        let e = svc
            .render_frame(&s, photo(), &Synthetic, 0, &NoProgress)
            .err()
            .unwrap();
        assert!(e.is_out_of_memory(), "{e}");
        let ServiceError::OutOfMemory { detail } = &e else {
            panic!("{e}")
        };
        assert_eq!(
            *detail,
            format!(
                "a window batch of 2 frame(s) at 64x64 in f32 needs about {} MiB (model weights {} MiB + working set {} MiB), but only {} MiB are available",
                memory::mib_ceil(need.total()),
                memory::mib_ceil(need.weights),
                memory::mib_ceil(need.working_set),
                (need.total() - 1) >> 20
            )
        );
        assert_eq!(svc.network_calls(), 0, "failed before any batch");
        assert_eq!(svc.active_requests(), 0);
        s.memory_limit = Some(need.total());
        svc.render_frame(&s, photo(), &Synthetic, 0, &NoProgress)
            .unwrap();
        // Allocation failures of any phase are out-of-memory errors too.
        let alloc = ServiceError::Model {
            folder: "/m".into(),
            source: candle_core::Error::Msg("CUBLAS_STATUS_ALLOC_FAILED".into()).into(),
        };
        assert!(alloc.is_out_of_memory(), "{alloc}");
        let alloc = alloc.classify();
        assert_eq!(
            alloc.to_string(),
            "out of memory: the allocator failed while loading the model folder /m: \
             CUBLAS_STATUS_ALLOC_FAILED"
        );
        let appearance = ServiceError::Appearance(EngineError::OutOfMemory {
            detail: "CUDA_ERROR_OUT_OF_MEMORY".into(),
        })
        .classify();
        assert!(
            matches!(&appearance, ServiceError::OutOfMemory { detail }
                if detail == "the allocator failed while encoding the appearance: CUDA_ERROR_OUT_OF_MEMORY"),
            "{appearance:?}"
        );
    }

    #[test]
    fn a_cache_budget_below_one_request_is_raised_and_nothing_is_recomputed() {
        // 5 frames, window 2, 4 steps: without the floor, a zero budget keeps nothing and every
        // eps is recomputed for each latent that reads it.
        let mut s = settings(&tiny());
        s.steps = 4;
        s.cache_bytes = 0;
        let want = Service::default()
            .render_frame(&settings_with_steps(4), photo(), &Synthetic, 2, &NoProgress)
            .unwrap();
        let svc = Service::default();
        let got = svc
            .render_frame(&s, photo(), &Synthetic, 2, &NoProgress)
            .unwrap();
        assert_eq!(got.rgb, want.rgb);
        assert_eq!(
            got.network_calls, want.network_calls,
            "the cone's batches once each"
        );
        let plan = s.plan(5).unwrap();
        let latent = 4 * 8 * 8 * 4;
        let floor = memory::request_cache_bytes(&plan, 4, 2, latent, 3 * 64 * 64 * 4);
        assert_eq!(got.cache_floor, Some(floor));
        assert!(svc.cache().stats().peak_bytes <= floor);
        assert_eq!(want.cache_floor, None, "256 MiB is plenty");
    }

    #[test]
    fn prepare_loads_the_model_once_before_the_first_frame() {
        let svc = Service::default();
        let s = settings(&tiny());
        svc.prepare(&s).unwrap();
        assert_eq!(svc.model_loads(), 1);
        assert_eq!(svc.loaded_models(), 1);
        svc.prepare(&s).unwrap();
        svc.render_frame(&s, photo(), &Synthetic, 0, &NoProgress)
            .unwrap();
        assert_eq!(svc.model_loads(), 1, "the render found the prepared model");
        let missing = svc.prepare(&settings(Path::new("/no/such/model")));
        assert!(
            matches!(missing, Err(ServiceError::Model { .. })),
            "{missing:?}"
        );
    }

    fn settings_with_steps(steps: usize) -> RenderSettings {
        let mut s = settings(&tiny());
        s.steps = steps;
        s
    }

    /// [`Synthetic`] counting its fetches.
    struct Counting(AtomicUsize);
    impl ControlSource for Counting {
        fn len(&self) -> usize {
            Synthetic.len()
        }
        fn rgb8(&self, f: usize) -> Result<(Vec<u8>, usize, usize)> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Synthetic.rgb8(f)
        }
    }

    #[test]
    fn each_control_frame_is_fetched_once_per_request() {
        // 5 frames, window 2, overlap 1, 4 steps: frame 0's cone reads all 5 frames over
        // 1 + 2 + 3 + 4 batches of 2 frames; each frame is fetched once (for its key), not
        // again for each batch (5 + 10 × 2 = 25 fetches before).
        let mut s = settings_with_steps(4);
        s.overlap = 1;
        let source = Counting(AtomicUsize::new(0));
        let svc = Service::default();
        let r = svc
            .render_frame(&s, photo(), &source, 0, &NoProgress)
            .unwrap();
        assert_eq!(s.frames_needed(5, 0).unwrap(), 0..5);
        assert_eq!(source.0.load(Ordering::SeqCst), 5);
        assert_eq!(r.network_calls, 10);
        let want = Service::default()
            .render_frame(&s, photo(), &Synthetic, 0, &NoProgress)
            .unwrap();
        assert_eq!(r.rgb, want.rgb);
    }

    #[test]
    fn frames_needed_is_the_cone() {
        let mut s = settings(&tiny());
        s.steps = 4;
        s.window = 4;
        s.overlap = 1;
        // 30 frames, windows every 3: the cone widens by one stride per step on each side.
        assert_eq!(s.frames_needed(30, 15).unwrap(), 3..28);
        assert_eq!(s.frames_needed(30, 0).unwrap(), 0..13);
        assert!(s.frames_needed(30, 30).is_err());
        s.window = 1;
        s.overlap = 0;
        assert_eq!(s.frames_needed(30, 7).unwrap(), 7..8);
    }
}
