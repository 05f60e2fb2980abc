//! The effect drives the engine (issue 5): `ofx-render` renders a 30-frame mesh clip with the
//! tiny test model through the bundle, and every frame is bit-identical to the frames the real
//! `anchor render` CLI writes for the same inputs (the binary of this build, spawned once per
//! settings and cached for the test process) under every host pattern of `ofx-hosts.md`; the
//! network-call count of a whole pass, read from the plugin's debug log, equals the count the CLI
//! prints for its sequential pass; errors arrive as host messages with a failed status (out of
//! memory with kOfxStatErrMemory, under `MAKE_YOUR_ANCHOR_MEMORY_MIB`); a cache budget below one
//! frame's working set is raised with one warning; each render fetches each Source frame once.
//!
//! Settings: 64×64 working resolution, 4 DDIM steps, window 4, overlap 1 (10 windows, so a full
//! sequential pass makes 40 network batches), seed 42, guidance 7.5, control scale 2.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use common::{anchor_exe, TempDir};
use image::{Rgb, RgbImage};

/// Frames in the clip.
const LEN: usize = 30;
/// Working resolution (and the poses' size, so no resize happens on either side).
const RES: u32 = 64;
const STEPS: usize = 4;
const WINDOW: usize = 4;
const OVERLAP: usize = 1;
const SEED: u64 = 42;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn tiny() -> PathBuf {
    fixtures().join("tiny")
}

fn photo() -> PathBuf {
    fixtures().join("photo.png")
}

/// Mesh-render-like frame `n`: a dark background, a moving body blob and limbs, with some
/// texture so that every frame differs.
fn pose_frame(n: usize) -> RgbImage {
    let n = n as f32;
    RgbImage::from_fn(RES, RES, |x, y| {
        let (xf, yf) = (x as f32, y as f32);
        let cx = 24.0 + 10.0 * (n * 0.21).sin();
        let cy = 30.0 + 4.0 * (n * 0.13).cos();
        let d = ((xf - cx).powi(2) + ((yf - cy) * 0.6).powi(2)).sqrt();
        if d < 14.0 {
            let shade = (200.0 - d * 6.0) as u8;
            Rgb([shade, (shade as f32 * 0.8) as u8, (120.0 + n * 3.0) as u8])
        } else if (yf - cy - 0.5 * (xf - cx)).abs() < 2.5 && xf > cx {
            Rgb([90, 160, (40 + (n as u32 * 7) % 100) as u8])
        } else {
            Rgb([(x * 2 % 32) as u8, (y % 16) as u8, 20])
        }
    })
}

/// The 30 pose frames as `pose_0000.png` … (the CLI and `ofx-render` both read them).
struct Poses {
    _dir: TempDir,
    path: PathBuf,
}

fn poses() -> &'static Poses {
    static P: OnceLock<Poses> = OnceLock::new();
    P.get_or_init(|| {
        let dir = TempDir::new("poses");
        for n in 0..LEN {
            pose_frame(n)
                .save(dir.join(&format!("pose_{n:04}.png")))
                .expect("write pose");
        }
        let path = dir.path().to_path_buf();
        Poses { _dir: dir, path }
    })
}

/// What `anchor render` wrote for a set of settings: the frames (8-bit RGB, 64×64, empty where
/// a frame was not requested) and the network-call count it printed for its sequential pass.
struct Reference {
    frames: Vec<Vec<u8>>,
    network_calls: u64,
}

/// `anchor render --model tiny --poses DIR --appearance photo.png --resolution 64 --steps 4
/// --window W --overlap O --seed 42 --cfg 7.5 --control-scale 2 --device cpu --precision f32`
/// (all the poses of `dir` define the windows), run as a process for the frames `which`.
fn cli_render(
    dir: &Path,
    window: usize,
    overlap: usize,
    which: std::ops::Range<usize>,
) -> Reference {
    let out = TempDir::new("cli-out");
    let len = std::fs::read_dir(dir).expect("list poses").count();
    let start = Instant::now();
    let run = Command::new(anchor_exe())
        .arg("render")
        .arg("--model")
        .arg(tiny())
        .arg("--poses")
        .arg(dir)
        .arg("--appearance")
        .arg(photo())
        .arg("--out")
        .arg(out.path())
        .args(["--resolution", &RES.to_string()])
        .args(["--steps", &STEPS.to_string()])
        .args(["--window", &window.to_string()])
        .args(["--overlap", &overlap.to_string()])
        .args(["--seed", &SEED.to_string()])
        .args(["--cfg", "7.5", "--control-scale", "2.0"])
        .args(["--device", "cpu", "--precision", "f32", "--threads", "1"])
        .args(["--frames", &format!("{}-{}", which.start, which.end - 1)])
        // The effect's tests here choose squash too (their plates are square but one).
        .args(["--framing", "squash"])
        .output()
        .expect("spawn anchor render");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "anchor render failed: {}\n{stdout}",
        String::from_utf8_lossy(&run.stderr)
    );
    // "rendered N frames of L (W windows x S steps): C network calls, …"
    let network_calls = stdout
        .split_once("): ")
        .and_then(|(_, rest)| rest.split_once(" network calls"))
        .and_then(|(n, _)| n.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no network-call count in the CLI summary: {stdout}"));
    let frames = (0..len)
        .map(|n| {
            if !which.contains(&n) {
                return Vec::new();
            }
            let path = out.join(&format!("pose_{n:04}.png"));
            let img = image::open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .to_rgb8();
            // At the plate's size, as the host's output.
            let plate =
                image::image_dimensions(dir.join(format!("pose_{n:04}.png"))).expect("pose size");
            assert_eq!(img.dimensions(), plate, "CLI frame {n}");
            img.into_raw()
        })
        .collect();
    eprintln!(
        "anchor render (window {window}, overlap {overlap}, frames {}-{}): {network_calls} network calls, {:.1} s",
        which.start,
        which.end - 1,
        start.elapsed().as_secs_f64()
    );
    Reference {
        frames,
        network_calls,
    }
}

/// The CLI reference of the 30-frame clip for (window, overlap), rendered once per test process.
fn reference(window: usize, overlap: usize) -> &'static Reference {
    static R: OnceLock<Mutex<BTreeMap<(usize, usize), &'static Reference>>> = OnceLock::new();
    let map = R.get_or_init(|| Mutex::new(BTreeMap::new()));
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    m.entry((window, overlap))
        .or_insert_with(|| Box::leak(Box::new(cli_render(&poses().path, window, overlap, 0..LEN))))
}

/// One `ofx-render` run with the plugin's debug log captured.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    log: String,
    seconds: f64,
}

impl Run {
    /// The per-render network-call counts the plugin logged, summed over the run.
    fn network_calls(&self) -> u64 {
        self.log
            .lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once(": ")?;
                let rest = rest.split_once("frame ")?.1;
                let (_, rest) = rest.split_once(": ")?;
                let (n, _) = rest.split_once(" network call(s) by this render")?;
                n.trim().parse::<u64>().ok()
            })
            .sum()
    }

    fn explain(&self) -> String {
        format!(
            "exit {:?}\nstdout: {}\nstderr: {}\nplugin log (tail): {}",
            self.code,
            self.stdout,
            self.stderr,
            self.log
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}

/// Standard anchor parameters for `ofx-render`.
fn anchor_params(model: &Path) -> Vec<String> {
    [
        format!("modelFolder={}", model.display()),
        format!("resolution={RES}"),
        format!("steps={STEPS}"),
        format!("window={WINDOW}"),
        format!("overlap={OVERLAP}"),
        format!("seed={SEED}"),
        "guidance=7.5".into(),
        "controlScale=2.0".into(),
        "device=CPU".into(),
    ]
    .into_iter()
    .flat_map(|p| ["--param".to_string(), p])
    .collect()
}

fn ofx_render(args: &[String]) -> Run {
    ofx_render_env(args, &[])
}

/// `ofx_render` with extra environment variables.
fn ofx_render_env(args: &[String], env: &[(&str, &str)]) -> Run {
    let r = common::ofx_render_logged(args, env);
    Run {
        code: r.code,
        stdout: r.stdout,
        stderr: r.stderr,
        log: r.log,
        seconds: r.seconds,
    }
}

/// Render the clip (general context, photo as Appearance) with `extra` arguments into `out`.
fn render_into(out: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<String> = vec![
        "--input".into(),
        poses().path.display().to_string(),
        "--output".into(),
        out.display().to_string(),
        "--appearance".into(),
        photo().display().to_string(),
    ];
    args.extend(anchor_params(&tiny()));
    args.extend(extra.iter().map(|s| s.to_string()));
    ofx_render(&args)
}

/// Compare the written frames `names[i]` (RGBA PNG) with the reference's RGB frames.
fn compare(
    out: &Path,
    frames: std::ops::Range<usize>,
    reference: &Reference,
) -> Result<(), String> {
    for n in frames {
        let path = out.join(format!("pose_{n:04}.png"));
        compare_file(&path, &reference.frames[n]).map_err(|e| format!("frame {n}: {e}"))?;
    }
    Ok(())
}

fn compare_file(path: &Path, want: &[u8]) -> Result<(), String> {
    let got = image::open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .to_rgba8();
    if got.dimensions() != (RES, RES) {
        return Err(format!("size {:?}", got.dimensions()));
    }
    for (i, (px, w)) in got.pixels().zip(want.chunks_exact(3)).enumerate() {
        if px.0[..3] != *w || px.0[3] != 255 {
            return Err(format!(
                "pixel ({}, {}) is {:?}, expected {:?} with alpha 255",
                i % RES as usize,
                i / RES as usize,
                px.0,
                w
            ));
        }
    }
    Ok(())
}

/// Run a whole pass with `extra` host options; assert bit-identity and the exact call count.
fn whole_pass(extra: &[&str]) {
    let reference = reference(WINDOW, OVERLAP);
    assert_eq!(reference.network_calls, 40, "10 windows × 4 steps");
    let out = TempDir::new("anchor-out");
    let run = render_into(out.path(), extra);
    assert_eq!(run.code, Some(0), "{extra:?}: {}", run.explain());
    assert!(
        run.stdout
            .contains(&format!("rendered {LEN} frame(s) (0-29)")),
        "{extra:?}: {}",
        run.stdout
    );
    if let Err(e) = compare(out.path(), 0..LEN, reference) {
        panic!("{extra:?}: {e}\n{}", run.explain());
    }
    assert_eq!(
        run.network_calls(),
        reference.network_calls,
        "{extra:?}: network calls across the pass (plugin log) vs the sequential pass"
    );
    assert_eq!(
        run.log.matches("loaded body model").count(),
        1,
        "{extra:?}: one model load per process, shared by every instance and thread"
    );
    assert!(
        run.log.contains("purged the frame cache and 1 model(s)"),
        "{extra:?}: PurgeCaches (no render running) frees the model: {}",
        run.explain()
    );
    eprintln!(
        "{extra:?}: 30 frames bit-identical, {} network calls, {:.1} s",
        run.network_calls(),
        run.seconds
    );
}

#[test]
fn four_threads_random_order_is_bit_identical_with_sequential_call_count() {
    whole_pass(&["--threads", "4", "--order", "random", "--seed", "3"]);
}

#[test]
fn render_clones_are_bit_identical() {
    whole_pass(&["--clones", "3", "--threads", "3", "--order", "reverse"]);
}

#[test]
fn per_frame_instances_are_bit_identical() {
    // Natron-style Begin/End around each frame plus MLT-style instance per frame, with temporal
    // access granted, negative rowBytes and float images.
    whole_pass(&[
        "--instance-per-frame",
        "--threads",
        "2",
        "--order",
        "random",
        "--negative-rowbytes",
        "--depth",
        "float",
    ]);
}

#[test]
fn farm_split_on_timeline_frames_is_bit_identical() {
    // Resolve-style timeline frames: the clip is frames 86400-86429, so the windows are anchored
    // at 86400 (index 0) on both farm nodes, whatever range each renders.
    let reference = reference(WINDOW, OVERLAP);
    let input = TempDir::new("timeline");
    for n in 0..LEN {
        std::fs::copy(
            poses().path.join(format!("pose_{n:04}.png")),
            input.join(&format!("shot.{:06}.png", 86400 + n)),
        )
        .expect("copy pose");
    }
    let out = TempDir::new("farm-out");
    let pattern_in = input.join("shot.%06d.png").display().to_string();
    let pattern_out = out.join("shot.%06d.png").display().to_string();
    let mut calls = 0;
    for range in ["86400-86414", "86415-86429"] {
        let mut args: Vec<String> = vec![
            "--input".into(),
            pattern_in.clone(),
            "--output".into(),
            pattern_out.clone(),
            "--appearance".into(),
            photo().display().to_string(),
            "--frames".into(),
            range.into(),
        ];
        args.extend(anchor_params(&tiny()));
        let run = ofx_render(&args);
        assert_eq!(run.code, Some(0), "{range}: {}", run.explain());
        calls += run.network_calls();
        eprintln!(
            "farm node {range}: {} network calls, {:.1} s",
            run.network_calls(),
            run.seconds
        );
    }
    for n in 0..LEN {
        let path = out.join(&format!("shot.{:06}.png", 86400 + n));
        if let Err(e) = compare_file(&path, &reference.frames[n]) {
            panic!("timeline frame {}: {e}", 86400 + n);
        }
    }
    // Each node computes its own cone: more than one pass, fewer than two.
    assert!(
        calls > reference.network_calls && calls < 2 * reference.network_calls,
        "farm calls {calls}"
    );
}

#[test]
fn without_temporal_access_renders_one_frame_windows_and_warns_once() {
    // MLT: no temporal access, a new instance per frame, bottom-up rows. The effect must never
    // use the wrong frames: it denoises each frame alone, which equals the CLI with window 1.
    // Ten frames keep it short; each needs only itself, 4 steps of one-frame windows.
    let reference = cli_render(&poses().path, 1, 0, 0..10);
    assert_eq!(reference.network_calls, (10 * STEPS) as u64);
    let out = TempDir::new("mlt-out");
    let run = render_into(
        out.path(),
        &[
            "--frames",
            "0-9",
            "--no-temporal",
            "--instance-per-frame",
            "--negative-rowbytes",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.explain());
    compare(out.path(), 0..10, &reference).unwrap_or_else(|e| panic!("{e}"));
    let warning = "ofx-render: plugin warning: The host gives Make Your Anchor no temporal clip access, so it cannot read the neighbouring frames a window needs: every frame is denoised on its own (window 1), which flickers more. Use a host with temporal clip access (Natron, Resolve) for the temporally consistent result";
    assert_eq!(
        run.stderr.matches(warning).count(),
        1,
        "the warning is posted exactly once: {}",
        run.stderr
    );
    assert_eq!(run.network_calls(), reference.network_calls);
}

/// Render frame 0 only, with `params` replacing the standard ones; the run must fail.
fn failing_run(params: Vec<String>, extra: &[&str]) -> Run {
    failing_run_env(params, extra, &[])
}

/// `failing_run` with extra environment variables.
fn failing_run_env(params: Vec<String>, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let out = TempDir::new("err-out");
    let mut args: Vec<String> = vec![
        "--input".into(),
        poses().path.display().to_string(),
        "--output".into(),
        out.path().display().to_string(),
        "--frames".into(),
        "0".into(),
    ];
    args.extend(params);
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = ofx_render_env(&args, env);
    assert_eq!(run.code, Some(1), "{}", run.explain());
    assert!(
        crate::common::pngs(out.path()).is_empty(),
        "no frame is written on failure"
    );
    run
}

#[test]
fn missing_model_folder_fails_with_its_message() {
    let mut params = anchor_params(Path::new("/no/such/anchor-model"));
    params.extend(["--appearance".into(), photo().display().to_string()]);
    let run = failing_run(params, &[]);
    let text = "Model folder /no/such/anchor-model does not exist: set modelFolder to a Make-Your-Anchor model folder";
    assert!(
        run.stderr
            .contains(&format!("ofx-render: plugin error: {text}")),
        "{}",
        run.explain()
    );
    assert!(
        run.stderr.contains(&format!(
            "OfxImageEffectActionRender failed with kOfxStatFailed at frame 0 (plugin says: {text})"
        )),
        "{}",
        run.explain()
    );
}

#[test]
fn incompatible_model_fails_with_its_message() {
    let bad = TempDir::new("bad-model");
    std::fs::create_dir_all(bad.join("unet")).expect("mkdir");
    std::fs::write(bad.join("unet/config.json"), "{ not json").expect("write");
    let mut params = anchor_params(bad.path());
    params.extend(["--appearance".into(), photo().display().to_string()]);
    let run = failing_run(params, &[]);
    let head = format!(
        "ofx-render: plugin error: The model folder {} is not a usable Make-Your-Anchor model (",
        bad.path().display()
    );
    let tail = "): choose a folder holding unet/, controlnet/, vae/, scheduler/, text_encoder/ and image_encoder/ (check it with `anchor inspect --model`)";
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with(&head))
        .unwrap_or_else(|| panic!("no incompatible-model message: {}", run.explain()));
    assert!(line.ends_with(tail), "{line}");
    assert!(
        run.stderr
            .contains("OfxImageEffectActionRender failed with kOfxStatFailed at frame 0"),
        "{}",
        run.explain()
    );
}

#[test]
fn no_appearance_fails_with_its_message() {
    // Filter context, and the tiny model folder has no appearance.png.
    let run = failing_run(anchor_params(&tiny()), &[]);
    let head = "ofx-render: plugin error: Make Your Anchor has no appearance image at frame 0 (";
    let tail = "): connect a reference still to the Appearance input, or put the person's photo in the model folder as appearance.png";
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with(head))
        .unwrap_or_else(|| panic!("no appearance message: {}", run.explain()));
    assert!(line.ends_with(tail), "{line}");
    assert!(line.contains("appearance.png"), "{line}");
    assert!(
        run.stderr
            .contains("OfxImageEffectActionRender failed with kOfxStatFailed at frame 0"),
        "{}",
        run.explain()
    );
}

#[test]
fn a_window_batch_above_the_memory_limit_fails_with_out_of_memory() {
    // MAKE_YOUR_ANCHOR_MEMORY_MIB=1: the tiny model's weights alone exceed 1 MiB, so the engine's
    // estimate of the first window batch fails the render before any batch runs.
    let mut params = anchor_params(&tiny());
    params.extend(["--appearance".into(), photo().display().to_string()]);
    let run = failing_run_env(params, &[], &[("MAKE_YOUR_ANCHOR_MEMORY_MIB", "1")]);
    let head = "ofx-render: plugin error: Out of memory while rendering frame 0 (a window batch of 4 frame(s) at 64x64 in f32 needs about ";
    let tail = " MiB are available (MAKE_YOUR_ANCHOR_MEMORY_MIB)): lower resolution (the working resolution) or window (frames per window), choose f16 precision, or lower cacheMiB";
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with(head))
        .unwrap_or_else(|| panic!("no out-of-memory message: {}", run.explain()));
    assert!(line.ends_with(tail), "{line}");
    // "<needed> MiB (model weights <w> MiB + working set <a> MiB), but only <limit>"
    let numbers: Vec<u64> = line[head.len()..line.len() - tail.len()]
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 4, "{line}");
    let (needed, weights, working, available) = (numbers[0], numbers[1], numbers[2], numbers[3]);
    assert_eq!(available, 1, "{line}");
    assert!(needed > available && weights + working >= needed, "{line}");
    assert!(
        run.stderr
            .contains("OfxImageEffectActionRender failed with kOfxStatErrMemory at frame 0"),
        "{}",
        run.explain()
    );
    assert_eq!(run.network_calls(), 0, "no batch ran");
    assert!(
        !run.log.contains("network call(s) by this render"),
        "{}",
        run.explain()
    );
}

#[test]
fn a_cache_budget_below_one_frame_is_raised_with_one_warning() {
    // cacheMiB=0 would keep nothing and recompute predictions recursively (21 batches instead of
    // 4 in the engine's unit test); the effect raises the budget to what one frame touches, warns
    // once, and every frame costs at most its cone (4 + 3 + 2 + 1 = 10 batches for frames 0, 1).
    let reference = reference(WINDOW, OVERLAP);
    let out = TempDir::new("floor-out");
    let run = render_into(out.path(), &["--frames", "0-2", "--param", "cacheMiB=0"]);
    assert_eq!(run.code, Some(0), "{}", run.explain());
    compare(out.path(), 0..3, reference).unwrap_or_else(|e| panic!("{e}"));
    let warning = "ofx-render: plugin warning: cacheMiB is 0 MiB, below the 1 MiB that one frame's temporal denoising keeps in the cache at these settings: Make Your Anchor uses 1 MiB, because a smaller cache would recompute evicted windows over and over. Set cacheMiB to at least 1";
    assert_eq!(
        run.stderr.matches(warning).count(),
        1,
        "posted once: {}",
        run.explain()
    );
    let per_render: Vec<u64> = run
        .log
        .lines()
        .filter_map(|l| {
            let (head, _) = l.split_once(" network call(s) by this render")?;
            head.rsplit(' ').next()?.parse().ok()
        })
        .collect();
    assert_eq!(per_render.len(), 3, "{}", run.explain());
    assert!(
        per_render.iter().all(|&n| n <= 10),
        "no render recomputes beyond its cone: {per_render:?}"
    );
    // Each render fetches every Source frame of its cone once (frames 0-2 read 0..13), not
    // again for each window batch that reads it.
    let fetches: Vec<u64> = run
        .log
        .lines()
        .filter_map(|l| {
            let (head, _) = l.split_once(" Source fetch(es) by this render")?;
            head.rsplit(' ').next()?.parse().ok()
        })
        .collect();
    assert_eq!(fetches, [13, 13, 13], "{}", run.explain());
}

#[test]
fn model_default_appearance_is_used_in_the_filter_context() {
    // A model folder whose appearance.png is the photo renders in the Filter context exactly as
    // the CLI with --appearance photo.png.
    let reference = reference(WINDOW, OVERLAP);
    let model = TempDir::new("model-with-photo");
    for entry in std::fs::read_dir(tiny()).expect("list tiny") {
        let entry = entry.expect("entry");
        std::os::unix::fs::symlink(
            entry.path(),
            model.join(&entry.file_name().to_string_lossy()),
        )
        .expect("symlink");
    }
    std::fs::copy(photo(), model.join("appearance.png")).expect("copy photo");
    let out = TempDir::new("filter-out");
    let mut args: Vec<String> = vec![
        "--input".into(),
        poses().path.display().to_string(),
        "--output".into(),
        out.path().display().to_string(),
        "--frames".into(),
        "10-13".into(),
    ];
    args.extend(anchor_params(model.path()));
    let run = ofx_render(&args);
    assert_eq!(run.code, Some(0), "{}", run.explain());
    compare(out.path(), 10..14, reference).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn without_a_model_the_source_passes_through_and_says_so() {
    let out = TempDir::new("pass-out");
    let args: Vec<String> = vec![
        "--input".into(),
        poses().path.display().to_string(),
        "--output".into(),
        out.path().display().to_string(),
        "--frames".into(),
        "0-1".into(),
    ];
    let run = ofx_render(&args);
    assert_eq!(run.code, Some(0), "{}", run.explain());
    for n in 0..2 {
        let got = image::open(out.join(&format!("pose_{n:04}.png")))
            .expect("read")
            .to_rgb8();
        assert_eq!(got, pose_frame(n), "frame {n} passes through");
    }
    let text = "No model folder is set, so Make Your Anchor passes the Source through unchanged: set modelFolder (or the MAKE_YOUR_ANCHOR_MODEL environment variable) to a Make-Your-Anchor model folder";
    assert!(
        run.stderr
            .contains(&format!("ofx-render: plugin persistent warning: {text}")),
        "{}",
        run.explain()
    );
    assert_eq!(run.log.matches(text).count(), 1, "logged once: {}", run.log);
}

#[test]
fn abort_mid_frame_stops_within_one_batch_and_the_next_render_is_correct() {
    // Frame 0's cone at 4 steps needs 4 + 3 + 2 + 1 = 10 batches; the user cancels during the
    // 7th progress update (the plugin reports one update per batch).
    let out = TempDir::new("abort-out");
    let run = render_into(
        out.path(),
        &["--frames", "0-3", "--abort-after-updates", "7"],
    );
    assert_eq!(run.code, Some(1), "{}", run.explain());
    assert!(
        run.stderr.contains(
            "ofx-render: error: render aborted by the host after 0 frame(s); frame 0: \
             OfxImageEffectActionRender failed with kOfxStatFailed at frame 0 (plugin says: \
             Rendering frame 0 was aborted by the host)"
        ),
        "{}",
        run.explain()
    );
    let calls: Vec<u64> = run
        .log
        .lines()
        .filter_map(|l| {
            let (head, _) = l.split_once(" network call(s) in this process")?;
            head.rsplit(' ').next()?.parse().ok()
        })
        .collect();
    assert_eq!(
        calls.iter().max(),
        Some(&7),
        "no batch starts after the cancel: {calls:?}\n{}",
        run.explain()
    );
    assert!(
        crate::common::pngs(out.path()).is_empty(),
        "nothing written"
    );
    // The next render of the same frames is exact.
    let out = TempDir::new("after-abort-out");
    let run = render_into(out.path(), &["--frames", "0-3"]);
    assert_eq!(run.code, Some(0), "{}", run.explain());
    compare(out.path(), 0..4, reference(WINDOW, OVERLAP)).unwrap_or_else(|e| panic!("{e}"));
}

/// Largest per-channel difference between a written frame and the reference, and alpha check.
fn max_diff(path: &Path, want: &[u8]) -> u8 {
    let got = image::open(path).expect("read").to_rgba8();
    assert_eq!(got.dimensions(), (RES, RES));
    got.pixels()
        .zip(want.chunks_exact(3))
        .map(|(px, w)| {
            assert_eq!(px.0[3], 255, "alpha 1");
            (0..3).map(|c| px.0[c].abs_diff(w[c])).max().unwrap_or(0)
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn linear_float_host_matches_the_srgb_cli_render_within_2_of_255() {
    // Natron/Nuke: float (and half) images in linear light, announced through the OFX 1.5
    // colourspace property; colorspace=auto encodes to sRGB for the model and decodes back.
    let reference = reference(WINDOW, OVERLAP);
    for depth in ["float", "half"] {
        let out = TempDir::new("linear-out");
        let run = render_into(
            out.path(),
            &["--frames", "12-17", "--depth", depth, "--linear"],
        );
        assert_eq!(run.code, Some(0), "{depth}: {}", run.explain());
        assert!(
            run.log.contains("Linear pixels"),
            "{depth}: auto chose linear"
        );
        let worst = (12..18)
            .map(|n| max_diff(&out.join(&format!("pose_{n:04}.png")), &reference.frames[n]))
            .max()
            .unwrap_or(0);
        eprintln!("linear {depth}: max difference {worst}/255 after encoding");
        assert!(worst <= 2, "{depth}: {worst}/255");
    }
}

#[test]
fn the_colorspace_parameter_and_new_host_options_are_listed() {
    let list = ofx_render(&["--list-params".to_string()]);
    assert_eq!(list.code, Some(0), "{}", list.explain());
    let line = list
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some("colorspace"))
        .unwrap_or_else(|| panic!("no colorspace: {}", list.stdout));
    assert!(
        line.contains("Choice") && line.contains("options: auto | linear | sRGB"),
        "{line}"
    );
    let help = Command::new(env!("CARGO_BIN_EXE_ofx-render"))
        .arg("--help")
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["--abort-after-updates", "--linear"] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn other_sizes_are_resized_in_and_out_with_pillow_lanczos() {
    // 80×48 mesh renders with framing squash: the CLI and the effect resize them to 64² with PIL
    // LANCZOS (bit-identical control frames) and the 64² anchor back to the plate (80×48) with
    // the same filter, so both write the same frames. (The default framing, fit, is tested in
    // framing.rs and the CLI's tests.)
    let (w, h) = (80u32, 48u32);
    let dir = TempDir::new("poses-80x48");
    for n in 0..LEN {
        image::imageops::resize(&pose_frame(n), w, h, image::imageops::FilterType::Triangle)
            .save(dir.join(&format!("pose_{n:04}.png")))
            .expect("write pose");
    }
    let reference = cli_render(dir.path(), WINDOW, OVERLAP, 0..3);
    let out = TempDir::new("resize-out");
    let mut args: Vec<String> = vec![
        "--input".into(),
        dir.path().display().to_string(),
        "--output".into(),
        out.path().display().to_string(),
        "--appearance".into(),
        photo().display().to_string(),
        "--frames".into(),
        "0-2".into(),
        "--depth".into(),
        "short".into(),
        "--param".into(),
        "framing=squash".into(),
    ];
    args.extend(anchor_params(&tiny()));
    let run = ofx_render(&args);
    assert_eq!(run.code, Some(0), "{}", run.explain());
    for n in 0..3 {
        let want = &reference.frames[n];
        let got = image::open(out.join(&format!("pose_{n:04}.png")))
            .expect("read")
            .to_rgba8();
        assert_eq!(got.dimensions(), (w, h), "the Source RoD");
        let got: Vec<u8> = got
            .pixels()
            .flat_map(|p| {
                assert_eq!(p.0[3], 255, "alpha 1");
                [p.0[0], p.0[1], p.0[2]]
            })
            .collect();
        assert!(&got == want, "frame {n}: differs from the CLI frame");
    }
}

/// The network batches a host process ran in all: the last "… in this process" count it logged.
fn process_calls(run: &Run) -> u64 {
    run.log
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(" network call(s) by this render, ")?;
            rest.split_once(" in this process")?
                .0
                .trim()
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn farm_nodes_with_a_shared_cache_folder_split_the_work() {
    // Two host processes started together on two halves of the clip, both naming one shared
    // cache folder: every frame equals the single render, and together they run about one
    // render's batches (without the folder each pays for nearly its whole cone).
    let reference = reference(WINDOW, OVERLAP);
    let out = TempDir::new("shared-farm-out");
    let shared = TempDir::new("shared-farm-cache");
    let half = LEN / 2;
    let runs: Vec<Run> = std::thread::scope(|s| {
        let jobs: Vec<_> = [(0, half - 1), (half, LEN - 1)]
            .into_iter()
            .map(|(a, b)| {
                let mut args: Vec<String> = vec![
                    "--input".into(),
                    poses().path.display().to_string(),
                    "--output".into(),
                    out.path().display().to_string(),
                    "--appearance".into(),
                    photo().display().to_string(),
                    "--frames".into(),
                    format!("{a}-{b}"),
                    "--param".into(),
                    format!("sharedCacheFolder={}", shared.path().display()),
                ];
                args.extend(anchor_params(&tiny()));
                s.spawn(move || ofx_render(&args))
            })
            .collect();
        jobs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    let mut total = 0;
    for run in &runs {
        assert_eq!(run.code, Some(0), "{}", run.explain());
        total += process_calls(run);
    }
    for n in 0..LEN {
        if let Err(e) = compare_file(&out.join(&format!("pose_{n:04}.png")), &reference.frames[n]) {
            panic!("frame {n}: {e}");
        }
    }
    let single = reference.network_calls;
    assert!(
        total as f64 <= 1.15 * single as f64,
        "the two nodes ran {total} batches; a single render runs {single}"
    );
}
