//! Trainable parameters: one `candle_nn::VarMap` per network, filled by the inference
//! constructors themselves (`VarBuilder::from_varmap`), so every name is the diffusers checkpoint
//! key and the saved file loads in the renderer unchanged.
//!
//! - [`ParamSet::load_strict`]: weights from a component folder; every parameter must be in the
//!   file and every tensor of the file must be a parameter (never silently skip).
//! - [`ParamSet::random_init`]: deterministic init from the seed and the parameter name: weights
//!   `U(±1/√fan_in)` (torch's default for Linear/Conv), biases 0, norm scales 1, and the
//!   ControlNet's zero convolutions (`controlnet_down_blocks`, `controlnet_mid_block`,
//!   `controlnet_cond_embedding.conv_out`) 0, as diffusers' `zero_module` does.
//! - [`ParamSet::copy_shared`] with [`controlnet_config_from_unet`]: diffusers'
//!   `ControlNetModel.from_unet` (stage 1): the ControlNet takes the UNet's `conv_in`,
//!   `time_embedding`, `down_blocks` and `mid_block`.
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::{io_err, stream, tags, Result, TrainError};
use crate::networks::controlnet::{ControlNetConfig, ControlNetModel};
use crate::networks::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::networks::vae::{AutoencoderKl, AutoencoderKlConfig};
use crate::weights::StrictWeights;
use crate::EngineError;

/// The weights file name diffusers' `save_pretrained` writes.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

/// The trainable parameters of one network, with the `config.json` it was built from.
pub struct ParamSet {
    /// Component name (`unet`, `controlnet`, `vae`): the folder it is saved to.
    pub name: String,
    /// The variables, keyed by checkpoint name.
    pub map: VarMap,
    /// The network's `config.json`, written next to the weights.
    pub config: serde_json::Value,
}

/// Parameter name prefixes that `from_unet` copies from the UNet.
pub const FROM_UNET_PREFIXES: [&str; 4] =
    ["conv_in.", "time_embedding.", "down_blocks.", "mid_block."];

/// ControlNet parameters that diffusers initialises to zero.
pub fn is_zero_module(name: &str) -> bool {
    name.starts_with("controlnet_down_blocks.")
        || name.starts_with("controlnet_mid_block.")
        || name.starts_with("controlnet_cond_embedding.conv_out.")
}

impl std::fmt::Debug for ParamSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamSet")
            .field("name", &self.name)
            .field("parameters", &self.parameter_count())
            .finish()
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl ParamSet {
    /// The variables sorted by name (a fixed order for the optimizer and for saving).
    pub fn vars(&self) -> Vec<(String, Var)> {
        let data = match self.map.data().lock() {
            Ok(d) => d,
            Err(p) => p.into_inner(),
        };
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Number of scalar parameters.
    pub fn parameter_count(&self) -> usize {
        self.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Detached copies of the current values, keyed by name.
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        self.vars()
            .into_iter()
            .map(|(k, v)| Ok((k, v.as_tensor().detach().copy()?)))
            .collect()
    }

    /// Sets every parameter from the weights file of component folder `dir` (strict both ways).
    pub fn load_strict(&self, dir: &Path) -> Result<()> {
        let w = StrictWeights::open_dir(dir)?;
        let file = w.path().to_path_buf();
        let vars = self.vars();
        for (name, var) in &vars {
            if !w.contains(name) {
                return Err(EngineError::weights(
                    &file,
                    format!(
                        "missing key '{name}' (shape {:?}): the file does not match {}",
                        var.dims(),
                        dir.join("config.json").display()
                    ),
                )
                .into());
            }
            let t = w.load_raw(name, var.device())?.to_dtype(var.dtype())?;
            if t.dims() != var.dims() {
                return Err(EngineError::weights(
                    &file,
                    format!(
                        "key '{name}' has shape {:?}, the config needs {:?}",
                        t.dims(),
                        var.dims()
                    ),
                )
                .into());
            }
            var.set(&t)?;
        }
        let known: std::collections::BTreeSet<&str> =
            vars.iter().map(|(k, _)| k.as_str()).collect();
        if let Some(extra) = w.index().keys().find(|k| !known.contains(k.as_str())) {
            return Err(EngineError::weights(
                &file,
                format!("unexpected key '{extra}': the network built from config.json has no such parameter"),
            )
            .into());
        }
        Ok(())
    }

    /// Deterministic init of every parameter whose name passes `select` (see the module docs).
    pub fn random_init(&self, seed: u64, select: impl Fn(&str) -> bool) -> Result<()> {
        for (name, var) in self.vars() {
            if !select(&name) {
                continue;
            }
            let dims = var.dims().to_vec();
            let n: usize = dims.iter().product();
            let (dtype, device) = (var.dtype(), var.device().clone());
            let t = if is_zero_module(&name) || (dims.len() == 1 && name.ends_with("bias")) {
                Tensor::zeros(dims.as_slice(), dtype, &device)?
            } else if dims.len() == 1 {
                Tensor::ones(dims.as_slice(), dtype, &device)?
            } else {
                let fan_in: usize = dims[1..].iter().product();
                let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                let mut rng = stream(seed, tags::INIT, fnv1a(&name));
                const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
                let v: Vec<f32> = (0..n)
                    .map(|_| {
                        let u = (rng.next_u64() >> 11) as f64 * SCALE;
                        ((2.0 * u - 1.0) * bound) as f32
                    })
                    .collect();
                Tensor::from_vec(v, dims.as_slice(), &Device::Cpu)?
                    .to_dtype(dtype)?
                    .to_device(&device)?
            };
            var.set(&t)?;
        }
        Ok(())
    }

    /// Copies every parameter named with one of `prefixes` from `other` (same name and shape).
    pub fn copy_shared(&self, other: &ParamSet, prefixes: &[&str]) -> Result<usize> {
        let theirs: HashMap<String, Var> = other.vars().into_iter().collect();
        let mut copied = 0;
        for (name, var) in self.vars() {
            if !prefixes.iter().any(|p| name.starts_with(p)) {
                continue;
            }
            let src = theirs.get(&name).ok_or_else(|| {
                TrainError::Data(format!(
                    "{} has no parameter '{name}' to copy into the {}",
                    other.name, self.name
                ))
            })?;
            if src.dims() != var.dims() {
                return Err(TrainError::Data(format!(
                    "{}.{name} has shape {:?}, {}.{name} needs {:?}",
                    other.name,
                    src.dims(),
                    self.name,
                    var.dims()
                )));
            }
            var.set(&src.as_tensor().detach().copy()?)?;
            copied += 1;
        }
        Ok(copied)
    }

    /// Writes `dir/config.json` and `dir/diffusion_pytorch_model.safetensors` (f32).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let cfg = dir.join("config.json");
        let text = serde_json::to_string_pretty(&self.config)
            .map_err(|e| TrainError::Data(format!("cannot serialise {}: {e}", cfg.display())))?;
        std::fs::write(&cfg, text + "\n").map_err(io_err(&cfg))?;
        let cpu: HashMap<String, Tensor> = self
            .tensors()?
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)))
            .collect::<Result<_>>()?;
        let path = dir.join(WEIGHTS_FILE);
        candle_core::safetensors::save(&cpu, &path)?;
        Ok(())
    }
}

fn parse<T: serde::de::DeserializeOwned>(json: &serde_json::Value, what: &str) -> Result<T> {
    serde_json::from_value(json.clone())
        .map_err(|e| TrainError::Data(format!("{what} config.json cannot be read: {e}")))
}

/// Reads a `config.json` as JSON.
pub fn read_config_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text)
        .map_err(|e| EngineError::config(path, format!("not JSON: {e}")).into())
}

/// A UNet whose parameters are the variables of the returned set (f32 on `device`).
pub fn build_unet(
    config: serde_json::Value,
    device: &Device,
) -> Result<(UNet2DConditionModel, ParamSet)> {
    let cfg: UNet2DConditionConfig = parse(&config, "unet")?;
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, device);
    let net = UNet2DConditionModel::new(vb, &cfg)?;
    Ok((
        net,
        ParamSet {
            name: "unet".into(),
            map,
            config,
        },
    ))
}

/// A ControlNet whose parameters are the variables of the returned set.
pub fn build_controlnet(
    config: serde_json::Value,
    device: &Device,
) -> Result<(ControlNetModel, ParamSet)> {
    let cfg: ControlNetConfig = parse(&config, "controlnet")?;
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, device);
    let net = ControlNetModel::new(vb, &cfg)?;
    Ok((
        net,
        ParamSet {
            name: "controlnet".into(),
            map,
            config,
        },
    ))
}

/// A VAE whose parameters are the variables of the returned set.
pub fn build_vae(config: serde_json::Value, device: &Device) -> Result<(AutoencoderKl, ParamSet)> {
    let cfg: AutoencoderKlConfig = parse(&config, "vae")?;
    cfg.validate().map_err(TrainError::Data)?;
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, device);
    let net = AutoencoderKl::new(vb, &cfg)?;
    Ok((
        net,
        ParamSet {
            name: "vae".into(),
            map,
            config,
        },
    ))
}

/// UNet `config.json` keys a `ControlNetModel` shares (diffusers `ControlNetModel.from_unet`).
const SHARED_KEYS: [&str; 26] = [
    "in_channels",
    "flip_sin_to_cos",
    "freq_shift",
    "down_block_types",
    "mid_block_type",
    "only_cross_attention",
    "block_out_channels",
    "layers_per_block",
    "downsample_padding",
    "mid_block_scale_factor",
    "act_fn",
    "norm_num_groups",
    "norm_eps",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "attention_head_dim",
    "num_attention_heads",
    "use_linear_projection",
    "upcast_attention",
    "resnet_time_scale_shift",
    "class_embed_type",
    "num_class_embeds",
    "addition_embed_type",
    "addition_time_embed_dim",
    "encoder_hid_dim",
    "encoder_hid_dim_type",
];

/// The `config.json` of a ControlNet made from a UNet (`from_unet`): the UNet's topology, 3 RGB
/// conditioning channels, and `conditioning_embedding_out_channels` as given (diffusers' default
/// is `[16, 32, 96, 256]`, a total downscale of 8).
pub fn controlnet_config_from_unet(
    unet: &serde_json::Value,
    embedding_channels: &[usize],
) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("_class_name".into(), "ControlNetModel".into());
    if let Some(obj) = unet.as_object() {
        for k in SHARED_KEYS {
            if let Some(v) = obj.get(k) {
                m.insert(k.into(), v.clone());
            }
        }
    }
    m.insert("conditioning_channels".into(), 3.into());
    m.insert(
        "conditioning_embedding_out_channels".into(),
        serde_json::json!(embedding_channels),
    );
    m.insert("controlnet_conditioning_channel_order".into(), "rgb".into());
    m.insert("global_pool_conditions".into(), false.into());
    serde_json::Value::Object(m)
}
