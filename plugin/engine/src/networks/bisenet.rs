//! BiSeNet face parser (Yu et al. 2018, "BiSeNet: Bilateral Segmentation Network for Real-time
//! Semantic Segmentation", arXiv 1808.00897), in the variant of the face-parsing.PyTorch project
//! whose CelebAMask-HQ checkpoint `79999_iter.pth` the reference's `get_mask.py` runs.
//!
//! Structure (parameter names = the checkpoint's state_dict keys; every conv has no bias and every
//! BatchNorm runs in eval mode with its running statistics, eps 1e-5):
//! - `cp.resnet`: a ResNet-18 trunk without classifier (`conv1` 7×7/2, `bn1`, ReLU, max-pool 3×3/2,
//!   `layer1..4` of two basic blocks each; a block's shortcut is `downsample.{0,1}` = 1×1 conv + BN
//!   when its shape changes). It yields the 1/8, 1/16 and 1/32 features (128, 256, 512 channels);
//! - `cp`: the context path. The 1/32 features' global mean goes through `conv_avg` (1×1 ConvBNReLU);
//!   `arm32`/`arm16` (attention refinement: ConvBNReLU 3×3, then the features times
//!   sigmoid(`bn_atten`(`conv_atten`(global mean)))) refine the 1/32 and 1/16 features; each sum is
//!   nearest-upsampled one level and passed through `conv_head32`/`conv_head16` (ConvBNReLU 3×3);
//! - `ffm`: feature fusion of the 1/8 trunk features (which stand in for BiSeNet's spatial path)
//!   with the context path's 1/8 output: `convblk` (1×1 ConvBNReLU on the concatenation), then
//!   `f + f·sigmoid(conv2(relu(conv1(global mean))))`;
//! - `conv_out`: the main head (ConvBNReLU 3×3, then a 1×1 conv to 19 classes). Its logits are
//!   upsampled bilinearly with `align_corners = true` to the input size. `conv_out16`/`conv_out32`
//!   are the training-time auxiliary heads: present in the checkpoint, loaded for the strict key
//!   check, and unused, as the reference uses only `net(img)[0]`.
//!
//! [`FaceParser`] wraps the network with the reference's input handling: an RGB crop scaled to
//! [0, 1], ImageNet mean/std, and a per-pixel argmax over the classes. The crop-mask convention
//! (face = classes 1–13, 3×3 dilation, inverted) lives in `engine::face::mask`.
//!
//! Checkpoints: PyTorch `.pth` or `.safetensors` through the strict loader (`engine::weights`). The
//! published `79999_iter.pth` (2019) is in PyTorch's legacy non-zip format, which
//! `engine::legacy_pth` reads; files re-saved by a newer PyTorch (zip) load as well.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Result as CResult, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use crate::error::{EngineError, Result};
use crate::registry::{Kind, Registry};
use crate::temporal::{Key, KeyHasher};
use crate::weights::StrictWeights;

/// CelebAMask-HQ classes of the published checkpoint.
pub const CELEBAMASK_CLASSES: usize = 19;
/// BatchNorm2d's default eps.
const BN_EPS: f64 = 1e-5;
/// torchvision ImageNet normalisation.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// torchvision ImageNet normalisation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// The trunk's first width in the published checkpoint (ResNet-18: 64, 128, 256, 512).
const FULL_BASE_WIDTH: usize = 64;

/// The parser's shape. [`Default`] is the published checkpoint's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BiSeNetConfig {
    /// Output classes (19 for CelebAMask-HQ).
    pub n_classes: usize,
    /// Every channel width divided by this (1 for the published checkpoint; the parity fixture
    /// uses 16 to stay small, with the same structure and keys).
    pub width_divisor: usize,
}

impl Default for BiSeNetConfig {
    fn default() -> Self {
        Self {
            n_classes: CELEBAMASK_CLASSES,
            width_divisor: 1,
        }
    }
}

impl BiSeNetConfig {
    /// The trunk's first width (64 / divisor); later widths are 2×, 4×, 8× of it.
    pub fn base_width(&self) -> usize {
        FULL_BASE_WIDTH / self.width_divisor.max(1)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        if self.n_classes == 0
            || self.width_divisor == 0
            || !FULL_BASE_WIDTH.is_multiple_of(self.width_divisor)
        {
            return Err(EngineError::weights(
                path,
                format!(
                    "a BiSeNet with {} classes and width divisor {} is not buildable; expected \
                     at least one class and a divisor of {FULL_BASE_WIDTH}",
                    self.n_classes, self.width_divisor
                ),
            ));
        }
        Ok(())
    }

    /// Reads the shape from a checkpoint's index: the trunk's first conv gives the widths and the
    /// main head's last conv the class count. A file without those keys is not a BiSeNet.
    pub fn from_weights(w: &StrictWeights) -> Result<Self> {
        let shape = |key: &str| -> Result<Vec<usize>> {
            w.index().get(key).map(|e| e.shape.clone()).ok_or_else(|| {
                EngineError::weights(
                    w.path(),
                    format!(
                        "missing key '{key}': this is not a face-parsing.PyTorch BiSeNet \
                         checkpoint (79999_iter.pth)"
                    ),
                )
            })
        };
        let stem = shape("cp.resnet.conv1.weight")?;
        let head = shape("conv_out.conv_out.weight")?;
        let bad = |what: &str, s: &[usize]| {
            EngineError::weights(
                w.path(),
                format!("{what} has shape {s:?}, not the shape of a BiSeNet parser"),
            )
        };
        let base = match stem.as_slice() {
            [c, 3, 7, 7] if *c > 0 && FULL_BASE_WIDTH.is_multiple_of(*c) => *c,
            s => return Err(bad("cp.resnet.conv1.weight", s)),
        };
        let n_classes = match head.as_slice() {
            [n, _, 1, 1] if *n > 0 => *n,
            s => return Err(bad("conv_out.conv_out.weight", s)),
        };
        let cfg = Self {
            n_classes,
            width_divisor: FULL_BASE_WIDTH / base,
        };
        cfg.validate(w.path())?;
        Ok(cfg)
    }
}

/// BatchNorm2d in eval mode as a per-channel affine map `x·scale + shift` (both `(1, C, 1, 1)`).
#[derive(Debug, Clone)]
struct BatchNorm {
    scale: Tensor,
    shift: Tensor,
}

impl BatchNorm {
    fn new(c: usize, vb: VarBuilder) -> CResult<Self> {
        let weight = vb.get(c, "weight")?;
        let bias = vb.get(c, "bias")?;
        let mean = vb.get(c, "running_mean")?;
        let var = vb.get(c, "running_var")?;
        let scale = weight.div(&(var + BN_EPS)?.sqrt()?)?;
        let shift = bias.sub(&mean.mul(&scale)?)?;
        Ok(Self {
            scale: scale.reshape((1, c, 1, 1))?,
            shift: shift.reshape((1, c, 1, 1))?,
        })
    }
}

impl Module for BatchNorm {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)
    }
}

fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> CResult<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    candle_nn::conv2d_no_bias(cin, cout, k, cfg, vb)
}

/// The global average over the spatial dimensions, kept as `(N, C, 1, 1)`.
fn global_mean(x: &Tensor) -> CResult<Tensor> {
    x.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)
}

/// `ConvBNReLU`: keys `conv`, `bn`.
#[derive(Debug, Clone)]
struct ConvBnRelu {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBnRelu {
    fn new(cin: usize, cout: usize, k: usize, padding: usize, vb: VarBuilder) -> CResult<Self> {
        Ok(Self {
            conv: conv(cin, cout, k, 1, padding, vb.pp("conv"))?,
            bn: BatchNorm::new(cout, vb.pp("bn"))?,
        })
    }
}

impl Module for ConvBnRelu {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        self.bn.forward(&self.conv.forward(x)?)?.relu()
    }
}

/// A ResNet basic block: `relu(shortcut(x) + bn2(conv2(relu(bn1(conv1(x))))))`.
#[derive(Debug, Clone)]
struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    /// `downsample.0` (1×1 conv, the block's stride) and `downsample.1` (BN).
    downsample: Option<(Conv2d, BatchNorm)>,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> CResult<Self> {
        let downsample = if cin != cout || stride != 1 {
            let d = vb.pp("downsample");
            Some((
                conv(cin, cout, 1, stride, 0, d.pp("0"))?,
                BatchNorm::new(cout, d.pp("1"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: conv(cin, cout, 3, stride, 1, vb.pp("conv1"))?,
            bn1: BatchNorm::new(cout, vb.pp("bn1"))?,
            conv2: conv(cout, cout, 3, 1, 1, vb.pp("conv2"))?,
            bn2: BatchNorm::new(cout, vb.pp("bn2"))?,
            downsample,
        })
    }
}

impl Module for BasicBlock {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let r = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        let r = self.bn2.forward(&self.conv2.forward(&r)?)?;
        let shortcut = match &self.downsample {
            Some((c, bn)) => bn.forward(&c.forward(x)?)?,
            None => x.clone(),
        };
        (shortcut + r)?.relu()
    }
}

/// The ResNet-18 trunk (`cp.resnet`).
#[derive(Debug, Clone)]
struct ResNet18 {
    conv1: Conv2d,
    bn1: BatchNorm,
    /// `layer1..4`, two blocks each.
    layers: Vec<Vec<BasicBlock>>,
}

/// The trunk's features at 1/8, 1/16 and 1/32 of the input.
struct TrunkFeatures {
    f8: Tensor,
    f16: Tensor,
    f32: Tensor,
}

impl ResNet18 {
    fn new(base: usize, vb: VarBuilder) -> CResult<Self> {
        let widths = [base, base, 2 * base, 4 * base, 8 * base];
        let mut layers = Vec::with_capacity(4);
        for i in 0..4 {
            let lvb = vb.pp(format!("layer{}", i + 1));
            let stride = if i == 0 { 1 } else { 2 };
            layers.push(vec![
                BasicBlock::new(widths[i], widths[i + 1], stride, lvb.pp("0"))?,
                BasicBlock::new(widths[i + 1], widths[i + 1], 1, lvb.pp("1"))?,
            ]);
        }
        Ok(Self {
            conv1: conv(3, base, 7, 2, 3, vb.pp("conv1"))?,
            bn1: BatchNorm::new(base, vb.pp("bn1"))?,
            layers,
        })
    }

    fn forward(&self, x: &Tensor) -> CResult<TrunkFeatures> {
        let x = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        // MaxPool2d(3, stride 2, padding 1): the input is post-ReLU (≥ 0) and every window holds
        // at least one real pixel, so zero padding gives the same maximum as torch's −∞ padding.
        let x = x
            .pad_with_zeros(D::Minus2, 1, 1)?
            .pad_with_zeros(D::Minus1, 1, 1)?
            .max_pool2d_with_stride(3, 2)?;
        let mut feats = Vec::with_capacity(4);
        let mut h = x;
        for layer in &self.layers {
            for block in layer {
                h = block.forward(&h)?;
            }
            feats.push(h.clone());
        }
        match feats.as_slice() {
            [_, f8, f16, f32] => Ok(TrunkFeatures {
                f8: f8.clone(),
                f16: f16.clone(),
                f32: f32.clone(),
            }),
            _ => candle_core::bail!("the ResNet-18 trunk has {} layers, not 4", feats.len()),
        }
    }
}

/// `AttentionRefinementModule`: keys `conv`, `conv_atten`, `bn_atten`.
#[derive(Debug, Clone)]
struct AttentionRefinement {
    conv: ConvBnRelu,
    conv_atten: Conv2d,
    bn_atten: BatchNorm,
}

impl AttentionRefinement {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> CResult<Self> {
        Ok(Self {
            conv: ConvBnRelu::new(cin, cout, 3, 1, vb.pp("conv"))?,
            conv_atten: conv(cout, cout, 1, 1, 0, vb.pp("conv_atten"))?,
            bn_atten: BatchNorm::new(cout, vb.pp("bn_atten"))?,
        })
    }
}

impl Module for AttentionRefinement {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let feat = self.conv.forward(x)?;
        let atten = self.conv_atten.forward(&global_mean(&feat)?)?;
        let atten = candle_nn::ops::sigmoid(&self.bn_atten.forward(&atten)?)?;
        feat.broadcast_mul(&atten)
    }
}

/// The context path (`cp`).
#[derive(Debug, Clone)]
struct ContextPath {
    resnet: ResNet18,
    arm16: AttentionRefinement,
    arm32: AttentionRefinement,
    conv_head32: ConvBnRelu,
    conv_head16: ConvBnRelu,
    conv_avg: ConvBnRelu,
}

/// Nearest upsampling of `x` to `like`'s spatial size (torch `interpolate(mode="nearest")`).
fn nearest_like(x: &Tensor, like: &Tensor) -> CResult<Tensor> {
    let (_, _, h, w) = like.dims4()?;
    x.upsample_nearest2d(h, w)
}

impl ContextPath {
    fn new(base: usize, vb: VarBuilder) -> CResult<Self> {
        let (c128, c256, c512) = (2 * base, 4 * base, 8 * base);
        Ok(Self {
            resnet: ResNet18::new(base, vb.pp("resnet"))?,
            arm16: AttentionRefinement::new(c256, c128, vb.pp("arm16"))?,
            arm32: AttentionRefinement::new(c512, c128, vb.pp("arm32"))?,
            conv_head32: ConvBnRelu::new(c128, c128, 3, 1, vb.pp("conv_head32"))?,
            conv_head16: ConvBnRelu::new(c128, c128, 3, 1, vb.pp("conv_head16"))?,
            conv_avg: ConvBnRelu::new(c512, c128, 1, 0, vb.pp("conv_avg"))?,
        })
    }

    /// The trunk's 1/8 features and the context path's 1/8 output.
    fn forward(&self, x: &Tensor) -> CResult<(Tensor, Tensor)> {
        let t = self.resnet.forward(x)?;
        // The global-context vector, broadcast back over the 1/32 grid.
        let avg = self.conv_avg.forward(&global_mean(&t.f32)?)?;
        let sum32 = self
            .arm32
            .forward(&t.f32)?
            .broadcast_add(&nearest_like(&avg, &t.f32)?)?;
        let up32 = self.conv_head32.forward(&nearest_like(&sum32, &t.f16)?)?;
        let sum16 = (self.arm16.forward(&t.f16)? + up32)?;
        let up16 = self.conv_head16.forward(&nearest_like(&sum16, &t.f8)?)?;
        Ok((t.f8, up16))
    }
}

/// `FeatureFusionModule` (`ffm`).
#[derive(Debug, Clone)]
struct FeatureFusion {
    convblk: ConvBnRelu,
    conv1: Conv2d,
    conv2: Conv2d,
}

impl FeatureFusion {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> CResult<Self> {
        Ok(Self {
            convblk: ConvBnRelu::new(cin, cout, 1, 0, vb.pp("convblk"))?,
            conv1: conv(cout, cout / 4, 1, 1, 0, vb.pp("conv1"))?,
            conv2: conv(cout / 4, cout, 1, 1, 0, vb.pp("conv2"))?,
        })
    }

    fn forward(&self, spatial: &Tensor, context: &Tensor) -> CResult<Tensor> {
        let feat = self
            .convblk
            .forward(&Tensor::cat(&[spatial, context], 1)?)?;
        let atten = self.conv1.forward(&global_mean(&feat)?)?.relu()?;
        let atten = candle_nn::ops::sigmoid(&self.conv2.forward(&atten)?)?;
        feat.broadcast_mul(&atten)? + feat
    }
}

/// `BiSeNetOutput`: keys `conv` (ConvBNReLU 3×3) and `conv_out` (1×1 to the classes).
#[derive(Debug, Clone)]
struct OutputHead {
    conv: ConvBnRelu,
    conv_out: Conv2d,
}

impl OutputHead {
    fn new(cin: usize, mid: usize, n_classes: usize, vb: VarBuilder) -> CResult<Self> {
        Ok(Self {
            conv: ConvBnRelu::new(cin, mid, 3, 1, vb.pp("conv"))?,
            conv_out: conv(mid, n_classes, 1, 1, 0, vb.pp("conv_out"))?,
        })
    }
}

impl Module for OutputHead {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        self.conv_out.forward(&self.conv.forward(x)?)
    }
}

/// The BiSeNet face parser (module docs).
#[derive(Debug, Clone)]
pub struct BiSeNet {
    cp: ContextPath,
    ffm: FeatureFusion,
    conv_out: OutputHead,
    config: BiSeNetConfig,
}

impl BiSeNet {
    /// Builds the network over `vb` (keys at its root, as in `79999_iter.pth`).
    pub fn new(config: BiSeNetConfig, vb: VarBuilder) -> CResult<Self> {
        if config.width_divisor == 0 || !FULL_BASE_WIDTH.is_multiple_of(config.width_divisor) {
            candle_core::bail!(
                "BiSeNet width divisor {} does not divide {FULL_BASE_WIDTH}",
                config.width_divisor
            );
        }
        let base = config.base_width();
        let (c64, c128, c256) = (base, 2 * base, 4 * base);
        let n = config.n_classes;
        let net = Self {
            cp: ContextPath::new(base, vb.pp("cp"))?,
            ffm: FeatureFusion::new(c256, c256, vb.pp("ffm"))?,
            conv_out: OutputHead::new(c256, c256, n, vb.pp("conv_out"))?,
            config,
        };
        // The auxiliary heads: requested so that the strict check sees them (and their shapes),
        // then dropped (the reference reads only the main head).
        OutputHead::new(c128, c64, n, vb.pp("conv_out16"))?;
        OutputHead::new(c128, c64, n, vb.pp("conv_out32"))?;
        Ok(net)
    }

    /// The shape it was built with.
    pub fn config(&self) -> BiSeNetConfig {
        self.config
    }

    /// The main head's logits at 1/8 of the input, `(N, classes, ⌈H/8⌉, ⌈W/8⌉)`, from a
    /// normalised `(N, 3, H, W)` batch.
    pub fn forward_low(&self, x: &Tensor) -> CResult<Tensor> {
        let (spatial, context) = self.cp.forward(x)?;
        self.conv_out
            .forward(&self.ffm.forward(&spatial, &context)?)
    }

    /// The main head's logits at the input size `(N, classes, H, W)`: bilinear with
    /// `align_corners = true`.
    pub fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.forward_low(x)?.upsample_bilinear2d(h, w, true)
    }
}

/// A loaded parser with the reference's input handling (module docs).
#[derive(Debug, Clone)]
pub struct FaceParser {
    net: BiSeNet,
    device: Device,
    path: PathBuf,
}

impl FaceParser {
    /// Loads a BiSeNet checkpoint (`.pth`, legacy or zip, or `.safetensors`) in f32 on
    /// `device`, with the strict key check (BatchNorm's `num_batches_tracked` counters are the
    /// only keys it may skip). A wrong file is an [`EngineError::Weights`] naming the key.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let weights = StrictWeights::open(path)?;
        let config = BiSeNetConfig::from_weights(&weights)?;
        let ignore = |k: &str| k.ends_with("num_batches_tracked");
        let (net, report) = weights.build(DType::F32, device, &[&ignore], |vb| {
            BiSeNet::new(config, vb)
        })?;
        log::info!(
            "face parser {}: {} tensors, {} parameters, {} classes, width divisor {}",
            path.display(),
            report.used,
            report.parameters,
            config.n_classes,
            config.width_divisor
        );
        Ok(Self {
            net,
            device: device.clone(),
            path: path.to_path_buf(),
        })
    }

    /// [`Self::load`] once per process for each version of the file (path, length, mtime) and
    /// device: the face pass is set up per frame, and re-reading a 53 MB checkpoint per frame
    /// would be wasted work on the render path. The parser is kept in the process's resource
    /// registry ([`crate::registry`], as a [`Kind::Model`] charged the file's length), which
    /// frees it on PurgeCaches when no render is running. An edited checkpoint is a new
    /// version, and replaces the old one.
    pub fn load_shared(path: &Path, device: &Device) -> Result<Self> {
        Self::load_shared_in(crate::registry::global(), path, device)
    }

    /// [`Self::load_shared`] in `registry`.
    pub(crate) fn load_shared_in(
        registry: &Registry,
        path: &Path,
        device: &Device,
    ) -> Result<Self> {
        let Ok(version) = crate::registry::file_version("bisenet", path) else {
            // Unreadable metadata: `load` reports the problem with its usual message.
            return Self::load(path, device);
        };
        let on_device = |k: Key| {
            KeyHasher::tagged("bisenet-on-device")
                .key(k)
                .str(&format!("{:?}", device.location()))
                .finish()
        };
        let parser = registry.get_or_insert_with(
            Kind::Model,
            on_device(version.key),
            Some(on_device(version.path_key)),
            |_: &FaceParser| version.len as usize,
            || Self::load(path, device),
        )?;
        Ok(parser.as_ref().clone())
    }

    /// The identity of the checkpoint file's current version (path, size and mtime), or `None`
    /// when its metadata cannot be read. Part of the face pass's cache key.
    pub fn version(path: &Path) -> Option<String> {
        let meta = std::fs::metadata(path).ok()?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Some(format!("{}\u{0}{}\u{0}{mtime}", path.display(), meta.len()))
    }

    /// The network.
    pub fn net(&self) -> &BiSeNet {
        &self.net
    }

    /// The checkpoint it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The normalised input `(1, 3, h, w)` of an interleaved 8-bit RGB image: ToTensor (÷255) then
    /// ImageNet mean/std, in f32 as torchvision computes it.
    pub fn preprocess(&self, rgb: &[u8], w: usize, h: usize) -> Result<Tensor> {
        if w == 0 || h == 0 || rgb.len() != w * h * 3 {
            return Err(EngineError::Input(format!(
                "face parser input is {w}×{h} with {} bytes; expected width·height·3",
                rgb.len()
            )));
        }
        let mut planar = vec![0f32; 3 * w * h];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                let v = f32::from(px[c]) / 255.0;
                planar[c * w * h + i] = (v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
        }
        Ok(Tensor::from_vec(planar, (1, 3, h, w), &self.device)?)
    }

    /// The main head's logits `(1, classes, h, w)` of an RGB image.
    pub fn logits(&self, rgb: &[u8], w: usize, h: usize) -> Result<Tensor> {
        let x = self.preprocess(rgb, w, h)?;
        Ok(self.net.forward(&x)?)
    }

    /// The per-pixel class (argmax of the logits), `h·w` bytes row-major.
    pub fn classes(&self, rgb: &[u8], w: usize, h: usize) -> Result<Vec<u8>> {
        let logits = self.logits(rgb, w, h)?;
        let idx = logits.squeeze(0)?.argmax(0)?.flatten_all()?;
        let idx = idx.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        Ok(idx
            .into_iter()
            .map(|c| u8::try_from(c).unwrap_or(u8::MAX))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Held;

    #[test]
    fn shared_parser_loads_once_per_file_version(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/bisenet_tiny.pth");
        let dir = std::env::temp_dir().join(format!("mya-bisenet-shared-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("parser.pth");
        std::fs::copy(&fixture, &path)?;
        let len = std::fs::metadata(&path)?.len() as usize;
        let registry = Registry::new(1 << 30);
        let first = FaceParser::load_shared_in(&registry, &path, &Device::Cpu)?;
        let held = Held {
            entries: 1,
            bytes: len,
        };
        assert_eq!(registry.stats().of(Kind::Model), held);
        // Same length and mtime, unreadable contents: only a memo hit can succeed.
        let mtime = std::fs::metadata(&path)?.modified()?;
        std::fs::write(&path, vec![0u8; len])?;
        std::fs::File::options()
            .write(true)
            .open(&path)?
            .set_modified(mtime)?;
        let again = FaceParser::load_shared_in(&registry, &path, &Device::Cpu)?;
        assert_eq!(first.path(), again.path());
        assert_eq!(
            registry.stats().of(Kind::Model),
            held,
            "reused, not reloaded"
        );
        // A rewritten checkpoint (new mtime) is a new version and replaces the old one.
        std::fs::write(&path, std::fs::read(&fixture)?)?;
        let bumped = std::fs::File::options().write(true).open(&path)?;
        bumped.set_modified(mtime + std::time::Duration::from_secs(5))?;
        drop(bumped);
        FaceParser::load_shared_in(&registry, &path, &Device::Cpu)?;
        let stats = registry.stats();
        assert_eq!(stats.of(Kind::Model), held, "one version kept");
        assert_eq!(
            stats.peak_bytes, len,
            "the old version left before the new one came"
        );
        assert_eq!(
            registry.purge(false),
            Held::default(),
            "models survive a busy purge"
        );
        assert_eq!(registry.purge(true), held);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
