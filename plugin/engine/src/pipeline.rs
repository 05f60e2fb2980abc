//! The body pipeline: appearance tokens, control frames from a pose folder, and
//! the real networks behind the temporal engine's [`WindowNetworks`] interface.
//!
//! Named steps as in diffusers' pipelines: [`check_resolution`], [`encode_appearance`],
//! [`PoseSequence`] (prepare the control images), [`initial_noise`] (prepare the latents), then the
//! denoise loop in [`TemporalDenoiser`], then decode.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use parking_lot::Mutex;

use super::model::{BodyModel, ModelLayout};
use super::networks::controlnet::{ControlCondition, ControlNetOutput};
use super::networks::unet::ControlResiduals;
use super::networks::unet_blocks::Temporal;
use super::resample::{resize_rgb8, Filter};
use super::sampler::ddim::DdimScheduler;
use super::temporal::{
    ControlFrames, Key, KeyHasher, StepScheduler, TemporalDenoiser, WindowNetworks,
};
use super::{EngineError, Result};

/// The reference rounds the working size down to a multiple of 32 (`inference_body.py:71-72`).
pub const RESOLUTION_MULTIPLE: usize = 32;

/// The working resolution the reference would use for `requested`, and a note when it differs.
pub fn check_resolution(requested: usize) -> Result<(usize, Option<String>)> {
    let r = requested - requested % RESOLUTION_MULTIPLE;
    if r == 0 {
        return Err(EngineError::Input(format!(
            "resolution {requested} is below the minimum of {RESOLUTION_MULTIPLE}"
        )));
    }
    let note = (r != requested).then(|| {
        format!(
            "resolution {requested} is not a multiple of {RESOLUTION_MULTIPLE}; using {r}, \
             rounded down as the reference does"
        )
    });
    Ok((r, note))
}

/// Reads an image file as 8-bit RGB (alpha dropped, not composited: PIL `convert("RGB")`).
pub fn read_rgb8(path: &Path) -> Result<(Vec<u8>, usize, usize)> {
    let img = image::open(path)
        .map_err(|e| EngineError::Input(format!("cannot read image {}: {e}", path.display())))?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    Ok((rgb.into_raw(), w as usize, h as usize))
}

/// An image file decoded once: [`read_rgb8`] memoised in the process's resource registry
/// ([`crate::registry`]) by path, length and modification time (a rewritten file is read again,
/// and its old version dropped). Renderers ask for the same model-folder photo on every frame;
/// the registry bounds the memo by bytes and PurgeCaches frees it.
pub fn read_rgb8_memo(path: &Path) -> Result<std::sync::Arc<(Vec<u8>, usize, usize)>> {
    read_rgb8_memo_in(crate::registry::global(), path)
}

/// [`read_rgb8_memo`] in `registry`.
pub(crate) fn read_rgb8_memo_in(
    registry: &crate::registry::Registry,
    path: &Path,
) -> Result<std::sync::Arc<(Vec<u8>, usize, usize)>> {
    let version = crate::registry::file_version("rgb8-file", path)
        .map_err(|e| EngineError::Input(format!("cannot read image {}: {e}", path.display())))?;
    registry.get_or_insert_with(
        crate::registry::Kind::Photo,
        version.key,
        Some(version.path_key),
        |image: &(Vec<u8>, usize, usize)| image.0.len(),
        || read_rgb8(path),
    )
}

/// The model folder's default reference photo, used when no appearance image is given (the
/// OpenFX effect without an Appearance clip): `appearance.png` in the model folder.
pub const DEFAULT_APPEARANCE: &str = "appearance.png";

/// The path of the default reference photo of `layout` ([`DEFAULT_APPEARANCE`]).
pub fn default_appearance(layout: &ModelLayout) -> PathBuf {
    layout.root.join(DEFAULT_APPEARANCE)
}

/// The default reference photo of `layout`, decoded once per file version through `registry`;
/// a folder without one is a [`EngineError::Missing`] that names the file. Every front end
/// uses this when no appearance image is given.
pub fn read_default_appearance(
    layout: &ModelLayout,
    registry: &crate::registry::Registry,
) -> Result<std::sync::Arc<(Vec<u8>, usize, usize)>> {
    let path = default_appearance(layout);
    if !path.is_file() {
        return Err(EngineError::missing(
            &path,
            format!("the model folder has no default reference photo {DEFAULT_APPEARANCE}"),
        ));
    }
    read_rgb8_memo_in(registry, &path)
}

/// Appearance tokens `(1, N, D)` of a reference photo, in the run dtype.
pub fn encode_appearance(model: &BodyModel, photo: &Path) -> Result<Tensor> {
    let (rgb, w, h) = read_rgb8(photo)?;
    let tokens = model.image_encoder.encode_image(&rgb, w, h)?;
    Ok(tokens.to_dtype(model.dtype)?)
}

/// The initial latent `[C, h, w]`: seeded CPU noise, or the tensor `noise` of a safetensors file.
pub fn initial_noise(
    seed: u64,
    noise_file: Option<&Path>,
    shape: (usize, usize, usize),
) -> Result<(Tensor, Key)> {
    match noise_file {
        None => {
            let t = super::temporal::noise::initial_noise(seed, shape.0, shape.1, shape.2)?;
            Ok((t, KeyHasher::tagged("seed").u64(seed).finish()))
        }
        Some(path) => {
            let map = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
                EngineError::Input(format!("cannot read noise file {}: {e}", path.display()))
            })?;
            let t = map.get("noise").ok_or_else(|| {
                EngineError::Input(format!(
                    "noise file {} has no tensor \"noise\"",
                    path.display()
                ))
            })?;
            let expect = [shape.0, shape.1, shape.2];
            if t.dims() != expect {
                return Err(EngineError::Input(format!(
                    "noise tensor in {} has shape {:?}; expected {:?} ([4, H/8, W/8])",
                    path.display(),
                    t.dims(),
                    expect
                )));
            }
            let t = t.to_dtype(DType::F32)?;
            let key = KeyHasher::tagged("noise-file")
                .f32s(&t.flatten_all()?.to_vec1::<f32>()?)
                .finish();
            Ok((t, key))
        }
    }
}

/// The PNG and JPEG files of a frames folder, unsorted; an error names a folder that cannot be
/// listed or holds none.
pub fn list_frames(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        EngineError::Input(format!("cannot list poses folder {}: {e}", dir.display()))
    })?;
    let paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let ext = p
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
        })
        .collect();
    if paths.is_empty() {
        return Err(EngineError::Input(format!(
            "poses folder {} holds no PNG or JPEG frames",
            dir.display()
        )));
    }
    Ok(paths)
}

/// The pose (mesh-render) frames of a folder, sorted by name, resized to the working size with
/// PIL's LANCZOS as the reference does, read lazily.
pub struct PoseSequence {
    paths: Vec<PathBuf>,
    size: (usize, usize),
    dtype: DType,
    device: Device,
    keys: Mutex<HashMap<usize, Key>>,
}

impl PoseSequence {
    /// Lists `dir` (PNG/JPEG files, sorted by name) and checks that all frames share one size.
    pub fn open(dir: &Path, size: (usize, usize), dtype: DType, device: &Device) -> Result<Self> {
        let mut paths = list_frames(dir)?;
        paths.sort();
        Self::from_paths(paths, size, dtype, device)
    }

    /// The frames `paths`, in this order (a caller's natural or frame-number order), checked to
    /// share one size.
    pub fn from_paths(
        paths: Vec<PathBuf>,
        size: (usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if paths.is_empty() {
            return Err(EngineError::Input("the pose clip holds no frames".into()));
        }
        let mut first: Option<(u32, u32, &Path)> = None;
        for p in &paths {
            let dims = image::image_dimensions(p).map_err(|e| {
                EngineError::Input(format!("cannot read image {}: {e}", p.display()))
            })?;
            match first {
                None => first = Some((dims.0, dims.1, p)),
                Some((w, h, q)) if (w, h) != dims => {
                    return Err(EngineError::Input(format!(
                        "pose frames have mixed sizes: {} is {w}×{h} but {} is {}×{}",
                        q.display(),
                        p.display(),
                        dims.0,
                        dims.1
                    )))
                }
                _ => {}
            }
        }
        Ok(Self {
            paths,
            size,
            dtype,
            device: device.clone(),
            keys: Mutex::new(HashMap::new()),
        })
    }

    /// The frame files, in clip order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Frame `f` as 8-bit RGB at the working size.
    pub fn rgb8(&self, f: usize) -> Result<Vec<u8>> {
        let path = self.paths.get(f).ok_or_else(|| {
            EngineError::Input(format!(
                "frame {f} is outside the clip of {}",
                self.paths.len()
            ))
        })?;
        let (rgb, w, h) = read_rgb8(path)?;
        let (ow, oh) = self.size;
        Ok(if (w, h) == (ow, oh) {
            rgb
        } else {
            resize_rgb8(&rgb, w, h, ow, oh, Filter::Lanczos)
        })
    }
}

/// 8-bit RGB `(w × h × 3)` to a `[3, h, w]` tensor in [0, 1] (`/255`, no normalisation).
pub fn rgb8_to_tensor(
    rgb: &[u8],
    w: usize,
    h: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let data: Vec<f32> = rgb.iter().map(|&v| v as f32 / 255.0).collect();
    let t = Tensor::from_vec(data, (h, w, 3), &Device::Cpu)?.permute((2, 0, 1))?;
    Ok(t.to_dtype(dtype)?.to_device(device)?)
}

/// The frames at the working size: the job keys and uses them as they are.
impl super::job::ControlSource for PoseSequence {
    fn len(&self) -> usize {
        self.paths.len()
    }

    fn rgb8(&self, f: usize) -> Result<(Vec<u8>, usize, usize)> {
        let (w, h) = self.size;
        Ok((PoseSequence::rgb8(self, f)?, w, h))
    }
}

impl ControlFrames for PoseSequence {
    fn len(&self) -> usize {
        self.paths.len()
    }

    fn key(&self, f: usize) -> Result<Key> {
        if let Some(&k) = self.keys.lock().get(&f) {
            return Ok(k);
        }
        let (w, h) = self.size;
        let k = KeyHasher::tagged("pose")
            .u64(w as u64)
            .u64(h as u64)
            .bytes(&self.rgb8(f)?)
            .finish();
        self.keys.lock().insert(f, k);
        Ok(k)
    }

    fn frame(&self, f: usize) -> Result<Tensor> {
        let (w, h) = self.size;
        rgb8_to_tensor(&self.rgb8(f)?, w, h, self.dtype, &self.device)
    }
}

/// The body networks of one appearance: ControlNet3D + UNet3D with CFG, and the VAE.
pub struct BodyNetworks<'m> {
    model: &'m BodyModel,
    cond: Tensor,
    uncond: Tensor,
    residuals: ControlResiduals,
    identity: Key,
}

impl<'m> BodyNetworks<'m> {
    /// `appearance` is `(1, N, D)`; `model_key` identifies the weights (e.g. a hash of the files);
    /// `residuals` says how the ControlNet's residuals enter the UNet (the original inference
    /// code's in-place addition, or diffusers').
    pub fn new(
        model: &'m BodyModel,
        appearance: &Tensor,
        model_key: Key,
        residuals: ControlResiduals,
    ) -> Result<Self> {
        let cond = appearance.to_dtype(model.dtype)?;
        let uncond = model.negative_embedding.to_dtype(model.dtype)?;
        if cond.dims() != uncond.dims() {
            return Err(EngineError::Input(format!(
                "appearance tokens {:?} and the negative embedding {:?} differ in shape",
                cond.dims(),
                uncond.dims()
            )));
        }
        let mut h = KeyHasher::tagged("body-networks");
        h.key(model_key);
        h.str(&format!(
            "{:?}/{:?}",
            model.precision,
            model.device.location()
        ));
        h.str(residuals.name());
        h.f32s(&cond.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
        Ok(Self {
            model,
            cond,
            uncond,
            residuals,
            identity: h.finish(),
        })
    }

    fn eps(
        &self,
        latents: &Tensor,
        t: f64,
        ctx: &Tensor,
        control: &ControlCondition,
        scale: f64,
    ) -> Result<Tensor> {
        let f = latents.dim(0)?;
        // The tokens are repeated per frame (`attention.py:98`).
        let ctx = ctx.repeat((f, 1, 1))?;
        let res: ControlNetOutput = self.model.controlnet.forward_condition(
            latents,
            t,
            &ctx,
            control,
            scale,
            Temporal::Window,
        )?;
        self.model.unet.forward_controlled(
            latents,
            t,
            &ctx,
            Some((&res, self.residuals)),
            Temporal::Window,
        )
    }
}

impl WindowNetworks for BodyNetworks<'_> {
    fn predict(
        &self,
        latents: &Tensor,
        timestep: usize,
        control: &Tensor,
        scale: f64,
    ) -> Result<(Tensor, Tensor)> {
        let t = timestep as f64;
        let _bf16 = self.model.precision_scope();
        // The CFG halves never mix in the reference: two window passes are exact. Both see the
        // same control frames, so they share one conditioning embedding.
        let control = self
            .model
            .controlnet
            .embed_condition(control, latents.dtype())?;
        let u = self.eps(latents, t, &self.uncond, &control, scale)?;
        let c = self.eps(latents, t, &self.cond, &control, scale)?;
        Ok((u, c))
    }

    fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        let x = {
            let _bf16 = self.model.precision_scope();
            self.model.vae.decode_scaled(&latent.unsqueeze(0)?)?
        };
        // `(x / 2 + 0.5).clamp(0, 1)` (body output).
        let x = (x.to_dtype(DType::F32)? / 2.0)?;
        Ok((x + 0.5)?.clamp(0f32, 1f32)?.squeeze(0)?)
    }

    fn identity(&self) -> Key {
        self.identity
    }
}

/// [`DdimScheduler`] as the temporal engine's step function.
pub struct DdimStep(pub DdimScheduler);

impl StepScheduler for DdimStep {
    fn timesteps(&self) -> Vec<usize> {
        self.0.timesteps().to_vec()
    }

    fn step(&self, eps: &Tensor, timestep: usize, sample: &Tensor) -> Result<Tensor> {
        Ok(self.0.step(eps, timestep, sample)?.prev_sample)
    }
}

/// `[3, H, W]` in [0, 1] to interleaved 8-bit RGB with the reference's *floor*.
pub fn image_to_rgb8(img: &Tensor) -> Result<(Vec<u8>, usize, usize)> {
    let (_, h, w) = img.dims3()?;
    let data = img
        .to_dtype(DType::F32)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok((
        data.iter()
            .map(|&v| (v.clamp(0.0, 1.0) * 255.0) as u8)
            .collect(),
        w,
        h,
    ))
}

/// A stable identity of a model folder: its configs' bytes and its weights' sizes and mtimes.
pub fn model_identity(model: &BodyModel) -> Result<Key> {
    folder_identity(&model.layout)
}

/// [`model_identity`] of a resolved layout, without loading any weights: cheap enough to run on
/// every render to detect an edited or replaced model folder.
pub fn folder_identity(layout: &ModelLayout) -> Result<Key> {
    let mut h = KeyHasher::tagged("model");
    for (name, dir) in &layout.components {
        h.str(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| EngineError::Io {
                path: dir.clone(),
                source: e,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files {
            let meta = std::fs::metadata(&f).map_err(|e| EngineError::Io {
                path: f.clone(),
                source: e,
            })?;
            h.str(&f.to_string_lossy()).u64(meta.len());
            if f.extension().is_some_and(|e| e == "json") {
                let bytes = std::fs::read(&f).map_err(|e| EngineError::Io {
                    path: f.clone(),
                    source: e,
                })?;
                h.bytes(&bytes);
            } else if let Ok(m) = meta.modified() {
                let d = m.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                h.u64(d.as_secs()).u64(d.subsec_nanos() as u64);
            }
        }
    }
    Ok(h.finish())
}

/// Builds the denoiser of one clip (a convenience used by the CLI and the effect).
#[allow(clippy::too_many_arguments)]
pub fn denoiser<'a>(
    nets: &'a BodyNetworks<'a>,
    scheduler: &'a DdimStep,
    poses: &'a PoseSequence,
    cache: &'a super::temporal::Cache,
    counters: &'a super::temporal::Counters,
    plan: super::temporal::WindowPlan,
    params: super::temporal::SamplingParams,
    noise: (Tensor, Key),
) -> Result<TemporalDenoiser<'a>> {
    let device = &nets.model.device;
    let noise_t = noise.0.to_dtype(nets.model.dtype)?.to_device(device)?;
    TemporalDenoiser::new(
        nets, scheduler, poses, cache, counters, plan, params, noise_t, noise.1,
    )
}
