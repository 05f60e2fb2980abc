//! `anchor`: render a mesh-render clip into the person's video with a Make-Your-Anchor model, and
//! inspect model folders. The same engine as the OpenFX effect, without a host.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};

use anchor_cli::frames::{FrameSpec, NumberedClip};
use anchor_cli::tools;
use anchor_cli::train_args;
use anchor_engine::device::{parse_dtype, select_device, DeviceChoice};
use anchor_engine::face;
use anchor_engine::face_service;
use anchor_engine::framing::{
    premultiply_rgba8, silhouette_matte, FramedSource, Framing, SILHOUETTE_THRESHOLD,
};
use anchor_engine::job::face::{head_reference, FaceFrames, FaceMode, FaceOverrides, FaceStep};
use anchor_engine::job::{
    self, Appearance, BodyJob, ControlSource, JobContext, JobModel, JobRequest, RenderSettings,
};
use anchor_engine::model::{inspect_model, inspect_model_part, BodyModel, ModelPart};
use anchor_engine::networks::unet::ControlResiduals;
use anchor_engine::pipeline::{self, PoseSequence};
use anchor_engine::temporal::{
    Cache, Counters, Fusion, Key, KeyHasher, NoProgress, Progress, SharedConfig, SharedStore, Tail,
};
use anchor_engine::{weights, EngineError, Result};

/// `anchor --version`: the version, the source revision and whether CUDA is compiled in.
#[cfg(feature = "cuda")]
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("ANCHOR_REVISION"),
    "; CUDA compiled in)"
);
/// `anchor --version`: the version, the source revision and whether CUDA is compiled in.
#[cfg(not(feature = "cuda"))]
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("ANCHOR_REVISION"),
    "; CPU only: CUDA not compiled in)"
);

#[derive(Parser)]
#[command(
    name = "anchor",
    version = VERSION,
    about = "Make-Your-Anchor: mesh renders in, the person's video out"
)]
struct Cli {
    /// More messages on stderr (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Fewer messages on stderr: errors only.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Order {
    Sequential,
    Reverse,
    Random,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum AlphaChoice {
    Opaque,
    Silhouette,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum ProgressStyle {
    Auto,
    Plain,
    Openjd,
    None,
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
    /// Make a released checkpoint folder (body/, head/) usable: map its VAE, text encoder and
    /// scheduler to an SD1.5 folder and its image encoder to a CLIP ViT-B/32 folder
    /// (anchor.json), and check the result.
    Assemble(tools::assemble::AssembleArgs),
    /// Housekeeping of a farm's shared cache folder: info, prune.
    Cache(tools::cache::CacheArgs),
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
    /// Reference photo of the person (appearance) [the model folder's appearance.png].
    #[arg(long)]
    appearance: Option<PathBuf>,
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
    /// Frames to render: 5, 1001-1100, 1-100x2 or a comma list of those. Frames are the numbers
    /// in the file names (mesh.1001.png), in natural order; in a folder whose names carry no
    /// numbers, 0-based positions in name order [all].
    #[arg(long)]
    frames: Option<FrameSpec>,
    /// How a plate that is not square meets the model's square: fit (pad to a square around its
    /// centre), squash (stretch, as the original does) or region (the square --region).
    /// Outputs come back at the plate's size.
    #[arg(long, default_value = "fit")]
    framing: String,
    /// The square of --framing region: X,Y,SIZE in plate pixels (top-left corner, rows from the
    /// top).
    #[arg(long, value_name = "X,Y,SIZE")]
    region: Option<String>,
    /// Output alpha: opaque (RGB files), or silhouette (RGBA, premultiplied, alpha from the mesh
    /// render's silhouette, feathered by --matte-feather).
    #[arg(long, value_enum, default_value = "opaque")]
    alpha: AlphaChoice,
    /// Feather of the silhouette alpha, in plate pixels.
    #[arg(long, default_value_t = 2)]
    matte_feather: usize,
    /// A preview: each frame from its own window alone, with no coupling to the neighbours
    /// (about --steps network batches per window instead of the whole clip's dependency cone).
    /// Not the final frames: previews never stand in for them.
    #[arg(long, conflicts_with_all = ["dump_latents", "body", "face_temporal"])]
    preview: bool,
    /// Leave frames whose output file exists as they are (a requeued farm task resumes).
    #[arg(long)]
    skip_existing: bool,
    /// Replace frames an earlier render wrote into --out with other settings (without it, such
    /// a render is refused).
    #[arg(long)]
    overwrite: bool,
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
    /// Share the work with the other processes of a farm job: a folder on the farm's shared
    /// storage (NFS/SMB) that every task of the job names. Each process claims, computes and
    /// publishes window batches there and reads the others'; frames are identical whoever
    /// computed what.
    #[arg(long, env = "MAKE_YOUR_ANCHOR_SHARED_CACHE")]
    shared_cache: Option<PathBuf>,
    /// Seconds after which a claim on the shared cache by a process that stopped renewing it (a
    /// crashed or frozen node) is taken over; renewed every quarter of it while work runs.
    #[arg(long, default_value_t = 60, requires = "shared_cache")]
    shared_lease_seconds: u64,
    /// Progress on stderr: auto (a bar on a terminal, else plain), plain (a line at least every
    /// 10 %), openjd (`openjd_progress: <percent>` lines on stdout, for Deadline Cloud and
    /// `openjd run`), none.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressStyle,
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
#[derive(clap::Args, Debug)]
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
    /// Smooth the crop transform over time with this weight on the new frame (0-1) [off]. Each
    /// frame reads the frames before it back to where their weight falls below 1e-6 (20 frames
    /// at 0.5), so a farm chunk renders the same faces as the whole clip.
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

/// Progress of the window batches: a one-line bar on a terminal; in a farm log, a line at least
/// every 10 % (plain) or `openjd_progress: <percent>` lines on stdout (OpenJD's progress
/// protocol); or nothing.
struct Bar {
    total: u64,
    done: AtomicU64,
    style: ProgressStyle,
    tty: bool,
    /// The last percentage printed (plain, openjd).
    shown: AtomicU64,
}

impl Bar {
    fn new(total: u64, style: ProgressStyle) -> Self {
        let tty = std::io::stderr().is_terminal();
        let style = match style {
            ProgressStyle::Auto if tty => ProgressStyle::Auto,
            ProgressStyle::Auto => ProgressStyle::Plain,
            s => s,
        };
        Self {
            total: total.max(1),
            done: AtomicU64::new(0),
            style,
            tty: tty && style == ProgressStyle::Auto,
            shown: AtomicU64::new(0),
        }
    }

    /// The percentage to print after `done` batches, when one is due.
    fn due(&self, done: u64) -> Option<u64> {
        let pct = (done * 100 / self.total).min(100);
        let every = if self.style == ProgressStyle::Openjd {
            1
        } else {
            10
        };
        let last = self.shown.load(Ordering::Relaxed);
        (pct >= last + every && self.shown.fetch_max(pct, Ordering::Relaxed) < pct).then_some(pct)
    }

    /// The closing line: 100 % whatever the cone held.
    fn finish(&self) {
        if self.tty {
            eprintln!();
        } else if self.shown.fetch_max(100, Ordering::Relaxed) < 100 {
            self.print(100, self.done.load(Ordering::Relaxed));
        }
    }

    fn print(&self, pct: u64, done: u64) {
        match self.style {
            ProgressStyle::Plain => {
                eprintln!("anchor: progress {pct}% ({done} window batches)")
            }
            ProgressStyle::Openjd => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "openjd_progress: {pct}");
                let _ = out.flush();
            }
            _ => {}
        }
    }
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
        } else if let Some(pct) = self.due(done) {
            self.print(pct, done);
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
/// Writes 8-bit RGB (3 channels) or premultiplied RGBA (4) atomically.
fn write_image(path: &Path, data: Vec<u8>, w: usize, h: usize, channels: usize) -> Result<()> {
    let bad = || EngineError::Internal(format!("bad image buffer for {}", path.display()));
    let img: image::DynamicImage = if channels == 4 {
        image::RgbaImage::from_raw(w as u32, h as u32, data)
            .ok_or_else(bad)?
            .into()
    } else {
        image::RgbImage::from_raw(w as u32, h as u32, data)
            .ok_or_else(bad)?
            .into()
    };
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("png");
    let tmp = path.with_extension(format!("partial.{ext}"));
    img.save(&tmp)
        .map_err(|e| EngineError::Input(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| EngineError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// The face pass of a render with `--face-model`: the settings given, else the face model's
/// defaults; the head reference `--face-appearance`, else the face model's `head.png`, else the
/// body's reference.
fn face_step<'s>(
    a: &RenderArgs,
    dir: &Path,
    dtype: candle_core::DType,
    service: &'s face_service::FaceService,
) -> Result<FaceStep<'s>> {
    let f = &a.face;
    let layout = anchor_engine::model::ModelLayout::resolve_part(dir, ModelPart::Head)?;
    let overrides = FaceOverrides {
        crop: f.face_crop,
        size: f.face_size,
        steps: f.face_steps,
        guidance: f.face_cfg,
        control_scale: f.face_control_scale,
        seed: f.face_seed,
        erode: f.face_erode,
        blur: f.face_blur,
        mesh_jpeg: f.face_mesh_jpeg,
        parser: f.face_parser.clone(),
    };
    let request = face_service::FaceRequest {
        folder: dir.to_path_buf(),
        device: a.device.parse::<DeviceChoice>()?,
        dtype,
        settings: overrides.settings(&layout.face_defaults),
        smoothing: f.face_smooth,
    };
    let read = |p: &Path| pipeline::read_rgb8(p).map(std::sync::Arc::new);
    let given = f.face_appearance.as_deref().map(read).transpose()?;
    let photo = head_reference(given, dir, || read(appearance_path(a)))?;
    let mode = if f.face_temporal {
        FaceMode::Temporal {
            window: f.face_window,
            overlap: f.face_overlap,
        }
    } else {
        FaceMode::PerFrame
    };
    service.set_cache_budget(a.cache_mib.saturating_mul(1 << 20));
    let step = FaceStep::new(service, request, photo, mode, None);
    // Load the face model now: a folder that is not one fails before the body render.
    step.prepare()?;
    Ok(step)
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

/// The engine settings of a render: each option given, else the model folder's default
/// (`anchor.json`, else the reference's), as the effect's parameters take them.
fn render_settings(a: &RenderArgs, model: &BodyModel) -> Result<RenderSettings> {
    let mut s = RenderSettings::model_defaults(&a.model, model.defaults());
    s.device = a.device.parse::<DeviceChoice>()?;
    s.dtype = model.precision;
    s.fusion = a.fusion.parse::<Fusion>()?;
    s.tail = a.tail.parse::<Tail>()?;
    s.steps = a.steps.unwrap_or(s.steps);
    s.guidance = a.cfg.unwrap_or(s.guidance);
    s.control_scale = a.control_scale.unwrap_or(s.control_scale);
    s.control_residuals = a.control_residuals.unwrap_or(s.control_residuals);
    s.window = a.window.unwrap_or(s.window);
    s.overlap = a.overlap.unwrap_or(s.overlap);
    s.resolution = a.resolution.unwrap_or(s.resolution);
    s.seed = a.seed.unwrap_or(s.seed);
    s.cache_bytes = a.cache_mib.saturating_mul(1 << 20);
    s.preview = a.preview;
    Ok(s)
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

fn render(mut a: RenderArgs) -> Result<()> {
    let start = Instant::now();
    check_paths(&mut a)?;
    let device = select_device(a.device.parse::<DeviceChoice>()?)?;
    let dtype = parse_dtype(&a.precision)?;
    let model = BodyModel::load(&a.model, dtype, &device)?;
    let settings = render_settings(&a, &model)?;
    let (res, note) = pipeline::check_resolution(settings.resolution)?;
    if let Some(note) = note {
        eprintln!("anchor: {note}");
    }
    let clip = NumberedClip::scan(pipeline::list_frames(&a.poses)?)
        .map_err(|e| EngineError::Input(format!("poses folder {}: {e}", a.poses.display())))?;
    let poses = PoseSequence::from_paths(clip.paths.clone(), (res, res), dtype, &device)?;
    let len = poses.paths().len();
    let mut frames: Vec<usize> = match &a.frames {
        Some(spec) => clip
            .select(spec)
            .map_err(|e| EngineError::Input(format!("--frames {spec}: {e}")))?,
        None => (0..len).collect(),
    };
    let stamp = stamp_of(&a, &settings, pipeline::model_identity(&model)?)?;
    let replacing = check_stamp(&a, &stamp)?;
    if a.skip_existing && replacing {
        log::warn!(
            "--overwrite replaces every frame: --skip-existing keeps none of other settings"
        );
    } else if a.skip_existing {
        let before = frames.len();
        frames.retain(|&f| !a.out.join(output_name(&poses, f)).is_file());
        log::info!(
            "--skip-existing: {} of {before} frames already in {}",
            before - frames.len(),
            a.out.display()
        );
    }
    if frames.is_empty() {
        println!("rendered 0 frames of {len} (all requested frames are in --out): 0 network calls");
        return Ok(());
    }
    log::info!(
        "rendering {} of clip {} ({len} frames) on {}, {}, {res}x{res}, {} steps, windows {}/{} \
         ({:?} fusion, {:?} tail), cache {} MiB{}",
        describe_selection(&clip, &frames),
        clip.span(),
        anchor_engine::device::device_name(&device),
        anchor_engine::device::precision_name(&device, dtype),
        settings.steps,
        settings.window,
        settings.overlap,
        settings.fusion,
        settings.tail,
        a.cache_mib,
        a.shared_cache
            .as_ref()
            .map(|d| format!(", shared cache {}", d.display()))
            .unwrap_or_default()
    );
    let plate = plate_of(&a, poses.paths())?;
    let framed = FramedSource::new(&plate, plate.framing, res);
    let (photo, pw, ph) = pipeline::read_rgb8(appearance_path(&a))?;
    let cache = Cache::new(settings.cache_bytes);
    let counters = Counters::default();
    let shared = (a.shared_cache.as_ref()).map(|dir| {
        let config = SharedConfig {
            lease_expiry: std::time::Duration::from_secs(a.shared_lease_seconds.max(1)),
            ..SharedConfig::default()
        };
        std::sync::Arc::new(SharedStore::open(dir, config))
    });
    let context = JobContext {
        cache: &cache,
        counters: &counters,
        registry: anchor_engine::registry::global(),
        gate: None,
        shared: shared.as_ref(),
    };
    let appearance = Appearance::Rgb8 {
        data: &photo,
        width: pw,
        height: ph,
    };
    let identity = pipeline::model_identity(&model)?;
    let job_model = JobModel {
        model: &model,
        identity,
    };
    // A final render is one job; a preview is one job per window of the requested frames.
    let groups = if settings.preview {
        preview_groups(&settings, len, &frames)?
    } else {
        vec![frames.clone()]
    };
    // One bar for the whole render: the window batches of the requested frames' cones (a
    // preview: one window per group), so that a farm chunk reaches 100 %.
    let total = if settings.preview {
        (groups.len() * settings.steps) as u64
    } else {
        settings.plan(len)?.cone_batches(&frames, settings.steps)
    };
    // -q silences the automatic progress; an explicit style stays.
    let style = match a.progress {
        ProgressStyle::Auto if !log::log_enabled!(log::Level::Info) => ProgressStyle::None,
        s => s,
    };
    let bar = Bar::new(total, style);
    let mut windows = 0;
    for group in &groups {
        let request = JobRequest {
            settings: &settings,
            appearance,
            control: &framed,
            noise_file: a.noise.as_deref(),
            frames: group,
        };
        windows += job::run(job_model, request, context, |job| {
            if let Some(floor) = job.cache_floor() {
                log::warn!(
                    "--cache-mib {} is below the {} MiB these frames touch; using {} MiB so \
                     that nothing is computed twice",
                    a.cache_mib,
                    floor.div_ceil(1 << 20),
                    floor.div_ceil(1 << 20)
                );
            }
            write_stamp(&a, &stamp)?;
            write_frames(&a, job, (&poses, &plate, &framed), group, &model, &bar)?;
            Ok(job.denoiser().plan().windows().len())
        })
        .map_err(EngineError::from)?;
    }
    bar.finish();
    print_summary(
        frames.len(),
        len,
        (windows, settings.steps),
        &counters,
        &cache,
        start,
    );
    if let Some(store) = &shared {
        print_shared_summary(store);
    }
    Ok(())
}

/// The requested frames of a preview, grouped by the window each is previewed from.
fn preview_groups(
    settings: &RenderSettings,
    len: usize,
    frames: &[usize],
) -> Result<Vec<Vec<usize>>> {
    let plan = settings.plan(len)?;
    let mut groups: Vec<(std::ops::Range<usize>, Vec<usize>)> = Vec::new();
    for &f in frames {
        let w = job::preview_window(&plan, f);
        match groups.iter_mut().find(|(g, _)| *g == w) {
            Some((_, v)) => v.push(f),
            None => groups.push((w, vec![f])),
        }
    }
    Ok(groups.into_iter().map(|(_, v)| v).collect())
}

/// What the shared cache gave and took.
fn print_shared_summary(store: &SharedStore) {
    let st = store.stats();
    println!(
        "shared cache {}: {} read, {} published, {} refused (damaged), {} leases taken over{}",
        store.dir().display(),
        st.hits,
        st.published,
        st.rejected,
        st.takeovers,
        if st.degraded {
            "; unwritable: worked locally"
        } else {
            ""
        }
    );
}

/// The plate of `paths` (one size, checked by [`PoseSequence`]) with the framing and alpha of
/// `a`. The face pass places faces on the squashed frame, so with it a plate that is not square
/// is squashed, with a warning.
fn plate_of<'a>(a: &RenderArgs, paths: &'a [PathBuf]) -> Result<Plate<'a>> {
    let (w, h) = image::image_dimensions(&paths[0])
        .map_err(|e| EngineError::Input(format!("cannot read {}: {e}", paths[0].display())))?;
    let (w, h) = (w as usize, h as usize);
    let mut framing = Framing::parse(&a.framing, a.region.as_deref())?;
    // Fit of a square plate is squash, bit for bit; anything else moves the face.
    let squashes = framing == Framing::Squash || (framing == Framing::Fit && w == h);
    if a.face.face_model.is_some() && !squashes {
        log::warn!(
            "the face pass places faces on the squashed frame: the {w}x{h} plate is rendered \
             with --framing squash, not {}",
            framing.name()
        );
        framing = Framing::Squash;
    }
    let rgba = a.alpha == AlphaChoice::Silhouette || matches!(framing, Framing::Region { .. });
    let png = |p: &PathBuf| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if rgba && !paths.iter().all(png) {
        return Err(EngineError::Input(format!(
            "--alpha silhouette and --framing region write RGBA frames, named like the poses, but \
             {} is not a PNG (JPEG holds no alpha): convert the poses to PNG",
            paths
                .iter()
                .find(|p| !png(p))
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )));
    }
    Ok(Plate {
        paths,
        size: (w, h),
        framing,
        alpha: a.alpha,
        feather: a.matte_feather.min(MAX_FEATHER),
    })
}

/// The largest silhouette feather, in pixels (a larger one only blurs the whole plate).
const MAX_FEATHER: usize = 4096;

/// The mesh renders at their own (plate) size, and how results go back onto the plate.
struct Plate<'a> {
    paths: &'a [PathBuf],
    size: (usize, usize),
    framing: Framing,
    alpha: AlphaChoice,
    feather: usize,
}

impl ControlSource for Plate<'_> {
    fn len(&self) -> usize {
        self.paths.len()
    }

    fn rgb8(&self, f: usize) -> Result<(Vec<u8>, usize, usize)> {
        pipeline::read_rgb8(&self.paths[f])
    }
}

impl Plate<'_> {
    /// The working-size result of frame `f` on the plate: `(pixels, w, h, channels)`, RGB, or
    /// premultiplied RGBA when the alpha is the silhouette or the region leaves part of the
    /// plate empty.
    fn finish(&self, f: usize, rgb: &[u8], res: usize) -> Result<(Vec<u8>, usize, usize, usize)> {
        let (w, h) = self.size;
        let out = self.framing.frame_out(rgb, res, w, h)?;
        let silhouette = match self.alpha {
            AlphaChoice::Opaque => None,
            AlphaChoice::Silhouette => {
                let (mesh, mw, mh) = pipeline::read_rgb8(&self.paths[f])?;
                if (mw, mh) != (w, h) {
                    return Err(EngineError::Input(format!(
                        "mesh frame {} is {mw}×{mh}, not the clip's {w}×{h}",
                        self.paths[f].display()
                    )));
                }
                Some(silhouette_matte(
                    &mesh,
                    w,
                    h,
                    SILHOUETTE_THRESHOLD,
                    self.feather,
                ))
            }
        };
        let cover = self.framing.coverage(w, h);
        let full = (cover.x0, cover.y0, cover.x1, cover.y1) == (0, 0, w, h);
        if silhouette.is_none() && full {
            return Ok((out, w, h, 3));
        }
        let alpha = self.framing.output_alpha(w, h, silhouette.as_deref())?;
        Ok((premultiply_rgba8(&out, &alpha), w, h, 4))
    }
}

/// `anchor inspect`: the body part, and the head part when the folder has one; fails (exit 1)
/// when either has a problem, so scripts can check a folder before a farm job.
fn inspect(model: &Path) -> Result<()> {
    let body = inspect_model(model, true)?;
    println!("{body}");
    let mut ok = body.is_ok();
    if model.join("head").is_dir() {
        let head = inspect_model_part(model, ModelPart::Head, true)?;
        println!("{head}");
        ok &= head.is_ok();
    }
    if ok {
        Ok(())
    } else {
        Err(EngineError::Input(format!(
            "model folder {} has the problems listed above",
            model.display()
        )))
    }
}

/// The reference photo: `--appearance`, else the model folder's (resolved by [`check_paths`]).
fn appearance_path(a: &RenderArgs) -> &Path {
    a.appearance.as_deref().unwrap_or(Path::new(""))
}

/// Path mistakes, named by their option, before anything loads; fills in the model folder's
/// default photo when `--appearance` is absent.
fn check_paths(a: &mut RenderArgs) -> Result<()> {
    let bad = |option: &str, path: &Path, what: &str| {
        Err(EngineError::Input(format!(
            "{option} {}: {what}",
            path.display()
        )))
    };
    if !a.model.is_dir() {
        return bad("--model", &a.model, "no such model folder");
    }
    if !a.poses.is_dir() {
        return bad("--poses", &a.poses, "no such folder of mesh renders");
    }
    if a.out.exists() && !a.out.is_dir() {
        return bad("--out", &a.out, "is a file; give a folder for the frames");
    }
    for (option, path) in [("--noise", &a.noise), ("--appearance", &a.appearance)] {
        if let Some(p) = path.as_deref().filter(|p| !p.is_file()) {
            return bad(option, p, "no such file");
        }
    }
    for (option, path) in [("--body", &a.body), ("--face-model", &a.face.face_model)] {
        if let Some(p) = path.as_deref().filter(|p| !p.is_dir()) {
            return bad(option, p, "no such folder");
        }
    }
    if a.appearance.is_none() {
        let layout = anchor_engine::model::ModelLayout::resolve(&a.model)?;
        let photo = pipeline::default_appearance(&layout);
        if !photo.is_file() {
            return Err(EngineError::Input(format!(
                "no --appearance given and the model folder has no {}: give the person's \
                 reference photo with --appearance",
                photo.display()
            )));
        }
        a.appearance = Some(photo);
    }
    Ok(())
}

/// The frames of `selected` (clip indices) as frame numbers, for the header.
fn describe_selection(clip: &NumberedClip, selected: &[usize]) -> String {
    let numbers: Vec<i64> = selected.iter().filter_map(|&i| clip.number_of(i)).collect();
    anchor_cli::frames::describe_frames(&numbers)
}

/// The output file of clip frame `f`: the pose frame's name.
fn output_name(poses: &PoseSequence, f: usize) -> std::ffi::OsString {
    poses.paths()[f].file_name().unwrap_or_default().to_owned()
}

/// The settings an output folder was rendered with, kept beside its frames.
const STAMP: &str = ".anchor-render";

/// The stamp of this render's frame-changing settings.
fn stamp_of(a: &RenderArgs, settings: &RenderSettings, model: Key) -> Result<String> {
    let mut s = settings.clone();
    // Where and how fast it runs does not change the frames; the model is named by its
    // identity and the photo and noise by their contents, so that paths spelled differently
    // (relative, path-mapped on another worker) stamp alike.
    (s.device, s.cache_bytes, s.memory_limit) = (DeviceChoice::Auto, 0, None);
    s.folder = PathBuf::new();
    let content = |p: &Path| -> Result<Key> {
        let bytes = std::fs::read(p).map_err(|e| EngineError::Io {
            path: p.to_path_buf(),
            source: e,
        })?;
        Ok(KeyHasher::tagged("stamp-file").bytes(&bytes).finish())
    };
    let noise = a.noise.as_deref().map(content).transpose()?;
    Ok(format!(
        "{s:?}\nmodel {model:?}\nappearance {:?}\nnoise {noise:?}\nbody {:?}\n\
         framing {} alpha {:?} feather {}\nface {:?}\n",
        content(appearance_path(a))?,
        a.body,
        Framing::parse(&a.framing, a.region.as_deref())?,
        a.alpha,
        a.matte_feather,
        a.face
    ))
}

/// Refuses to mix frames of other settings into `--out` (unless `--overwrite`); true when the
/// folder holds frames of other settings that this render replaces.
fn check_stamp(a: &RenderArgs, stamp: &str) -> Result<bool> {
    let path = a.out.join(STAMP);
    match std::fs::read_to_string(&path) {
        Ok(old) if old != stamp && !a.overwrite => Err(EngineError::Input(format!(
            "{} holds frames rendered with other settings (see {}); pass --overwrite to \
             replace them, or choose another --out",
            a.out.display(),
            path.display()
        ))),
        Ok(old) if old != stamp => {
            log::warn!("{}: replacing frames of other settings", a.out.display());
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Creates `--out` and records this render's settings there.
fn write_stamp(a: &RenderArgs, stamp: &str) -> Result<()> {
    create_dir(&a.out)?;
    // Written aside then renamed: the processes of a farm job read it while others write it.
    let path = a.out.join(STAMP);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == stamp) {
        return Ok(());
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = a
        .out
        .join(format!("{STAMP}.{}.{nanos}", std::process::id()));
    let written = std::fs::write(&tmp, stamp).and_then(|()| std::fs::rename(&tmp, &path));
    let _ = std::fs::remove_file(&tmp);
    match written {
        // Another task of the job wrote the same stamp meanwhile.
        Err(_) if std::fs::read_to_string(&path).is_ok_and(|old| old == stamp) => Ok(()),
        r => r.map_err(|e| EngineError::Io { path, source: e }),
    }
}

/// Denoises, decodes, runs the face pass on and writes `frames` of the prepared job.
fn write_frames(
    a: &RenderArgs,
    job: &BodyJob<'_>,
    (poses, plate, framed): (&PoseSequence, &Plate<'_>, &FramedSource<'_>),
    frames: &[usize],
    body_model: &BodyModel,
    bar: &Bar,
) -> Result<()> {
    let denoiser = job.denoiser();
    let (res, len, steps) = (job.resolution(), poses.paths().len(), denoiser.steps());
    create_dir(&a.out)?;
    let face = (a.face.face_model.as_deref())
        .map(|dir| face_step(a, dir, body_model.precision, face_service::global()))
        .transpose()?
        .map(|step| step.with_shared(denoiser.shared().cloned()));
    let face_inputs = face
        .as_ref()
        .map(|_| {
            let (landmarks, matte) = (
                a.face.face_landmarks.as_deref(),
                a.face.face_matte.as_deref(),
            );
            face::inputs::FaceInputs::open(landmarks, matte, poses.paths(), (res, res))
        })
        .transpose()?;
    // A body frame: from --body, else from the body denoiser (cached).
    let body_frame = |f: usize, progress: &dyn Progress| -> Result<(Vec<u8>, usize, usize)> {
        match &a.body {
            Some(dir) => read_body_frame(dir, poses, f, res),
            None => Ok((job.frame_rgb(f, progress)?, res, res)),
        }
    };
    // Temporal face: the body frames of a window's cone.
    let body_rgb = |f: usize| -> Result<Vec<u8>> { Ok(body_frame(f, &NoProgress)?.0) };
    // The mesh as the body saw it: framed at the working size.
    let mesh_rgb = |f: usize| Ok(framed.rgb8(f)?.0);
    let face_clip = (face_inputs.as_ref())
        .map(|inputs| face::inputs::RenderedClip::new(inputs, len, &body_rgb, &mesh_rgb));
    let face_counts = [AtomicUsize::new(0), AtomicUsize::new(0)];

    if a.body.is_none() {
        // With a shared cache: the farm walk, claiming windows with the job's other processes.
        job.prepare_frames(frames, bar)?;
    }
    let write_all = |faces: Option<&FaceFrames<'_>>| {
        run_frames(&request_order(frames, a.order), a.threads, |f| {
            let (mut rgb, _, _) = body_frame(f, bar)?;
            if let Some(faces) = faces {
                let out = faces.frame(f, &rgb, &mesh_rgb(f)?)?;
                let i = usize::from(!matches!(out.status, face::FaceStatus::Enhanced(_)));
                face_counts[i].fetch_add(1, Ordering::Relaxed);
                rgb = out.rgb;
            }
            let (data, pw, ph, channels) = plate.finish(f, &rgb, res)?;
            write_image(&a.out.join(output_name(poses, f)), data, pw, ph, channels)
        })
    };
    let result = match (&face, &face_clip) {
        (Some(step), Some(clip)) => step
            .run(clip, |faces| Ok(write_all(Some(faces))))
            .map_err(EngineError::from)
            .and_then(|r| r),
        _ => write_all(None),
    };
    result?;
    if let Some(path) = &a.dump_latents {
        dump_latents(path, denoiser, steps, len, bar)?;
    }
    if face.is_some() {
        print_face_summary(&face_counts);
    }
    Ok(())
}

/// The face pass's counts: `[enhanced, passed through]`.
fn print_face_summary(counts: &[AtomicUsize; 2]) {
    // Its warnings reached stderr through the logger as they happened.
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
    // `ANCHOR_PROFILE=1`: the per-operation table of the whole render, on stderr.
    if anchor_engine::profile::enabled() {
        eprint!("{}", anchor_engine::profile::report(start.elapsed()));
    }
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    anchor_cli::logger::init((cli.verbose.min(4) as i8) - (cli.quiet.min(4) as i8));
    let r = match cli.command {
        Command::Render(a) => render(*a),
        Command::Inspect { model } => inspect(&model),
        Command::Synth(a) => return tools::exit_code(tools::synth::run(&a)),
        Command::Cache(a) => return tools::exit_code(tools::cache::run(&a)),
        Command::Assemble(a) => return tools::exit_code(tools::assemble::run(&a)),
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
