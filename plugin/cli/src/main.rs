//! `anchor`: render a mesh-render clip into the person's video with a Make-Your-Anchor model, and
//! inspect model folders. The same engine as the OpenFX effect, without a host.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};

use anchor_cli::tools;
use anchor_cli::train_args;
use anchor_engine::device::{parse_dtype, select_device, DeviceChoice};
use anchor_engine::face;
use anchor_engine::model::{inspect_model, BodyModel, DiffusionModel, ModelPart};
use anchor_engine::networks::unet::ControlResiduals;
use anchor_engine::pipeline::{self, BodyNetworks, DdimStep, PoseSequence};
use anchor_engine::sampler::ddim::DdimScheduler;
use anchor_engine::temporal::{
    Cache, Counters, Fusion, NoProgress, Progress, SamplingParams, Tail, WindowPlan,
};
use anchor_engine::{weights, EngineError, Result};

#[derive(Parser)]
#[command(
    name = "anchor",
    version,
    about = "Make-Your-Anchor: mesh renders in, the person's video out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Order {
    Sequential,
    Reverse,
    Random,
}

#[derive(Subcommand)]
enum Command {
    /// Render the frames of a pose folder with batch-overlapped temporal denoising.
    Render(Box<RenderArgs>),
    /// Show a model folder's components, configs, dtypes, parameter counts and problems.
    Inspect {
        /// The model folder.
        #[arg(long)]
        model: PathBuf,
    },
    /// Render a synthetic presenter: mesh renders, person frames, landmarks and face mattes.
    Synth(tools::synth::SynthArgs),
    /// Compare rendered frames with ground truth: PSNR, SSIM, silhouette IoU, seam flicker.
    Eval(tools::eval::EvalArgs),
    /// Train the UNet and ControlNet (pretrain, finetune, or the face model) on JSON-Lines data.
    Train(Box<train_args::TrainArgs>),
    /// Train a KL autoencoder (VAE) for a tiny model family.
    TrainVae(Box<train_args::TrainVaeArgs>),
    /// Build head (face) training data from an `anchor synth` identity folder.
    FaceData(train_args::FaceDataCli),
    /// Copy a model folder with its weights cast to another dtype (e.g. f16 to halve its size).
    Cast {
        /// The folder to copy (a model folder or one component folder).
        #[arg(long)]
        input: PathBuf,
        /// The new folder (must not exist).
        #[arg(long)]
        output: PathBuf,
        /// f16, bf16 or f32: the dtype of every floating-point tensor in the copy.
        #[arg(long, default_value = "f16")]
        dtype: String,
    },
}

#[derive(clap::Args)]
#[command(args_override_self = true)]
struct RenderArgs {
    /// Model folder (diffusers components, optional anchor.json and body/ subfolder).
    #[arg(long)]
    model: PathBuf,
    /// Folder of mesh-render frames (PNG/JPEG), sorted by name; the whole folder is the clip.
    #[arg(long)]
    poses: PathBuf,
    /// Reference photo of the person (appearance).
    #[arg(long)]
    appearance: PathBuf,
    /// Output folder; frames keep the input names.
    #[arg(long)]
    out: PathBuf,
    /// DDIM steps [model default, else 20].
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale [model default, else 7.5].
    #[arg(long)]
    cfg: Option<f64>,
    /// ControlNet conditioning scale [model default, else 2.0].
    #[arg(long)]
    control_scale: Option<f64>,
    /// How the ControlNet residuals enter the body UNet: original (as the original inference
    /// code: the last down residual also feeds the mid block) or standard (as diffusers and
    /// training) [model default, else original].
    #[arg(long)]
    control_residuals: Option<ControlResiduals>,
    /// Frames per window [model default, else 16].
    #[arg(long)]
    window: Option<usize>,
    /// Frames shared by consecutive windows [model default, else 4].
    #[arg(long)]
    overlap: Option<usize>,
    /// How overlapping windows' predictions are averaged: flat (reference), pyramid, overlap-linear.
    #[arg(long, default_value = "flat")]
    fusion: String,
    /// Last window: paper (reference, may be short) or full (shifted back to full length).
    #[arg(long, default_value = "paper")]
    tail: String,
    /// Working resolution (square; rounded down to a multiple of 32 as the reference does).
    #[arg(long)]
    resolution: Option<usize>,
    /// Seed of the initial noise (SplitMix64 + Box-Muller on the CPU) [model default, else 42].
    #[arg(long, conflicts_with = "noise")]
    seed: Option<u64>,
    /// Initial noise from a safetensors file: tensor "noise", shape [4, H/8, W/8].
    #[arg(long)]
    noise: Option<PathBuf>,
    /// Frames to request and write, A-B (0-based, inclusive) [all].
    #[arg(long)]
    frames: Option<String>,
    /// Order in which frames are requested.
    #[arg(long, value_enum, default_value = "sequential")]
    order: Order,
    /// Threads requesting frames concurrently.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the latents after each step as "latents_step{i}" [L, 4, h, w] to this safetensors file.
    #[arg(long)]
    dump_latents: Option<PathBuf>,
    /// auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Cache budget in MiB.
    #[arg(long, default_value_t = 4096)]
    cache_mib: usize,
    /// Body frames already rendered (e.g. an earlier --out, named like the pose frames): the face
    /// pass runs on them instead of a new body render, to try face settings without re-rendering
    /// the body. Needs --face-model; the frames must have the working size.
    #[arg(long, requires = "face_model", conflicts_with_all = ["noise", "dump_latents"])]
    body: Option<PathBuf>,
    /// The face pass (issue 7): re-render each frame's face with a head model.
    #[command(flatten)]
    face: FaceArgs,
}

/// Face enhancement options; the defaults are the reference's.
#[derive(clap::Args)]
struct FaceArgs {
    /// Face (head) model folder: a 9-channel inpainting unet/ (or head/), controlnet/, shared
    /// components as for the body model. Enables the face pass.
    #[arg(long)]
    face_model: Option<PathBuf>,
    /// Landmarks JSON: frame (file stem or index) -> five [x, y] pairs.
    #[arg(long, requires = "face_model")]
    face_landmarks: Option<PathBuf>,
    /// Folder of face mattes named like the pose frames (255 = head).
    #[arg(long, requires = "face_model")]
    face_matte: Option<PathBuf>,
    /// BiSeNet face-parsing checkpoint (face-parsing.PyTorch 79999_iter.pth, or the same weights
    /// as .safetensors): the crop mask of frames without a matte (precedence: matte,
    /// parser, landmark template).
    #[arg(long, requires = "face_model")]
    face_parser: Option<PathBuf>,
    /// Head reference photo [the face model's head.png, else the --appearance photo].
    #[arg(long, requires = "face_model")]
    face_appearance: Option<PathBuf>,
    /// Aligned crop side in pixels [face model's anchor.json face_defaults, else 512].
    #[arg(long)]
    face_crop: Option<usize>,
    /// Inpainting side in pixels [model default, else 256].
    #[arg(long)]
    face_size: Option<usize>,
    /// Face DDIM steps [model default, else 20].
    #[arg(long)]
    face_steps: Option<usize>,
    /// Face classifier-free guidance scale [model default, else 3.5].
    #[arg(long)]
    face_cfg: Option<f64>,
    /// Face ControlNet conditioning scale [model default, else 1.0].
    #[arg(long)]
    face_control_scale: Option<f64>,
    /// Seed of the face's initial noise, shared by all frames [model default, else 999].
    #[arg(long)]
    face_seed: Option<u64>,
    /// Smooth the crop transform over time with this weight on the new frame (0-1) [off].
    #[arg(long)]
    face_smooth: Option<f64>,
    /// Temporal face (beyond the paper): denoise the face crops jointly in overlapping windows
    /// with the inflated head UNet (use with --face-smooth for stable crops).
    #[arg(long)]
    face_temporal: bool,
    /// Face crops per window (temporal face).
    #[arg(long, default_value_t = 16)]
    face_window: usize,
    /// Face crops shared by consecutive windows (temporal face).
    #[arg(long, default_value_t = 4)]
    face_overlap: usize,
    /// Paste-back mask erosion box side in frame pixels [model default, else 40].
    #[arg(long)]
    face_erode: Option<usize>,
    /// Paste-back mask Gaussian kernel side in frame pixels, odd [model default, else 41].
    #[arg(long)]
    face_blur: Option<usize>,
    /// JPEG round trip (quality 95, as the reference's aligned/*.jpg) of the mesh crop before it
    /// conditions the face model: true or false [model default, else true].
    #[arg(long, value_name = "BOOL")]
    face_mesh_jpeg: Option<bool>,
}

fn parse_frames(spec: &str, len: usize) -> Result<std::ops::RangeInclusive<usize>> {
    let bad = || {
        EngineError::Input(format!(
            "--frames must be A-B with 0 <= A <= B < {len}, got {spec:?}"
        ))
    };
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (a, b): (usize, usize) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a > b || b >= len {
        return Err(bad());
    }
    Ok(a..=b)
}

/// Progress on stderr: a one-line bar on a terminal, nothing otherwise.
struct Bar {
    total: u64,
    done: AtomicU64,
    tty: bool,
}

impl Progress for Bar {
    fn window_done(&self, step: usize, steps: usize, window: usize) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if self.tty {
            eprint!(
                "\r  window batches {done}/{} (step {}/{steps}, window {window})   ",
                self.total,
                step + 1
            );
        }
    }
}

fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Writes `data` to `path` through a temporary file, so a failed run leaves no partial frame.
fn write_rgb8(path: &Path, rgb: Vec<u8>, w: usize, h: usize) -> Result<()> {
    let img = image::RgbImage::from_raw(w as u32, h as u32, rgb).ok_or_else(|| {
        EngineError::Input(format!("internal: bad image buffer for {}", path.display()))
    })?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("png");
    let tmp = path.with_extension(format!("partial.{ext}"));
    img.save(&tmp)
        .map_err(|e| EngineError::Input(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| EngineError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// The loaded face model and head appearance of a render.
struct FaceStage {
    model: DiffusionModel,
    tokens: candle_core::Tensor,
    key: anchor_engine::temporal::Key,
}

impl FaceStage {
    fn load(
        args: &FaceArgs,
        dir: &Path,
        appearance: &Path,
        dtype: candle_core::DType,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let model = DiffusionModel::load_part(dir, ModelPart::Head, dtype, device)?;
        face::inpaint::check_head_model(&model)?;
        let given = args.face_appearance.as_deref();
        let photo = match face::inpaint::head_photo(given.is_some(), dir) {
            face::inpaint::HeadPhoto::Given => given.unwrap_or(appearance).to_path_buf(),
            face::inpaint::HeadPhoto::FaceModel(path) => path,
            face::inpaint::HeadPhoto::Body => appearance.to_path_buf(),
        };
        let (rgb, w, h) = pipeline::read_rgb8(&photo)?;
        let tokens = face::inpaint::encode_head_appearance(&model, &rgb, w, h)?;
        let key = pipeline::folder_identity(&model.layout)?;
        Ok(Self { model, tokens, key })
    }

    fn pass(&self, args: &FaceArgs) -> Result<face::FacePass<'_>> {
        let d = &self.model.layout.face_defaults;
        let settings = face::FaceSettings {
            crop: args.face_crop.unwrap_or(d.crop),
            inpaint: face::inpaint::InpaintSettings {
                size: args.face_size.unwrap_or(d.size),
                steps: args.face_steps.unwrap_or(d.steps),
                guidance: args.face_cfg.unwrap_or(d.guidance_scale),
                control_scale: args.face_control_scale.unwrap_or(d.control_scale),
                seed: args.face_seed.unwrap_or(d.seed),
                ..Default::default()
            },
            feather: face::feather::FeatherSettings {
                erode: args.face_erode.unwrap_or(d.erode),
                blur: args.face_blur.unwrap_or(d.blur),
            },
            parser: args.face_parser.clone(),
            mesh_jpeg: args.face_mesh_jpeg.unwrap_or(d.mesh_jpeg),
        };
        face::FacePass::new(&self.model, &self.tokens, settings, self.key)
    }
}

/// Runs `work` on every frame of `order` from `threads` threads (each takes the next frame);
/// stops at the first error and returns it.
fn run_frames(
    order: &[usize],
    threads: usize,
    work: impl Fn(usize) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let first_error = parking_lot::Mutex::new(None::<EngineError>);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                if first_error.lock().is_some() {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&f) = order.get(i) else { break };
                if let Err(e) = work(f) {
                    first_error.lock().get_or_insert(e);
                }
            });
        }
    });
    match first_error.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The sampling settings of a render: each option given, else the model folder's default
/// (`anchor.json`, else the reference's).
struct Sampling {
    steps: usize,
    params: SamplingParams,
    window: usize,
    overlap: usize,
    residuals: ControlResiduals,
    seed: u64,
}

impl Sampling {
    fn of(a: &RenderArgs, d: &anchor_engine::model::SamplingDefaults) -> Self {
        Self {
            steps: a.steps.unwrap_or(d.steps),
            params: SamplingParams {
                guidance: a.cfg.unwrap_or(d.guidance_scale),
                control_scale: a.control_scale.unwrap_or(d.control_scale),
            },
            window: a.window.unwrap_or(d.window),
            overlap: a.overlap.unwrap_or(d.overlap),
            residuals: a.control_residuals.unwrap_or(d.control_residuals),
            seed: a.seed.unwrap_or(d.seed),
        }
    }
}

/// Creates `dir` and its parents.
fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| EngineError::Io {
        path: dir.to_path_buf(),
        source: e,
    })
}

/// The order in which `frames` are requested.
fn request_order(frames: &[usize], order: Order) -> Vec<usize> {
    match order {
        Order::Sequential => frames.to_vec(),
        Order::Reverse => frames.iter().rev().copied().collect(),
        Order::Random => {
            // A fixed shuffle (SplitMix64-driven Fisher-Yates), so runs are repeatable.
            let mut v = frames.to_vec();
            let mut rng = anchor_engine::temporal::noise::SplitMix64::new(0x5eed);
            for i in (1..v.len()).rev() {
                v.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            v
        }
    }
}

/// The face pass on body frame `f` (`rgb`, `w × h`) with its mesh frame: the temporal face's
/// frame when it runs, else the per-frame pass on the smoothed transform when there is one,
/// else on the frame's own placement.
fn enhance_frame(
    pass: &face::FacePass<'_>,
    inputs: &face::inputs::FaceInputs,
    temporal: Option<(
        &face::temporal::TemporalFace<'_>,
        &anchor_engine::temporal::TemporalDenoiser<'_>,
    )>,
    smoothed: Option<&std::result::Result<face::enhance::ResolvedPlacement, face::SkipReason>>,
    (f, rgb, w, h): (usize, &[u8], usize, usize),
    mesh: &[u8],
) -> Result<face::FaceResult> {
    let fr = inputs.frame(f)?;
    let placement = face::Placement {
        matte: fr.matte.as_deref(),
        landmarks: fr.landmarks,
    };
    let body = face::RgbFrame {
        data: rgb,
        width: w,
        height: h,
    };
    let mesh = face::RgbFrame {
        data: mesh,
        width: w,
        height: h,
    };
    if let Some((t, d)) = temporal {
        return t.frame(d, f);
    }
    match smoothed {
        Some(Ok(resolved)) => pass.enhance_with(body, mesh, &placement, resolved),
        _ => pass.enhance(body, mesh, &placement),
    }
}

/// Writes the latents after each step as "latents_step{i}" `[L, 4, h, w]` (f32) to `path`.
fn dump_latents(
    path: &Path,
    denoiser: &anchor_engine::temporal::TemporalDenoiser<'_>,
    steps: usize,
    len: usize,
    progress: &dyn Progress,
) -> Result<()> {
    let mut tensors = std::collections::HashMap::new();
    for s in 1..=steps {
        let xs = (0..len)
            .map(|f| denoiser.latent(s, f, progress))
            .collect::<Result<Vec<_>>>()?;
        let t = candle_core::Tensor::stack(&xs, 0)?.to_dtype(candle_core::DType::F32)?;
        tensors.insert(format!("latents_step{}", s - 1), t);
    }
    candle_core::safetensors::save(&tensors, path)?;
    Ok(())
}

fn render(a: RenderArgs) -> Result<()> {
    let start = Instant::now();
    let device = select_device(a.device.parse::<DeviceChoice>()?)?;
    let dtype = parse_dtype(&a.precision)?;
    let fusion: Fusion = a.fusion.parse()?;
    let tail: Tail = a.tail.parse()?;
    let model = BodyModel::load(&a.model, dtype, &device)?;
    let d = model.defaults().clone();
    let (res, note) = pipeline::check_resolution(a.resolution.unwrap_or(d.width))?;
    if let Some(note) = note {
        eprintln!("anchor: {note}");
    }
    let Sampling {
        steps,
        params,
        window,
        overlap,
        residuals,
        seed,
    } = Sampling::of(&a, &d);
    let poses = PoseSequence::open(&a.poses, (res, res), dtype, &device)?;
    let len = poses.paths().len();
    let plan = WindowPlan::new(len, window, overlap, tail, fusion)?;
    let frames: Vec<usize> = match &a.frames {
        Some(spec) => parse_frames(spec, len)?.collect(),
        None => (0..len).collect(),
    };
    let appearance = pipeline::encode_appearance(&model, &a.appearance)?;
    let model_key = pipeline::model_identity(&model)?;
    let nets = BodyNetworks::new(&model, &appearance, model_key, residuals)?;
    let scheduler = DdimStep(DdimScheduler::new(model.configs.scheduler.clone(), steps)?);
    let latent_ch = model.unet.architecture().in_channels();
    let vae_factor = model.vae.config().downsample_factor();
    let shape = (latent_ch, res / vae_factor, res / vae_factor);
    let noise = pipeline::initial_noise(seed, a.noise.as_deref(), shape)?;
    let cache = Cache::new(a.cache_mib.saturating_mul(1 << 20));
    // Photos, tokens and parsers read through the process-wide registry share the budget too.
    let registry = anchor_engine::registry::global();
    registry.set_budget(anchor_engine::registry::share_of(
        a.cache_mib.saturating_mul(1 << 20),
    ));
    let counters = Counters::default();
    let denoiser = pipeline::denoiser(
        &nets, &scheduler, &poses, &cache, &counters, plan, params, noise,
    )?;
    create_dir(&a.out)?;
    let face_stage = (a.face.face_model.as_deref())
        .map(|dir| FaceStage::load(&a.face, dir, &a.appearance, dtype, &device))
        .transpose()?;
    let face_pass = face_stage.as_ref().map(|st| st.pass(&a.face)).transpose()?;
    let face_inputs = face_pass
        .as_ref()
        .map(|_| {
            let (landmarks, matte) = (
                a.face.face_landmarks.as_deref(),
                a.face.face_matte.as_deref(),
            );
            face::inputs::FaceInputs::open(landmarks, matte, poses.paths(), (res, res))
        })
        .transpose()?;
    let smoothed = match (&face_pass, &face_inputs, a.face.face_smooth) {
        (Some(pass), Some(inputs), Some(alpha)) => {
            Some(smoothed_transforms(pass, inputs, len, res, alpha)?)
        }
        _ => None,
    };
    let face_counts = [AtomicUsize::new(0), AtomicUsize::new(0)];
    // A body frame: from --body, else from the body denoiser (cached).
    let body_frame = |f: usize, progress: &dyn Progress| -> Result<(Vec<u8>, usize, usize)> {
        match &a.body {
            Some(dir) => read_body_frame(dir, &poses, f, res),
            None => pipeline::image_to_rgb8(&denoiser.image(f, progress)?),
        }
    };
    // Temporal face: the body frames of a window's cone.
    let body_rgb = |f: usize| -> Result<Vec<u8>> { Ok(body_frame(f, &NoProgress)?.0) };
    let mesh_rgb = |f: usize| poses.rgb8(f);
    let clip_source = face_inputs
        .as_ref()
        .map(|inputs| face::inputs::RenderedClip {
            inputs,
            len,
            body: &body_rgb,
            mesh: &mesh_rgb,
        });
    let temporal_face = match (&face_pass, &clip_source, a.face.face_temporal) {
        (Some(pass), Some(src), true) => Some(face::temporal::TemporalFace::new(
            pass,
            src,
            face::temporal::TemporalFaceSettings {
                window: a.face.face_window,
                overlap: a.face.face_overlap,
                smoothing: a.face.face_smooth,
            },
        )?),
        _ => None,
    };
    let face_cache = Cache::new(a.cache_mib.saturating_mul(1 << 20));
    let face_counters = Counters::default();
    let face_denoiser = (temporal_face.as_ref())
        .map(|t| t.denoiser(&face_cache, &face_counters))
        .transpose()?;

    let bar = Bar {
        total: (denoiser.plan().windows().len() * steps) as u64,
        done: AtomicU64::new(0),
        tty: std::io::stderr().is_terminal(),
    };
    let result = run_frames(&request_order(&frames, a.order), a.threads, |f| {
        body_frame(f, &bar).and_then(|(rgb, w, h)| {
            let rgb = match (&face_pass, &face_inputs) {
                (Some(pass), Some(inputs)) => {
                    let temporal = temporal_face.as_ref().zip(face_denoiser.as_ref());
                    let smoothed = smoothed.as_ref().and_then(|s| s.get(f));
                    let out = enhance_frame(
                        pass,
                        inputs,
                        temporal,
                        smoothed,
                        (f, &rgb, w, h),
                        &poses.rgb8(f)?,
                    )?;
                    let i = usize::from(!matches!(out.status, face::FaceStatus::Enhanced(_)));
                    face_counts[i].fetch_add(1, Ordering::Relaxed);
                    out.rgb
                }
                _ => rgb,
            };
            let name = poses.paths()[f].file_name().unwrap_or_default();
            write_rgb8(&a.out.join(name), rgb, w, h)
        })
    });
    if bar.tty {
        eprintln!();
    }
    result?;
    if let Some(path) = &a.dump_latents {
        dump_latents(path, &denoiser, steps, len, &bar)?;
    }
    if let Some(pass) = &face_pass {
        print_face_summary(pass, &face_counts);
    }
    let work = (denoiser.plan().windows().len(), steps);
    print_summary(frames.len(), len, work, &counters, &cache, start);
    Ok(())
}

/// The face pass's warnings and counts: `[enhanced, passed through]`.
fn print_face_summary(pass: &face::FacePass<'_>, counts: &[AtomicUsize; 2]) {
    for w in pass.warnings() {
        eprintln!("anchor: warning: {w}");
    }
    println!(
        "face pass: {} frames enhanced, {} passed through",
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed)
    );
}

/// The closing line of a render: work done, cache use, peak memory and time.
fn print_summary(
    written: usize,
    len: usize,
    (windows, steps): (usize, usize),
    counters: &Counters,
    cache: &Cache,
    start: Instant,
) {
    let stats = cache.stats();
    println!(
        "rendered {written} frames of {len} ({windows} windows x {steps} steps): {} network \
         calls, {} decodes, cache {} hits / {} misses, cache peak {:.1} MiB, peak RSS {} MiB, \
         {:.1} s",
        counters.network_calls.load(Ordering::Relaxed),
        counters.decodes.load(Ordering::Relaxed),
        stats.hits,
        stats.misses,
        stats.peak_bytes as f64 / (1 << 20) as f64,
        peak_rss_mib()
            .map(|m| m.to_string())
            .unwrap_or_else(|| "?".into()),
        start.elapsed().as_secs_f64()
    );
}

/// Body frame `f` from an earlier render in `dir` (named like the pose frame), which must be at
/// the working size.
fn read_body_frame(
    dir: &Path,
    poses: &PoseSequence,
    f: usize,
    res: usize,
) -> Result<(Vec<u8>, usize, usize)> {
    let name = poses.paths()[f].file_name().unwrap_or_default();
    let (rgb, w, h) = pipeline::read_rgb8(&dir.join(name))?;
    if (w, h) != (res, res) {
        return Err(EngineError::Input(format!(
            "body frame {} is {w}×{h}; the render works at {res}×{res} \
             (render the body with the same model and --resolution)",
            dir.join(name).display()
        )));
    }
    Ok((rgb, w, h))
}

/// The face crop transforms of the whole clip, smoothed over time with `alpha`.
fn smoothed_transforms(
    pass: &face::FacePass<'_>,
    inputs: &face::inputs::FaceInputs,
    len: usize,
    res: usize,
    alpha: f64,
) -> Result<Vec<std::result::Result<face::enhance::ResolvedPlacement, face::SkipReason>>> {
    let frames = (0..len)
        .map(|f| inputs.frame(f))
        .collect::<Result<Vec<_>>>()?;
    let placements: Vec<face::Placement> = frames
        .iter()
        .map(|fr| face::Placement {
            matte: fr.matte.as_deref(),
            landmarks: fr.landmarks,
        })
        .collect();
    Ok(pass.clip_transforms(&placements, res, res, Some(alpha)))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Render(a) => render(*a),
        Command::Inspect { model } => inspect_model(&model, true).map(|report| {
            println!("{report}");
        }),
        Command::Synth(a) => return tools::exit_code(tools::synth::run(&a)),
        Command::Eval(a) => return tools::exit_code(tools::eval::run(&a)),
        Command::Train(a) => return train_args::exit_code(train_args::run_train(&a)),
        Command::TrainVae(a) => return train_args::exit_code(train_args::run_train_vae(&a)),
        Command::FaceData(a) => return train_args::exit_code(train_args::run_face_data(&a)),
        Command::Cast {
            input,
            output,
            dtype,
        } => parse_dtype(&dtype)
            .and_then(|d| weights::cast_folder(&input, &output, d))
            .map(|r| {
                println!(
                    "{}: {} files, {} tensors cast to {dtype}, {} -> {} bytes",
                    output.display(),
                    r.files,
                    r.tensors,
                    r.bytes_before,
                    r.bytes_after
                );
            }),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anchor: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
