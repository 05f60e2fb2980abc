//! Identity-specific face enhancement (issue 7): align a crop around the face, re-render
//! the face with the head (inpainting) model, and blend it back into the body frame.
//!
//! OFX-free; the effect and the CLI drive it through [`FacePass`]:
//!
//! 1. load the head model: `DiffusionModel::load_part(folder, ModelPart::Head, F32, &device)` (a
//!    `head/` subfolder or a model folder whose `unet/` takes 9 channels, see `engine::model`);
//! 2. head appearance tokens: [`inpaint::encode_head_appearance`] on the head reference photo;
//! 3. `FacePass::new(&model, &tokens, FaceSettings::default(), model_key)`;
//! 4. per frame: `pass.enhance(body, mesh, &Placement { matte, landmarks })` returns the final
//!    frame and a [`FaceStatus`]; a frame without a usable placement passes through unchanged
//!    (one warning per kind per pass). For temporally smoothed crops, resolve the clip's
//!    transforms with [`FacePass::clip_transforms`] and call [`FacePass::enhance_with`];
//! 5. temporal face (beyond the paper): [`temporal::TemporalFace`] over a [`temporal::FaceClipSource`].
//!
//! Coordinates: landmarks and transforms are in pixels of the frame handed to the pass (x right,
//! y down, pixel centres at integers, as OpenCV). An OFX host's 2D point parameters are canonical
//! coordinates with y up and the origin at the bottom-left: the effect converts them to image
//! points (`x = (X − x1)/par − 0.5`, `y = y2 − Y − 0.5`, then `(x + 0.5)·s − 0.5` to the working
//! size; see `effect::face`) before building a [`Placement`]. Mattes are one byte per
//! pixel, row 0 at the top, ≥ 128 = head.
//!
//! | file           | owns                                                                  |
//! |----------------|-----------------------------------------------------------------------|
//! | `align.rs`     | Umeyama similarity to the FFHQ template; matte placement; smoothing    |
//! | `warp.rs`      | `cv2.warpAffine` / `cv2.resize` bilinear (OpenCV 4.7), affine inverse  |
//! | `feather.rs`   | erode 40 + Gaussian 41 paste-back mask                                 |
//! | `landmarks.rs` | the landmarks JSON file; degenerate / out-of-frame checks              |
//! | `mask.rs`      | the inverted crop mask: matte, else BiSeNet parser, else template      |
//! | `inpaint.rs`   | the 9-channel inpainting diffusion with the head ControlNet            |
//! | `jpeg.rs`      | the mesh crop's JPEG round trip (libjpeg-turbo, OpenCV's settings)     |
//! | `blend.rs`     | inverse warp and feathered mix, truncated to 8 bits                    |
//! | `enhance.rs`   | the per-frame pass, degradation, memo                                  |
//! | `temporal.rs`  | temporal face: the crops through the overlapped-window engine          |
//! | `inputs.rs`    | a clip's landmarks file and matte folder on disk (the CLI's inputs)    |
pub mod align;
pub mod blend;
pub mod enhance;
pub mod feather;
pub mod inpaint;
pub mod inputs;
pub mod jpeg;
pub mod landmarks;
pub mod mask;
pub mod temporal;
pub mod warp;

pub use enhance::{
    FacePass, FaceResult, FaceSettings, FaceStatus, Placement, PlacementSource, RgbFrame,
    SkipReason,
};
