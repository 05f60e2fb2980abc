//! `anchor face-data`: the head (face) training set from one `anchor synth` identity folder, in
//! the reference's head JSON-Lines format (`3_get_head_json.py`):
//! `{"source": aligned/X.png, "target": raw_aligned/X.png, "reference": raw_aligned/<ref>.png,
//! "mask": raw_aligned_mask/X.png}`, paths relative to `head_train.jsonl`.
//!
//! Per frame, with the face module's own functions:
//! - `M` = the least-squares similarity of the frame's five landmarks to the FFHQ template at the
//!   crop size (512, [`align::from_landmarks`]); frames whose landmarks fail
//!   [`landmarks::check`] (coincident, collinear, outside the frame) are skipped and counted;
//! - the mesh render and the person frame warped by `M` (`cv2.warpAffine` bilinear), then
//!   resized to the training resolution (`cv2.resize` bilinear), as the inference pass does;
//! - the mask: the face matte warped by `M`, binarised, dilated 3×3 and inverted (255 = keep,
//!   0 = face, [`mask::from_matte`]), resized the same way.
//!
//! The reference image is the aligned person crop of one frame (`--reference-frame`, default
//! the first usable one), as the reference picks one `raw_aligned` frame per split.
use std::path::{Path, PathBuf};

use super::{io_err, Result, TrainError};
use crate::face::landmarks::{self, LandmarkTrack};
use crate::face::warp::{resize_linear_u8, warp_affine_u8};
use crate::face::{align, mask};
use crate::pipeline::read_rgb8;

/// The JSON-Lines file written into the output folder.
pub const HEAD_JSONL: &str = "head_train.jsonl";

/// Settings of one face-data build (`anchor face-data`).
#[derive(Debug, Clone)]
pub struct FaceDataArgs {
    /// An `anchor synth` identity folder (mesh/, person/, face_matte/, landmarks.json), e.g.
    /// OUT/target.
    pub synth: PathBuf,
    /// Output folder: aligned/, raw_aligned/, raw_aligned_mask/ and head_train.jsonl.
    pub out: PathBuf,
    /// Side of the saved crops (the face model's training resolution; the reference's is 256).
    pub resolution: usize,
    /// Side of the aligned crop before resizing (the reference's is 512).
    pub crop: usize,
    /// The frame (0-based, among the usable ones) whose aligned person crop is the reference.
    pub reference_frame: usize,
}

impl FaceDataArgs {
    /// Defaults (256² crops aligned at 512) from `synth` into `out`.
    pub fn new(synth: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            synth: synth.into(),
            out: out.into(),
            resolution: 256,
            crop: 512,
            reference_frame: 0,
        }
    }
}

/// What [`build`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaceDataReport {
    /// The JSON-Lines file.
    pub jsonl: PathBuf,
    /// Samples written.
    pub samples: usize,
    /// Frames skipped (no landmarks, or landmarks that cannot place a crop).
    pub skipped: usize,
}

fn save(path: &Path, data: Vec<u8>, side: usize, channels: usize) -> Result<()> {
    let s = side as u32;
    let r = if channels == 3 {
        image::RgbImage::from_raw(s, s, data).map(|i| i.save(path))
    } else {
        image::GrayImage::from_raw(s, s, data).map(|i| i.save(path))
    };
    match r {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(TrainError::Data(format!(
            "cannot write {}: {e}",
            path.display()
        ))),
        None => Err(TrainError::Data(format!(
            "{}: bad image buffer",
            path.display()
        ))),
    }
}

/// Builds the head dataset (see the module docs).
pub fn build(a: &FaceDataArgs) -> Result<FaceDataReport> {
    if a.resolution == 0 || a.crop == 0 {
        return Err(TrainError::Data(
            "--resolution and --crop must be at least 1".into(),
        ));
    }
    let track = LandmarkTrack::from_file(&a.synth.join("landmarks.json"))?;
    let mesh_dir = a.synth.join("mesh");
    let mut frames: Vec<PathBuf> = std::fs::read_dir(&mesh_dir)
        .map_err(io_err(&mesh_dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    frames.sort();
    let dirs = ["aligned", "raw_aligned", "raw_aligned_mask"].map(|d| a.out.join(d));
    for d in &dirs {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    let (size, crop) = (a.resolution, a.crop);
    let mut names = Vec::new();
    let mut skipped = 0;
    for (i, mesh_path) in frames.iter().enumerate() {
        let Some(file) = mesh_path.file_name() else {
            continue;
        };
        let stem = mesh_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (mesh, w, h) = read_rgb8(mesh_path)?;
        let placed = track
            .get(&stem, i)
            .filter(|p| landmarks::check(p, w, h).is_ok())
            .and_then(|p| align::from_landmarks(&p, crop));
        let Some(m) = placed else {
            skipped += 1;
            continue;
        };
        let (person, pw, ph) = read_rgb8(&a.synth.join("person").join(file))?;
        let (matte, mw, mh) = read_rgb8(&a.synth.join("face_matte").join(file))?;
        if (pw, ph) != (w, h) || (mw, mh) != (w, h) {
            return Err(TrainError::Data(format!(
                "{}: person {pw}×{ph} and face matte {mw}×{mh} must match the mesh render \
                 {w}×{h}",
                mesh_path.display()
            )));
        }
        let matte: Vec<u8> = matte.chunks_exact(3).map(|p| p[0]).collect();
        let aligned = |rgb: &[u8]| {
            let c = warp_affine_u8(rgb, w, h, 3, &m, crop, crop);
            resize_linear_u8(&c, crop, crop, 3, size, size)
        };
        let keep = mask::from_matte(&matte, w, h, &m, crop);
        let keep = resize_linear_u8(&keep, crop, crop, 1, size, size);
        let name = format!("{stem}.png");
        save(&dirs[0].join(&name), aligned(&mesh), size, 3)?;
        save(&dirs[1].join(&name), aligned(&person), size, 3)?;
        save(&dirs[2].join(&name), keep, size, 1)?;
        names.push(name);
    }
    let Some(reference) = names.get(a.reference_frame.min(names.len().saturating_sub(1))) else {
        return Err(TrainError::EmptyDataset(format!(
            "{}: no frame has usable landmarks ({skipped} skipped)",
            a.synth.display()
        )));
    };
    let mut text = String::new();
    for n in &names {
        let line = serde_json::json!({
            "source": format!("aligned/{n}"),
            "target": format!("raw_aligned/{n}"),
            "reference": format!("raw_aligned/{reference}"),
            "mask": format!("raw_aligned_mask/{n}"),
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let jsonl = a.out.join(HEAD_JSONL);
    std::fs::write(&jsonl, text).map_err(io_err(&jsonl))?;
    Ok(FaceDataReport {
        jsonl,
        samples: names.len(),
        skipped,
    })
}

/// Runs `anchor face-data` (summary on stdout: the CLI, never the plugin).
pub fn run(a: &FaceDataArgs) -> Result<()> {
    let r = build(a)?;
    println!(
        "{} samples ({} frames skipped): {}",
        r.samples,
        r.skipped,
        r.jsonl.display()
    );
    Ok(())
}
