//! One body render job, shared by every front end: `anchor render` and the OpenFX effect (through
//! [`crate::service::Service`]) run the same steps in the same order, so the CLI and a host write
//! the same bytes by construction, not by parallel code kept in step.
//!
//! Shaped like a diffusers pipeline's `__call__`:
//! 1. **check inputs**: the working resolution (rounded down to a multiple of 32 as the reference
//!    does), the window plan, the requested frames, and the memory one window batch needs;
//! 2. **encode the appearance**: CLIP image tokens of the reference photo, memoised in the
//!    resource registry by model identity, precision, device and photo content;
//! 3. **prepare the controls**: the mesh renders of a [`ControlSource`] (a PNG folder or a host
//!    clip), resized to the working size with PIL's LANCZOS and keyed by their pixels;
//! 4. **prepare the latents**: seeded noise, or a noise file;
//! 5. **denoise** with the batch-overlapped temporal denoiser, and 6. **decode**, both on demand
//!    per frame through [`BodyJob::frame_rgb`], memoised in the content-keyed cache.
//!
//! 7. **face pass** on the decoded frames, per frame or jointly in windows: [`face::FaceStep`].
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{DType, Tensor};
use parking_lot::Mutex;

use super::device::{device_name, dtype_name, DeviceChoice};
use super::memory;
use super::model::{BodyModel, SamplingDefaults};
use super::networks::unet::ControlResiduals;
use super::pipeline::{self, BodyNetworks, DdimStep};
use super::registry::{self, Registry};
use super::resample::{resize_rgb8, Filter};
use super::sampler::ddim::DdimScheduler;
use super::service::ServiceError;
use super::temporal::{
    Cache, ControlFrames, Counters, Fusion, Key, KeyHasher, Progress, SamplingParams, SharedStore,
    Tail, TemporalDenoiser, WindowNetworks, WindowPlan,
};
use super::{EngineError, Result};

pub mod face;

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
    /// A preview: the frame's own window alone ([`preview_window`]), denoised jointly with no
    /// coupling to its neighbours, about `steps` network batches instead of the whole
    /// dependency cone. Its values live under their own keys and never stand in for a final
    /// frame's.
    pub preview: bool,
}

impl RenderSettings {
    /// The settings a model folder asks for (`anchor.json`'s defaults, else the reference's):
    /// the one place both front ends take their defaults from. Device, precision, fusion, tail,
    /// cache and memory are not the model's to choose: automatic, f32, the reference's window
    /// rules, 4 GiB and no limit.
    pub fn model_defaults(folder: &Path, d: &SamplingDefaults) -> Self {
        Self {
            folder: folder.to_path_buf(),
            device: DeviceChoice::default(),
            dtype: DType::F32,
            steps: d.steps,
            guidance: d.guidance_scale,
            control_scale: d.control_scale,
            control_residuals: d.control_residuals,
            window: d.window,
            overlap: d.overlap,
            fusion: Fusion::default(),
            tail: Tail::default(),
            resolution: d.width,
            seed: d.seed,
            cache_bytes: super::service::DEFAULT_CACHE_BYTES,
            memory_limit: None,
            preview: false,
        }
    }

    /// The working resolution after the reference's rounding.
    pub fn working_resolution(&self) -> Result<usize> {
        Ok(pipeline::check_resolution(self.resolution)?.0)
    }

    /// The window plan of a clip of `len` frames.
    pub fn plan(&self, len: usize) -> Result<WindowPlan> {
        WindowPlan::new(len, self.window, self.overlap, self.tail, self.fusion)
    }

    /// The frames (clip indices) whose control images a request for `frame` reads: the
    /// dependency cone of `frame` over all steps, or a preview's window. Needs no model.
    pub fn frames_needed(&self, len: usize, frame: usize) -> Result<Range<usize>> {
        if frame >= len {
            return Err(EngineError::Input(format!(
                "frame {frame} is outside the clip of {len} frames"
            )));
        }
        let plan = self.plan(len)?;
        Ok(if self.preview {
            preview_window(&plan, frame)
        } else {
            plan.cone(frame..frame + 1, self.steps)
        })
    }
}

/// The mesh-render frames of a clip, as the caller can fetch them: a PNG folder
/// ([`pipeline::PoseSequence`]) or a host's clip.
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

/// One network batch on the device at a time: the lock every UNet/ControlNet batch, VAE decode
/// and CLIP encode of a process takes, with a count of batches in flight (a check that it holds).
#[derive(Default)]
pub struct BatchGate {
    lock: Mutex<()>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl BatchGate {
    /// Runs `f` holding the gate.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        let _g = self.lock.lock();
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(n, Ordering::SeqCst);
        let r = f();
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        r
    }

    /// Runs `f` holding `gate` when there is one.
    pub fn run_opt<T>(gate: Option<&Self>, f: impl FnOnce() -> T) -> T {
        match gate {
            Some(gate) => gate.run(f),
            None => f(),
        }
    }

    /// The most batches ever running at once under this gate.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
}

/// Where a job memoises and how its batches reach the device.
#[derive(Clone, Copy)]
pub struct JobContext<'a> {
    /// The content-keyed frame cache (window predictions, latents, decoded frames).
    pub cache: &'a Cache,
    /// Work counters.
    pub counters: &'a Counters,
    /// Where appearance tokens and photos are memoised.
    pub registry: &'a Registry,
    /// Taken around every batch when set.
    pub gate: Option<&'a BatchGate>,
    /// The farm-wide cache on shared storage, when the render shares its work with other
    /// processes: values are read from it, claimed, computed and published there.
    pub shared: Option<&'a Arc<SharedStore>>,
}

/// What one job renders.
#[derive(Clone, Copy)]
pub struct JobRequest<'a> {
    /// The settings.
    pub settings: &'a RenderSettings,
    /// The reference photo.
    pub appearance: Appearance<'a>,
    /// The mesh renders; they anchor the windows.
    pub control: &'a dyn ControlSource,
    /// The initial latent from a safetensors file (tensor `noise`, `[4, H/8, W/8]`) instead of
    /// the seed.
    pub noise_file: Option<&'a Path>,
    /// The clip frames the caller will ask for: they must exist, and they size the cache floor.
    pub frames: &'a [usize],
}

/// A model and its identity (a hash of its folder: configs, weight sizes and mtimes).
#[derive(Clone, Copy)]
pub struct JobModel<'a> {
    /// The loaded networks.
    pub model: &'a BodyModel,
    /// [`pipeline::folder_identity`] of its folder.
    pub identity: Key,
}

/// A prepared job: its denoiser, ready to denoise and decode any frame of the clip.
pub struct BodyJob<'a> {
    denoiser: TemporalDenoiser<'a>,
    resolution: usize,
    cache_floor: Option<usize>,
    /// The clip frames the denoiser sees: all of them, or a preview's window.
    frames: Range<usize>,
}

impl<'a> BodyJob<'a> {
    /// The denoiser (for latents and the window plan).
    pub fn denoiser(&self) -> &TemporalDenoiser<'a> {
        &self.denoiser
    }

    /// The working resolution.
    pub fn resolution(&self) -> usize {
        self.resolution
    }

    /// When the requested cache budget was below what the request touches, the budget used.
    pub fn cache_floor(&self) -> Option<usize> {
        self.cache_floor
    }

    /// Computes everything `frames` depend on before they are decoded. With a shared store this
    /// is the farm walk ([`TemporalDenoiser::render_cone`]): step by step, the windows nearest
    /// `frames` first, claimed so that the processes of a farm job split the work; without one
    /// it does nothing and each frame computes its cone on demand.
    pub fn prepare_frames(&self, frames: &[usize], progress: &dyn Progress) -> Result<()> {
        let local = frames
            .iter()
            .map(|&f| self.local(f))
            .collect::<Result<Vec<_>>>()?;
        self.denoiser.render_cone(&local, progress)
    }

    /// The denoiser's index of clip frame `f`.
    fn local(&self, f: usize) -> Result<usize> {
        if !self.frames.contains(&f) {
            return Err(EngineError::Input(format!(
                "frame {f} is outside the preview window {}-{}",
                self.frames.start,
                self.frames.end - 1
            )));
        }
        Ok(f - self.frames.start)
    }

    /// Frame `f` denoised and decoded, as 8-bit RGB at the working size (the reference's floor
    /// quantisation). A non-finite value is an error: quantising would turn NaN black silently.
    pub fn frame_rgb(&self, f: usize, progress: &dyn Progress) -> Result<Vec<u8>> {
        let img = self.denoiser.image(self.local(f)?, progress)?;
        let values = img.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(EngineError::Input(format!(
                "the networks produced {bad} non-finite value(s) (NaN or infinity) in frame {f}; \
                 with f16 or bf16 precision, choose f32"
            )));
        }
        let (rgb, w, h) = pipeline::image_to_rgb8(&img)?;
        let res = self.resolution;
        if (w, h) != (res, res) {
            return Err(EngineError::Internal(format!(
                "decoded {w}×{h}, expected {res}×{res}"
            )));
        }
        Ok(rgb)
    }
}

/// Runs one body job: checks the inputs, encodes the appearance, prepares the controls and the
/// latents, and hands the prepared [`BodyJob`] to `then`, which denoises and decodes the frames it
/// needs. Everything the job builds lives until `then` returns.
pub fn run<R>(
    model: JobModel<'_>,
    req: JobRequest<'_>,
    ctx: JobContext<'_>,
    then: impl FnOnce(&BodyJob<'_>) -> std::result::Result<R, ServiceError>,
) -> std::result::Result<R, ServiceError> {
    let checked = check_inputs(model.model, &req)?;
    let tokens = encode_appearance(model, req.appearance, ctx).map_err(ServiceError::Appearance)?;
    let nets = BodyNetworks::new(
        model.model,
        &tokens,
        model.identity,
        req.settings.control_residuals,
    )?;
    let gated = Gated {
        nets: &nets,
        gate: ctx.gate,
        preview: req.settings.preview,
    };
    let window = SubClip {
        inner: req.control,
        frames: checked.frames.clone(),
    };
    let control: &dyn ControlSource = if req.settings.preview {
        &window
    } else {
        req.control
    };
    let controls = Controls::new(control, checked.resolution, model.model);
    let (noise, noise_key) = prepare_latents(model.model, &req, checked.resolution)?;
    let cache_floor = set_budgets(req.settings, &checked, ctx);
    let scheduler = DdimStep(DdimScheduler::new(
        model.model.configs.scheduler.clone(),
        req.settings.steps,
    )?);
    let params = SamplingParams {
        guidance: req.settings.guidance,
        control_scale: req.settings.control_scale,
    };
    let denoiser = TemporalDenoiser::new(
        &gated,
        &scheduler,
        &controls,
        ctx.cache,
        ctx.counters,
        checked.plan,
        params,
        noise,
        noise_key,
    )?
    .with_shared(ctx.shared.cloned());
    then(&BodyJob {
        denoiser,
        resolution: checked.resolution,
        cache_floor,
        frames: checked.frames,
    })
}

/// The checked shape of a request.
struct Checked {
    resolution: usize,
    /// The plan the denoiser runs: the clip's, or a preview window's single window.
    plan: WindowPlan,
    /// The clip frames it covers.
    frames: Range<usize>,
    /// The cache bytes the requested frames touch.
    floor: usize,
}

/// Step 1: resolution, plan, frames, and the memory one window batch needs.
fn check_inputs(
    model: &BodyModel,
    req: &JobRequest<'_>,
) -> std::result::Result<Checked, ServiceError> {
    let settings = req.settings;
    let res = settings.working_resolution()?;
    let mut plan = settings.plan(req.control.len())?;
    if let Some(&f) = req.frames.iter().find(|&&f| f >= plan.len()) {
        return Err(EngineError::Input(format!(
            "frame {f} is outside the clip of {} frames",
            plan.len()
        ))
        .into());
    }
    let mut frames = 0..plan.len();
    if settings.preview {
        frames = preview_window(&plan, req.frames.first().copied().unwrap_or(0));
        if let Some(&f) = req.frames.iter().find(|&&f| !frames.contains(&f)) {
            return Err(EngineError::Input(format!(
                "a preview renders one window: frame {f} is outside the window {}-{}",
                frames.start,
                frames.end - 1
            ))
            .into());
        }
        plan = WindowPlan::new(frames.len(), frames.len(), 0, Tail::Paper, settings.fusion)?;
    }
    check_memory(model, &plan, res, settings.memory_limit)?;
    let latent_ch = model.unet.architecture().in_channels();
    let factor = model.vae.config().downsample_factor();
    let latent_bytes = latent_ch * (res / factor) * (res / factor) * model.dtype.size_in_bytes();
    let image_bytes = 3 * res * res * DType::F32.size_in_bytes();
    let floor = req
        .frames
        .iter()
        .map(|&f| {
            let f = f - frames.start;
            memory::request_cache_bytes(&plan, settings.steps, f, latent_bytes, image_bytes)
        })
        .max()
        .unwrap_or(0);
    Ok(Checked {
        resolution: res,
        plan,
        frames,
        floor,
    })
}

/// Refuses a request whose largest window batch needs more than `limit`, before any batch.
fn check_memory(
    model: &BodyModel,
    plan: &WindowPlan,
    res: usize,
    limit: Option<usize>,
) -> std::result::Result<(), ServiceError> {
    let largest = plan.windows().iter().map(|w| w.len()).max().unwrap_or(1);
    let need = memory::estimate_batch(model, largest, res);
    log::debug!(
        "memory estimate: a window batch of {largest} frame(s) at {res}x{res} needs about \
         {} MiB (weights {} MiB + working set {} MiB); limit {}",
        memory::mib_ceil(need.total()),
        memory::mib_ceil(need.weights),
        memory::mib_ceil(need.working_set),
        limit
            .map(|l| format!("{} MiB", l >> 20))
            .unwrap_or_else(|| "none".into())
    );
    match limit {
        Some(limit) if need.total() > limit => Err(ServiceError::OutOfMemory {
            detail: format!(
                "a window batch of {largest} frame(s) at {res}x{res} in {} needs about {} MiB \
                 (model weights {} MiB + working set {} MiB), but only {} MiB are available",
                dtype_name(model.precision),
                memory::mib_ceil(need.total()),
                memory::mib_ceil(need.weights),
                memory::mib_ceil(need.working_set),
                limit >> 20
            ),
        }),
        _ => Ok(()),
    }
}

/// Step 2: the appearance tokens, memoised in the registry by model identity, precision,
/// device and photo content (the model's default photo is read through the registry too).
pub fn encode_appearance(
    model: JobModel<'_>,
    appearance: Appearance<'_>,
    ctx: JobContext<'_>,
) -> Result<Tensor> {
    let owned;
    let (data, w, h) = match appearance {
        Appearance::Rgb8 {
            data,
            width,
            height,
        } => (data, width, height),
        Appearance::ModelDefault => {
            owned = pipeline::read_default_appearance(&model.model.layout, ctx.registry)?;
            (&owned.0[..], owned.1, owned.2)
        }
    };
    if data.len() != w * h * 3 || w == 0 || h == 0 {
        return Err(EngineError::Input(format!(
            "appearance image holds {} bytes, not {w}×{h} RGB",
            data.len()
        )));
    }
    let m = model.model;
    let key = KeyHasher::tagged("appearance")
        .key(model.identity)
        .str(dtype_name(m.dtype))
        .str(&device_name(&m.device))
        .u64(w as u64)
        .u64(h as u64)
        .bytes(data)
        .finish();
    let encode = || -> Result<Tensor> {
        Ok(m.image_encoder
            .encode_image(data, w, h)?
            .to_dtype(m.dtype)?)
    };
    let tokens = ctx.registry.get_or_insert_with(
        registry::Kind::Tokens,
        key,
        None,
        registry::tensor_bytes,
        || match ctx.gate {
            Some(gate) => gate.run(encode),
            None => encode(),
        },
    )?;
    Ok(tokens.as_ref().clone())
}

/// Step 4: the initial latent `[C, h, w]` in the model's precision and device, and its key.
fn prepare_latents(model: &BodyModel, req: &JobRequest<'_>, res: usize) -> Result<(Tensor, Key)> {
    let latent_ch = model.unet.architecture().in_channels();
    let factor = model.vae.config().downsample_factor();
    let (noise, key) = pipeline::initial_noise(
        req.settings.seed,
        req.noise_file,
        (latent_ch, res / factor, res / factor),
    )?;
    Ok((noise.to_dtype(model.dtype)?.to_device(&model.device)?, key))
}

/// The registry's share is carved out of the budget; the frame cache gets the rest, but never
/// less than what the request touches. Returns the floor when it was used.
fn set_budgets(settings: &RenderSettings, checked: &Checked, ctx: JobContext<'_>) -> Option<usize> {
    let floor = checked.floor;
    let cache_floor = (settings.cache_bytes < floor).then_some(floor);
    if cache_floor.is_some() {
        log::debug!(
            "cache budget {} bytes is below the {floor} bytes the request touches: using {floor}",
            settings.cache_bytes
        );
    }
    let registry_bytes = registry::share_of(settings.cache_bytes);
    ctx.registry.set_budget(registry_bytes);
    ctx.cache.set_budget(
        settings
            .cache_bytes
            .saturating_sub(registry_bytes)
            .max(floor),
    );
    cache_floor
}

/// The window of a preview of `frame`: of the windows covering it, the one it sits most
/// centrally in (the first on a tie), so that it sees the most context on both sides.
pub fn preview_window(plan: &WindowPlan, frame: usize) -> Range<usize> {
    plan.covering(frame)
        .iter()
        .map(|&w| plan.windows()[w].clone())
        .max_by_key(|w| {
            let margin = (frame - w.start).min(w.end - 1 - frame);
            (margin, std::cmp::Reverse(w.start))
        })
        .unwrap_or(frame..frame + 1)
}

/// Frames `frames` of a clip, as a clip of their own (a preview's window).
struct SubClip<'a> {
    inner: &'a dyn ControlSource,
    frames: Range<usize>,
}

impl ControlSource for SubClip<'_> {
    fn len(&self) -> usize {
        self.frames.len()
    }

    fn rgb8(&self, f: usize) -> Result<(Vec<u8>, usize, usize)> {
        self.inner.rgb8(self.frames.start + f)
    }
}

/// The networks with the batch gate around each batch, when there is one.
struct Gated<'a> {
    nets: &'a BodyNetworks<'a>,
    gate: Option<&'a BatchGate>,
    /// Previews key their values apart from final renders'.
    preview: bool,
}

impl WindowNetworks for Gated<'_> {
    fn predict(
        &self,
        latents: &Tensor,
        timestep: usize,
        control: &Tensor,
        control_scale: f64,
    ) -> Result<(Tensor, Tensor)> {
        BatchGate::run_opt(self.gate, || {
            self.nets.predict(latents, timestep, control, control_scale)
        })
    }

    fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        BatchGate::run_opt(self.gate, || self.nets.decode(latent))
    }

    fn identity(&self) -> Key {
        if self.preview {
            KeyHasher::tagged("preview")
                .key(self.nets.identity())
                .finish()
        } else {
            self.nets.identity()
        }
    }
}

/// Bytes of working-resolution control pixels one job keeps, so that each frame is fetched
/// from the caller once per job rather than once for its key and again for every window batch
/// that reads it (a host fetch is a `clipGetImage`, a pixel conversion and a resize). At 512²
/// this holds about 340 frames, more than the dependency cone of 20 steps of 16/4 windows;
/// frames beyond it are fetched again when read.
const PIXEL_MEMO_BYTES: usize = 256 << 20;

/// Step 3: a [`ControlSource`] as the engine's [`ControlFrames`], resized to the working size
/// with PIL's LANCZOS and keyed by its pixels at that size.
struct Controls<'a> {
    source: &'a dyn ControlSource,
    size: usize,
    dtype: DType,
    device: candle_core::Device,
    keys: Mutex<HashMap<usize, Key>>,
    /// Working-resolution pixels fetched by this job, within [`PIXEL_MEMO_BYTES`].
    pixels: Mutex<PixelMemo>,
}

/// Frame index → working-resolution RGB, and the bytes held.
type PixelMemo = (HashMap<usize, Arc<Vec<u8>>>, usize);

impl<'a> Controls<'a> {
    fn new(source: &'a dyn ControlSource, size: usize, model: &BodyModel) -> Self {
        Self {
            source,
            size,
            dtype: model.dtype,
            device: model.device.clone(),
            keys: Mutex::new(HashMap::new()),
            pixels: Mutex::new((HashMap::new(), 0)),
        }
    }

    /// Frame `f` at the working size, fetched once per job while the memo has room.
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
