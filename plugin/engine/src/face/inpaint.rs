//! The face inpainting diffusion: the fine-tuned SD-inpainting UNet with
//! 9 input channels `[x_t, mask, masked_latents]` and the head ControlNet on the 4-channel `x_t`
//! with the mesh crop as control.
//!
//! Named steps, as in the reference pipeline:
//! 1. [`prepare_mask_and_masked_image`]: image `/127.5 − 1`; mask `/255` binarised at 0.5 with
//!    **1 = keep**; `masked_image = image · (mask > 0.5)` (the inverted convention);
//! 2. [`downsample_mask`]: torch legacy `nearest` to the latent size (source index `⌊i·s⌋`, the
//!    top-left pixel of each block);
//! 3. masked latents: `0.18215 · (mean + exp(logvar / 2) · ε)`, a seeded posterior sample
//!    ([`PosteriorMode::Sample`], the reference) or the mean ([`PosteriorMode::Mean`]);
//! 4. the loop: CFG batch `[uncond, cond]`; the ControlNet sees `x_t` and the control image in
//!    [0, 1] in both halves; the UNet sees `cat[x_t, mask, masked_latents]`;
//!    `ε = ε_u + g·(ε_c − ε_u)`; one DDIM step;
//! 5. decode `x / 0.18215`, `(x / 2 + 0.5).clamp(0, 1)`, `round(x · 255)` (diffusers
//!    `numpy_to_pil`).
//!
//! Noise: the initial latents are one seeded draw ([`crate::temporal::noise`]) shared by
//! every frame, as the reference shares its one `randn`. The posterior ε is a second
//! seeded draw, also the same for every frame: the reference's depends on the frame's position in
//! its batch of 30, which would make a frame's pixels depend on how a clip is cut.
use candle_core::{DType, Device, Tensor};

use crate::model::DiffusionModel;
use crate::networks::unet::Temporal;
use crate::sampler::ddim::DdimScheduler;
use crate::temporal::noise::initial_noise;
use crate::{EngineError, Result};

use super::warp::resize_linear_u8;

/// Side of the head reference photo before CLIP preprocessing (`cv2.resize((256, 256))`).
pub const HEAD_REFERENCE_SIZE: usize = 256;

/// How the masked image's latents are taken from the VAE posterior.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PosteriorMode {
    /// `mean + std · ε` with a seeded ε (the reference, `latent_dist.sample(generator)`).
    #[default]
    Sample,
    /// The posterior mean (no sampling noise).
    Mean,
}

/// Settings of the inpainting pass; the defaults are the reference's.
#[derive(Debug, Clone, PartialEq)]
pub struct InpaintSettings {
    /// Working side in pixels (256); a multiple of the VAE's downsampling factor.
    pub size: usize,
    /// DDIM steps (20).
    pub steps: usize,
    /// Classifier-free guidance scale (3.5).
    pub guidance: f64,
    /// ControlNet conditioning scale (1.0).
    pub control_scale: f64,
    /// Seed of the initial latents shared by all frames (999, after `seed_everything(999)`; our
    /// generator is SplitMix64, not torch's).
    pub seed: u64,
    /// Seed of the posterior ε (0, after `torch.manual_seed(0)`).
    pub posterior_seed: u64,
    /// Posterior sample or mean.
    pub posterior: PosteriorMode,
}

impl Default for InpaintSettings {
    fn default() -> Self {
        Self {
            size: 256,
            steps: 20,
            guidance: 3.5,
            control_scale: 1.0,
            seed: 999,
            posterior_seed: 0,
            posterior: PosteriorMode::Sample,
        }
    }
}

/// Step 1: `(mask [1, 1, s, s] ∈ {0, 1}, masked_image [1, 3, s, s])` from 8-bit RGB `image` and
/// 8-bit `mask` (255 = keep), both `s × s`.
pub fn prepare_mask_and_masked_image(
    image: &[u8],
    mask: &[u8],
    size: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let n = size * size;
    if image.len() != 3 * n || mask.len() != n {
        return Err(EngineError::Input(format!(
            "inpainting inputs must be {size}×{size}: image has {} bytes (expected {}), mask {} \
             (expected {n})",
            image.len(),
            3 * n,
            mask.len()
        )));
    }
    // v / 255 ≥ 0.5 ⇔ v ≥ 128.
    let keep: Vec<f32> = mask
        .iter()
        .map(|&v| if v as f32 / 255.0 >= 0.5 { 1.0 } else { 0.0 })
        .collect();
    let img: Vec<f32> = image.iter().map(|&v| v as f32 / 127.5 - 1.0).collect();
    let img = Tensor::from_vec(img, (size, size, 3), &Device::Cpu)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?;
    let m = Tensor::from_vec(keep, (1, 1, size, size), &Device::Cpu)?;
    let masked = img.broadcast_mul(&m)?;
    Ok((m.to_device(device)?, masked.to_device(device)?))
}

/// Step 2: torch legacy `nearest` downsampling of `[1, 1, H, W]` to `[1, 1, h, w]`.
pub fn downsample_mask(mask: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, sh, sw) = mask.dims4()?;
    if sh == 0 || sw == 0 || h == 0 || w == 0 {
        return Err(EngineError::Input(format!(
            "cannot resize a {sh}×{sw} mask to {h}×{w}"
        )));
    }
    let idx = |n_out: usize, n_in: usize| -> Vec<u32> {
        let scale = n_in as f32 / n_out as f32;
        (0..n_out)
            .map(|i| ((i as f32 * scale).floor() as usize).min(n_in - 1) as u32)
            .collect()
    };
    let dev = mask.device();
    let rows = Tensor::new(idx(h, sh).as_slice(), dev)?;
    let cols = Tensor::new(idx(w, sw).as_slice(), dev)?;
    Ok(mask
        .contiguous()?
        .index_select(&rows, 2)?
        .contiguous()?
        .index_select(&cols, 3)?)
}

/// The face model folder's own head reference photo (what `anchor train --stage face` writes).
pub const HEAD_PHOTO: &str = "head.png";

/// Where the face pass's head reference photo comes from, in the one order every front end uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadPhoto {
    /// The photo the user gave (`--face-appearance`, the FaceAppearance clip).
    Given,
    /// The face model folder's [`HEAD_PHOTO`], at this path.
    FaceModel(std::path::PathBuf),
    /// The body's reference photo (`--appearance`, the Appearance clip, else the body model's
    /// default photo).
    Body,
}

/// The head reference photo's source: a `given` photo, else the face model folder's
/// [`HEAD_PHOTO`] when it exists, else the body's reference.
pub fn head_photo(given: bool, face_folder: &std::path::Path) -> HeadPhoto {
    let in_model = face_folder.join(HEAD_PHOTO);
    if given {
        HeadPhoto::Given
    } else if in_model.is_file() {
        HeadPhoto::FaceModel(in_model)
    } else {
        HeadPhoto::Body
    }
}

/// Appearance tokens of the head reference photo: `cv2.resize` to 256² (bilinear), then the CLIP
/// processor and vision tower (head reference).
pub fn encode_head_appearance(
    model: &DiffusionModel,
    rgb: &[u8],
    w: usize,
    h: usize,
) -> Result<Tensor> {
    let s = HEAD_REFERENCE_SIZE;
    let small = resize_linear_u8(rgb, w, h, 3, s, s);
    Ok(model
        .image_encoder
        .encode_image(&small, s, s)?
        .to_dtype(model.dtype)?)
}

/// Checks that `model` is a face-inpainting model: its UNet takes `2·latent + 1` channels.
pub fn check_head_model(model: &DiffusionModel) -> Result<()> {
    let latent = model.vae.config().latent_channels;
    let unet_in = model.unet.architecture().in_channels();
    if unet_in != 2 * latent + 1 {
        return Err(EngineError::config(
            model.layout.component("unet")?.join("config.json"),
            format!(
                "the face model's UNet takes in_channels = {unet_in}; face inpainting needs \
                 {} ([latent, mask, masked latent]): use the head/unet of a \
                 Make-Your-Anchor checkpoint or an SD-inpainting UNet",
                2 * latent + 1
            ),
        ));
    }
    Ok(())
}

/// The prepared per-frame conditioning of the UNet.
#[derive(Debug, Clone)]
pub struct MaskedConditioning {
    /// `[1, 1, h, w]` latent-size mask (1 = keep).
    pub mask: Tensor,
    /// `[1, latent, h, w]` scaled masked-image latents.
    pub masked_latents: Tensor,
}

/// The head networks with one appearance, ready to inpaint crops.
pub struct HeadInpainter<'m> {
    model: &'m DiffusionModel,
    cond: Tensor,
    uncond: Tensor,
    scheduler: DdimScheduler,
    settings: InpaintSettings,
    noise: Tensor,
    posterior_eps: Tensor,
}

impl<'m> HeadInpainter<'m> {
    /// `appearance` is `(1, N, D)` (see [`encode_head_appearance`]).
    pub fn new(
        model: &'m DiffusionModel,
        appearance: &Tensor,
        settings: InpaintSettings,
    ) -> Result<Self> {
        check_head_model(model)?;
        let f = model.vae.config().downsample_factor();
        if settings.size == 0 || !settings.size.is_multiple_of(f) {
            return Err(EngineError::Input(format!(
                "face inpainting size {} must be a positive multiple of {f}",
                settings.size
            )));
        }
        if !settings.guidance.is_finite() || !settings.control_scale.is_finite() {
            return Err(EngineError::Input(
                "face guidance and control scale must be finite".into(),
            ));
        }
        let latent = model.vae.config().latent_channels;
        let ls = settings.size / f;
        let noise = initial_noise(settings.seed, latent, ls, ls)?.unsqueeze(0)?;
        let eps = initial_noise(settings.posterior_seed, latent, ls, ls)?.unsqueeze(0)?;
        let scheduler = DdimScheduler::new(model.configs.scheduler.clone(), settings.steps)?;
        let cond = appearance.to_dtype(model.dtype)?.to_device(&model.device)?;
        let uncond = model.negative_embedding.to_dtype(model.dtype)?;
        if cond.dims() != uncond.dims() {
            return Err(EngineError::Input(format!(
                "head appearance tokens {:?} and the negative embedding {:?} differ in shape",
                cond.dims(),
                uncond.dims()
            )));
        }
        Ok(Self {
            model,
            cond,
            uncond,
            scheduler,
            settings,
            noise,
            posterior_eps: eps,
        })
    }

    /// Replaces the negative embedding (parity tests inject the reference's).
    pub fn with_uncond(mut self, uncond: &Tensor) -> Result<Self> {
        if uncond.dims() != self.cond.dims() {
            return Err(EngineError::Input(format!(
                "negative tokens {:?} differ from the appearance tokens {:?}",
                uncond.dims(),
                self.cond.dims()
            )));
        }
        self.uncond = uncond
            .to_dtype(self.model.dtype)?
            .to_device(&self.model.device)?;
        Ok(self)
    }

    /// Replaces the seeded initial latents and posterior ε (`[1, latent, h, w]` each), e.g. with
    /// tensors dumped from the reference for parity.
    pub fn with_noise(mut self, noise: &Tensor, posterior_eps: &Tensor) -> Result<Self> {
        if noise.dims() != self.noise.dims() || posterior_eps.dims() != self.noise.dims() {
            return Err(EngineError::Input(format!(
                "face noise {:?} / posterior ε {:?}: expected {:?}",
                noise.dims(),
                posterior_eps.dims(),
                self.noise.dims()
            )));
        }
        self.noise = noise.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        self.posterior_eps = posterior_eps
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        Ok(self)
    }

    /// The settings.
    pub fn settings(&self) -> &InpaintSettings {
        &self.settings
    }

    /// The head model.
    pub fn model(&self) -> &'m DiffusionModel {
        self.model
    }

    /// The CFG tokens `(uncond, cond)`, each `(1, N, D)`.
    pub fn tokens(&self) -> (&Tensor, &Tensor) {
        (&self.uncond, &self.cond)
    }

    /// The sampler.
    pub fn scheduler(&self) -> &DdimScheduler {
        &self.scheduler
    }

    /// The initial latents `[1, latent, h, w]` (f32, CPU) shared by all frames.
    pub fn initial_latents(&self) -> &Tensor {
        &self.noise
    }

    /// Steps 1–3 for one crop: `image` RGB and `mask` (255 = keep), both `size × size`.
    pub fn prepare(&self, image: &[u8], mask: &[u8]) -> Result<MaskedConditioning> {
        let m = self.model;
        let s = self.settings.size;
        let (mask_t, masked) = prepare_mask_and_masked_image(image, mask, s, &m.device)?;
        let _bf16 = m.precision_scope();
        let f = m.vae.config().downsample_factor();
        let small = downsample_mask(&mask_t, s / f, s / f)?.to_dtype(m.dtype)?;
        let post = m.vae.encode(&masked.to_dtype(m.dtype)?)?;
        let z = match self.settings.posterior {
            PosteriorMode::Mean => post.mean.clone(),
            PosteriorMode::Sample => post.sample(&self.posterior_eps.to_device(&m.device)?)?,
        };
        Ok(MaskedConditioning {
            mask: small,
            masked_latents: m.vae.scale_latents(&z)?,
        })
    }

    /// Step 4: the DDIM loop; `control` is the mesh crop, RGB `size × size`. Returns the final
    /// latents `[1, latent, h, w]`.
    pub fn denoise(&self, cond: &MaskedConditioning, control: &[u8]) -> Result<Tensor> {
        let m = self.model;
        let s = self.settings.size;
        if control.len() != 3 * s * s {
            return Err(EngineError::Input(format!(
                "face control crop has {} bytes; expected {s}×{s} RGB",
                control.len()
            )));
        }
        let ctrl: Vec<f32> = control.iter().map(|&v| v as f32 / 255.0).collect();
        let ctrl = Tensor::from_vec(ctrl, (s, s, 3), &Device::Cpu)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .to_dtype(m.dtype)?
            .to_device(&m.device)?;
        let ctrl2 = Tensor::cat(&[&ctrl, &ctrl], 0)?;
        let ctx = Tensor::cat(&[&self.uncond, &self.cond], 0)?;
        let mask2 = Tensor::cat(&[&cond.mask, &cond.mask], 0)?;
        let ml2 = Tensor::cat(&[&cond.masked_latents, &cond.masked_latents], 0)?;
        let g = self.settings.guidance;
        let mut x = self.noise.to_dtype(m.dtype)?.to_device(&m.device)?;
        let _bf16 = m.precision_scope();
        // The control crop is the same at every step: its conditioning embedding is made once.
        let ctrl2 = m.controlnet.embed_condition(&ctrl2, m.dtype)?;
        for &t in self.scheduler.timesteps() {
            let x2 = Tensor::cat(&[&x, &x], 0)?;
            let res = m.controlnet.forward_condition(
                &x2,
                t as f64,
                &ctx,
                &ctrl2,
                self.settings.control_scale,
                Temporal::PerFrame,
            )?;
            let unet_in = Tensor::cat(&[&x2, &mask2, &ml2], 1)?;
            let eps = m
                .unet
                .forward(&unet_in, t as f64, &ctx, Some(&res), Temporal::PerFrame)?;
            let u = eps.narrow(0, 0, 1)?;
            let c = eps.narrow(0, 1, 1)?;
            let guided = (&u + ((c - &u)? * g)?)?;
            x = self.scheduler.step(&guided, t, &x)?.prev_sample;
        }
        Ok(x)
    }

    /// Step 5: latents to 8-bit RGB `size × size`, rounded as diffusers' `numpy_to_pil`.
    pub fn decode(&self, latents: &Tensor) -> Result<Vec<u8>> {
        let x = {
            let _bf16 = self.model.precision_scope();
            self.model.vae.decode_scaled(latents)?
        };
        let x = ((x.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
        let data = x
            .squeeze(0)?
            .permute((1, 2, 0))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(data
            .iter()
            .map(|&v| (v * 255.0).round_ties_even().clamp(0.0, 255.0) as u8)
            .collect())
    }

    /// Steps 1–5 for one crop.
    pub fn inpaint(&self, image: &[u8], mask: &[u8], control: &[u8]) -> Result<Vec<u8>> {
        let c = self.prepare(image, mask)?;
        let x = self.denoise(&c, control)?;
        self.decode(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_takes_the_top_left_of_each_block() -> Result<()> {
        let data: Vec<f32> = (0..64).map(|v| v as f32).collect();
        let t = Tensor::from_vec(data, (1, 1, 8, 8), &Device::Cpu)?;
        let d = downsample_mask(&t, 2, 2)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(d, vec![0.0, 4.0, 32.0, 36.0]);
        Ok(())
    }

    #[test]
    fn masked_image_uses_the_inverted_convention() -> Result<()> {
        let image = [255u8; 2 * 2 * 3];
        let mask = [255u8, 128, 127, 0];
        let (m, masked) = prepare_mask_and_masked_image(&image, &mask, 2, &Device::Cpu)?;
        assert_eq!(m.flatten_all()?.to_vec1::<f32>()?, vec![1.0, 1.0, 0.0, 0.0]);
        let r = masked.narrow(1, 0, 1)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(r, vec![1.0, 1.0, 0.0, 0.0]);
        Ok(())
    }
}
