//! Process-global engine state for hosts that ask for one frame at a time: the model table
//! (one load per model identity, shared by every caller), the shared content-keyed [`Cache`] and
//! [`Counters`], the single accelerator lock, and purge.
//!
//! No OFX types here: the OpenFX effect hands frames in through [`ControlSource`] and progress /
//! cancel through [`Progress`]; the same calls work from tests without a host. Each request runs
//! the one body job of [`crate::job`], as `anchor render` does.
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
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use candle_core::Device;
use parking_lot::Mutex;

use super::device::{device_name, dtype_name, select_device};
use super::job::{self, BatchGate, JobContext, JobModel, JobRequest};
use super::model::{BodyModel, ModelLayout};
use super::pipeline;
use super::registry::{self, Registry};
use super::temporal::{Cache, Counters, Key, Progress, SharedConfig, SharedStore};
use super::EngineError;

pub use super::job::{Appearance, ControlSource, RenderSettings};

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

/// For front ends that report one error type (the CLI, the trainer): allocation failures stay
/// [`EngineError::OutOfMemory`], a failed phase keeps its name in the message.
impl From<ServiceError> for EngineError {
    fn from(e: ServiceError) -> Self {
        match e.classify() {
            ServiceError::Render(e) => e,
            ServiceError::OutOfMemory { detail } => EngineError::OutOfMemory { detail },
            other => EngineError::Input(other.to_string()),
        }
    }
}

/// A loaded model and its identity.
struct Loaded {
    model: BodyModel,
    identity: Key,
}

impl Loaded {
    fn job_model(&self) -> JobModel<'_> {
        JobModel {
            model: &self.model,
            identity: self.identity,
        }
    }
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
    /// One network batch on the device at a time, process-wide.
    gate: BatchGate,
    /// The farm-wide cache requests share their work through, when one is set.
    shared: Mutex<Option<Arc<SharedStore>>>,
    active: AtomicUsize,
    loads: AtomicUsize,
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
            gate: BatchGate::default(),
            shared: Mutex::new(None),
            active: AtomicUsize::new(0),
            loads: AtomicUsize::new(0),
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

impl Service {
    /// The shared frame cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The process's batch gate: the accelerator runs one batch at a time, body or face.
    /// Never call back into this service from inside it: the gate is not re-entrant.
    pub fn gate(&self) -> &BatchGate {
        &self.gate
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
        self.gate.max_in_flight()
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
            let model = (self.gate)
                .run(|| BodyModel::load(&settings.folder, settings.dtype, device))
                .map_err(bad)?;
            self.loads.fetch_add(1, Ordering::SeqCst);
            Ok(Loaded { model, identity })
        })
    }

    /// Shares the work of the following requests with every process using the same `folder`
    /// (a folder on the farm's shared storage), or stops sharing (`None`). Process-wide: the
    /// latest caller's value wins, as for the cache budget. The store is reopened only when the
    /// folder changes, so its counters and its one warning hold per folder.
    pub fn set_shared_cache(&self, folder: Option<&std::path::Path>) {
        let mut shared = self.shared.lock();
        let same = match (&*shared, folder) {
            (Some(store), Some(f)) => store.dir() == f,
            (None, None) => true,
            _ => false,
        };
        if !same {
            *shared = folder.map(|f| Arc::new(SharedStore::open(f, SharedConfig::default())));
        }
    }

    /// The shared cache requests use now.
    pub fn shared_cache(&self) -> Option<Arc<SharedStore>> {
        self.shared.lock().clone()
    }

    /// Where this service's jobs memoise and how their batches reach the device.
    fn context<'a>(&'a self, shared: Option<&'a Arc<SharedStore>>) -> JobContext<'a> {
        JobContext {
            cache: &self.cache,
            counters: &self.counters,
            registry: &self.registry,
            gate: Some(&self.gate),
            shared,
        }
    }

    /// Appearance tokens of `appearance` for the model of `settings` (loaded when absent).
    #[cfg(test)]
    pub(crate) fn appearance_tokens(
        &self,
        settings: &RenderSettings,
        appearance: Appearance<'_>,
    ) -> std::result::Result<candle_core::Tensor, ServiceError> {
        let device = select_device(settings.device)?;
        let loaded = self.model(settings, &device)?;
        Ok(job::encode_appearance(
            loaded.job_model(),
            appearance,
            self.context(None),
        )?)
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
        // Settings and frame first: a bad request is not blamed on the model.
        settings.working_resolution()?;
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
        let mine = Counted {
            inner: progress,
            calls: AtomicUsize::new(0),
        };
        let request = JobRequest {
            settings,
            appearance,
            control,
            noise_file: None,
            frames: &[frame],
        };
        let shared = self.shared_cache();
        job::run(
            loaded.job_model(),
            request,
            self.context(shared.as_ref()),
            |job| {
                job.prepare_frames(&[frame], &mine)?;
                Ok(RenderedFrame {
                    rgb: job.frame_rgb(frame, &mine)?,
                    size: job.resolution(),
                    network_calls: mine.calls.load(Ordering::Relaxed) as u64,
                    cache_floor: job.cache_floor(),
                })
            },
        )
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

    fn window_read(&self, step: usize, steps: usize, window: usize) {
        self.inner.window_read(step, steps, window);
    }

    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceChoice;
    use crate::memory;
    use crate::networks::unet::ControlResiduals;
    use crate::temporal::NoProgress;
    use crate::temporal::{Fusion, Tail};
    use crate::Result;
    use candle_core::DType;
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
            preview: false,
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

    /// A longer synthetic clip of `n` frames.
    struct Long(usize);
    impl ControlSource for Long {
        fn len(&self) -> usize {
            self.0
        }
        fn rgb8(&self, f: usize) -> Result<(Vec<u8>, usize, usize)> {
            Synthetic.rgb8(f % 5).map(|(mut v, w, h)| {
                v.iter_mut().for_each(|p| *p = p.wrapping_add(f as u8));
                (v, w, h)
            })
        }
    }

    #[test]
    fn a_preview_costs_one_window_and_never_stands_in_for_a_final_frame() {
        // 40 frames, windows 4/1, 3 steps: a final middle frame reads its whole cone.
        let mut s = settings(&tiny());
        (s.steps, s.window, s.overlap) = (3, 4, 1);
        let clip = Long(40);
        let final_frame = |svc: &Service| {
            let r = svc
                .render_frame(&s, photo(), &clip, 21, &NoProgress)
                .unwrap();
            (r.rgb, r.network_calls)
        };
        let fresh = Service::default();
        let (want, final_calls) = final_frame(&fresh);
        // Its cone over 3 steps: several windows at every step.
        assert!(final_calls >= 9, "final: {final_calls} calls");
        let mut p = s.clone();
        p.preview = true;
        // Frame 21 ends window [18,22) and starts [21,25): on a tie, the first.
        assert_eq!(p.frames_needed(40, 21).unwrap(), 18..22);
        let svc = Service::default();
        let preview = svc
            .render_frame(&p, photo(), &clip, 21, &NoProgress)
            .unwrap();
        assert_eq!(preview.network_calls, 3, "one window, one batch per step");
        // (The tiny model couples frames too weakly to change 8-bit pixels between a preview
        // and the final frame; the call counts show what ran.)
        let (got, calls) = final_frame(&svc);
        assert_eq!(got, want);
        assert_eq!(
            calls, final_calls,
            "no preview value stood in for a final one"
        );
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

    #[test]
    fn a_frame_read_from_a_shared_cache_counts_no_network_call() {
        let dir =
            std::env::temp_dir().join(format!("anchor-service-shared-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = settings(&tiny());
        // Two services: two processes of a farm job sharing one folder.
        let (a, b) = (Service::default(), Service::default());
        a.set_shared_cache(Some(&dir));
        b.set_shared_cache(Some(&dir));
        let first = a
            .render_frame(&s, photo(), &Synthetic, 0, &NoProgress)
            .unwrap();
        assert!(first.network_calls > 0);
        assert_eq!(first.network_calls, a.network_calls());
        let second = b
            .render_frame(&s, photo(), &Synthetic, 0, &NoProgress)
            .unwrap();
        assert_eq!(second.rgb, first.rgb);
        assert_eq!(
            (second.network_calls, b.network_calls()),
            (0, 0),
            "every window was read from the shared folder"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bf16_render_on_the_cpu_is_near_f32_and_cached_apart() {
        let svc = Service::default();
        let f32s = settings(&tiny());
        let mut bf16 = settings(&tiny());
        bf16.dtype = DType::BF16;
        let a = svc
            .render_frame(&f32s, photo(), &Synthetic, 0, &NoProgress)
            .unwrap();
        let b = svc
            .render_frame(&bf16, photo(), &Synthetic, 0, &NoProgress)
            .unwrap();
        assert!(
            b.network_calls > 0,
            "bf16 windows are never read from f32's cache"
        );
        let diff: Vec<i32> = (a.rgb.iter().zip(&b.rgb))
            .map(|(&x, &y)| (x as i32 - y as i32).abs())
            .collect();
        let mean = diff.iter().sum::<i32>() as f64 / diff.len() as f64;
        let worst = diff.iter().copied().max().unwrap_or(0);
        match crate::networks::gemm_bf16::available() {
            None => assert_eq!(a.rgb, b.rgb, "without bf16 instructions bf16 runs as f32"),
            Some(kernel) => {
                eprintln!("bf16 ({kernel:?}) vs f32, 8-bit levels: mean {mean:.3}, max {worst}");
                assert!(a.rgb != b.rgb, "the bf16 kernels ran");
                assert!(mean < 2.0 && worst <= 32, "mean {mean}, max {worst}");
            }
        }
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
        let mut gpu = settings(&tiny());
        gpu.device = crate::device::DeviceChoice::Cuda(99);
        let e = svc
            .render_frame(&gpu, photo(), &Synthetic, 0, &NoProgress)
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
