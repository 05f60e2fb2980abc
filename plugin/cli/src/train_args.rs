//! The clap arguments of `anchor train` and `anchor train-vae`, turned into the trainers'
//! configs. Progress goes to stderr, the summary to stdout (the CLI, never the plugin).
use std::path::PathBuf;

use clap::ValueEnum;

use anchor_engine::device::{select_device, DeviceChoice};
use anchor_engine::train::diffusion::{self, ClipScope, Stage, TrainConfig, UnetInit};
use anchor_engine::train::face_data::{self, FaceDataArgs};
use anchor_engine::train::optim::AdamWParams;
use anchor_engine::train::vae::{self, ReconLoss, VaeTrainConfig};
use anchor_engine::train::validate::ValidationSpec;
use anchor_engine::train::{checkpoint, Result, TrainError};

/// `--stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StageArg {
    /// UNet from the base (or random), ControlNet made from the UNet.
    Pretrain,
    /// UNet and ControlNet from a pre-trained folder.
    Finetune,
    /// The head (face-inpainting) model on head JSON-Lines (with "mask"); UNet from the base's
    /// head/unet (or a 9-channel unet/) or --init random; writes head/{unet,controlnet}.
    Face,
}

/// `--init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitArg {
    /// The base model's UNet weights.
    Base,
    /// Deterministic random init from the seed (tiny configs).
    Random,
}

/// `--clip-scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClipScopeArg {
    /// ControlNet parameters only (the reference).
    Controlnet,
    /// All trained parameters.
    All,
}

/// `--recon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReconArg {
    /// Mean absolute error.
    L1,
    /// Mean squared error.
    Mse,
}

/// `anchor face-data`: aligned head crops, masks and a JSON-Lines file from a synth identity.
#[derive(Debug, Clone, clap::Args)]
pub struct FaceDataCli {
    /// An `anchor synth` identity folder (mesh/, person/, face_matte/, landmarks.json), e.g.
    /// OUT/target.
    #[arg(long)]
    pub synth: PathBuf,
    /// Output folder: aligned/, raw_aligned/, raw_aligned_mask/ and head_train.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Side of the saved crops (the face model's training resolution; the reference's is 256).
    #[arg(long, default_value_t = 256)]
    pub resolution: usize,
    /// Side of the aligned crop before resizing (the reference's is 512).
    #[arg(long, default_value_t = 512)]
    pub crop: usize,
    /// The frame (0-based, among the usable ones) whose aligned person crop is the reference.
    #[arg(long, default_value_t = 0)]
    pub reference_frame: usize,
}

/// Runs `anchor face-data`.
pub fn run_face_data(a: &FaceDataCli) -> Result<()> {
    face_data::run(&FaceDataArgs::from(a))
}

impl From<&FaceDataCli> for FaceDataArgs {
    fn from(a: &FaceDataCli) -> Self {
        Self {
            synth: a.synth.clone(),
            out: a.out.clone(),
            resolution: a.resolution,
            crop: a.crop,
            reference_frame: a.reference_frame,
        }
    }
}

/// `anchor train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// pretrain (ControlNet from the UNet) or finetune (both from --base).
    #[arg(long, value_enum)]
    pub stage: StageArg,
    /// Base model folder: vae/, scheduler/, text_encoder/, image_encoder/, unet/ (and
    /// controlnet/ for finetune).
    #[arg(long)]
    pub base: PathBuf,
    /// JSON-Lines file(s) of {"source", "target", "reference"} (and "mask" for --stage face;
    /// paths relative to the file).
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Output folder: checkpoints/, model/, loss.csv, loss.png, validation/.
    #[arg(long)]
    pub out: PathBuf,
    /// UNet config.json to use instead of the base's (with --init random).
    #[arg(long)]
    pub unet_config: Option<PathBuf>,
    /// UNet init for pretrain.
    #[arg(long, value_enum, default_value = "base")]
    pub init: InitArg,
    /// Resize every source/target image to this square size.
    #[arg(long)]
    pub resolution: Option<usize>,
    /// AdamW learning rate (constant).
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f64,
    /// AdamW β₁.
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    /// AdamW β₂.
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f64,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 1e-2)]
    pub weight_decay: f64,
    /// AdamW epsilon.
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f64,
    /// Samples per step.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Total steps (overrides --epochs).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Passes over the data.
    #[arg(long, default_value_t = 60)]
    pub epochs: usize,
    /// Clip the gradient norm to this value; 0 disables clipping.
    #[arg(long, default_value_t = 1.0)]
    pub clip_grad_norm: f64,
    /// Parameters the clipping sees: controlnet (the reference) or all.
    #[arg(long, value_enum, default_value = "controlnet")]
    pub clip_scope: ClipScopeArg,
    /// ControlNet conditioning scale while training.
    #[arg(long, default_value_t = 1.0)]
    pub conditioning_scale: f64,
    /// ControlNet conditioning-embedding widths for pretrain, e.g. 16,32,96,256 (length − 1 =
    /// log2 of the VAE downscale) [the base's controlnet/config.json, else 16,32,96,256].
    #[arg(long, value_delimiter = ',')]
    pub conditioning_embedding_channels: Option<Vec<usize>>,
    /// Seed of init, data order, timesteps and noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 10_000)]
    pub checkpoint_every: usize,
    /// Keep only the newest N checkpoints (0: all).
    #[arg(long, default_value_t = 0)]
    pub keep_checkpoints: usize,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Stop after N steps in this invocation (resume later with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Render validation frames every N steps (0: never).
    #[arg(long, default_value_t = 0)]
    pub validate_every: usize,
    /// Pose folder for validation renders.
    #[arg(long)]
    pub val_poses: Option<PathBuf>,
    /// Reference photo for validation renders [the model's appearance.png].
    #[arg(long)]
    pub val_appearance: Option<PathBuf>,
    /// Frames per validation render.
    #[arg(long, default_value_t = 4)]
    pub val_frames: usize,
    /// DDIM steps of validation renders.
    #[arg(long, default_value_t = 20)]
    pub val_steps: usize,
    /// The trained model's appearance.png (head.png for --stage face) [the first sample's
    /// reference].
    #[arg(long)]
    pub appearance: Option<PathBuf>,
    /// auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// `anchor train-vae`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainVaeArgs {
    /// The AutoencoderKL config.json (e.g. tests/fixtures/tiny/vae/config.json).
    #[arg(long)]
    pub config: PathBuf,
    /// JSON-Lines file(s); the "target" frames are the training images.
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Output folder: checkpoints/, vae/, loss.csv, loss.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Resize every image to this square size.
    #[arg(long)]
    pub resolution: Option<usize>,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Total steps.
    #[arg(long, default_value_t = 2000)]
    pub steps: usize,
    /// Weight of the KL term (per-element mean).
    #[arg(long, default_value_t = 1e-4)]
    pub kl_weight: f64,
    /// Reconstruction loss.
    #[arg(long, value_enum, default_value = "l1")]
    pub recon: ReconArg,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: usize,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Stop after N steps in this invocation.
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Start from this trained VAE folder (config.json + weights) instead of a random init.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Train only the decoder (`decoder.*`, `post_quant_conv.*`) of `--init`: the encoder, hence
    /// every latent a diffusion model was trained on, and the scaling factor stay as they are.
    #[arg(long, requires = "init")]
    pub decoder_only: bool,
}

fn progress(line: &str) {
    eprintln!("anchor: {line}");
}

/// Runs `anchor train`.
pub fn run_train(a: &TrainArgs) -> Result<()> {
    let stage = match a.stage {
        StageArg::Pretrain => Stage::Pretrain,
        StageArg::Finetune => Stage::Finetune,
        StageArg::Face => Stage::Face,
    };
    let mut cfg = TrainConfig::new(stage, a.base.clone(), a.data.clone(), a.out.clone());
    cfg.unet_config = a.unet_config.clone();
    cfg.init = match a.init {
        InitArg::Base => UnetInit::Base,
        InitArg::Random => UnetInit::Random,
    };
    cfg.resolution = a.resolution;
    cfg.adamw = AdamWParams {
        lr: a.lr,
        beta1: a.beta1,
        beta2: a.beta2,
        weight_decay: a.weight_decay,
        eps: a.adam_eps,
    };
    cfg.batch_size = a.batch_size;
    cfg.steps = a.steps;
    cfg.epochs = Some(a.epochs);
    cfg.clip_grad_norm = (a.clip_grad_norm > 0.0).then_some(a.clip_grad_norm);
    cfg.clip_scope = match a.clip_scope {
        ClipScopeArg::Controlnet => ClipScope::ControlNet,
        ClipScopeArg::All => ClipScope::All,
    };
    cfg.conditioning_scale = a.conditioning_scale;
    cfg.controlnet_embedding = a.conditioning_embedding_channels.clone();
    cfg.seed = a.seed;
    cfg.checkpoint_every = a.checkpoint_every;
    cfg.keep_checkpoints = a.keep_checkpoints;
    cfg.resume = a.resume;
    cfg.stop_after = a.stop_after;
    cfg.validate_every = a.validate_every;
    cfg.validation = match (&a.val_poses, a.validate_every) {
        (Some(poses), _) => Some(ValidationSpec {
            poses: poses.clone(),
            appearance: a.val_appearance.clone(),
            frames: a.val_frames,
            steps: a.val_steps,
            seed: 42,
        }),
        (None, 0) => None,
        (None, _) => {
            return Err(TrainError::Data(
                "--validate-every needs --val-poses".into(),
            ))
        }
    };
    cfg.appearance = a.appearance.clone();
    cfg.device = select_device(a.device.parse::<DeviceChoice>()?)?;
    let r = diffusion::train(&cfg, &progress)?;
    summary(
        &r.losses,
        r.start_step,
        r.end_step,
        r.total_steps,
        r.steps_per_second,
    );
    if let Some(m) = r.model {
        println!("model: {}", m.display());
    }
    Ok(())
}

/// Runs `anchor train-vae`.
pub fn run_train_vae(a: &TrainVaeArgs) -> Result<()> {
    let cfg = VaeTrainConfig {
        config: a.config.clone(),
        data: a.data.clone(),
        out: a.out.clone(),
        resolution: a.resolution,
        adamw: AdamWParams {
            lr: a.lr,
            weight_decay: a.weight_decay,
            ..AdamWParams::default()
        },
        batch_size: a.batch_size,
        steps: a.steps,
        kl_weight: a.kl_weight,
        recon: match a.recon {
            ReconArg::L1 => ReconLoss::L1,
            ReconArg::Mse => ReconLoss::Mse,
        },
        seed: a.seed,
        checkpoint_every: a.checkpoint_every,
        resume: a.resume,
        stop_after: a.stop_after,
        device: select_device(a.device.parse::<DeviceChoice>()?)?,
        init: a.init.clone(),
        decoder_only: a.decoder_only,
    };
    let r = vae::train_vae(&cfg, &progress)?;
    summary(
        &r.losses,
        r.start_step,
        r.end_step,
        r.total_steps,
        r.steps_per_second,
    );
    if let Some(m) = r.model {
        println!(
            "vae: {} (scaling_factor {:.5} from the latents' std)",
            m.display(),
            r.scaling_factor.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

fn summary(losses: &[checkpoint::LossRow], start: usize, end: usize, total: usize, rate: f64) {
    let mean = |rows: &[checkpoint::LossRow]| {
        rows.iter().map(|r| f64::from(r.loss)).sum::<f64>() / rows.len().max(1) as f64
    };
    let k = (losses.len() / 10).max(1);
    println!(
        "steps {start}..{end} of {total} ({rate:.2} steps/s); mean loss of the first {k} steps \
         {:.5}, of the last {k} {:.5}",
        mean(&losses[..k.min(losses.len())]),
        mean(&losses[losses.len().saturating_sub(k)..])
    );
}

/// The CLI's exit status for a trainer's result (the error on stderr).
pub fn exit_code(r: Result<()>) -> std::process::ExitCode {
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anchor: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
