//! Five-point face landmarks: the per-frame JSON file, and the checks that decide whether a set
//! of landmarks can place a face crop (issue 7).
//!
//! # File format
//!
//! A JSON object mapping a frame to five `[x, y]` pairs in pixels, in the InsightFace order:
//! image-left eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner
//! (what `anchor synth` writes as `landmarks.json`):
//!
//! ```json
//! { "000000": [[101.2, 80.5], [121.0, 80.9], [111.3, 92.0], [103.8, 101.7], [119.5, 101.9]],
//!   "000001": null }
//! ```
//!
//! A frame is found by its file stem (`000000` for `000000.png`), else by its 0-based index
//! written as a plain integer (`"0"`). `null` or a missing entry means no face in that frame.
//! Coordinates follow OpenCV (pixel centres at integers); a half-pixel convention difference
//! moves the crop by half a pixel, well below what the crop's blur hides.
use std::collections::BTreeMap;
use std::path::Path;

use crate::{EngineError, Result};

/// Five `(x, y)` points.
pub type FivePoints = [[f64; 2]; 5];

/// Why a set of landmarks cannot place a crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LandmarkProblem {
    /// A coordinate is NaN or infinite.
    NotFinite,
    /// The points (nearly) coincide: no scale can be estimated.
    Coincident,
    /// The points lie (nearly) on one line: the rotation is ill-determined.
    Collinear,
    /// A point lies outside the frame.
    OutsideFrame,
}

impl std::fmt::Display for LandmarkProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotFinite => "a landmark coordinate is not a finite number",
            Self::Coincident => "the five landmarks coincide",
            Self::Collinear => "the five landmarks lie on one line",
            Self::OutsideFrame => "a landmark lies outside the frame",
        })
    }
}

impl std::error::Error for LandmarkProblem {}

/// Points closer than this (pixels, RMS distance from their centroid) count as coincident.
pub const MIN_SPREAD_PX: f64 = 1.0;
/// A minor/major RMS spread ratio below this counts as collinear. For the FFHQ template it is
/// about 0.8; a face seen fully in profile still stays well above 0.1.
pub const MIN_ASPECT: f64 = 0.05;

/// Checks that `points` can place a crop in a `w × h` frame.
pub fn check(points: &FivePoints, w: usize, h: usize) -> std::result::Result<(), LandmarkProblem> {
    if points.iter().flatten().any(|v| !v.is_finite()) {
        return Err(LandmarkProblem::NotFinite);
    }
    let n = points.len() as f64;
    let cx = points.iter().map(|p| p[0]).sum::<f64>() / n;
    let cy = points.iter().map(|p| p[1]).sum::<f64>() / n;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for p in points {
        let (dx, dy) = (p[0] - cx, p[1] - cy);
        sxx += dx * dx / n;
        sxy += dx * dy / n;
        syy += dy * dy / n;
    }
    let tr = sxx + syy;
    if tr.sqrt() < MIN_SPREAD_PX {
        return Err(LandmarkProblem::Coincident);
    }
    let disc = ((sxx - syy).powi(2) + 4.0 * sxy * sxy).sqrt();
    let major = 0.5 * (tr + disc);
    let minor = (0.5 * (tr - disc)).max(0.0);
    if (minor / major).sqrt() < MIN_ASPECT {
        return Err(LandmarkProblem::Collinear);
    }
    let inside = |p: &[f64; 2]| p[0] >= 0.0 && p[1] >= 0.0 && p[0] <= w as f64 && p[1] <= h as f64;
    if !points.iter().all(inside) {
        return Err(LandmarkProblem::OutsideFrame);
    }
    Ok(())
}

/// A per-frame landmarks file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LandmarkTrack {
    entries: BTreeMap<String, Option<FivePoints>>,
}

impl LandmarkTrack {
    /// Parses the JSON text (see the module docs); `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| EngineError::Input(format!("landmarks file {origin}: {e}")))?;
        let obj = value.as_object().ok_or_else(|| {
            EngineError::Input(format!(
                "landmarks file {origin}: expected an object mapping frames to five [x, y] pairs"
            ))
        })?;
        let mut entries = BTreeMap::new();
        for (k, v) in obj {
            let pts = if v.is_null() {
                None
            } else {
                let bad = || {
                    EngineError::Input(format!(
                        "landmarks file {origin}: frame {k:?} must be null or five [x, y] number \
                         pairs, found {v}"
                    ))
                };
                let arr = v.as_array().filter(|a| a.len() == 5).ok_or_else(bad)?;
                let mut pts = [[0.0; 2]; 5];
                for (p, item) in pts.iter_mut().zip(arr) {
                    let xy = item.as_array().filter(|a| a.len() == 2).ok_or_else(bad)?;
                    for (c, n) in p.iter_mut().zip(xy) {
                        *c = n.as_f64().ok_or_else(bad)?;
                    }
                }
                Some(pts)
            };
            entries.insert(k.clone(), pts);
        }
        Ok(Self { entries })
    }

    /// Reads and parses a landmarks file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The landmarks of the frame with file stem `stem` (else 0-based `index`); `None` when the
    /// file has no face for it.
    pub fn get(&self, stem: &str, index: usize) -> Option<FivePoints> {
        self.entries
            .get(stem)
            .or_else(|| self.entries.get(&index.to_string()))
            .copied()
            .flatten()
    }

    /// Number of frames listed (with or without a face).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the file lists no frame.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face::align::FFHQ_TEMPLATE_512;

    #[test]
    fn template_passes_and_bad_sets_are_named() {
        assert_eq!(check(&FFHQ_TEMPLATE_512, 512, 512), Ok(()));
        assert_eq!(
            check(&[[10.0, 10.0]; 5], 512, 512),
            Err(LandmarkProblem::Coincident)
        );
        let line = [
            [10.0, 10.0],
            [20.0, 20.0],
            [30.0, 30.0],
            [40.0, 40.0],
            [50.0, 50.0],
        ];
        assert_eq!(check(&line, 512, 512), Err(LandmarkProblem::Collinear));
        assert_eq!(
            check(&FFHQ_TEMPLATE_512, 300, 512),
            Err(LandmarkProblem::OutsideFrame)
        );
        let mut nan = FFHQ_TEMPLATE_512;
        nan[2][0] = f64::NAN;
        assert_eq!(check(&nan, 512, 512), Err(LandmarkProblem::NotFinite));
    }

    #[test]
    fn file_lookup_by_stem_then_index() -> Result<()> {
        let t = LandmarkTrack::parse(
            r#"{"000003": [[1,2],[3,2],[2,3],[1,4],[3,4]], "5": [[1,2],[3,2],[2,3],[1,4],[3,4]], "000004": null}"#,
            "test",
        )?;
        assert_eq!(t.len(), 3);
        assert!(t.get("000003", 99).is_some());
        assert!(t.get("frame_x", 5).is_some());
        assert!(t.get("000004", 4).is_none());
        assert!(LandmarkTrack::parse(r#"{"0": [[1,2]]}"#, "t").is_err());
        Ok(())
    }
}
