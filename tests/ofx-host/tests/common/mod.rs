//! Shared helpers of the integration tests: the plugin bundle assembled from the cdylib cargo
//! built for this test run, deterministic PNG sequences, running `ofx-render`, and comparing
//! sequences pixel by pixel.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use image::RgbaImage;

/// Frames in the test sequence.
pub const FRAMES: usize = 24;
/// Odd sizes, so no row is accidentally aligned.
pub const WIDTH: u32 = 67;
/// See `WIDTH`.
pub const HEIGHT: u32 = 45;
/// The plugin under test.
pub const PLUGIN_ID: &str = "org.makeyouranchor.Anchor";

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("ofx-render-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The plugin cdylib cargo built for this test run: `make-your-anchor` is a dev-dependency, so
/// `target/<profile>/deps/libmake_your_anchor.so` sits next to this test executable.
pub fn plugin_library() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe
        .parent()
        .expect("test executable has a parent")
        .to_path_buf();
    let so = deps.join("libmake_your_anchor.so");
    assert!(
        so.is_file(),
        "{} is missing: make-your-anchor must be a dev-dependency of ofx-render (cdylib)",
        so.display()
    );
    so
}

/// Assemble `MakeYourAnchor.ofx.bundle` (the layout of bundle/build.sh) inside `dir`.
pub fn assemble_bundle(dir: &Path) -> PathBuf {
    let bundle = dir.join("MakeYourAnchor.ofx.bundle");
    let arch = bundle.join("Contents").join("Linux-x86-64");
    std::fs::create_dir_all(&arch).expect("create bundle dirs");
    // Link (or copy, across file systems) then rename: replacing the file atomically never
    // disturbs a process that still has the previous one mapped, and a hard link costs no disk.
    let tmp = arch.join(format!(".MakeYourAnchor.ofx.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(plugin_library(), &tmp).is_err() {
        std::fs::copy(plugin_library(), &tmp).expect("copy plugin");
    }
    std::fs::rename(&tmp, arch.join("MakeYourAnchor.ofx")).expect("install plugin");
    std::fs::write(
        bundle.join("Contents").join("Info.plist"),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict>\
         <key>CFBundleExecutable</key><string>MakeYourAnchor.ofx</string></dict></plist>\n",
    )
    .expect("write plist");
    bundle
}

/// The bundle of this test run, assembled once per test process under
/// `target/<profile>/ofx-host-bundles/<test binary>/` (refreshed each run, never left in /tmp).
pub fn bundle() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let stem = exe
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tests".into());
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps/<test>");
        assemble_bundle(&profile_dir.join("ofx-host-bundles").join(stem))
    })
}

/// Frame `n` of the test sequence: every channel varies with x, y and n, alpha included.
pub fn test_frame(n: usize) -> RgbaImage {
    RgbaImage::from_fn(WIDTH, HEIGHT, |x, y| {
        let n = n as u32;
        image::Rgba([
            ((x * 3 + y * 5 + n * 11) % 256) as u8,
            ((x * 7 + n * 29) % 256) as u8,
            ((y * 13 + x * n) % 256) as u8,
            ((x + y * 2 + n * 17 + 3) % 256) as u8,
        ])
    })
}

/// Write the 24-frame sequence `frame_0000.png` … into `dir`.
pub fn write_sequence(dir: &Path) {
    std::fs::create_dir_all(dir).expect("create input dir");
    for n in 0..FRAMES {
        test_frame(n)
            .save(dir.join(format!("frame_{n:04}.png")))
            .expect("write frame");
    }
}

/// Result of one `ofx-render` run.
pub struct Run {
    /// Exit code (`None`: killed by a signal, i.e. a crash).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `ofx-render` with `args`.
pub fn ofx_render(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_ofx-render"))
        .args(args)
        // The plugin reads this when modelFolder is empty; tests set everything explicitly.
        .env_remove("MAKE_YOUR_ANCHOR_MODEL")
        .output()
        .expect("spawn ofx-render");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Standard arguments: bundle, plugin, input, output.
pub fn base_args<'a>(input: &'a str, output: &'a str) -> Vec<&'a str> {
    vec![
        "--bundle",
        bundle().to_str().expect("utf-8 path"),
        "--plugin",
        PLUGIN_ID,
        "--input",
        input,
        "--output",
        output,
    ]
}

/// Compare each written frame with the generated one; `Err` names the first difference.
pub fn compare_frames(output: &Path, frames: std::ops::Range<usize>) -> Result<(), String> {
    for n in frames {
        let path = output.join(format!("frame_{n:04}.png"));
        let got = image::open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .to_rgba8();
        let want = test_frame(n);
        if got.dimensions() != want.dimensions() {
            return Err(format!(
                "frame {n}: size {:?}, expected {:?}",
                got.dimensions(),
                want.dimensions()
            ));
        }
        if let Some((x, y, p)) = got
            .enumerate_pixels()
            .find(|(x, y, p)| **p != *want.get_pixel(*x, *y))
        {
            return Err(format!(
                "frame {n}: pixel ({x}, {y}) is {:?}, expected {:?}",
                p.0,
                want.get_pixel(x, y).0
            ));
        }
    }
    Ok(())
}

/// PNG files in `dir`, sorted.
pub fn pngs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".png"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The cargo profile whose output directory holds this test executable
/// (`target/<dir>/deps/<test>`): `debug` is the `test` profile's directory under `cargo test`.
fn profile_of(profile_dir: &Path) -> String {
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "test".into(),
        Some(other) => other.into(),
    }
}

/// Modification time of `path`, if it exists.
fn mtime(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The `anchor` CLI (`plugin/cli/src/main.rs`) of this build, once per test process.
///
/// `cargo test --workspace` builds it next to this test's profile directory in the same run:
/// it is used as it is when it is at least as new as the plugin library cargo built for this
/// run (`deps/libmake_your_anchor.so`, the same crate) and as its own source. Otherwise (only
/// `-p ofx-render` was built, or the library changed since) it is built with cargo for this
/// test's profile and target directory, and the path comes from cargo's JSON messages.
pub fn anchor_exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps/<test>");
        let built = profile_dir.join("anchor");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugin/cli/src/main.rs");
        let newest_input = [plugin_library(), source]
            .iter()
            .filter_map(|p| mtime(p))
            .max();
        if let (Some(bin), Some(input)) = (mtime(&built), newest_input) {
            if bin >= input {
                eprintln!("anchor CLI: {} (built by this cargo run)", built.display());
                return built;
            }
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.arg("build")
            .arg("--manifest-path")
            .arg(workspace.join("Cargo.toml"))
            .args(["-p", "anchor-cli", "--bin", "anchor"])
            .args(["--profile", &profile_of(profile_dir)])
            .arg("--message-format=json-render-diagnostics");
        // The target directory is the one holding this test (it has cargo's CACHEDIR.TAG), so
        // the dependencies built for this run are reused.
        if let Some(target) = profile_dir
            .ancestors()
            .take(3)
            .find(|d| d.join("CACHEDIR.TAG").is_file())
        {
            cmd.arg("--target-dir").arg(target);
        }
        let start = Instant::now();
        let out = cmd.output().expect("spawn cargo build for the anchor CLI");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cargo build of the anchor CLI failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            stdout
        );
        // The compiler-artifact message of the bin carries `"executable":"<path>"`.
        let path = stdout
            .lines()
            .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
            .filter_map(|l| {
                let rest = l.split_once("\"executable\":\"")?.1;
                Some(PathBuf::from(rest.split_once('"')?.0))
            })
            .find(|p| p.file_name().is_some_and(|n| n == "anchor"))
            .unwrap_or_else(|| panic!("cargo did not name the anchor executable:\n{stdout}"));
        assert!(path.is_file(), "{} is missing", path.display());
        eprintln!(
            "anchor CLI: {} (cargo build {:.1} s)",
            path.display(),
            start.elapsed().as_secs_f64()
        );
        path
    })
}

/// An `ofx-render` run with the plugin's debug log.
pub struct LoggedRun {
    /// Exit code (`None`: killed by a signal, i.e. a crash).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The plugin's log (`MAKE_YOUR_ANCHOR_LOG`, debug level).
    pub log: String,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
}

/// Runs `ofx-render --bundle <the bundle under test> --plugin PLUGIN_ID ARGS` with the plugin's
/// debug log captured, no model folder or memory limit taken from the environment, and `env`
/// added. Builds (or finds) the `anchor` CLI first: a build relinks the plugin library, which
/// must be finished before the bundle copies it.
pub fn ofx_render_logged(args: &[String], env: &[(&str, &str)]) -> LoggedRun {
    anchor_exe();
    let logdir = TempDir::new("log");
    let log = logdir.join("plugin.log");
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ofx-render"))
        .args([
            "--bundle",
            bundle().to_str().expect("utf-8 path"),
            "--plugin",
            PLUGIN_ID,
        ])
        .args(args)
        .env_remove("MAKE_YOUR_ANCHOR_MODEL")
        .env_remove("MAKE_YOUR_ANCHOR_MEMORY_MIB")
        .env("MAKE_YOUR_ANCHOR_LOG", &log)
        .env("MAKE_YOUR_ANCHOR_LOG_LEVEL", "debug")
        .envs(env.iter().copied())
        .output()
        .expect("spawn ofx-render");
    LoggedRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        log: std::fs::read_to_string(&log).unwrap_or_default(),
        seconds: start.elapsed().as_secs_f64(),
    }
}
