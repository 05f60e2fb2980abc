//! Per-frame face placement inputs of a clip on disk (the CLI's `--face-landmarks FILE` and
//! `--face-matte DIR`): the landmarks file and a folder of mattes named like the pose frames,
//! both brought to the working resolution.
use std::path::{Path, PathBuf};

use crate::{EngineError, Result};

use super::landmarks::{FivePoints, LandmarkTrack};
use super::warp::resize_linear_u8;

/// One frame's placement data, owned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameFace {
    /// The matte at the working size (one byte per pixel), when a matte file exists.
    pub matte: Option<Vec<u8>>,
    /// The landmarks in working-size pixels, when the file lists a face for the frame.
    pub landmarks: Option<FivePoints>,
}

/// The face inputs of a clip.
#[derive(Debug, Clone)]
pub struct FaceInputs {
    track: Option<LandmarkTrack>,
    matte_dir: Option<PathBuf>,
    frames: Vec<PathBuf>,
    size: (usize, usize),
}

impl FaceInputs {
    /// `frames` are the clip's pose files in clip order (their stems key the landmarks and name
    /// the mattes); `size` is the working size the frames are rendered at.
    pub fn open(
        landmarks: Option<&Path>,
        matte_dir: Option<&Path>,
        frames: &[PathBuf],
        size: (usize, usize),
    ) -> Result<Self> {
        if landmarks.is_none() && matte_dir.is_none() {
            return Err(EngineError::Input(
                "the face pass needs a landmarks file or a face-matte folder to place the face"
                    .into(),
            ));
        }
        let track = landmarks.map(LandmarkTrack::from_file).transpose()?;
        if let Some(d) = matte_dir {
            if !d.is_dir() {
                return Err(EngineError::missing(
                    d,
                    "the face-matte folder is absent; it holds one matte per pose frame, same \
                     file names",
                ));
            }
        }
        Ok(Self {
            track,
            matte_dir: matte_dir.map(Path::to_path_buf),
            frames: frames.to_vec(),
            size,
        })
    }

    /// The placement data of frame `f`.
    pub fn frame(&self, f: usize) -> Result<FrameFace> {
        let path = self.frames.get(f).ok_or_else(|| {
            EngineError::Input(format!(
                "frame {f} is outside the clip of {}",
                self.frames.len()
            ))
        })?;
        let (w, h) = self.size;
        let (ow, oh) = image::image_dimensions(path).map_err(|e| {
            EngineError::Input(format!("cannot read image {}: {e}", path.display()))
        })?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (sx, sy) = (w as f64 / ow as f64, h as f64 / oh as f64);
        // Pixel centres at integers: x' = (x + 0.5)·s − 0.5.
        let landmarks = self
            .track
            .as_ref()
            .and_then(|t| t.get(&stem, f))
            .map(|pts| pts.map(|[x, y]| [(x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5]));
        let matte = match &self.matte_dir {
            None => None,
            Some(dir) => {
                let file = path.file_name().map(|n| dir.join(n));
                match file.filter(|p| p.is_file()) {
                    None => None,
                    Some(p) => {
                        let img = image::open(&p)
                            .map_err(|e| {
                                EngineError::Input(format!(
                                    "cannot read matte {}: {e}",
                                    p.display()
                                ))
                            })?
                            .to_luma8();
                        let (mw, mh) = (img.width() as usize, img.height() as usize);
                        let data = img.into_raw();
                        Some(if (mw, mh) == (w, h) {
                            data
                        } else {
                            resize_linear_u8(&data, mw, mh, 1, w, h)
                        })
                    }
                }
            }
        };
        Ok(FrameFace { matte, landmarks })
    }
}

/// The generated body frame or the mesh render of a clip frame, RGB at the working size.
pub type FrameFn<'a> = &'a (dyn Fn(usize) -> Result<Vec<u8>> + Send + Sync);

/// A rendered clip as a [`super::temporal::FaceClipSource`]: body and mesh frames from
/// callbacks (e.g. the body denoiser and the pose sequence), placements from [`FaceInputs`],
/// each frame's read once (the crop smoothing and the temporal face read them again).
pub struct RenderedClip<'a> {
    inputs: &'a FaceInputs,
    len: usize,
    body: FrameFn<'a>,
    mesh: FrameFn<'a>,
    placements: parking_lot::Mutex<std::collections::HashMap<usize, FrameFace>>,
}

impl<'a> RenderedClip<'a> {
    /// The clip of `len` frames with the placement inputs `inputs` (which give the working
    /// size), the generated frames of `body` and the mesh renders of `mesh`.
    pub fn new(inputs: &'a FaceInputs, len: usize, body: FrameFn<'a>, mesh: FrameFn<'a>) -> Self {
        Self {
            inputs,
            len,
            body,
            mesh,
            placements: Default::default(),
        }
    }
}

impl super::temporal::FaceClipSource for RenderedClip<'_> {
    fn len(&self) -> usize {
        self.len
    }

    fn size(&self) -> (usize, usize) {
        self.inputs.size
    }

    fn body(&self, f: usize) -> Result<Vec<u8>> {
        (self.body)(f)
    }

    fn mesh(&self, f: usize) -> Result<Vec<u8>> {
        (self.mesh)(f)
    }

    fn placement(&self, f: usize) -> Result<(Option<Vec<u8>>, Option<FivePoints>)> {
        if let Some(fr) = self.placements.lock().get(&f) {
            return Ok((fr.matte.clone(), fr.landmarks));
        }
        let fr = self.inputs.frame(f)?;
        let out = (fr.matte.clone(), fr.landmarks);
        self.placements.lock().insert(f, fr);
        Ok(out)
    }
}
