//! Image sequences on disk: finding the frames of an input (a directory of PNGs in name order,
//! or a printf pattern such as `shots/a.%04d.png`), decoding them lazily, and naming outputs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbaImage;
use parking_lot::Mutex;

use crate::error::HostError;

/// Frames decoded and kept in memory at most (a small cache: renders touch nearby frames).
const CACHE_FRAMES: usize = 48;

/// A printf-style frame pattern: `prefix %0Nd suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    prefix: String,
    width: usize,
    zero: bool,
    suffix: String,
}

impl Pattern {
    /// Parse a pattern with exactly one `%d`, `%Nd` or `%0Nd` in its file name.
    pub fn parse(s: &str) -> Option<Pattern> {
        let at = s.find('%')?;
        let rest = &s[at + 1..];
        let zero = rest.starts_with('0');
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let after = &rest[digits.len()..];
        let suffix = after.strip_prefix('d')?;
        if suffix.contains('%') {
            return None;
        }
        Some(Pattern {
            prefix: s[..at].to_string(),
            width: digits.parse().unwrap_or(0),
            zero,
            suffix: suffix.to_string(),
        })
    }

    /// The path of frame `n`.
    pub fn format(&self, n: i32) -> String {
        let num = if self.zero {
            if n < 0 {
                format!("-{:0w$}", -(n as i64), w = self.width.saturating_sub(1))
            } else {
                format!("{:0w$}", n, w = self.width)
            }
        } else {
            format!("{:w$}", n, w = self.width)
        };
        format!("{}{}{}", self.prefix, num, self.suffix)
    }

    /// The frame number of a path if it matches this pattern.
    fn match_path(&self, path: &str) -> Option<i32> {
        let mid = path
            .strip_prefix(&self.prefix)?
            .strip_suffix(&self.suffix)?;
        let t = mid.trim_start();
        if t.is_empty()
            || !t
                .trim_start_matches('-')
                .chars()
                .all(|c| c.is_ascii_digit())
        {
            return None;
        }
        t.parse().ok()
    }
}

/// The frames of an input sequence: frame number → file.
#[derive(Debug, Clone)]
pub struct Sequence {
    /// Files by frame number.
    pub frames: BTreeMap<i32, PathBuf>,
}

impl Sequence {
    /// Find the frames of `spec`: a directory (PNG files sorted by name, numbered from 0) or a
    /// printf pattern (numbers taken from the file names).
    pub fn open(spec: &str) -> Result<Sequence, HostError> {
        let mut frames = BTreeMap::new();
        if Pattern::parse(spec).is_some() {
            let path = Path::new(spec);
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
            let Some(p) = file.as_deref().and_then(Pattern::parse) else {
                return Err(HostError::Sequence(format!(
                    "{spec}: the frame number (%d, %04d) must be in the file name"
                )));
            };
            let entries = std::fs::read_dir(dir)
                .map_err(|e| HostError::Sequence(format!("cannot list {}: {e}", dir.display())))?;
            for entry in entries.flatten() {
                if let Some(n) = p.match_path(&entry.file_name().to_string_lossy()) {
                    frames.insert(n, entry.path());
                }
            }
        } else {
            let dir = Path::new(spec);
            let entries = std::fs::read_dir(dir)
                .map_err(|e| HostError::Sequence(format!("cannot list {spec}: {e}")))?;
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")))
                .collect();
            files.sort();
            for (i, f) in files.into_iter().enumerate() {
                frames.insert(i as i32, f);
            }
        }
        if frames.is_empty() {
            return Err(HostError::Sequence(format!(
                "no PNG frames found in {spec}"
            )));
        }
        Ok(Sequence { frames })
    }

    /// First and last frame numbers.
    pub fn range(&self) -> (i32, i32) {
        let first = self.frames.keys().next().copied().unwrap_or(0);
        let last = self.frames.keys().next_back().copied().unwrap_or(0);
        (first, last)
    }
}

/// Decodes frames on demand and keeps a few in memory; shared by all render threads.
pub struct FrameStore {
    seq: Sequence,
    cache: Mutex<HashMap<i32, Arc<RgbaImage>>>,
}

impl FrameStore {
    /// A store over `seq`.
    pub fn new(seq: Sequence) -> FrameStore {
        FrameStore {
            seq,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The sequence.
    pub fn sequence(&self) -> &Sequence {
        &self.seq
    }

    /// Decode (or reuse) frame `n` as 8-bit RGBA; `None` if there is no such frame or it does
    /// not decode (logged).
    pub fn get(&self, n: i32) -> Option<Arc<RgbaImage>> {
        if let Some(img) = self.cache.lock().get(&n) {
            return Some(img.clone());
        }
        let path = self.seq.frames.get(&n)?;
        let img = match load_rgba8(path) {
            Ok(i) => Arc::new(i),
            Err(e) => {
                log::error!("{e}");
                return None;
            }
        };
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_FRAMES {
            // Evict the frame farthest from the one asked for.
            if let Some(far) = cache.keys().copied().max_by_key(|k| (k - n).unsigned_abs()) {
                cache.remove(&far);
            }
        }
        cache.insert(n, img.clone());
        Some(img)
    }
}

/// Decode an image file as 8-bit RGBA.
pub fn load_rgba8(path: &Path) -> Result<RgbaImage, HostError> {
    let img = image::open(path)
        .map_err(|e| HostError::Sequence(format!("cannot read {}: {e}", path.display())))?;
    Ok(img.to_rgba8())
}

/// Where frame `n` goes: a printf pattern, or a directory (same file name as the input frame).
pub fn output_path(output: &str, n: i32, input: &Path) -> PathBuf {
    match Pattern::parse(output) {
        Some(p) => PathBuf::from(p.format(n)),
        None => {
            let name = input
                .file_name()
                .map(|s| s.to_os_string())
                .unwrap_or_else(|| format!("{n:06}.png").into());
            Path::new(output).join(name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = Pattern::parse("out/a.%04d.png").unwrap();
        assert_eq!(p.format(7), "out/a.0007.png");
        assert_eq!(p.format(-3), "out/a.-003.png");
        assert_eq!(p.match_path("out/a.0012.png"), Some(12));
        assert_eq!(p.match_path("out/a.x012.png"), None);
        assert_eq!(Pattern::parse("f%d.png").unwrap().format(12), "f12.png");
        assert!(Pattern::parse("plain/dir").is_none());
        assert!(Pattern::parse("a%04x.png").is_none());
    }

    #[test]
    fn directory_and_pattern_inputs() {
        let dir = std::env::temp_dir().join(format!("ofx-host-seq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in [3, 4, 10] {
            let img = RgbaImage::from_pixel(2, 1, image::Rgba([n as u8, 0, 0, 255]));
            img.save(dir.join(format!("f.{n:03}.png"))).unwrap();
        }
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        let seq = Sequence::open(dir.to_str().unwrap()).unwrap();
        assert_eq!(
            seq.frames.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        let pat = format!("{}/f.%03d.png", dir.display());
        let seq = Sequence::open(&pat).unwrap();
        assert_eq!(seq.range(), (3, 10));
        let store = FrameStore::new(seq);
        assert_eq!(store.get(10).unwrap().get_pixel(0, 0).0, [10, 0, 0, 255]);
        assert!(store.get(5).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
