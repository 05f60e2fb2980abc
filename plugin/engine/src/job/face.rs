//! The last step of a render job: the identity-specific face pass of Make-Your-Anchor (align the
//! face, inpaint it with the head model, blend it back), on the decoded body frames.
//!
//! Both front ends run it through [`FaceStep`], so they share every policy of the pass:
//! - the settings: each value the front end gives, else the face model folder's `face_defaults`
//!   (`anchor.json`), else the reference's ([`FaceOverrides::settings`]);
//! - the head reference photo: the one given, else the face model folder's `head.png`, else the
//!   body's reference ([`head_reference`]);
//! - the crop smoothing's history: the placements of the [`smoothing_history`] frames before
//!   the current one, so any frame renders alone at a bounded cost (a farm chunk, a scrub);
//! - per frame, or jointly in windows (the temporal face, beyond the paper);
//! - the process's face models, head tokens and enhanced-frame cache ([`FaceService`]).
//!
//! The front ends differ only in their [`FaceClipSource`]: the CLI reads the landmarks file and
//! the matte folder, the effect its clips and point parameters.
use std::path::Path;
use std::sync::Arc;

use std::sync::atomic::Ordering;

use crate::face::temporal::{FaceClipSource, TemporalFace, TemporalFaceSettings};
use crate::face::{self, FacePass, FaceSettings, RgbFrame};
use crate::face_service::{
    smoothing_history, FaceError, FaceOutcome, FaceRequest, FaceService, FramePlacement,
};
use crate::model::FaceDefaults;
use crate::temporal::{Counters, SharedStore, TemporalDenoiser};
use crate::{pipeline, Result};

use super::BatchGate;

/// An RGB photo, `(pixels, width, height)`, shared.
pub type Photo = Arc<(Vec<u8>, usize, usize)>;

/// Face settings a front end sets; `None` takes the face model's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaceOverrides {
    /// Aligned crop side in pixels.
    pub crop: Option<usize>,
    /// Inpainting side in pixels.
    pub size: Option<usize>,
    /// DDIM steps.
    pub steps: Option<usize>,
    /// Classifier-free guidance scale.
    pub guidance: Option<f64>,
    /// ControlNet conditioning scale.
    pub control_scale: Option<f64>,
    /// Seed of the face's initial noise, shared by all frames.
    pub seed: Option<u64>,
    /// Paste-back mask erosion box side in frame pixels.
    pub erode: Option<usize>,
    /// Paste-back mask Gaussian kernel side in frame pixels.
    pub blur: Option<usize>,
    /// JPEG round trip of the mesh crop before the head ControlNet.
    pub mesh_jpeg: Option<bool>,
    /// A BiSeNet face-parsing checkpoint (no default: the landmark template masks without it).
    pub parser: Option<std::path::PathBuf>,
}

impl FaceOverrides {
    /// The pass settings: each value set here, else `defaults` (the face model folder's
    /// `face_defaults`, whose absent values are the reference's).
    pub fn settings(&self, defaults: &FaceDefaults) -> FaceSettings {
        let d = defaults;
        FaceSettings {
            crop: self.crop.unwrap_or(d.crop),
            inpaint: face::inpaint::InpaintSettings {
                size: self.size.unwrap_or(d.size),
                steps: self.steps.unwrap_or(d.steps),
                guidance: self.guidance.unwrap_or(d.guidance_scale),
                control_scale: self.control_scale.unwrap_or(d.control_scale),
                seed: self.seed.unwrap_or(d.seed),
                ..Default::default()
            },
            feather: face::feather::FeatherSettings {
                erode: self.erode.unwrap_or(d.erode),
                blur: self.blur.unwrap_or(d.blur),
            },
            parser: self.parser.clone(),
            mesh_jpeg: self.mesh_jpeg.unwrap_or(d.mesh_jpeg),
        }
    }
}

/// The head reference photo: `given` (the CLI's `--face-appearance`, the effect's FaceAppearance
/// clip), else the face model folder's `head.png`, else the body's reference (`body`, asked for
/// only then).
pub fn head_reference(
    given: Option<Photo>,
    face_folder: &Path,
    body: impl FnOnce() -> Result<Photo>,
) -> Result<Photo> {
    match (
        face::inpaint::head_photo(given.is_some(), face_folder),
        given,
    ) {
        (face::inpaint::HeadPhoto::Given, Some(photo)) => Ok(photo),
        (face::inpaint::HeadPhoto::FaceModel(path), _) => pipeline::read_rgb8_memo(&path),
        _ => body(),
    }
}

/// How the face crops are denoised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaceMode {
    /// Each frame's crop on its own (the reference).
    PerFrame,
    /// The clip's crops jointly, in windows of `window` crops overlapping by `overlap`, with the
    /// inflated head UNet (beyond the paper).
    Temporal {
        /// Crops per window.
        window: usize,
        /// Crops shared by consecutive windows.
        overlap: usize,
    },
}

/// The face pass of one render: the request, the head reference and the mode.
pub struct FaceStep<'s> {
    service: &'s FaceService,
    request: FaceRequest,
    photo: Photo,
    mode: FaceMode,
    gate: Option<&'s BatchGate>,
    shared: Option<Arc<SharedStore>>,
}

impl<'s> FaceStep<'s> {
    /// The pass of `request` with the head reference `photo`, run by `service`; its network
    /// batches go through `gate` when there is one (a host's process runs one batch at a time).
    pub fn new(
        service: &'s FaceService,
        request: FaceRequest,
        photo: Photo,
        mode: FaceMode,
        gate: Option<&'s BatchGate>,
    ) -> Self {
        Self {
            service,
            request,
            photo,
            mode,
            gate,
            shared: None,
        }
    }

    /// Shares the enhanced frames (and the temporal face's windows) with the other processes of
    /// a farm job through `store`, as the body's windows are.
    pub fn with_shared(mut self, store: Option<Arc<SharedStore>>) -> Self {
        self.shared = store;
        self
    }

    /// Loads the face model and encodes the head reference now, so that the first frame does
    /// not pay for them; a folder that is not a face model fails here.
    pub fn prepare(&self) -> std::result::Result<(), FaceError> {
        self.service
            .load(&self.request, self.photo_frame())
            .map(|_| ())
    }

    /// The request.
    pub fn request(&self) -> &FaceRequest {
        &self.request
    }

    fn photo_frame(&self) -> RgbFrame<'_> {
        RgbFrame {
            data: &self.photo.0,
            width: self.photo.1,
            height: self.photo.2,
        }
    }

    /// Loads the pass (model, head tokens; with the temporal face, every frame's placement of
    /// `clip` and the window plan) and hands it to `then`, which asks for frames of `clip`.
    pub fn run<T>(
        &self,
        clip: &dyn FaceClipSource,
        then: impl FnOnce(&FaceFrames<'_>) -> std::result::Result<T, FaceError>,
    ) -> std::result::Result<T, FaceError> {
        let (loaded, tokens) = self.service.load(&self.request, self.photo_frame())?;
        let pass = FacePass::new(
            &loaded.model,
            &tokens,
            self.request.settings.clone(),
            loaded.identity,
        )?;
        let FaceMode::Temporal { window, overlap } = self.mode else {
            return then(&FaceFrames {
                step: self,
                clip,
                pass: &pass,
                temporal: None,
            });
        };
        let settings = TemporalFaceSettings {
            window,
            overlap,
            smoothing: self.request.smoothing,
        };
        let mut temporal = TemporalFace::new(&pass, clip, settings)?;
        if let Some(gate) = self.gate {
            temporal = temporal.serialise_on(gate);
        }
        let (cache, counters) = self.service.temporal_cache();
        let denoiser = temporal
            .denoiser(cache, counters)?
            .with_shared(self.shared.clone());
        then(&FaceFrames {
            step: self,
            clip,
            pass: &pass,
            temporal: Some((&temporal, &denoiser, counters)),
        })
    }
}

/// The face pass of one render, loaded, over one clip.
pub struct FaceFrames<'a> {
    step: &'a FaceStep<'a>,
    clip: &'a dyn FaceClipSource,
    pass: &'a FacePass<'a>,
    temporal: Option<(&'a TemporalFace<'a>, &'a TemporalDenoiser<'a>, &'a Counters)>,
}

impl FaceFrames<'_> {
    /// The face pass on frame `f` of the clip, whose body frame (RGB at the clip's size) is
    /// `body` and mesh render `mesh`. Per frame, the placements of `f` and of the frames before
    /// it (for the crop smoothing) come from the clip; the temporal face reads the clip itself.
    pub fn frame(
        &self,
        f: usize,
        body: &[u8],
        mesh: &[u8],
    ) -> std::result::Result<FaceOutcome, FaceError> {
        if let Some((temporal, denoiser, counters)) = self.temporal {
            let before = counters.network_calls.load(Ordering::Relaxed);
            let out = temporal.frame(denoiser, f)?;
            let calls = counters.network_calls.load(Ordering::Relaxed) - before;
            return Ok(FaceOutcome {
                rgb: out.rgb,
                status: out.status,
                computed: calls > 0,
            });
        }
        let clip = self.clip;
        let placement = |f: usize, history: bool| -> Result<FramePlacement> {
            let (matte, landmarks) = if history {
                clip.history_placement(f)?
            } else {
                clip.placement(f)?
            };
            Ok(FramePlacement { matte, landmarks })
        };
        let current = placement(f, false)?;
        let smoothing = self.step.request.smoothing;
        let history = match smoothing {
            Some(alpha) => {
                let n = smoothing_history(alpha).min(f);
                (f - n..f)
                    .map(|g| placement(g, true))
                    .collect::<Result<Vec<_>>>()?
            }
            None => Vec::new(),
        };
        let (w, h) = clip.size();
        let frame = |data| RgbFrame {
            data,
            width: w,
            height: h,
        };
        self.step.service.enhance_frame(
            self.pass,
            smoothing,
            (frame(body), frame(mesh)),
            &history,
            &current,
            (self.step.gate, self.step.shared.as_deref()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_take_the_face_models_defaults_for_what_they_leave_unset() {
        let defaults = FaceDefaults {
            size: 32,
            erode: 2,
            blur: 3,
            ..FaceDefaults::default()
        };
        let o = FaceOverrides {
            steps: Some(4),
            blur: Some(5),
            ..FaceOverrides::default()
        };
        let s = o.settings(&defaults);
        assert_eq!((s.crop, s.inpaint.size, s.inpaint.steps), (512, 32, 4));
        assert_eq!((s.feather.erode, s.feather.blur), (2, 5));
        assert_eq!(
            (s.inpaint.guidance, s.inpaint.seed, s.mesh_jpeg),
            (3.5, 999, true)
        );
    }

    #[test]
    fn the_head_reference_is_the_given_photo_then_head_png_then_the_bodys() {
        let dir = std::env::temp_dir().join(format!("anchor-head-ref-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let photo = |v: u8| -> Photo { Arc::new((vec![v; 3], 1, 1)) };
        let body_asked = std::cell::Cell::new(0);
        let body = || {
            body_asked.set(body_asked.get() + 1);
            Ok(photo(7))
        };
        assert_eq!(
            head_reference(Some(photo(1)), &dir, body).unwrap().0,
            [1; 3]
        );
        assert_eq!(head_reference(None, &dir, body).unwrap().0, [7; 3]);
        assert_eq!(body_asked.get(), 1);
        image::RgbImage::from_pixel(1, 1, image::Rgb([9, 9, 9]))
            .save(dir.join(face::inpaint::HEAD_PHOTO))
            .unwrap();
        assert_eq!(head_reference(None, &dir, body).unwrap().0, [9; 3]);
        assert_eq!(
            head_reference(Some(photo(1)), &dir, body).unwrap().0,
            [1; 3]
        );
        assert_eq!(body_asked.get(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
