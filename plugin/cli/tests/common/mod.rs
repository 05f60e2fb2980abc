//! Helpers shared by the CLI's integration tests.
use std::path::Path;

/// The PNG frames of an output folder (not the settings stamp beside them), by name, as RGB.
pub fn frames(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, image::open(&p).unwrap().to_rgb8().into_raw())
        })
        .collect();
    v.sort();
    v
}
