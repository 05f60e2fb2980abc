//! Temporal face (beyond the paper, issue 7): the face crops of a clip denoised jointly by the
//! same batch-overlapped window machinery as the body ([`crate::temporal`]),
//! with the head UNet inflated (all-frame `attn1`, GroupNorm statistics over the window)
//! and the head ControlNet per frame with window GroupNorm, as the body's 3D ControlNet.
//!
//! Only frames with a usable placement take part; they are renumbered consecutively
//! ("compact" indices) and windowed over that sequence, so a frame without a face neither breaks
//! a window nor receives a face. Crops should be stably aligned: resolve the placements with
//! smoothing ([`super::FacePass::clip_transforms`]).
//!
//! The window engine hands each window a `[F, C, H, W]` control tensor. Here each frame's
//! control packs `C = 3 + 1 + latent` channels: the mesh crop in [0, 1], then the latent-size
//! mask and masked latents upsampled by nearest-neighbour repetition to the crop size; the
//! networks take them back by sampling the top-left pixel of each block, which is exact.
//!
//! With a window of one frame the whole path reduces exactly to the per-frame pass.
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use parking_lot::Mutex;

use crate::job::BatchGate;
use crate::networks::controlnet::ControlCondition;
use crate::networks::unet::Temporal;
use crate::pipeline::DdimStep;
use crate::temporal::{
    Cache, ControlFrames, Counters, Fusion, Key, KeyHasher, NoProgress, SamplingParams, Tail,
    TemporalDenoiser, WindowNetworks, WindowPlan,
};
use crate::{EngineError, Result};

use super::blend::blend_back;
use super::enhance::{
    FaceCrops, FacePass, FaceResult, FaceStatus, Placement, ResolvedPlacement, SkipReason,
};
use super::inpaint::downsample_mask;
use super::landmarks::FivePoints;
use super::RgbFrame;

/// Where the temporal face pass reads a clip's frames (lazily: a window only needs its cone).
pub trait FaceClipSource: Send + Sync {
    /// Frames in the clip.
    fn len(&self) -> usize;
    /// True when the clip is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Frame size `(w, h)`.
    fn size(&self) -> (usize, usize);
    /// The body (generated) frame `f`, RGB `w × h`.
    fn body(&self, f: usize) -> Result<Vec<u8>>;
    /// The mesh render of frame `f`, RGB `w × h`.
    fn mesh(&self, f: usize) -> Result<Vec<u8>>;
    /// The placement data of frame `f`: matte (`w × h`) and landmarks.
    fn placement(&self, f: usize) -> Result<(Option<Vec<u8>>, Option<FivePoints>)>;
    /// The placement data of an earlier frame `f` as the crop smoothing's history reads it:
    /// [`Self::placement`] unless the source cannot see other frames' mattes (a host without
    /// temporal clip access), which leaves them out.
    fn history_placement(&self, f: usize) -> Result<(Option<Vec<u8>>, Option<FivePoints>)> {
        self.placement(f)
    }
}

/// Window settings of the temporal face.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TemporalFaceSettings {
    /// Frames per window (16, as the body).
    pub window: usize,
    /// Frames shared by consecutive windows (4).
    pub overlap: usize,
    /// Exponential smoothing weight of the crop transforms (`None` = off).
    pub smoothing: Option<f64>,
}

impl Default for TemporalFaceSettings {
    fn default() -> Self {
        Self {
            window: 16,
            overlap: 4,
            smoothing: Some(0.5),
        }
    }
}

/// The head networks as window networks over packed face controls.
struct HeadWindows<'p> {
    pass: &'p FacePass<'p>,
    identity: Key,
    /// Held around each batch and decode when set (the process's one-batch-at-a-time gate).
    gate: Option<&'p BatchGate>,
}

impl HeadWindows<'_> {
    fn unpack(&self, control: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let model = self.pass.inpainter().model();
        let latent = model.vae.config().latent_channels;
        let f = model.vae.config().downsample_factor();
        let (_, c, h, w) = control.dims4()?;
        if c != 4 + latent {
            return Err(EngineError::Input(format!(
                "packed face control has {c} channels; expected {}",
                4 + latent
            )));
        }
        let rgb = control.narrow(1, 0, 3)?;
        let rest = downsample_mask(
            &control.narrow(1, 3, 1 + latent)?.contiguous()?,
            h / f,
            w / f,
        )?;
        let mask = rest.narrow(1, 0, 1)?;
        let masked = rest.narrow(1, 1, latent)?;
        Ok((rgb, mask, masked))
    }
}

impl WindowNetworks for HeadWindows<'_> {
    fn predict(
        &self,
        latents: &Tensor,
        timestep: usize,
        control: &Tensor,
        control_scale: f64,
    ) -> Result<(Tensor, Tensor)> {
        let model = self.pass.inpainter().model();
        let (rgb, mask, masked) = self.unpack(control)?;
        let n = latents.dim(0)?;
        let t = timestep as f64;
        let unet_in = Tensor::cat(&[latents, &mask, &masked], 1)?;
        let (uncond, cond) = self.pass.inpainter().tokens();
        // Both CFG halves see the same control crops: one conditioning embedding.
        let eps = |ctx: &Tensor, rgb: &ControlCondition| -> Result<Tensor> {
            let ctx = ctx.repeat((n, 1, 1))?;
            let res = model.controlnet.forward_condition(
                latents,
                t,
                &ctx,
                rgb,
                control_scale,
                Temporal::Window,
            )?;
            model
                .unet
                .forward(&unet_in, t, &ctx, Some(&res), Temporal::Window)
        };
        BatchGate::run_opt(self.gate, || {
            let _bf16 = model.precision_scope();
            let rgb = model.controlnet.embed_condition(&rgb, latents.dtype())?;
            Ok((eps(uncond, &rgb)?, eps(cond, &rgb)?))
        })
    }

    fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        let model = self.pass.inpainter().model();
        BatchGate::run_opt(self.gate, || {
            let _bf16 = model.precision_scope();
            let x = model.vae.decode_scaled(&latent.unsqueeze(0)?)?;
            let x = ((x.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
            Ok(x.squeeze(0)?)
        })
    }

    fn identity(&self) -> Key {
        self.identity
    }
}

struct Packed {
    key: Key,
    crops: FaceCrops,
    /// The packed control tensor, made on first use: computing keys needs only the crops, and
    /// the VAE encode of the masked crop is wasted on frames whose windows are cached.
    control: Mutex<Option<Tensor>>,
    transform: ResolvedPlacement,
}

/// The temporal face pass of one clip.
pub struct TemporalFace<'p> {
    pass: &'p FacePass<'p>,
    source: &'p dyn FaceClipSource,
    resolved: Vec<std::result::Result<ResolvedPlacement, SkipReason>>,
    /// Clip frame of each compact index.
    valid: Vec<usize>,
    /// Compact index of each clip frame.
    compact: Vec<Option<usize>>,
    nets: HeadWindows<'p>,
    step: DdimStep,
    plan: WindowPlan,
    packed: Mutex<HashMap<usize, Arc<Packed>>>,
}

impl<'p> TemporalFace<'p> {
    /// Resolves every frame's placement (cheap: mattes and landmarks only) and plans the windows
    /// over the frames that have a face.
    pub fn new(
        pass: &'p FacePass<'p>,
        source: &'p dyn FaceClipSource,
        settings: TemporalFaceSettings,
    ) -> Result<Self> {
        let (w, h) = source.size();
        let data = (0..source.len())
            .map(|f| source.placement(f))
            .collect::<Result<Vec<_>>>()?;
        let placements: Vec<Placement> = data
            .iter()
            .map(|(m, l)| Placement {
                matte: m.as_deref(),
                landmarks: *l,
            })
            .collect();
        let mut resolved = pass.clip_transforms(&placements, w, h, settings.smoothing);
        // Frames whose crop mask holds no face pass through, as in the per-frame pass.
        for (r, p) in resolved.iter_mut().zip(&placements) {
            if let Ok(ok) = r {
                if let Err(e) = pass.crop_mask(p, ok, w, h) {
                    *r = Err(e);
                }
            }
        }
        let valid: Vec<usize> = (0..resolved.len())
            .filter(|&f| resolved[f].is_ok())
            .collect();
        let mut compact = vec![None; resolved.len()];
        for (i, &f) in valid.iter().enumerate() {
            compact[f] = Some(i);
        }
        let plan = WindowPlan::new(
            valid.len().max(1),
            settings.window,
            settings.overlap,
            Tail::Paper,
            Fusion::Flat,
        )?;
        let inp = pass.inpainter();
        let step = DdimStep(inp.scheduler().clone());
        let identity = KeyHasher::tagged("face-temporal")
            .key(pass.identity())
            .finish();
        Ok(Self {
            pass,
            source,
            resolved,
            valid,
            compact,
            nets: HeadWindows {
                pass,
                identity,
                gate: None,
            },
            step,
            plan,
            packed: Mutex::new(HashMap::new()),
        })
    }

    /// Runs every window batch and decode through `gate` (the process's batch gate). The gate
    /// is held only around network calls, never while control frames are fetched, so a clip
    /// source that renders body frames through the same gate cannot deadlock.
    pub fn serialise_on(mut self, gate: &'p BatchGate) -> Self {
        self.nets.gate = Some(gate);
        self
    }

    /// The denoiser over the clip's face crops; `cache` and `counters` as for the body.
    pub fn denoiser<'a>(
        &'a self,
        cache: &'a Cache,
        counters: &'a Counters,
    ) -> Result<TemporalDenoiser<'a>> {
        let inp = self.pass.inpainter();
        let model = inp.model();
        let s = inp.settings();
        let noise = inp
            .initial_latents()
            .squeeze(0)?
            .to_dtype(model.dtype)?
            .to_device(&model.device)?;
        let noise_key = KeyHasher::tagged("face-noise")
            .u64(s.seed)
            .f32s(&inp.initial_latents().flatten_all()?.to_vec1::<f32>()?)
            .finish();
        TemporalDenoiser::new(
            &self.nets,
            &self.step,
            self,
            cache,
            counters,
            self.plan.clone(),
            SamplingParams {
                guidance: s.guidance,
                control_scale: s.control_scale,
            },
            noise,
            noise_key,
        )
    }

    fn pack(&self, i: usize) -> Result<Arc<Packed>> {
        if let Some(p) = self.packed.lock().get(&i) {
            return Ok(p.clone());
        }
        let f = *self
            .valid
            .get(i)
            .ok_or_else(|| EngineError::Input(format!("no face frame {i}")))?;
        let resolved = self.resolved[f]
            .clone()
            .map_err(|e| EngineError::Input(format!("frame {f}: {e}")))?;
        let (w, h) = self.source.size();
        let body = self.source.body(f)?;
        let mesh = self.source.mesh(f)?;
        let (matte, landmarks) = self.source.placement(f)?;
        let placement = Placement {
            matte: matte.as_deref(),
            landmarks,
        };
        let frame = |data| RgbFrame {
            data,
            width: w,
            height: h,
        };
        let crops = self
            .pass
            .crops(frame(&body), frame(&mesh), &placement, &resolved)
            .map_err(|e| EngineError::Input(format!("frame {f}: {e}")))?;
        let packed = Arc::new(Packed {
            key: crops.key(self.pass.identity()),
            crops,
            control: Mutex::new(None),
            transform: resolved,
        });
        self.packed.lock().insert(i, packed.clone());
        Ok(packed)
    }

    /// The control tensor of a packed frame: the mesh crop in [0, 1], then the downsampled mask
    /// and the masked latents repeated to the crop size (made once per frame and render).
    fn control(&self, packed: &Packed) -> Result<Tensor> {
        let mut slot = packed.control.lock();
        if let Some(t) = slot.as_ref() {
            return Ok(t.clone());
        }
        let crops = &packed.crops;
        let inp = self.pass.inpainter();
        let model = inp.model();
        let size = inp.settings().size;
        let cond = inp.prepare(&crops.image, &crops.mask)?;
        let ctrl: Vec<f32> = crops.control.iter().map(|&v| v as f32 / 255.0).collect();
        let ctrl = Tensor::from_vec(ctrl, (size, size, 3), &Device::Cpu)?
            .permute((2, 0, 1))?
            .to_dtype(model.dtype)?
            .to_device(&model.device)?;
        // Nearest repetition to the crop size; `HeadWindows::unpack` samples it back exactly.
        let rest = Tensor::cat(&[&cond.mask, &cond.masked_latents], 1)?
            .upsample_nearest2d(size, size)?
            .squeeze(0)?;
        let control = Tensor::cat(&[&ctrl, &rest], 0)?;
        *slot = Some(control.clone());
        Ok(control)
    }

    /// The final frame `f` of the clip: the body frame with the temporally denoised face blended
    /// in, or the body frame unchanged when the frame has no usable placement.
    pub fn frame(&self, denoiser: &TemporalDenoiser, f: usize) -> Result<FaceResult> {
        let (w, h) = self.source.size();
        let body = self.source.body(f)?;
        let body_frame = RgbFrame {
            data: &body,
            width: w,
            height: h,
        };
        let i = match (self.resolved.get(f), self.compact.get(f).copied().flatten()) {
            (Some(Ok(_)), Some(i)) => i,
            (Some(Err(reason)), _) => return Ok(self.pass.pass_through(body_frame, *reason, None)),
            _ => {
                return Err(EngineError::Input(format!(
                    "frame {f} is outside the clip of {}",
                    self.resolved.len()
                )))
            }
        };
        let packed = self.pack(i)?;
        let img = denoiser.image(i, &NoProgress)?;
        let size = self.pass.inpainter().settings().size;
        let data = img.permute((1, 2, 0))?.flatten_all()?.to_vec1::<f32>()?;
        let face: Vec<u8> = data
            .iter()
            .map(|&v| (v * 255.0).round_ties_even().clamp(0.0, 255.0) as u8)
            .collect();
        let s = self.pass.settings();
        let m = packed.transform.transform;
        let rgb = blend_back(&body, w, h, &face, size, &m, s.crop, &s.feather)
            .ok_or_else(|| EngineError::Input("face transform is singular".into()))?;
        Ok(FaceResult {
            rgb,
            status: FaceStatus::Enhanced(packed.transform.source),
            transform: Some(m),
        })
    }
}

impl ControlFrames for TemporalFace<'_> {
    fn len(&self) -> usize {
        self.plan.len()
    }

    fn key(&self, f: usize) -> Result<Key> {
        Ok(self.pack(f)?.key)
    }

    fn frame(&self, f: usize) -> Result<Tensor> {
        self.control(self.pack(f)?.as_ref())
    }
}
