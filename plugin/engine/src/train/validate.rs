//! Validation renders during training: a few frames of a pose folder rendered from a checkpoint's
//! model folder through the same pipeline as `anchor render` (one window over the first frames,
//! DDIM, CFG with the model's defaults), written as PNG under `validation/step-NNNNNNNN/`.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::{checkpoint, Result, TrainError};
use crate::model::BodyModel;
use crate::pipeline::{self, BodyNetworks, DdimStep, PoseSequence};
use crate::sampler::ddim::DdimScheduler;
use crate::temporal::{Cache, Counters, Fusion, NoProgress, SamplingParams, Tail, WindowPlan};

/// What to render.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationSpec {
    /// A folder of mesh renders (e.g. `anchor synth`'s `heldout/mesh`).
    pub poses: PathBuf,
    /// The reference photo; the model's `appearance.png` when absent.
    pub appearance: Option<PathBuf>,
    /// Frames rendered (the first ones, as one window).
    pub frames: usize,
    /// DDIM steps.
    pub steps: usize,
    /// Seed of the initial noise.
    pub seed: u64,
}

/// Renders `spec` with the model folder `model_dir` into `out` (replaced atomically) at
/// `resolution`; returns the number of frames written.
pub fn render(
    model_dir: &Path,
    spec: &ValidationSpec,
    out: &Path,
    device: &Device,
    resolution: usize,
) -> Result<usize> {
    let model = BodyModel::load(model_dir, DType::F32, device)?;
    let d = model.defaults().clone();
    let appearance = spec
        .appearance
        .clone()
        .unwrap_or_else(|| pipeline::default_appearance(&model.layout));
    let tokens = pipeline::encode_appearance(&model, &appearance)?;
    let nets = BodyNetworks::new(
        &model,
        &tokens,
        pipeline::model_identity(&model)?,
        model.defaults().control_residuals,
    )?;
    let scheduler = DdimStep(DdimScheduler::new(
        model.configs.scheduler.clone(),
        spec.steps,
    )?);
    let poses = PoseSequence::open(&spec.poses, (resolution, resolution), DType::F32, device)?;
    let len = poses.paths().len();
    let frames = spec.frames.min(len);
    if frames == 0 {
        return Err(TrainError::Data(format!(
            "validation: {} holds no frames",
            spec.poses.display()
        )));
    }
    let plan = WindowPlan::new(len, frames, 0, Tail::Paper, Fusion::Flat)?;
    let params = SamplingParams {
        guidance: d.guidance_scale,
        control_scale: d.control_scale,
    };
    let latent_ch = model.unet.architecture().in_channels();
    let f = model.vae.config().downsample_factor();
    let noise =
        pipeline::initial_noise(spec.seed, None, (latent_ch, resolution / f, resolution / f))?;
    let cache = Cache::new(256 << 20);
    let counters = Counters::default();
    let denoiser = pipeline::denoiser(
        &nets, &scheduler, &poses, &cache, &counters, plan, params, noise,
    )?;
    checkpoint::write_dir_atomically(out, |tmp| {
        for i in 0..frames {
            let img = denoiser.image(i, &NoProgress)?;
            let (rgb, w, h) = pipeline::image_to_rgb8(&img)?;
            let name = poses.paths()[i]
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(format!("{i:06}.png")));
            let path = tmp.join(name).with_extension("png");
            let img = image::RgbImage::from_raw(w as u32, h as u32, rgb)
                .ok_or_else(|| TrainError::Data("validation: bad image buffer".into()))?;
            img.save(&path)
                .map_err(|e| TrainError::Data(format!("cannot write {}: {e}", path.display())))?;
        }
        Ok(())
    })?;
    Ok(frames)
}
