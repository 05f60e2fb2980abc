//! `anchor`: render a mesh-render clip into the person's video with a Make-Your-Anchor model, and
//! inspect model folders. The same engine as the OpenFX effect, without a host.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};

use make_your_anchor::engine::device::{parse_dtype, select_device, DeviceChoice};
use make_your_anchor::engine::model::{inspect_model, BodyModel};
use make_your_anchor::engine::pipeline::{self, BodyNetworks, DdimStep, PoseSequence};
use make_your_anchor::engine::sampler::ddim::DdimScheduler;
use make_your_anchor::engine::temporal::{
    Cache, Counters, Fusion, Progress, SamplingParams, Tail, WindowPlan,
};
use make_your_anchor::engine::train;
use make_your_anchor::engine::{EngineError, Result};
use make_your_anchor::tools;

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
    /// Train the UNet and ControlNet (pretrain or finetune) on JSON-Lines data.
    Train(Box<train::cli::TrainArgs>),
    /// Train a KL autoencoder (VAE) for a tiny model family.
    TrainVae(Box<train::cli::TrainVaeArgs>),
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
    let steps = a.steps.unwrap_or(d.steps);
    let params = SamplingParams {
        guidance: a.cfg.unwrap_or(d.guidance_scale),
        control_scale: a.control_scale.unwrap_or(d.control_scale),
    };
    let poses = PoseSequence::open(&a.poses, (res, res), dtype, &device)?;
    let len = poses.paths().len();
    let plan = WindowPlan::new(
        len,
        a.window.unwrap_or(d.window),
        a.overlap.unwrap_or(d.overlap),
        tail,
        fusion,
    )?;
    let frames: Vec<usize> = match &a.frames {
        Some(spec) => parse_frames(spec, len)?.collect(),
        None => (0..len).collect(),
    };
    let order: Vec<usize> = match a.order {
        Order::Sequential => frames.clone(),
        Order::Reverse => frames.iter().rev().copied().collect(),
        Order::Random => {
            // A fixed shuffle (SplitMix64-driven Fisher-Yates), so runs are repeatable.
            let mut v = frames.clone();
            let mut rng = make_your_anchor::engine::temporal::noise::SplitMix64::new(0x5eed);
            for i in (1..v.len()).rev() {
                v.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            v
        }
    };
    let appearance = pipeline::encode_appearance(&model, &a.appearance)?;
    let model_key = pipeline::model_identity(&model)?;
    let nets = BodyNetworks::new(&model, &appearance, model_key)?;
    let scheduler = DdimStep(DdimScheduler::new(model.configs.scheduler.clone(), steps)?);
    let latent_ch = model.unet.architecture().in_channels();
    let vae_factor = model.vae.config().downsample_factor();
    let shape = (latent_ch, res / vae_factor, res / vae_factor);
    let noise = pipeline::initial_noise(a.seed.unwrap_or(d.seed), a.noise.as_deref(), shape)?;
    let cache = Cache::new(a.cache_mib.saturating_mul(1 << 20));
    let counters = Counters::default();
    let denoiser = pipeline::denoiser(
        &nets, &scheduler, &poses, &cache, &counters, plan, params, noise,
    )?;
    std::fs::create_dir_all(&a.out).map_err(|e| EngineError::Io {
        path: a.out.clone(),
        source: e,
    })?;

    let bar = Bar {
        total: (denoiser.plan().windows().len() * steps) as u64,
        done: AtomicU64::new(0),
        tty: std::io::stderr().is_terminal(),
    };
    let next = AtomicUsize::new(0);
    let first_error = parking_lot::Mutex::new(None::<EngineError>);
    std::thread::scope(|s| {
        for _ in 0..a.threads.max(1) {
            s.spawn(|| loop {
                if first_error.lock().is_some() {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&f) = order.get(i) else { break };
                let r = denoiser.image(f, &bar).and_then(|img| {
                    let (rgb, w, h) = pipeline::image_to_rgb8(&img)?;
                    let name = poses.paths()[f]
                        .file_name()
                        .map(PathBuf::from)
                        .unwrap_or_default();
                    write_rgb8(&a.out.join(name), rgb, w, h)
                });
                if let Err(e) = r {
                    first_error.lock().get_or_insert(e);
                }
            });
        }
    });
    if bar.tty {
        eprintln!();
    }
    if let Some(e) = first_error.into_inner() {
        return Err(e);
    }
    if let Some(path) = &a.dump_latents {
        let mut tensors = std::collections::HashMap::new();
        for s in 1..=steps {
            let xs = (0..len)
                .map(|f| denoiser.latent(s, f, &bar))
                .collect::<Result<Vec<_>>>()?;
            let t = candle_core::Tensor::stack(&xs, 0)?.to_dtype(candle_core::DType::F32)?;
            tensors.insert(format!("latents_step{}", s - 1), t);
        }
        candle_core::safetensors::save(&tensors, path)?;
    }
    let stats = cache.stats();
    println!(
        "rendered {} frames of {len} ({} windows x {steps} steps): {} network calls, {} decodes, \
         cache {} hits / {} misses, cache peak {:.1} MiB, peak RSS {} MiB, {:.1} s",
        frames.len(),
        denoiser.plan().windows().len(),
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
    Ok(())
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
        Command::Train(a) => return train::cli::exit_code(train::cli::run_train(&a)),
        Command::TrainVae(a) => return train::cli::exit_code(train::cli::run_train_vae(&a)),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anchor: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
