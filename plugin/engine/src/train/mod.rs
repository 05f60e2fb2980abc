//! Training on candle's autograd (issue 6): `anchor train` (UNet + ControlNet with the
//! DDPM ε-prediction loss, stages `pretrain` and `finetune`) and `anchor train-vae` (a KL
//! autoencoder for tiny configs, so a small model family can be built from scratch).
//!
//! One file per concern:
//! - [`data`]: the reference's JSON-Lines dataset (`{"source", "target", "reference"}`), checked
//!   up front (missing images, empty sets, mixed resolutions), and the seeded data order;
//! - [`params`]: trainable parameters in `candle_nn::VarMap`s, so the inference network
//!   constructors train unchanged: loading, deterministic random init, ControlNet `from_unet`;
//! - [`optim`]: AdamW (torch semantics) with saveable moments, and grad-norm clipping;
//! - [`checkpoint`]: atomic model folders in the diffusers layout the renderer loads, trainer
//!   state, resume;
//! - [`loss_log`]: the loss CSV and PNG plot;
//! - [`diffusion`]: the `anchor train` loop (stages pretrain, finetune and face); [`validate`]:
//!   its validation renders;
//! - [`face_data`]: `anchor face-data`, the head JSON-Lines set from `anchor synth` output;
//! - [`vae`]: the `anchor train-vae` loop;
//! - [`cli`]: the clap arguments of both subcommands.
//!
//! All randomness (init, data order, timesteps, noise) is drawn from SplitMix64 streams keyed by
//! the seed and the step, never from a global generator, so a run resumed from a checkpoint
//! repeats the uninterrupted run bit for bit (on the same device and build).
use std::path::PathBuf;

use super::temporal::noise::SplitMix64;
use super::EngineError;

pub mod checkpoint;
pub mod data;
pub mod diffusion;
pub mod face_data;
pub mod loss_log;
pub mod optim;
pub mod params;
pub mod vae;
pub mod validate;

/// Errors of the trainers. Each names the file, line, step or value at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// An engine error (model folders, weights, tensors).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A JSON-Lines line names an image that does not exist.
    #[error("{file}:{line}: \"{field}\" image {path} does not exist")]
    MissingImage {
        /// The JSON-Lines file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// `source`, `target`, `reference` or `mask`.
        field: String,
        /// The resolved image path.
        path: PathBuf,
    },
    /// A head (face) JSON-Lines line has no `mask` (the inverted face mask).
    #[error(
        "{file}:{line}: no string field \"mask\"; the face stage needs the head format \
         {{\"source\", \"target\", \"reference\", \"mask\"}} (mask: 255 = keep, 0 = face); \
         `anchor face-data` writes it from `anchor synth` output"
    )]
    NoMask {
        /// The JSON-Lines file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// The dataset holds no samples.
    #[error("the dataset is empty: {0} holds no samples")]
    EmptyDataset(String),
    /// Images of different sizes without `--resolution`.
    #[error(
        "{file}:{line}: \"{field}\" image {path} is {found_w}×{found_h}, but the dataset's first \
         image is {want_w}×{want_h}; give --resolution to resize every image, or use one size"
    )]
    MixedResolution {
        /// The JSON-Lines file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// `source` or `target`.
        field: String,
        /// The image path.
        path: PathBuf,
        /// Its size.
        found_w: usize,
        /// Its size.
        found_h: usize,
        /// The first image's size.
        want_w: usize,
        /// The first image's size.
        want_h: usize,
    },
    /// A malformed dataset line or unusable input.
    #[error("{0}")]
    Data(String),
    /// The loss (or the gradient norm) became NaN or infinite; training stopped before saving
    /// anything of this step.
    #[error(
        "step {step}: the {what} is {value} (not finite); training stopped. The last good \
         checkpoint is {}; lower the learning rate or enable gradient clipping",
        last_checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into())
    )]
    NonFiniteLoss {
        /// The 1-based step whose loss was not finite.
        step: usize,
        /// `loss` or `gradient norm`.
        what: String,
        /// The value.
        value: f32,
        /// The newest complete checkpoint, which stays as it was.
        last_checkpoint: Option<PathBuf>,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        Self::Engine(e.into())
    }
}

/// Result of the trainers.
pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A generator for one purpose (`tag`) at one index (a step, an epoch), derived from the run's
/// seed: streams never overlap in practice and need no saved state to resume.
pub fn stream(seed: u64, tag: u64, index: u64) -> SplitMix64 {
    let mut g = SplitMix64::new(seed ^ tag.wrapping_mul(0xD134_2543_DE82_EF95));
    let a = g.next_u64();
    let mut h = SplitMix64::new(a ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    h.next_u64();
    h
}

/// `n` standard normal values (f32) from `rng`.
pub fn normals(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.next_normal() as f32).collect()
}

/// Stream tags.
pub(crate) mod tags {
    /// Random parameter init (index: hash of the parameter name).
    pub const INIT: u64 = 1;
    /// Data order (index: epoch).
    pub const ORDER: u64 = 2;
    /// Timesteps and noise of one step (index: step).
    pub const STEP: u64 = 3;
}
