//! The OpenFX association's `hostDemo` (HostSupport, built by `tests/demo-host/build.sh` from the
//! `openfx-sys` 0.1.0 crate package) as a second, independent host: it loads our bundle from
//! `OFX_PLUGIN_PATH`, renders 3 frames of a 720×576 RGBA8 filter instance and writes
//! `Output.<t>.ppm`.
//!
//! What its Source clip serves at time t (HostSupport/examples/hostDemoClipInstance.cpp,
//! `MyImage`): every pixel grey `g(t) = floor(255 * t / OFXHOSTDEMOCLIPLENGTH) & 0xff` with
//! OFXHOSTDEMOCLIPLENGTH = 1.0, so g = 0, 255, 254 for t = 0, 1, 2, alpha 255; the time and view
//! are drawn as digits in the inverse grey 255 - g inside x ∈ [50, 125), y ∈ [50, 115). The
//! output image starts as a copy of the t = 0 picture, so frames 1 and 2 prove the plugin wrote
//! them. PPM rows are image rows y = 0, 1, … in order.
//!
//! Skipped (with the reason printed) where g++ or `/usr/include/expat.h` is missing.
//! `DEMO_HOST_BIN` may point at a prebuilt hostDemo instead of building one.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const W: usize = 720;
const H: usize = 576;
const FRAMES: usize = 3;
/// Where hostDemo draws the time and view digits (in the inverse grey).
const DIGITS_X: std::ops::Range<usize> = 50..125;
const DIGITS_Y: std::ops::Range<usize> = 50..115;

/// A prebuilt hostDemo named by `DEMO_HOST_BIN` (empty counts as unset).
fn prebuilt() -> Option<PathBuf> {
    std::env::var_os("DEMO_HOST_BIN")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

fn skip_reason() -> Option<String> {
    if prebuilt().is_some() {
        return None;
    }
    if Command::new("g++").arg("--version").output().is_err() {
        return Some("g++ is not installed".into());
    }
    if !Path::new("/usr/include/expat.h").is_file() {
        return Some("/usr/include/expat.h is missing (apt-get install libexpat1-dev)".into());
    }
    None
}

/// The build's target dir: this test runs as `<target>/<profile>/deps/demo_host-…`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

/// The demo host, built once per test process: the two tests run in parallel, and two
/// concurrent `build.sh` runs rewrite the binary one of them is already running (a truncated
/// output picture was the symptom).
fn build_demo_host() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(build_demo_host_once).clone()
}

fn build_demo_host_once() -> PathBuf {
    if let Some(p) = prebuilt() {
        return p;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo-host/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .expect("run build.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed: {}\n{}",
        script.display(),
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("build.sh prints the binary")
            .trim(),
    );
    assert!(bin.is_file(), "{} missing", bin.display());
    bin
}

/// Parse an ASCII PPM (P3) as hostDemo writes it: header fields may carry `#` comments.
fn read_ppm(path: &Path) -> (usize, usize, Vec<[u8; 3]>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut tokens = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split_whitespace())
        .map(|t| t.to_string());
    assert_eq!(tokens.next().as_deref(), Some("P3"), "{}", path.display());
    let mut num = || -> usize {
        tokens
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{}: truncated", path.display()))
    };
    let (w, h, max) = (num(), num(), num());
    assert_eq!(max, 255);
    let pixels = (0..w * h)
        .map(|_| [num() as u8, num() as u8, num() as u8])
        .collect();
    (w, h, pixels)
}

#[test]
fn demo_host_passes_its_grey_frames_through() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED demo_host_passes_its_grey_frames_through: {reason}");
        println!("SKIPPED demo_host_passes_its_grey_frames_through: {reason}");
        return;
    }
    let host = build_demo_host();
    let plugins = TempDir::new("demo-plugins");
    assemble_bundle(plugins.path());
    let cwd = TempDir::new("demo-run");
    let log = cwd.join("plugin.log");
    let out = Command::new(&host)
        .args([PLUGIN_ID, &FRAMES.to_string()])
        .current_dir(cwd.path())
        .env("OFX_PLUGIN_PATH", plugins.path())
        .env("MAKE_YOUR_ANCHOR_LOG", &log)
        .env_remove("MAKE_YOUR_ANCHOR_MODEL")
        .output()
        .expect("run hostDemo");
    let ctx = || {
        format!(
            "hostDemo exit {:?}\nstdout (tail): {}\nstderr: {}\nplugin log: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };
    assert_eq!(out.status.code(), Some(0), "{}", ctx());
    for t in 0..FRAMES {
        let grey = ((255.0 * t as f64).floor() as i64 & 0xff) as u8;
        let inverse = 255 - grey;
        let path = cwd.join(&format!("Output.{t}.ppm"));
        let (w, h, px) = read_ppm(&path);
        assert_eq!((w, h), (W, H), "frame {t}");
        let mut digits = 0;
        for y in 0..H {
            for x in 0..W {
                let p = px[y * W + x];
                let in_digits = DIGITS_X.contains(&x) && DIGITS_Y.contains(&y);
                let ok = p == [grey; 3] || (in_digits && p == [inverse; 3]);
                assert!(
                    ok,
                    "frame {t}: pixel ({x}, {y}) is {p:?}, expected grey {grey}{}",
                    if in_digits {
                        format!(" or {inverse}")
                    } else {
                        String::new()
                    }
                );
                if in_digits && p == [inverse; 3] && inverse != grey {
                    digits += 1;
                }
            }
        }
        assert!(
            digits > 100,
            "frame {t}: the time digits are missing ({digits} pixels)"
        );
    }
    assert!(
        !cwd.join(&format!("Output.{FRAMES}.ppm")).exists(),
        "hostDemo rendered more than {FRAMES} frames"
    );
}

/// A model folder for hosts without parameter values: the tiny model's components (symlinked),
/// the photo as the default appearance, and `anchor.json` defaults small enough for a test
/// (64×64, 4 steps, window 4, overlap 1), which the effect uses when the host cannot give
/// parameter values.
fn tiny_model_for_demo_host(dir: &Path) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    for entry in std::fs::read_dir(fixtures.join("tiny")).expect("list tiny") {
        let entry = entry.expect("entry");
        std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name())).expect("symlink");
    }
    std::fs::copy(fixtures.join("photo.png"), dir.join("appearance.png")).expect("photo");
    std::fs::write(
        dir.join("anchor.json"),
        r#"{ "defaults": { "steps": 4, "window": 4, "overlap": 1, "width": 64, "height": 64 } }"#,
    )
    .expect("anchor.json");
}

#[test]
fn demo_host_runs_the_tiny_model() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED demo_host_runs_the_tiny_model: {reason}");
        println!("SKIPPED demo_host_runs_the_tiny_model: {reason}");
        return;
    }
    let host = build_demo_host();
    let plugins = TempDir::new("demo-plugins-model");
    assemble_bundle(plugins.path());
    let model = TempDir::new("demo-model");
    tiny_model_for_demo_host(model.path());
    let render = |tag: &str| -> Vec<Vec<[u8; 3]>> {
        let cwd = TempDir::new(tag);
        let log = cwd.join("plugin.log");
        let out = Command::new(&host)
            .args([PLUGIN_ID, &FRAMES.to_string()])
            .current_dir(cwd.path())
            .env("OFX_PLUGIN_PATH", plugins.path())
            .env("MAKE_YOUR_ANCHOR_LOG", &log)
            .env("MAKE_YOUR_ANCHOR_LOG_LEVEL", "debug")
            .env("MAKE_YOUR_ANCHOR_MODEL", model.path())
            .output()
            .expect("run hostDemo");
        let plugin_log = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(
            out.status.code(),
            Some(0),
            "hostDemo exit {:?}\nstderr: {}\nplugin log: {plugin_log}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            plugin_log.contains("network call(s) by this render"),
            "the engine ran: {plugin_log}"
        );
        (0..FRAMES)
            .map(|t| {
                let (w, h, px) = read_ppm(&cwd.join(&format!("Output.{t}.ppm")));
                assert_eq!((w, h), (W, H), "frame {t}");
                px
            })
            .collect()
    };
    // Finite: the engine fails a render whose decoded frame holds NaN or infinity (so the exit
    // status above would be non-zero), and the PPM's 8-bit values are checked to be a picture,
    // not a flat fill such as a copy of the grey input.
    let first = render("demo-model-run1");
    for (t, px) in first.iter().enumerate() {
        let grey = ((255.0 * t as f64).floor() as i64 & 0xff) as u8;
        let differing = px.iter().filter(|p| **p != [grey; 3]).count();
        assert!(
            differing > W * H / 2,
            "frame {t}: the output must differ from the grey input ({differing} pixels differ)"
        );
        let distinct: std::collections::BTreeSet<[u8; 3]> = px.iter().copied().collect();
        assert!(
            distinct.len() > 50,
            "frame {t}: a picture, not a flat fill ({} colours)",
            distinct.len()
        );
    }
    let second = render("demo-model-run2");
    assert!(first == second, "two runs give identical frames");
}
