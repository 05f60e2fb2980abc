//! A Make-Your-Anchor model folder: resolving its components, loading the body model, and `inspect`.
//!
//! # Layout
//!
//! A model folder holds diffusers/transformers component folders:
//!
//! | component       | files                                                                  |
//! |-----------------|------------------------------------------------------------------------|
//! | `unet/`         | `config.json` + `diffusion_pytorch_model.{safetensors,bin}`            |
//! | `controlnet/`   | `config.json` + `diffusion_pytorch_model.{safetensors,bin}`            |
//! | `vae/`          | `config.json` + `diffusion_pytorch_model.{safetensors,bin}`            |
//! | `scheduler/`    | `scheduler_config.json`                                                |
//! | `text_encoder/` | `config.json` + `model.safetensors` or `pytorch_model.bin`             |
//! | `image_encoder/`| `config.json` + `model.safetensors`/`pytorch_model.bin` + `preprocessor_config.json` |
//!
//! Released checkpoints have `body/{unet,controlnet}` and `head/{unet,controlnet}`. For the body
//! model ([`ModelPart::Body`], the default), when `body/` exists each component is looked up in
//! `body/` first, then in the model folder. For the face model ([`ModelPart::Head`]) the UNet (9
//! input channels) and ControlNet come from `head/` only; the shared components (VAE, scheduler,
//! text and image encoders) are looked up in `head/`, then in the model folder.
//!
//! # `anchor.json`
//!
//! Optional, in the model folder. It maps any component to another folder (relative to the model
//! folder, or absolute), e.g. to reuse the SD1.5 VAE, text encoder and scheduler from elsewhere, and
//! gives default sampling settings. Every key is optional; unknown keys are an error (typos).
//! `components` keys are the component names above, plus `head_unet` and `head_controlnet` for the
//! face model's networks.
//!
//! ```json
//! {
//!   "components": {
//!     "vae": "../stable-diffusion-v1-5/vae",
//!     "text_encoder": "../stable-diffusion-v1-5/text_encoder",
//!     "scheduler": "../stable-diffusion-v1-5/scheduler",
//!     "image_encoder": "/models/clip-vit-base-patch32"
//!   },
//!   "defaults": {
//!     "steps": 20, "guidance_scale": 7.5, "control_scale": 2.0,
//!     "window": 16, "overlap": 4, "width": 512, "height": 512, "seed": 42,
//!     "control_residuals": "original"
//!   }
//! }
//! ```
//!
//! The defaults are the reference's body settings.
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::device::device_name;
use super::error::{EngineError, Result};
use super::networks::clip::{
    check_appearance_width, ClipTextConfig, ClipTextEncoder, ClipVisionConfig, ClipVisionEncoder,
};
use super::networks::controlnet::{ControlNetConfig, ControlNetModel};
use super::networks::unet::{ControlResiduals, UNet2DConditionConfig, UNet2DConditionModel};
use super::networks::vae::{AutoencoderKl, AutoencoderKlConfig};
use super::sampler::ddim::DdimConfig;
use super::weights::{self, LoadReport, StrictWeights};

/// The component names of a model folder, in load order.
pub const COMPONENTS: [&str; 6] = [
    "unet",
    "controlnet",
    "vae",
    "scheduler",
    "text_encoder",
    "image_encoder",
];

/// Extra `anchor.json` component keys for the head (face) networks.
pub const HEAD_COMPONENT_KEYS: [&str; 2] = ["head_unet", "head_controlnet"];

/// Which diffusion model of a folder to resolve: the body pass or the face (head) pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelPart {
    /// The body model: `body/{unet,controlnet}` (or `unet/`, `controlnet/` at the top).
    #[default]
    Body,
    /// The face-inpainting model: `head/{unet,controlnet}` (9-channel UNet).
    Head,
}

impl ModelPart {
    /// The released checkpoints' subfolder name.
    pub fn subfolder(self) -> &'static str {
        match self {
            Self::Body => "body",
            Self::Head => "head",
        }
    }

    /// The `anchor.json` key that maps `component` for this part.
    pub fn anchor_key(self, component: &str) -> String {
        match (self, component) {
            (Self::Head, "unet" | "controlnet") => format!("head_{component}"),
            _ => component.to_string(),
        }
    }

    /// Latent channels the UNet of this part takes, given the VAE's latent channels: the head's
    /// inpainting UNet takes [latent, mask, masked latent].
    pub fn unet_in_channels(self, latent: usize) -> usize {
        match self {
            Self::Body => latent,
            Self::Head => 2 * latent + 1,
        }
    }
}

/// Default sampling settings (`anchor.json` → `defaults`); absent keys take the reference values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingDefaults {
    /// DDIM steps (20).
    pub steps: usize,
    /// Classifier-free guidance scale (7.5).
    pub guidance_scale: f64,
    /// ControlNet conditioning scale (2.0).
    pub control_scale: f64,
    /// Frames per window (16).
    pub window: usize,
    /// Frames shared by consecutive windows (4).
    pub overlap: usize,
    /// Output width in pixels (512).
    pub width: usize,
    /// Output height in pixels (512).
    pub height: usize,
    /// Seed of the initial noise (42).
    pub seed: u64,
    /// How the ControlNet residuals enter the body UNet: `original` (the original inference
    /// code's in-place addition, whose last down residual also reaches the mid block) or
    /// `standard` (diffusers, as the model was trained).
    pub control_residuals: ControlResiduals,
}

impl Default for SamplingDefaults {
    fn default() -> Self {
        Self {
            steps: 20,
            guidance_scale: 7.5,
            control_scale: 2.0,
            window: 16,
            overlap: 4,
            width: 512,
            height: 512,
            seed: 42,
            control_residuals: ControlResiduals::Original,
        }
    }
}

impl SamplingDefaults {
    /// Checks the values; the message quotes them.
    pub fn validate(&self) -> std::result::Result<(), String> {
        check_steps_and_scales(self.steps, self.guidance_scale, self.control_scale)?;
        if self.window == 0 || self.overlap >= self.window {
            return Err(format!(
                "window = {}, overlap = {} (expected window ≥ 1 and overlap < window)",
                self.window, self.overlap
            ));
        }
        if self.width == 0
            || self.height == 0
            || !self.width.is_multiple_of(8)
            || !self.height.is_multiple_of(8)
        {
            return Err(format!(
                "resolution {}×{} (expected positive multiples of 8)",
                self.width, self.height
            ));
        }
        Ok(())
    }
}

/// Default face-pass settings (`anchor.json` → `face_defaults`); absent keys take the
/// reference values. A small head model trained on small crops records its own here.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaceDefaults {
    /// Aligned crop side in pixels (512).
    pub crop: usize,
    /// Inpainting side in pixels (256).
    pub size: usize,
    /// DDIM steps (20).
    pub steps: usize,
    /// Classifier-free guidance scale (3.5).
    pub guidance_scale: f64,
    /// ControlNet conditioning scale (1.0).
    pub control_scale: f64,
    /// Seed of the face's initial noise (999).
    pub seed: u64,
    /// Paste-back mask erosion box side in frame pixels (40).
    pub erode: usize,
    /// Paste-back mask Gaussian kernel side in frame pixels, odd (41).
    pub blur: usize,
    /// JPEG round trip of the mesh crop before the head ControlNet, as the reference's
    /// `aligned/*.jpg` (true).
    pub mesh_jpeg: bool,
}

impl Default for FaceDefaults {
    fn default() -> Self {
        Self {
            crop: 512,
            size: 256,
            steps: 20,
            guidance_scale: 3.5,
            control_scale: 1.0,
            seed: 999,
            erode: 40,
            blur: 41,
            mesh_jpeg: true,
        }
    }
}

impl FaceDefaults {
    /// Checks the values; the message quotes them.
    pub fn validate(&self) -> std::result::Result<(), String> {
        check_steps_and_scales(self.steps, self.guidance_scale, self.control_scale)?;
        if self.crop == 0 || self.size == 0 || !self.size.is_multiple_of(8) {
            return Err(format!(
                "crop = {}, size = {} (expected a positive crop and a positive multiple of 8)",
                self.crop, self.size
            ));
        }
        if self.blur.is_multiple_of(2) {
            return Err(format!(
                "blur = {} (expected an odd kernel side)",
                self.blur
            ));
        }
        Ok(())
    }
}

/// The checks `defaults` and `face_defaults` share: 1..=1000 steps and finite scales.
fn check_steps_and_scales(
    steps: usize,
    guidance: f64,
    control: f64,
) -> std::result::Result<(), String> {
    if steps == 0 || steps > 1000 {
        return Err(format!("steps = {steps} (expected 1..=1000)"));
    }
    if !guidance.is_finite() || !control.is_finite() {
        return Err("guidance_scale and control_scale must be finite numbers".into());
    }
    Ok(())
}

/// `anchor.json`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnchorJson {
    /// Component name → folder (relative to the model folder, or absolute).
    pub components: BTreeMap<String, PathBuf>,
    /// Default sampling settings.
    pub defaults: SamplingDefaults,
    /// Default face-pass settings.
    pub face_defaults: FaceDefaults,
}

impl AnchorJson {
    /// Reads and checks `anchor.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let a: Self = weights::read_json(path)?;
        let known = |k: &str| COMPONENTS.contains(&k) || HEAD_COMPONENT_KEYS.contains(&k);
        if let Some(k) = a.components.keys().find(|k| !known(k)) {
            return Err(EngineError::config(
                path,
                format!(
                    "\"components\" names \"{k}\", which is not a component; expected one of \
                     {}, {}",
                    COMPONENTS.join(", "),
                    HEAD_COMPONENT_KEYS.join(", ")
                ),
            ));
        }
        a.defaults
            .validate()
            .map_err(|m| EngineError::config(path, format!("\"defaults\": {m}")))?;
        a.face_defaults
            .validate()
            .map_err(|m| EngineError::config(path, format!("\"face_defaults\": {m}")))?;
        Ok(a)
    }
}

/// Where each component of a model folder lives.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelLayout {
    /// The model folder.
    pub root: PathBuf,
    /// Which model was resolved.
    pub part: ModelPart,
    /// `root/body` (or `root/head` for the head) when present (released checkpoints).
    pub body: Option<PathBuf>,
    /// `root/anchor.json` when present.
    pub anchor_json: Option<PathBuf>,
    /// Component name → resolved folder (it may not exist; loading says so).
    pub components: BTreeMap<String, PathBuf>,
    /// Components mapped by `anchor.json`.
    pub mapped: Vec<String>,
    /// Default sampling settings.
    pub defaults: SamplingDefaults,
    /// Default face-pass settings.
    pub face_defaults: FaceDefaults,
}

impl ModelLayout {
    /// Resolves the body model's components of `folder` (see the module docs for the rules).
    pub fn resolve(folder: &Path) -> Result<Self> {
        Self::resolve_part(folder, ModelPart::Body)
    }

    /// Resolves the components of `part` in `folder`.
    ///
    /// Head: `head/{unet,controlnet}` (or `anchor.json` keys `head_unet`/`head_controlnet`), never
    /// the top-level `unet/` (that is a body UNet); the shared components as for the body.
    pub fn resolve_part(folder: &Path, part: ModelPart) -> Result<Self> {
        if !folder.is_dir() {
            return Err(EngineError::missing(
                folder,
                "the model folder is absent; choose a folder holding unet/, controlnet/, vae/, \
                 scheduler/, text_encoder/ and image_encoder/ (or body/ and an anchor.json)",
            ));
        }
        let root = folder.to_path_buf();
        let anchor_path = root.join("anchor.json");
        let anchor = if anchor_path.is_file() {
            Some(AnchorJson::from_file(&anchor_path)?)
        } else {
            None
        };
        let part_dir = root.join(part.subfolder());
        let body = Some(part_dir).filter(|b| b.is_dir());
        let mut components = BTreeMap::new();
        let mut mapped = Vec::new();
        for name in COMPONENTS {
            let key = part.anchor_key(name);
            let from_anchor = anchor.as_ref().and_then(|a| a.components.get(&key));
            let dir = if let Some(p) = from_anchor {
                let p = if p.is_absolute() {
                    p.clone()
                } else {
                    root.join(p)
                };
                if !p.is_dir() {
                    return Err(EngineError::missing(
                        &p,
                        format!("{} maps {key} to this folder", anchor_path.display()),
                    ));
                }
                mapped.push(name.to_string());
                p
            } else {
                let own = part == ModelPart::Head && (name == "unet" || name == "controlnet");
                match &body {
                    Some(b) if own || b.join(name).is_dir() => b.join(name),
                    _ if own => root.join(part.subfolder()).join(name),
                    _ => root.join(name),
                }
            };
            components.insert(name.to_string(), dir);
        }
        Ok(Self {
            root,
            part,
            body,
            anchor_json: anchor.as_ref().map(|_| anchor_path),
            components,
            mapped,
            defaults: anchor
                .as_ref()
                .map(|a| a.defaults.clone())
                .unwrap_or_default(),
            face_defaults: anchor.map(|a| a.face_defaults).unwrap_or_default(),
        })
    }

    /// The folder of `component` (one of [`COMPONENTS`]).
    pub fn component(&self, component: &str) -> Result<&Path> {
        self.components
            .get(component)
            .map(PathBuf::as_path)
            .ok_or_else(|| EngineError::Input(format!("unknown component {component}")))
    }

    /// The folder of `component`, which must exist and hold `file`.
    fn require(&self, component: &str, file: &str) -> Result<PathBuf> {
        let dir = self.component(component)?;
        if !dir.is_dir() {
            return Err(EngineError::missing(
                dir,
                format!(
                    "Model folder {} has no {}/ folder; add it or map it in anchor.json",
                    self.root.display(),
                    dir.strip_prefix(&self.root).unwrap_or(dir).display()
                ),
            ));
        }
        let f = dir.join(file);
        if !f.is_file() {
            let rel = f
                .strip_prefix(&self.root)
                .unwrap_or(&f)
                .display()
                .to_string();
            return Err(EngineError::missing(
                &f,
                format!("Model folder {} has no {rel}", self.root.display()),
            ));
        }
        Ok(dir.to_path_buf())
    }
}

/// The configs of a body model, read and cross-checked before any weight is loaded.
#[derive(Debug, Clone)]
pub struct BodyConfigs {
    /// The UNet's.
    pub unet: UNet2DConditionConfig,
    /// The ControlNet's.
    pub controlnet: ControlNetConfig,
    /// The VAE's.
    pub vae: AutoencoderKlConfig,
    /// The sampler's.
    pub scheduler: DdimConfig,
    /// The text tower's.
    pub text_encoder: ClipTextConfig,
    /// The vision tower's.
    pub image_encoder: ClipVisionConfig,
}

impl BodyConfigs {
    /// Reads every config of `layout` and checks that the widths agree.
    pub fn read(layout: &ModelLayout) -> Result<Self> {
        let unet_dir = layout.require("unet", "config.json")?;
        let unet = UNet2DConditionConfig::from_file(unet_dir.join("config.json"))?;
        let unet_arch = unet.validate()?;
        let cn_dir = layout.require("controlnet", "config.json")?;
        let controlnet = ControlNetConfig::from_file(cn_dir.join("config.json"))?;
        let cn_arch = controlnet.validate()?;
        let vae = AutoencoderKlConfig::from_dir(&layout.require("vae", "config.json")?)?;
        let scheduler = DdimConfig::from_file(
            &layout
                .require("scheduler", "scheduler_config.json")?
                .join("scheduler_config.json"),
        )?;
        let text_encoder =
            ClipTextConfig::from_dir(&layout.require("text_encoder", "config.json")?)?;
        let ie_dir = layout.require("image_encoder", "config.json")?;
        layout.require("image_encoder", "preprocessor_config.json")?;
        let image_encoder = ClipVisionConfig::from_dir(&ie_dir)?;

        let what = format!("model folder {}", layout.root.display());
        let width = image_encoder.hidden_size;
        check_appearance_width(&what, width, "unet", unet_arch.cross_attention_dim())?;
        check_appearance_width(&what, width, "controlnet", cn_arch.cross_attention_dim())?;
        // The CFG negative replaces the appearance tokens, so it must be as wide.
        check_appearance_width(&what, width, "text_encoder", text_encoder.hidden_size)?;
        if image_encoder.num_tokens() > text_encoder.max_position_embeddings {
            return Err(EngineError::config(
                ie_dir.join("config.json"),
                format!(
                    "the image encoder makes {} tokens but the text encoder holds only {} \
                     positions for the negative embedding",
                    image_encoder.num_tokens(),
                    text_encoder.max_position_embeddings
                ),
            ));
        }
        let latent = vae.latent_channels;
        let want_in = layout.part.unet_in_channels(latent);
        if unet_arch.in_channels() != want_in || unet_arch.out_channels() != latent {
            return Err(EngineError::config(
                unet_dir.join("config.json"),
                format!(
                    "the {} UNet takes {} and returns {} channels; with the VAE's \
                     latent_channels = {latent} it must take {want_in} and return {latent} \
                     (the 9-channel inpainting UNet belongs to head/, the 4-channel one to body/)",
                    layout.part.subfolder(),
                    unet_arch.in_channels(),
                    unet_arch.out_channels()
                ),
            ));
        }
        if controlnet.in_channels != latent {
            return Err(EngineError::config(
                cn_dir.join("config.json"),
                format!(
                    "the ControlNet takes in_channels = {} but the VAE has latent_channels = \
                     {latent}; the ControlNet gets the plain latents in both passes",
                    controlnet.in_channels
                ),
            ));
        }
        Ok(Self {
            unet,
            controlnet,
            vae,
            scheduler,
            text_encoder,
            image_encoder,
        })
    }
}

/// A loaded diffusion model: the body pass's, or the face (head) pass's, with every
/// network on one device.
#[derive(Debug, Clone)]
pub struct DiffusionModel {
    /// Where the components came from.
    pub layout: ModelLayout,
    /// The configs.
    pub configs: BodyConfigs,
    /// The UNet (3D-inflatable for the body; the 9-channel inpainting UNet for the head), in the
    /// run dtype.
    pub unet: UNet2DConditionModel,
    /// The ControlNet, in the run dtype.
    pub controlnet: ControlNetModel,
    /// The VAE, in the run dtype.
    pub vae: AutoencoderKl,
    /// The appearance encoder, in f32 as the reference runs it.
    pub image_encoder: ClipVisionEncoder,
    /// The CFG negative `(1, tokens, width)` in the run dtype, computed once from the text tower
    /// (which is then dropped: it has no other use).
    pub negative_embedding: Tensor,
    /// The dtype of the networks' tensors: the run dtype, except f32 for bf16 on the CPU
    /// ([`crate::device::tensor_dtype`]).
    pub dtype: DType,
    /// The run dtype asked for (`f32`, `f16`, `bf16`): what keys cached results.
    pub precision: DType,
    /// The device.
    pub device: Device,
    /// What each strict load found, per component.
    pub reports: Vec<(String, LoadReport)>,
}

/// The body model (the name the pipeline uses).
pub type BodyModel = DiffusionModel;

impl DiffusionModel {
    /// Loads the body model of `folder` (see the module docs) for `dtype` on `device`.
    pub fn load(folder: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_part(folder, ModelPart::Body, dtype, device)
    }

    /// Loads `part` of `folder` for `dtype` on `device`. The head pass runs in f32 in the
    /// reference.
    pub fn load_part(
        folder: &Path,
        part: ModelPart,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        super::device::check_dtype(device, dtype)?;
        let precision = dtype;
        let dtype = super::device::tensor_dtype(device, precision);
        let layout = ModelLayout::resolve_part(folder, part)?;
        let configs = BodyConfigs::read(&layout)?;
        let mut reports = Vec::new();

        let w = StrictWeights::open_dir(layout.component("unet")?)?;
        let (unet, r) = w.build(dtype, device, &[], |vb| {
            UNet2DConditionModel::new(vb, &configs.unet)
        })?;
        reports.push(("unet".to_string(), r));
        drop(w);

        let w = StrictWeights::open_dir(layout.component("controlnet")?)?;
        let (controlnet, r) = w.build(dtype, device, &[], |vb| {
            ControlNetModel::new(vb, &configs.controlnet)
        })?;
        reports.push(("controlnet".to_string(), r));
        drop(w);

        let (vae, r) = AutoencoderKl::load(layout.component("vae")?, dtype, device)?;
        reports.push(("vae".to_string(), r));

        let (image_encoder, r) =
            ClipVisionEncoder::load(layout.component("image_encoder")?, DType::F32, device)?;
        reports.push(("image_encoder".to_string(), r));

        // The reference computes the negative in the body's dtype (fp16).
        let (text, r) = ClipTextEncoder::load(layout.component("text_encoder")?, dtype, device)?;
        reports.push(("text_encoder".to_string(), r));
        let negative_embedding =
            text.empty_prompt_embedding(image_encoder.config().num_tokens())?;
        drop(text);

        log::info!(
            "loaded {} model {} ({} on {})",
            layout.part.subfolder(),
            layout.root.display(),
            super::device::precision_name(device, precision),
            device_name(device)
        );
        Ok(Self {
            layout,
            configs,
            unet,
            controlnet,
            vae,
            image_encoder,
            negative_embedding,
            dtype,
            precision,
            device: device.clone(),
            reports,
        })
    }

    /// Turns the calling thread's CPU bf16 matrix products on for a bf16 run on the CPU (off
    /// otherwise) until the guard drops; every network call of the model runs inside one.
    pub fn precision_scope(&self) -> crate::networks::gemm_bf16::Scope {
        crate::networks::gemm_bf16::scope(self.precision == DType::BF16 && self.device.is_cpu())
    }

    /// The sampling defaults of this model (`anchor.json`, or the reference's).
    pub fn defaults(&self) -> &SamplingDefaults {
        &self.layout.defaults
    }
}

// ------------------------------------------------------------------------------------------------
// Inspection.

/// What `inspect` found about one component.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComponentInfo {
    /// Component name.
    pub name: String,
    /// Resolved folder.
    pub folder: PathBuf,
    /// Whether `anchor.json` mapped it.
    pub mapped: bool,
    /// The class named by its config (`_class_name`, `architectures`/`model_type`).
    pub class: Option<String>,
    /// The weights file.
    pub weights: Option<PathBuf>,
    /// On-disk dtypes of the tensors.
    pub dtypes: Vec<String>,
    /// Number of tensors in the file.
    pub tensors: usize,
    /// Number of scalar parameters in the file.
    pub parameters: usize,
    /// True when the weights were checked against the config (keys and shapes) and matched.
    pub keys_checked: bool,
    /// Problems found, as sentences.
    pub problems: Vec<String>,
}

/// What `inspect` found about a model folder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInspection {
    /// The resolved layout.
    pub layout: ModelLayout,
    /// One entry per component, in [`COMPONENTS`] order.
    pub components: Vec<ComponentInfo>,
    /// Problems across components (width mismatches, …).
    pub problems: Vec<String>,
}

impl ModelInspection {
    /// True when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.components.iter().all(|c| c.problems.is_empty())
    }
}

impl fmt::Display for ModelInspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.layout;
        writeln!(f, "model folder: {}", l.root.display())?;
        writeln!(f, "model part:   {}", l.part.subfolder())?;
        if let Some(b) = &l.body {
            writeln!(f, "{} folder:  {}", l.part.subfolder(), b.display())?;
        }
        if let Some(a) = &l.anchor_json {
            writeln!(f, "anchor.json:  {}", a.display())?;
        }
        let d = &l.defaults;
        writeln!(
            f,
            "defaults:     steps {}, guidance {}, control scale {}, window {}/{} overlap, {}×{}, seed {}, control residuals {}",
            d.steps, d.guidance_scale, d.control_scale, d.window, d.overlap, d.width, d.height, d.seed,
            d.control_residuals
        )?;
        let fd = &l.face_defaults;
        writeln!(
            f,
            "face pass:    crop {}, size {}, steps {}, guidance {}, control scale {}, seed {}, erode {}, blur {}",
            fd.crop, fd.size, fd.steps, fd.guidance_scale, fd.control_scale, fd.seed, fd.erode, fd.blur
        )?;
        for c in &self.components {
            writeln!(
                f,
                "{:<14} {}{}",
                c.name,
                c.folder.display(),
                if c.mapped { "  (anchor.json)" } else { "" }
            )?;
            if let Some(class) = &c.class {
                writeln!(f, "               class {class}")?;
            }
            if let Some(w) = &c.weights {
                writeln!(
                    f,
                    "               {} · {} tensors · {} parameters · {} · keys {}",
                    w.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    c.tensors,
                    c.parameters,
                    c.dtypes.join("/"),
                    if c.keys_checked {
                        "match the config"
                    } else {
                        "not checked"
                    }
                )?;
            }
            for p in &c.problems {
                writeln!(f, "               PROBLEM: {p}")?;
            }
        }
        for p in &self.problems {
            writeln!(f, "PROBLEM: {p}")?;
        }
        if self.is_ok() {
            writeln!(f, "no problems found")?;
        }
        Ok(())
    }
}

fn config_class(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    if let Some(s) = json.get("_class_name").and_then(|v| v.as_str()) {
        return Some(s.to_string());
    }
    if let Some(s) = json
        .get("architectures")
        .and_then(|v| v.as_array())
        .and_then(|a| a.first())
        .and_then(|v| v.as_str())
    {
        return Some(s.to_string());
    }
    json.get("model_type")
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

/// Checks one component's weights against its config without reading tensor data.
fn dry_check(name: &str, dir: &Path, w: &StrictWeights) -> Result<()> {
    let dt = DType::F32;
    match name {
        "unet" => {
            let cfg = UNet2DConditionConfig::from_file(dir.join("config.json"))?;
            w.build_dry(dt, &[], |vb| UNet2DConditionModel::new(vb, &cfg))
        }
        "controlnet" => {
            let cfg = ControlNetConfig::from_file(dir.join("config.json"))?;
            w.build_dry(dt, &[], |vb| ControlNetModel::new(vb, &cfg))
        }
        "vae" => {
            let cfg = AutoencoderKlConfig::from_dir(dir)?;
            w.build_dry(dt, &[], |vb| AutoencoderKl::new(vb, &cfg))
        }
        "text_encoder" => ClipTextEncoder::check_keys(dir),
        "image_encoder" => ClipVisionEncoder::check_keys(dir),
        _ => Ok(()),
    }
}

/// Describes a model folder: components, configs, weights files, dtypes, parameter counts and every
/// problem found. It fails only when the folder itself cannot be resolved; other problems are listed.
///
/// With `check_keys`, each network's weights are matched against its config (keys and shapes)
/// without reading tensor data.
pub fn inspect_model(folder: &Path, check_keys: bool) -> Result<ModelInspection> {
    inspect_model_part(folder, ModelPart::Body, check_keys)
}

/// [`inspect_model`] for `part`.
pub fn inspect_model_part(
    folder: &Path,
    part: ModelPart,
    check_keys: bool,
) -> Result<ModelInspection> {
    let layout = ModelLayout::resolve_part(folder, part)?;
    let mut components = Vec::new();
    for name in COMPONENTS {
        let dir = layout.component(name)?.to_path_buf();
        let mut info = ComponentInfo {
            name: name.to_string(),
            folder: dir.clone(),
            mapped: layout.mapped.iter().any(|m| m == name),
            ..Default::default()
        };
        let config_name = if name == "scheduler" {
            "scheduler_config.json"
        } else {
            "config.json"
        };
        let rel = |p: &Path| {
            p.strip_prefix(&layout.root)
                .unwrap_or(p)
                .display()
                .to_string()
        };
        if !dir.is_dir() {
            info.problems.push(format!(
                "Model folder {} has no {}/ folder",
                layout.root.display(),
                rel(&dir)
            ));
            components.push(info);
            continue;
        }
        let cfg_path = dir.join(config_name);
        if !cfg_path.is_file() {
            info.problems.push(format!(
                "Model folder {} has no {}",
                layout.root.display(),
                rel(&dir.join(config_name))
            ));
        } else {
            info.class = config_class(&cfg_path);
        }
        if name == "image_encoder" && !dir.join("preprocessor_config.json").is_file() {
            info.problems.push(format!(
                "Model folder {} has no image_encoder/preprocessor_config.json",
                layout.root.display()
            ));
        }
        if name == "scheduler" {
            if let Err(e) = DdimConfig::from_file(&cfg_path) {
                if cfg_path.is_file() {
                    info.problems.push(e.to_string());
                }
            }
            components.push(info);
            continue;
        }
        match StrictWeights::open_dir(&dir) {
            Ok(w) => {
                info.weights = Some(w.path().to_path_buf());
                info.tensors = w.index().len();
                info.parameters = w.parameter_count();
                let dtypes: std::collections::BTreeSet<String> =
                    w.index().values().map(|e| e.dtype.clone()).collect();
                info.dtypes = dtypes.into_iter().collect();
                if check_keys && cfg_path.is_file() {
                    match dry_check(name, &dir, &w) {
                        Ok(()) => info.keys_checked = true,
                        Err(e) => info.problems.push(e.to_string()),
                    }
                }
            }
            Err(e) => info.problems.push(e.to_string()),
        }
        components.push(info);
    }
    let mut problems = Vec::new();
    let all_present = components.iter().all(|c| c.problems.is_empty());
    if all_present {
        if let Err(e) = BodyConfigs::read(&layout) {
            problems.push(e.to_string());
        }
    }
    Ok(ModelInspection {
        layout,
        components,
        problems,
    })
}
