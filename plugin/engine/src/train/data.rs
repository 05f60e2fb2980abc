//! The training data: the reference's JSON-Lines format, one object per line,
//! `{"source": mesh render, "target": frame, "reference": appearance image}` with paths relative
//! to the file, and the seeded order in which samples are drawn. The
//! head (face) format adds `"mask"`: the inverted face mask of the aligned crop (255 = keep,
//! 0 = face), required by [`Dataset::open_head`].
//!
//! Everything is checked before the first step, so a bad dataset fails in seconds with the file,
//! line and path at fault: a missing image, an empty dataset, and `source`/`target` images of
//! different sizes (unless `--resolution` asks to resize everything, as the reference's
//! `cv2.resize` to 512 does).
use std::path::{Path, PathBuf};

use super::{io_err, stream, tags, Result, TrainError};
use crate::resample::{resize_rgb8, Filter};

/// One training sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The mesh render (ControlNet input).
    pub source: PathBuf,
    /// The frame (diffusion target).
    pub target: PathBuf,
    /// The appearance image (CLIP tokens).
    pub reference: PathBuf,
    /// The inverted face mask (head data only).
    pub mask: Option<PathBuf>,
    /// The JSON-Lines file it came from.
    pub file: PathBuf,
    /// Its 1-based line number.
    pub line: usize,
}

/// A checked dataset: every image exists, and `source`/`target` share one size (or are resized).
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The samples, in file order (files in the order given).
    pub samples: Vec<Sample>,
    /// Working width of `source` and `target`.
    pub width: usize,
    /// Working height of `source` and `target`.
    pub height: usize,
}

fn field(v: &serde_json::Value, name: &str, file: &Path, line: usize) -> Result<PathBuf> {
    let s = v.get(name).and_then(|x| x.as_str()).ok_or_else(|| {
        TrainError::Data(format!(
            "{}:{line}: no string field \"{name}\" (expected {{\"source\", \"target\", \
             \"reference\"}})",
            file.display()
        ))
    })?;
    let p = PathBuf::from(s);
    Ok(if p.is_absolute() {
        p
    } else {
        file.parent().unwrap_or(Path::new(".")).join(p)
    })
}

impl Dataset {
    /// Reads and checks `files`. With `resolution`, every `source`/`target` is resized to that
    /// square size when used; without it they must all have the size of the first one.
    pub fn open(files: &[PathBuf], resolution: Option<usize>) -> Result<Self> {
        Self::open_with(files, resolution, false)
    }

    /// As [`Dataset::open`] for the head format: every line must also name an existing `mask`
    /// image ([`TrainError::NoMask`], [`TrainError::MissingImage`]).
    pub fn open_head(files: &[PathBuf], resolution: Option<usize>) -> Result<Self> {
        Self::open_with(files, resolution, true)
    }

    fn open_with(files: &[PathBuf], resolution: Option<usize>, head: bool) -> Result<Self> {
        if files.is_empty() {
            return Err(TrainError::EmptyDataset(
                "no JSON-Lines file was given".into(),
            ));
        }
        let mut samples = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(file).map_err(io_err(file))?;
            for (i, raw) in text.lines().enumerate() {
                let line = i + 1;
                if raw.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(raw).map_err(|e| {
                    TrainError::Data(format!("{}:{line}: not JSON: {e}", file.display()))
                })?;
                let sample = Sample {
                    source: field(&v, "source", file, line)?,
                    target: field(&v, "target", file, line)?,
                    reference: field(&v, "reference", file, line)?,
                    mask: match (head, v.get("mask").is_some_and(|m| m.is_string())) {
                        (false, _) => None,
                        (true, true) => Some(field(&v, "mask", file, line)?),
                        (true, false) => {
                            return Err(TrainError::NoMask {
                                file: file.clone(),
                                line,
                            })
                        }
                    },
                    file: file.clone(),
                    line,
                };
                for (name, p) in [
                    ("source", Some(&sample.source)),
                    ("target", Some(&sample.target)),
                    ("reference", Some(&sample.reference)),
                    ("mask", sample.mask.as_ref()),
                ]
                .into_iter()
                .filter_map(|(n, p)| Some((n, p?)))
                {
                    if !p.is_file() {
                        return Err(TrainError::MissingImage {
                            file: file.clone(),
                            line,
                            field: name.into(),
                            path: p.clone(),
                        });
                    }
                }
                samples.push(sample);
            }
        }
        let Some(first) = samples.first() else {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            return Err(TrainError::EmptyDataset(names.join(", ")));
        };
        let dims = |s: &Sample, name: &str, p: &Path| -> Result<(usize, usize)> {
            let (w, h) = image::image_dimensions(p).map_err(|e| {
                TrainError::Data(format!(
                    "{}:{}: \"{name}\" image {} cannot be read: {e}",
                    s.file.display(),
                    s.line,
                    p.display()
                ))
            })?;
            Ok((w as usize, h as usize))
        };
        let (want_w, want_h) = dims(first, "source", &first.source)?;
        for s in &samples {
            for (name, p) in [("source", &s.source), ("target", &s.target)] {
                let (w, h) = dims(s, name, p)?;
                if resolution.is_none() && (w, h) != (want_w, want_h) {
                    return Err(TrainError::MixedResolution {
                        file: s.file.clone(),
                        line: s.line,
                        field: name.into(),
                        path: p.clone(),
                        found_w: w,
                        found_h: h,
                        want_w,
                        want_h,
                    });
                }
            }
        }
        let (width, height) = resolution.map(|r| (r, r)).unwrap_or((want_w, want_h));
        Ok(Self {
            samples,
            width,
            height,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when there are no samples (never, after [`Dataset::open`]).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The mask image at `path` as one byte per pixel at the working size (its first channel,
    /// resized bilinearly as the reference's `cv2.resize`; the inpainting step binarises it).
    pub fn load_mask(&self, path: &Path) -> Result<Vec<u8>> {
        Ok(self.load_rgb(path)?.chunks_exact(3).map(|p| p[0]).collect())
    }

    /// `path` as 8-bit RGB at the working size (bilinear, like the reference's `cv2.resize`).
    pub fn load_rgb(&self, path: &Path) -> Result<Vec<u8>> {
        let (rgb, w, h) = crate::pipeline::read_rgb8(path)?;
        if (w, h) == (self.width, self.height) {
            return Ok(rgb);
        }
        Ok(resize_rgb8(
            &rgb,
            w,
            h,
            self.width,
            self.height,
            Filter::Bilinear,
        ))
    }
}

/// Which samples each step takes: a fresh seeded permutation per epoch, consecutive batches of
/// it, the last one shorter when the batch does not divide the dataset (torch `DataLoader`
/// with `shuffle=True, drop_last=False`). A pure function of (seed, step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataOrder {
    /// The run's seed.
    pub seed: u64,
    /// Dataset size.
    pub len: usize,
    /// Batch size.
    pub batch: usize,
}

impl DataOrder {
    /// Steps in one pass over the data.
    pub fn steps_per_epoch(&self) -> usize {
        self.len.div_ceil(self.batch.max(1))
    }

    /// The permutation of epoch `epoch` (Fisher–Yates).
    pub fn permutation(&self, epoch: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.len).collect();
        let mut rng = stream(self.seed, tags::ORDER, epoch as u64);
        for i in (1..v.len()).rev() {
            v.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        v
    }

    /// The sample indices of `step` (0-based) and its epoch.
    pub fn batch(&self, step: usize) -> (Vec<usize>, usize) {
        let spe = self.steps_per_epoch().max(1);
        let epoch = step / spe;
        let pos = step % spe;
        let perm = self.permutation(epoch);
        let start = pos * self.batch;
        let end = (start + self.batch).min(self.len);
        (perm[start..end].to_vec(), epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_covers_each_epoch_once() {
        let o = DataOrder {
            seed: 7,
            len: 10,
            batch: 4,
        };
        assert_eq!(o.steps_per_epoch(), 3);
        let mut seen: Vec<usize> = (0..3).flat_map(|s| o.batch(s).0).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(o.batch(2).0.len(), 2);
        assert_eq!(o.batch(3).1, 1);
        assert_ne!(o.permutation(0), o.permutation(1));
        assert_eq!(o.batch(4), o.batch(4));
    }
}
