//! Checkpoints and model folders, written so that nothing is ever half-written: each folder is
//! filled under a hidden `.NAME.partial` name next to its final place and renamed when complete
//! (a rename within one folder is atomic). A killed run leaves at most a `.partial` folder, which
//! the next run deletes; the newest complete `checkpoints/step-NNNNNNNN/` is where it resumes.
//!
//! A checkpoint is a complete model folder in the diffusers layout the renderer loads
//! (`unet/`, `controlnet/` with `config.json` + `diffusion_pytorch_model.safetensors`; `vae/`,
//! `scheduler/`, `text_encoder/`, `image_encoder/` hard-linked, or copied, from the base;
//! `appearance.png`), plus `optimizer.safetensors` (AdamW moments) and `trainer_state.json`
//! (step, seed, data order and the loss history), which make the resume bit-exact.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::optim::AdamW;
use super::{io_err, Result, TrainError};

/// The checkpoints' folder inside the output folder.
pub const CHECKPOINTS: &str = "checkpoints";
/// The trainer state file of a checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
/// The optimizer moments of a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// One logged step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossRow {
    /// 1-based step number (the number of updates done).
    pub step: usize,
    /// The step's loss.
    pub loss: f32,
    /// The gradient norm before clipping (of the clipped parameters, else of all).
    pub grad_norm: f32,
    /// Wall-clock seconds since the run (or resume) started; not part of the exact-resume contract.
    pub seconds: f32,
}

/// What a checkpoint records besides the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// `train` or `train-vae`.
    pub kind: String,
    /// Updates done.
    pub step: usize,
    /// The run's seed (data order, timesteps and noise are functions of seed and step).
    pub seed: u64,
    /// Batch size.
    pub batch_size: usize,
    /// Number of samples.
    pub dataset_len: usize,
    /// Total steps of the run.
    pub total_steps: usize,
    /// Every logged step so far.
    pub losses: Vec<LossRow>,
}

impl TrainerState {
    /// Reads `dir/trainer_state.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let p = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
        serde_json::from_str(&text)
            .map_err(|e| TrainError::Data(format!("{}: not a trainer state: {e}", p.display())))
    }

    /// Writes `dir/trainer_state.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let p = dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| TrainError::Data(format!("cannot serialise the trainer state: {e}")))?;
        std::fs::write(&p, text + "\n").map_err(io_err(&p))
    }

    /// Fails when `other` (the new run's settings) would not continue this run's data order.
    pub fn check_resumable(&self, other: &TrainerState, dir: &Path) -> Result<()> {
        let mut diffs = Vec::new();
        if self.kind != other.kind {
            diffs.push(format!("kind {} vs {}", self.kind, other.kind));
        }
        if self.seed != other.seed {
            diffs.push(format!("seed {} vs {}", self.seed, other.seed));
        }
        if self.batch_size != other.batch_size {
            diffs.push(format!(
                "batch size {} vs {}",
                self.batch_size, other.batch_size
            ));
        }
        if self.dataset_len != other.dataset_len {
            diffs.push(format!(
                "dataset size {} vs {}",
                self.dataset_len, other.dataset_len
            ));
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(TrainError::Data(format!(
                "cannot resume from {}: the checkpoint was made with different settings ({}); \
                 use the same ones or a new output folder",
                dir.display(),
                diffs.join(", ")
            )))
        }
    }
}

/// `step-00000042`.
pub fn step_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// The complete checkpoints of `out`, oldest first.
pub fn list(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let dir = out.join(CHECKPOINTS);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut v = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
        let e = e.map_err(io_err(&dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            if e.path().join(STATE_FILE).is_file() {
                v.push((n, e.path()));
            }
        }
    }
    v.sort();
    Ok(v)
}

/// Deletes the `.NAME.partial` / `.NAME.old` folders an interrupted run left in `dir`.
pub fn remove_partials(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if !dir.is_dir() {
        return Ok(removed);
    }
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && (name.ends_with(".partial") || name.ends_with(".old")) {
            let p = e.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
            } else {
                std::fs::remove_file(&p).map_err(io_err(&p))?;
            }
            log::warn!("removed {} left by an interrupted run", p.display());
            removed.push(p);
        }
    }
    Ok(removed)
}

/// Fills a folder with `fill` under a temporary name, then renames it to `dest` (replacing an
/// existing `dest`): readers see either the old folder or the complete new one.
pub fn write_dir_atomically(dest: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = parent.join(format!(".{name}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dest.exists() {
        let old = parent.join(format!(".{name}.old"));
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        std::fs::rename(dest, &old).map_err(io_err(dest))?;
        std::fs::rename(&tmp, dest).map_err(io_err(dest))?;
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    } else {
        std::fs::rename(&tmp, dest).map_err(io_err(dest))?;
    }
    Ok(())
}

/// Hard-links (or, across file systems, copies) `src` into `dst`: every file of the folder tree.
pub fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    if src.is_dir() {
        std::fs::create_dir_all(dst).map_err(io_err(dst))?;
        for e in std::fs::read_dir(src).map_err(io_err(src))? {
            let e = e.map_err(io_err(src))?;
            link_or_copy(&e.path(), &dst.join(e.file_name()))?;
        }
        return Ok(());
    }
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).map_err(io_err(src))?;
    }
    Ok(())
}

/// Writes the optimizer moments to `dir/optimizer.safetensors`.
pub fn save_optimizer(dir: &Path, opt: &AdamW) -> Result<()> {
    let cpu: HashMap<String, Tensor> = opt
        .state()
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    candle_core::safetensors::save(&cpu, dir.join(OPTIMIZER_FILE))?;
    Ok(())
}

/// Reads a safetensors file of `dir` onto `device`.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device)
        .map_err(|e| TrainError::Data(format!("{}: cannot be read: {e}", path.display())))
}
