//! CLIP (Radford et al. 2021, arXiv 2103.00020): the vision tower that makes the appearance tokens,
//! its exact `CLIPImageProcessor` preprocessing, and the text tower used only for the CFG negative.
//!
//! - Appearance tokens: transformers `CLIPVisionModel(...).last_hidden_state`, i.e.
//!   every token of the last encoder layer **before** `post_layernorm` (50 × 768 for ViT-B/32), with
//!   no projection. The tower is candle-transformers' `clip::vision_model` (faithful to 7e-7, issue 3);
//!   its `forward` returns the pooled post-LN token, so we take the last hidden state instead, and
//!   since it silently random-initialises a missing `class_embedding`, the strict loader checks keys.
//! - Preprocessing: resize the short side to 224 with PIL's BICUBIC (its separable
//!   two-pass resampling with antialiasing support and 8-bit rounding between passes, reimplemented
//!   here), centre crop, `x/255`, CLIP mean/std; read from `preprocessor_config.json`.
//! - Negative embedding: the text tower on ids `[49406, 49407, 49407, …]` padded to
//!   `max_position_embeddings` (the SD1.5 tokenizer pads with `<|endoftext|>` = 49407), keeping the first
//!   N rows, N = appearance token count. Exact because the mask is causal. CLIP's two special tokens
//!   are the last two entries of its vocabulary (49406 = 49408 − 2, 49407 = 49408 − 1), so the ids are
//!   taken as `vocab_size − 2` and `vocab_size − 1`: the real ids for the real vocabulary, and the
//!   same rule for tiny test vocabularies. (`bos_token_id`/`eos_token_id` in the SD1.5 config.json
//!   hold stale values 0 and 2, so they are not read.) The tower is
//!   candle-transformers' `clip::text_model` (the SD `clip` module's config has private fields, so it
//!   cannot describe other widths; both are the same transformers `CLIPTextModel` architecture).
use crate::resample::{resize_rgb8, Filter};
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::{text_model, vision_model};
use serde::Deserialize;

use crate::error::{EngineError, Result};
use crate::weights::{self, LoadReport, StrictWeights};

/// `<|startoftext|>` in the CLIP BPE vocabulary.
pub const BOS_TOKEN_ID: u32 = 49406;
/// `<|endoftext|>`, also the SD1.5 tokenizer's padding token.
pub const EOS_TOKEN_ID: u32 = 49407;

fn default_layer_norm_eps() -> f64 {
    1e-5
}

fn default_quick_gelu() -> String {
    "quick_gelu".into()
}

/// transformers `CLIPVisionConfig` (`model_type` `clip_vision_model`); defaults are ViT-B/32's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    /// Token width (768 for ViT-B/32).
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Input side in pixels.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Input channels.
    pub num_channels: usize,
    /// Activation; candle's tower supports `quick_gelu` (CLIP's).
    #[serde(default = "default_quick_gelu")]
    pub hidden_act: String,
    /// LayerNorm eps (candle's tower uses 1e-5).
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Projection width (unused: no projection is applied).
    pub projection_dim: usize,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 224,
            patch_size: 32,
            num_channels: 3,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            projection_dim: 512,
        }
    }
}

impl ClipVisionConfig {
    /// Number of output tokens: patches + the class token (50 for ViT-B/32 at 224).
    pub fn num_tokens(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }

    /// Checks the values candle's tower can run.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.hidden_act != "quick_gelu" {
            return Err(format!(
                "hidden_act = {} is not supported (expected quick_gelu)",
                self.hidden_act
            ));
        }
        if (self.layer_norm_eps - 1e-5).abs() > 1e-12 {
            return Err(format!(
                "layer_norm_eps = {} is not supported (expected 1e-5)",
                self.layer_norm_eps
            ));
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(format!(
                "image_size = {} is not a multiple of patch_size = {}",
                self.image_size, self.patch_size
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size = {} is not a multiple of num_attention_heads = {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }

    fn to_candle(&self) -> vision_model::ClipVisionConfig {
        vision_model::ClipVisionConfig {
            embed_dim: self.hidden_size,
            activation: text_model::Activation::QuickGelu,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            projection_dim: self.projection_dim,
            num_channels: self.num_channels,
            image_size: self.image_size,
            patch_size: self.patch_size,
        }
    }

    /// Reads `dir/config.json`: a `CLIPVisionModel(WithProjection)` config, or a full `CLIPModel`
    /// config (then its `vision_config`, as `CLIPVisionModel.from_pretrained("openai/clip-vit-base-patch32")`
    /// does in the reference).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let json: serde_json::Value = weights::read_component_config(
            dir,
            &[
                "clip_vision_model",
                "clip",
                "CLIPVisionModel",
                "CLIPVisionModelWithProjection",
                "CLIPModel",
            ],
        )?;
        let body = if json.get("model_type").and_then(|v| v.as_str()) == Some("clip") {
            json.get("vision_config").cloned().unwrap_or_default()
        } else {
            json
        };
        let cfg: Self =
            serde_json::from_value(body).map_err(|e| EngineError::config(&path, e.to_string()))?;
        cfg.validate().map_err(|m| EngineError::config(&path, m))?;
        Ok(cfg)
    }
}

/// transformers `CLIPTextConfig` (`model_type` `clip_text_model`); defaults are SD1.5's text encoder.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    /// Vocabulary size (49408); BOS and EOS are its last two ids.
    pub vocab_size: usize,
    /// Token width (768 for SD1.5).
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Sequence length the model was trained with (77).
    pub max_position_embeddings: usize,
    /// Activation; `quick_gelu` (CLIP's).
    #[serde(default = "default_quick_gelu")]
    pub hidden_act: String,
    /// LayerNorm eps (1e-5).
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Projection width (unused).
    pub projection_dim: usize,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            projection_dim: 768,
        }
    }
}

impl ClipTextConfig {
    /// Checks the values candle's tower can run and that the special ids exist.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.hidden_act != "quick_gelu" {
            return Err(format!(
                "hidden_act = {} is not supported (expected quick_gelu)",
                self.hidden_act
            ));
        }
        if (self.layer_norm_eps - 1e-5).abs() > 1e-12 {
            return Err(format!(
                "layer_norm_eps = {} is not supported (expected 1e-5)",
                self.layer_norm_eps
            ));
        }
        if self.vocab_size < 2 {
            return Err(format!("vocab_size = {} (expected 49408)", self.vocab_size));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size = {} is not a multiple of num_attention_heads = {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }

    /// `<|startoftext|>`: 49406 for CLIP's 49408-entry vocabulary.
    pub fn bos_token_id(&self) -> u32 {
        (self.vocab_size - 2) as u32
    }

    /// `<|endoftext|>`, also the padding token: 49407 for CLIP's vocabulary.
    pub fn eos_token_id(&self) -> u32 {
        (self.vocab_size - 1) as u32
    }

    fn to_candle(&self) -> text_model::ClipTextConfig {
        text_model::ClipTextConfig {
            vocab_size: self.vocab_size,
            embed_dim: self.hidden_size,
            activation: text_model::Activation::QuickGelu,
            intermediate_size: self.intermediate_size,
            max_position_embeddings: self.max_position_embeddings,
            pad_with: None,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            projection_dim: self.projection_dim,
        }
    }

    /// Reads `dir/config.json` (a `CLIPTextModel` config, or a full `CLIPModel` one).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let json: serde_json::Value = weights::read_component_config(
            dir,
            &[
                "clip_text_model",
                "clip",
                "CLIPTextModel",
                "CLIPTextModelWithProjection",
                "CLIPModel",
            ],
        )?;
        let body = if json.get("model_type").and_then(|v| v.as_str()) == Some("clip") {
            json.get("text_config").cloned().unwrap_or_default()
        } else {
            json
        };
        let cfg: Self =
            serde_json::from_value(body).map_err(|e| EngineError::config(&path, e.to_string()))?;
        cfg.validate().map_err(|m| EngineError::config(&path, m))?;
        Ok(cfg)
    }
}

/// Fails unless the appearance-token width equals a network's `cross_attention_dim`.
///
/// `component` names the network (`unet`, `controlnet`) and `what` the folders, for the message.
pub fn check_appearance_width(
    what: &str,
    token_width: usize,
    component: &str,
    cross_attention_dim: usize,
) -> Result<()> {
    if token_width == cross_attention_dim {
        Ok(())
    } else {
        Err(EngineError::WidthMismatch {
            what: what.to_string(),
            tokens: token_width,
            component: component.to_string(),
            cross_attention_dim,
        })
    }
}

// ------------------------------------------------------------------------------------------------
// Preprocessing.

/// `size` / `crop_size` in `preprocessor_config.json`: an int (old files) or a dict.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Int(usize),
    Dict {
        shortest_edge: Option<usize>,
        height: Option<usize>,
        width: Option<usize>,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct PreprocessorFile {
    do_resize: bool,
    size: SizeSpec,
    resample: u32,
    do_center_crop: bool,
    crop_size: SizeSpec,
    do_rescale: bool,
    rescale_factor: f64,
    do_normalize: bool,
    image_mean: Vec<f64>,
    image_std: Vec<f64>,
}

impl Default for PreprocessorFile {
    fn default() -> Self {
        Self {
            do_resize: true,
            size: SizeSpec::Int(224),
            resample: 3,
            do_center_crop: true,
            crop_size: SizeSpec::Int(224),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: vec![0.48145466, 0.4578275, 0.40821073],
            image_std: vec![0.26862954, 0.26130258, 0.27577711],
        }
    }
}

/// The `CLIPImageProcessor` steps the reference uses, from `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipImageProcessor {
    /// Resize the short side to this (None: no resize).
    pub shortest_edge: Option<usize>,
    /// Centre crop to (height, width) (None: no crop).
    pub crop: Option<(usize, usize)>,
    /// Multiply by this after the crop (None: no rescale).
    pub rescale_factor: Option<f64>,
    /// Per-channel mean and std (None: no normalisation).
    pub mean_std: Option<([f64; 3], [f64; 3])>,
}

impl Default for ClipImageProcessor {
    fn default() -> Self {
        let d = PreprocessorFile::default();
        Self {
            shortest_edge: Some(224),
            crop: Some((224, 224)),
            rescale_factor: Some(d.rescale_factor),
            mean_std: Some((
                [d.image_mean[0], d.image_mean[1], d.image_mean[2]],
                [d.image_std[0], d.image_std[1], d.image_std[2]],
            )),
        }
    }
}

impl ClipImageProcessor {
    /// Reads `preprocessor_config.json`; only BICUBIC (3) resampling is supported.
    pub fn from_file(path: &Path) -> Result<Self> {
        let f: PreprocessorFile = weights::read_json(path)?;
        let bad = |m: String| EngineError::config(path, m);
        if f.do_resize && f.resample != 3 {
            return Err(bad(format!(
                "resample = {} is not supported (expected 3, PIL BICUBIC)",
                f.resample
            )));
        }
        let shortest_edge = if f.do_resize {
            match f.size {
                SizeSpec::Int(s) => Some(s),
                SizeSpec::Dict {
                    shortest_edge: Some(s),
                    ..
                } => Some(s),
                other => {
                    return Err(bad(format!(
                        "size = {other:?} is not supported (expected {{\"shortest_edge\": N}})"
                    )))
                }
            }
        } else {
            None
        };
        let crop = if f.do_center_crop {
            match f.crop_size {
                SizeSpec::Int(s) => Some((s, s)),
                SizeSpec::Dict {
                    height: Some(h),
                    width: Some(w),
                    ..
                } => Some((h, w)),
                other => {
                    return Err(bad(format!(
                        "crop_size = {other:?} is not supported (expected height and width)"
                    )))
                }
            }
        } else {
            None
        };
        if shortest_edge == Some(0) || matches!(crop, Some((0, _)) | Some((_, 0))) {
            return Err(bad("size and crop_size must be positive".into()));
        }
        let mean_std = if f.do_normalize {
            if f.image_mean.len() != 3 || f.image_std.len() != 3 {
                return Err(bad(format!(
                    "image_mean/image_std have {}/{} entries (expected 3)",
                    f.image_mean.len(),
                    f.image_std.len()
                )));
            }
            Some((
                [f.image_mean[0], f.image_mean[1], f.image_mean[2]],
                [f.image_std[0], f.image_std[1], f.image_std[2]],
            ))
        } else {
            None
        };
        Ok(Self {
            shortest_edge,
            crop,
            rescale_factor: f.do_rescale.then_some(f.rescale_factor),
            mean_std,
        })
    }

    /// The resized (and cropped) 8-bit RGB image, before rescale/normalise: `(pixels, width, height)`.
    pub fn resize_and_crop(
        &self,
        rgb: &[u8],
        width: usize,
        height: usize,
    ) -> Result<(Vec<u8>, usize, usize)> {
        if width == 0 || height == 0 || rgb.len() != width * height * 3 {
            return Err(EngineError::Input(format!(
                "appearance image buffer has {} bytes, expected {width}×{height}×3",
                rgb.len()
            )));
        }
        let (mut img, mut w, mut h) = (rgb.to_vec(), width, height);
        if let Some(s) = self.shortest_edge {
            // transformers `get_resize_output_image_size(default_to_square=False)`:
            // the long side is int(s * long / short).
            let (nw, nh) = if w <= h {
                (s, (s as f64 * h as f64 / w as f64) as usize)
            } else {
                ((s as f64 * w as f64 / h as f64) as usize, s)
            };
            img = resize_rgb8(&img, w, h, nw, nh, Filter::Bicubic);
            w = nw;
            h = nh;
        }
        if let Some((ch, cw)) = self.crop {
            if ch > h || cw > w {
                return Err(EngineError::Input(format!(
                    "image {w}×{h} is smaller than the crop {cw}×{ch} after resizing"
                )));
            }
            let top = (h - ch) / 2;
            let left = (w - cw) / 2;
            let mut out = Vec::with_capacity(ch * cw * 3);
            for y in top..top + ch {
                out.extend_from_slice(&img[(y * w + left) * 3..(y * w + left + cw) * 3]);
            }
            img = out;
            w = cw;
            h = ch;
        }
        Ok((img, w, h))
    }

    /// The model input `(1, 3, H, W)` f32 from an 8-bit RGB image (row-major, `width × height × 3`).
    /// Alpha must already be dropped (PIL `convert("RGB")` drops it, it does not composite).
    pub fn preprocess(
        &self,
        rgb: &[u8],
        width: usize,
        height: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let (img, w, h) = self.resize_and_crop(rgb, width, height)?;
        let mut data = vec![0f32; 3 * w * h];
        for c in 0..3 {
            for i in 0..w * h {
                let v = img[i * 3 + c];
                // numpy: float64 multiply then cast to f32; normalise in f32.
                let mut x = match self.rescale_factor {
                    Some(r) => (v as f64 * r) as f32,
                    None => v as f32,
                };
                if let Some((mean, std)) = &self.mean_std {
                    x = (x - mean[c] as f32) / std[c] as f32;
                }
                data[c * w * h + i] = x;
            }
        }
        Ok(Tensor::from_vec(data, (1, 3, h, w), device)?)
    }
}

// ------------------------------------------------------------------------------------------------
// Vision tower.

/// The key prefix of a tower: transformers 4 saves `text_model.…`/`vision_model.…`; transformers 5
/// saves `CLIPTextModel` at the root. Both layouts are accepted.
fn tower_prefix(w: &StrictWeights, prefix: &'static str, probe: &str) -> Option<&'static str> {
    if w.contains(&format!("{prefix}.{probe}")) {
        Some(prefix)
    } else if w.contains(probe) {
        None
    } else {
        // Neither: build under the usual prefix so the error names the expected key.
        Some(prefix)
    }
}

fn with_prefix(vb: VarBuilder<'static>, prefix: Option<&str>) -> VarBuilder<'static> {
    match prefix {
        Some(p) => vb.pp(p),
        None => vb,
    }
}

/// Keys a vision checkpoint may hold that the appearance tokens do not use.
fn vision_ignorable(key: &str) -> bool {
    key.ends_with("position_ids")
        || key.starts_with("visual_projection.")
        || key.starts_with("text_model.")
        || key.starts_with("text_projection.")
        || key == "logit_scale"
}

/// The CLIP vision tower returning `last_hidden_state` before post-LayerNorm.
#[derive(Debug, Clone)]
pub struct ClipVisionEncoder {
    model: vision_model::ClipVisionTransformer,
    config: ClipVisionConfig,
    processor: ClipImageProcessor,
    dtype: DType,
    device: Device,
}

impl ClipVisionEncoder {
    /// Builds the tower; `vb` is rooted at `vision_model`.
    pub fn new(
        vb: VarBuilder,
        config: &ClipVisionConfig,
        processor: ClipImageProcessor,
    ) -> candle_core::Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        if !vb.contains_tensor("embeddings.class_embedding") {
            // candle would draw it at random (issue 3); ask for it so the strict loader names it.
            vb.get(config.hidden_size, "embeddings.class_embedding")?;
        }
        let dtype = vb.dtype();
        let device = vb.device().clone();
        let model = vision_model::ClipVisionTransformer::new(vb, &config.to_candle())?;
        Ok(Self {
            model,
            config: config.clone(),
            processor,
            dtype,
            device,
        })
    }

    /// Loads `dir` (`config.json`, weights, `preprocessor_config.json`) with the strict key check.
    ///
    /// The reference runs this tower in f32; pass `DType::F32` unless memory is short.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<(Self, LoadReport)> {
        let cfg = ClipVisionConfig::from_dir(dir)?;
        let processor = ClipImageProcessor::from_file(&dir.join("preprocessor_config.json"))?;
        let w = StrictWeights::open_dir(dir)?;
        let prefix = tower_prefix(&w, "vision_model", "embeddings.patch_embedding.weight");
        w.build(dtype, device, &[&vision_ignorable], |vb| {
            Self::new(with_prefix(vb, prefix), &cfg, processor)
        })
    }

    /// Checks the weights in `dir` against its config (keys and shapes) without reading tensor data.
    pub fn check_keys(dir: &Path) -> Result<()> {
        let cfg = ClipVisionConfig::from_dir(dir)?;
        let w = StrictWeights::open_dir(dir)?;
        let prefix = tower_prefix(&w, "vision_model", "embeddings.patch_embedding.weight");
        w.build_dry(DType::F32, &[&vision_ignorable], |vb| {
            Self::new(with_prefix(vb, prefix), &cfg, ClipImageProcessor::default())
        })
    }

    /// The config.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// The preprocessing.
    pub fn processor(&self) -> &ClipImageProcessor {
        &self.processor
    }

    /// Token width (`hidden_size`).
    pub fn token_width(&self) -> usize {
        self.config.hidden_size
    }

    /// Appearance tokens `(B, num_tokens, hidden_size)` from preprocessed pixels `(B, 3, S, S)`.
    pub fn forward_pixels(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = pixel_values.dims4()?;
        let s = self.config.image_size;
        if c != self.config.num_channels || h != s || w != s {
            return Err(EngineError::Input(format!(
                "CLIP input is {c}×{h}×{w}, expected {}×{s}×{s}",
                self.config.num_channels
            )));
        }
        let x = pixel_values.to_dtype(self.dtype)?.to_device(&self.device)?;
        // `output_hidden_states` returns every layer's output and then the pooled post-LN token;
        // the last layer's output, before post-LN, is the second to last entry.
        let states = self.model.output_hidden_states(&x)?;
        let n = states.len();
        if n < 2 {
            return Err(EngineError::Input(
                "CLIP tower has no encoder layers".into(),
            ));
        }
        Ok(states[n - 2].clone())
    }

    /// Appearance tokens `(1, num_tokens, hidden_size)` from an 8-bit RGB image.
    pub fn encode_image(&self, rgb: &[u8], width: usize, height: usize) -> Result<Tensor> {
        let px = self
            .processor
            .preprocess(rgb, width, height, &self.device)?;
        self.forward_pixels(&px)
    }
}

// ------------------------------------------------------------------------------------------------
// Text tower.

fn text_ignorable(key: &str) -> bool {
    key.ends_with("position_ids")
        || key.starts_with("text_projection.")
        || key.starts_with("vision_model.")
        || key.starts_with("visual_projection.")
        || key == "logit_scale"
}

/// The CLIP text tower, used for the empty-prompt CFG negative only.
#[derive(Debug, Clone)]
pub struct ClipTextEncoder {
    model: text_model::ClipTextTransformer,
    config: ClipTextConfig,
    device: Device,
}

impl ClipTextEncoder {
    /// Builds the tower; `vb` is rooted at `text_model`.
    pub fn new(vb: VarBuilder, config: &ClipTextConfig) -> candle_core::Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        let device = vb.device().clone();
        let model = text_model::ClipTextTransformer::new(vb, &config.to_candle())?;
        Ok(Self {
            model,
            config: config.clone(),
            device,
        })
    }

    /// Loads `dir` with the strict key check.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<(Self, LoadReport)> {
        let cfg = ClipTextConfig::from_dir(dir)?;
        if cfg.vocab_size != 49408 {
            log::warn!(
                "{}: vocab_size = {} (CLIP has 49408); using ids {}/{} for BOS/EOS",
                dir.display(),
                cfg.vocab_size,
                cfg.bos_token_id(),
                cfg.eos_token_id()
            );
        }
        let w = StrictWeights::open_dir(dir)?;
        let prefix = tower_prefix(&w, "text_model", "embeddings.token_embedding.weight");
        w.build(dtype, device, &[&text_ignorable], |vb| {
            Self::new(with_prefix(vb, prefix), &cfg)
        })
    }

    /// Checks the weights in `dir` against its config (keys and shapes) without reading tensor data.
    pub fn check_keys(dir: &Path) -> Result<()> {
        let cfg = ClipTextConfig::from_dir(dir)?;
        let w = StrictWeights::open_dir(dir)?;
        let prefix = tower_prefix(&w, "text_model", "embeddings.token_embedding.weight");
        w.build_dry(DType::F32, &[&text_ignorable], |vb| {
            Self::new(with_prefix(vb, prefix), &cfg)
        })
    }

    /// The config.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// The embedding of the empty prompt, `(1, n_tokens, hidden_size)`.
    ///
    /// Ids `[BOS, EOS, EOS, …]` (`[49406, 49407, …]` for CLIP) padded to `max_position_embeddings`, causal mask, final LayerNorm;
    /// the first `n_tokens` rows are kept.
    pub fn empty_prompt_embedding(&self, n_tokens: usize) -> Result<Tensor> {
        let len = self.config.max_position_embeddings;
        if n_tokens == 0 || n_tokens > len {
            return Err(EngineError::Input(format!(
                "the negative embedding needs {n_tokens} tokens; the text encoder has \
                 max_position_embeddings = {len}"
            )));
        }
        let mut ids = vec![self.config.eos_token_id(); len];
        ids[0] = self.config.bos_token_id();
        let ids = Tensor::from_vec(ids, (1, len), &self.device)?;
        let out = self.model.forward_with_mask(&ids, usize::MAX)?;
        Ok(out.i((.., 0..n_tokens, ..))?.contiguous()?)
    }
}
