//! Validation renders during training: a few frames of a pose folder rendered from a checkpoint's
//! model folder through the same pipeline as `anchor render` (one window over the first frames,
//! DDIM, CFG with the model's defaults), written as PNG under `validation/step-NNNNNNNN/`.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::{checkpoint, Result, TrainError};
use crate::job::{self, Appearance, BodyJob, JobContext, JobModel, JobRequest, RenderSettings};
use crate::model::BodyModel;
use crate::pipeline::{self, PoseSequence};
use crate::service::ServiceError;
use crate::temporal::{Cache, Counters, Fusion, NoProgress, Tail};

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
    let photo = match &spec.appearance {
        Some(path) => pipeline::read_rgb8(path)?,
        None => pipeline::read_rgb8(&pipeline::default_appearance(&model.layout))?,
    };
    let poses = PoseSequence::open(&spec.poses, (resolution, resolution), DType::F32, device)?;
    let len = poses.paths().len();
    let frames = spec.frames.min(len);
    if frames == 0 {
        return Err(TrainError::Data(format!(
            "validation: {} holds no frames",
            spec.poses.display()
        )));
    }
    // One window over the first frames, with the model's sampling defaults.
    let mut settings = RenderSettings::model_defaults(model_dir, model.defaults());
    settings.steps = spec.steps;
    settings.seed = spec.seed;
    settings.resolution = resolution;
    settings.window = frames;
    settings.overlap = 0;
    settings.fusion = Fusion::Flat;
    settings.tail = Tail::Paper;
    settings.cache_bytes = 256 << 20;
    let (cache, counters) = (Cache::new(settings.cache_bytes), Counters::default());
    let context = JobContext {
        cache: &cache,
        counters: &counters,
        registry: crate::registry::global(),
        gate: None,
        shared: None,
    };
    let wanted: Vec<usize> = (0..frames).collect();
    let request = JobRequest {
        settings: &settings,
        appearance: Appearance::Rgb8 {
            data: &photo.0,
            width: photo.1,
            height: photo.2,
        },
        control: &poses,
        noise_file: None,
        frames: &wanted,
    };
    let job_model = JobModel {
        model: &model,
        identity: pipeline::model_identity(&model)?,
    };
    job::run(job_model, request, context, |job| {
        write_frames(job, &poses, frames, out).map_err(|e| match e {
            TrainError::Engine(e) => ServiceError::Render(e),
            e => ServiceError::Render(crate::EngineError::Input(e.to_string())),
        })
    })
    .map_err(crate::EngineError::from)?;
    Ok(frames)
}

/// Writes the first `frames` frames of `job` as PNG into `out` (replaced atomically).
fn write_frames(job: &BodyJob<'_>, poses: &PoseSequence, frames: usize, out: &Path) -> Result<()> {
    let res = job.resolution();
    checkpoint::write_dir_atomically(out, |tmp| {
        for i in 0..frames {
            let (rgb, w, h) = (job.frame_rgb(i, &NoProgress)?, res, res);
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
    })
}
