//! The effect's face pass (issue 7): with `faceEnhance` on, `ofx-render` writes exactly the frames
//! `anchor render --face-model … --face-landmarks …/--face-matte …` writes (the CLI of this build)
//! on the tiny body model and the tiny face fixture, whether the face is placed by the landmarks
//! file, the five point parameters or the FaceMatte clip (with the landmarks behind it); the face
//! region changes; frames without a face pass the body frame through with one warning per clip;
//! `faceSmoothing` and `faceTemporal` match `--face-smooth` and `--face-temporal`; a face model
//! whose head UNet takes 4 channels fails with the channel count; the Face page's parameters are
//! listed.
//!
//! Settings: 5 frames of 64×64, body 3 DDIM steps, window 4, overlap 1; face crop 64, inpainting
//! 64², 3 steps, erode 4, feather 5 (the face helper's `cli_face.rs` settings).
// Frame loops index several per-frame vectors (CLI, body, OFX) at once.
#![allow(clippy::needless_range_loop)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{anchor_exe, bundle, TempDir, PLUGIN_ID};

const SIZE: u32 = 64;
const N: usize = 5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// Head centre of frame `i` (a disc of radius 10 on a body column), as in `cli_face.rs`.
fn head(i: usize) -> (f64, f64) {
    (28.0 + 2.0 * i as f64, 22.0)
}

/// Five landmarks (image pixels, y down) of a head centred at `(cx, cy)`.
fn landmarks_at(cx: f64, cy: f64) -> [[f64; 2]; 5] {
    [
        [-4.0, -2.0],
        [4.0, -2.0],
        [0.0, 2.0],
        [-3.0, 6.0],
        [3.0, 6.0],
    ]
    .map(|[x, y]| [cx + x, cy + y])
}

fn landmarks(i: usize) -> [[f64; 2]; 5] {
    let (cx, cy) = head(i);
    landmarks_at(cx, cy)
}

/// The pose frames `000000.png` … and, in `mattes/`, the head's matte of frames 0-3 (frame 4's
/// is empty).
fn inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let poses = dir.join("poses");
    let mattes = dir.join("mattes");
    std::fs::create_dir_all(&poses).expect("poses dir");
    std::fs::create_dir_all(&mattes).expect("mattes dir");
    for i in 0..N {
        let (cx, cy) = head(i);
        let inside = |x: u32, y: u32| {
            let (dx, dy) = (x as f64 - cx, y as f64 - cy);
            dx * dx + dy * dy < 100.0
        };
        image::RgbImage::from_fn(SIZE, SIZE, |x, y| {
            let dx = x as f64 - cx;
            if inside(x, y) {
                let s = (160.0 - 3.0 * dx) as u8;
                image::Rgb([s, s, s.saturating_add(30)])
            } else if dx.abs() < 9.0 && y as f64 > cy + 10.0 {
                image::Rgb([118, 132, 168])
            } else {
                image::Rgb([0, 0, 0])
            }
        })
        .save(poses.join(format!("{i:06}.png")))
        .expect("write pose");
        image::GrayImage::from_fn(SIZE, SIZE, |x, y| {
            image::Luma([if i < 4 && inside(x, y) { 255 } else { 0 }])
        })
        .save(mattes.join(format!("{i:06}.png")))
        .expect("write matte");
    }
    (poses, mattes)
}

/// A landmarks file: `frames[i]` = the landmarks of frame `i` (`None`: `null`); frames past the
/// end are not listed.
fn landmarks_file(path: &Path, frames: &[Option<[[f64; 2]; 5]>]) {
    let entries: Vec<String> = frames
        .iter()
        .enumerate()
        .map(|(i, p)| match p {
            None => format!("\"{i:06}\": null"),
            Some(p) => {
                let pts: Vec<String> = p.iter().map(|[x, y]| format!("[{x}, {y}]")).collect();
                format!("\"{i:06}\": [{}]", pts.join(", "))
            }
        })
        .collect();
    std::fs::write(path, format!("{{{}}}", entries.join(", "))).expect("write landmarks");
}

/// `anchor render` of the poses into `out`, with `face` arguments (none: the body only).
fn cli(poses: &Path, out: &Path, face: &[String]) -> Vec<Vec<u8>> {
    let run = Command::new(anchor_exe())
        .arg("render")
        .arg("--model")
        .arg(fixtures().join("tiny"))
        .arg("--poses")
        .arg(poses)
        .arg("--appearance")
        .arg(fixtures().join("photo.png"))
        .arg("--out")
        .arg(out)
        .args(["--resolution", "64", "--steps", "3", "--window", "4"])
        .args(["--overlap", "1", "--seed", "42", "--cfg", "7.5"])
        .args([
            "--control-scale",
            "2.0",
            "--device",
            "cpu",
            "--precision",
            "f32",
        ])
        .args(["--threads", "1"])
        .args(face)
        .output()
        .expect("spawn anchor render");
    assert!(
        run.status.success(),
        "anchor render failed: {}\n{}",
        String::from_utf8_lossy(&run.stderr),
        String::from_utf8_lossy(&run.stdout)
    );
    (0..N)
        .map(|i| {
            let p = out.join(format!("{i:06}.png"));
            image::open(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .to_rgb8()
                .into_raw()
        })
        .collect()
}

/// The CLI's face arguments.
fn cli_face(landmarks: Option<&Path>, matte: Option<&Path>) -> Vec<String> {
    let mut v: Vec<String> = [
        "--face-model",
        &fixtures().join("tiny_face").to_string_lossy(),
        "--face-crop",
        "64",
        "--face-size",
        "64",
        "--face-steps",
        "3",
        "--face-erode",
        "4",
        "--face-blur",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(l) = landmarks {
        v.extend(["--face-landmarks".into(), l.display().to_string()]);
    }
    if let Some(m) = matte {
        v.extend(["--face-matte".into(), m.display().to_string()]);
    }
    v
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The plugin's debug log.
    log: String,
    frames: Vec<Vec<u8>>,
}

/// `ofx-render` of the poses (General context, photo as Appearance) into `out` with the body
/// settings of [`cli`], the face settings of [`cli_face`] unless `face` is false, and `extra`
/// arguments.
fn ofx(poses: &Path, out: &Path, face: bool, extra: &[String]) -> Run {
    let mut params = vec![
        format!("modelFolder={}", fixtures().join("tiny").display()),
        "resolution=64".into(),
        "steps=3".into(),
        "window=4".into(),
        "overlap=1".into(),
        "seed=42".into(),
        "guidance=7.5".into(),
        "controlScale=2.0".into(),
        "device=CPU".into(),
    ];
    if face {
        params.extend([
            "faceEnhance=on".into(),
            format!("faceModelFolder={}", fixtures().join("tiny_face").display()),
            "faceCrop=64".into(),
            "faceSize=64".into(),
            "faceSteps=3".into(),
            "faceErode=4".into(),
            "faceBlur=5".into(),
        ]);
    }
    let mut args: Vec<String> = vec![
        "--input".into(),
        poses.display().to_string(),
        "--output".into(),
        out.display().to_string(),
        "--appearance".into(),
        fixtures().join("photo.png").display().to_string(),
    ];
    for p in params {
        args.extend(["--param".into(), p]);
    }
    args.extend(extra.iter().cloned());
    let r = common::ofx_render_logged(&args, &[]);
    let frames = if r.code == Some(0) {
        read_out(out)
    } else {
        Vec::new()
    };
    Run {
        code: r.code,
        stdout: r.stdout,
        stderr: r.stderr,
        log: r.log,
        frames,
    }
}

/// The RGB frames `ofx-render` wrote into `out` (empty where a frame was not written), alpha 1.
fn read_out(out: &Path) -> Vec<Vec<u8>> {
    (0..N)
        .map(|i| {
            let p = out.join(format!("{i:06}.png"));
            if !p.is_file() {
                return Vec::new();
            }
            let img = image::open(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .to_rgba8();
            assert!(img.pixels().all(|px| px.0[3] == 255), "alpha 1");
            img.pixels().flat_map(|px| px.0[..3].to_vec()).collect()
        })
        .collect()
}

/// Two `ofx-render` processes (a farm split: frames 0-2 and 3-4) writing into one folder.
fn farm_split(poses: &Path, extra: &[String]) -> Vec<Vec<u8>> {
    let out = TempDir::new("face-farm");
    for range in ["0-2", "3-4"] {
        let mut args = extra.to_vec();
        args.extend(["--frames".to_string(), range.to_string()]);
        let run = ofx(poses, out.path(), true, &args);
        assert_eq!(run.code, Some(0), "frames {range}: {}", run.stderr);
    }
    read_out(out.path())
}

/// Pixels of `a` and `b` (RGB) that differ.
fn changed(a: &[u8], b: &[u8]) -> usize {
    a.chunks_exact(3)
        .zip(b.chunks_exact(3))
        .filter(|(p, q)| p != q)
        .count()
}

/// The number of no-face warnings the plugin posted.
fn no_face_warnings(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.contains("plugin warning: Face Enhance passes the body frame through"))
        .count()
}

#[test]
fn landmarks_file_matches_the_cli_and_faceless_frames_pass_through_with_one_warning() {
    let tmp = TempDir::new("face-file");
    let (poses, _) = inputs(tmp.path());
    // Frames 0-2 have a face, frame 3 is null, frame 4 is not listed.
    let file = tmp.join("landmarks.json");
    landmarks_file(
        &file,
        &[
            Some(landmarks(0)),
            Some(landmarks(1)),
            Some(landmarks(2)),
            None,
        ],
    );
    let body = cli(&poses, &tmp.join("cli-body"), &[]);
    let want = cli(&poses, &tmp.join("cli-face"), &cli_face(Some(&file), None));
    let param = format!("faceLandmarksFile={}", file.display());
    for (tag, extra) in [
        ("sequential", vec![]),
        (
            "random order, 3 threads, 2 clones",
            ["--order", "random", "--threads", "3", "--clones", "2"]
                .map(String::from)
                .to_vec(),
        ),
    ] {
        let out = TempDir::new("face-file-out");
        let mut args = vec!["--param".to_string(), param.clone()];
        args.extend(extra);
        let run = ofx(&poses, out.path(), true, &args);
        assert_eq!(run.code, Some(0), "{tag}: {}\n{}", run.stdout, run.stderr);
        for i in 0..N {
            assert!(
                run.frames[i] == want[i],
                "{tag}: frame {i} differs from anchor render in {} pixels",
                changed(&run.frames[i], &want[i])
            );
        }
        for i in 0..3 {
            let n = changed(&run.frames[i], &body[i]);
            eprintln!("{tag}: frame {i}: the face pass changed {n} of 4096 pixels");
            assert!(
                n >= 50,
                "{tag}: frame {i}: the face region changes ({n} pixels)"
            );
        }
        for i in 3..N {
            assert_eq!(
                run.frames[i], body[i],
                "{tag}: frame {i} without a face is the body frame"
            );
        }
        assert_eq!(
            no_face_warnings(&run.stderr),
            1,
            "{tag}: one warning per clip:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains(
                ": no face (empty matte and no landmarks). Make Your Anchor warns once per clip"
            ),
            "{}",
            run.stderr
        );
        // One face-model load shared by every instance and thread; each face inpainted once.
        let loads = run.log.matches("face model loaded from").count();
        assert_eq!(loads, 1, "{tag}: face model loads");
        let inpainted = run.log.matches("(computed; ").count();
        assert_eq!(inpainted, 3, "{tag}: face inpaintings");
    }
}

#[test]
fn point_parameters_match_the_cli_landmarks() {
    let tmp = TempDir::new("face-points");
    let (poses, _) = inputs(tmp.path());
    // The host's parameters are constant over time: the same five points on every frame.
    let pts = landmarks_at(30.0, 22.0);
    let file = tmp.join("landmarks.json");
    landmarks_file(&file, &[Some(pts); N]);
    let body = cli(&poses, &tmp.join("cli-body"), &[]);
    let want = cli(&poses, &tmp.join("cli-face"), &cli_face(Some(&file), None));
    let names = [
        "faceLeftEye",
        "faceRightEye",
        "faceNose",
        "faceMouthLeft",
        "faceMouthRight",
    ];
    let mut args = vec!["--param".to_string(), "faceUsePoints=on".to_string()];
    for (name, [x, y]) in names.iter().zip(pts) {
        // Image pixel centres (y down) to OFX canonical positions (y up) on a 64×64 RoD at 0.
        let (cx, cy) = (x + 0.5, f64::from(SIZE) - y - 0.5);
        args.extend(["--param".to_string(), format!("{name}={cx},{cy}")]);
    }
    let out = TempDir::new("face-points-out");
    let run = ofx(&poses, out.path(), true, &args);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    for i in 0..N {
        assert!(
            run.frames[i] == want[i],
            "frame {i} differs from anchor render in {} pixels",
            changed(&run.frames[i], &want[i])
        );
        let n = changed(&run.frames[i], &body[i]);
        assert!(n >= 50, "frame {i}: the face region changes ({n} pixels)");
    }
    assert_eq!(no_face_warnings(&run.stderr), 0, "{}", run.stderr);
}

#[test]
fn face_matte_comes_first_and_matches_the_cli() {
    let tmp = TempDir::new("face-matte");
    let (poses, mattes) = inputs(tmp.path());
    // Mattes for frames 0-3 (frame 4's is empty, so its landmarks place it); landmarks for all.
    let file = tmp.join("landmarks.json");
    let all: Vec<_> = (0..N).map(|i| Some(landmarks(i))).collect();
    landmarks_file(&file, &all);
    let body = cli(&poses, &tmp.join("cli-body"), &[]);
    let want = cli(
        &poses,
        &tmp.join("cli-face"),
        &cli_face(Some(&file), Some(&mattes)),
    );
    let landmarks_only = cli(&poses, &tmp.join("cli-lm"), &cli_face(Some(&file), None));
    let out = TempDir::new("face-matte-out");
    let args = [
        "--face-matte".to_string(),
        mattes.display().to_string(),
        "--param".to_string(),
        format!("faceLandmarksFile={}", file.display()),
    ];
    let run = ofx(&poses, out.path(), true, &args);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    for i in 0..N {
        assert!(
            run.frames[i] == want[i],
            "frame {i} differs from anchor render in {} pixels",
            changed(&run.frames[i], &want[i])
        );
        assert!(changed(&run.frames[i], &body[i]) >= 50, "frame {i} changes");
    }
    // The matte, not the landmarks, placed frames 0-3; frame 4 fell back to its landmarks.
    for i in 0..4 {
        assert_ne!(
            run.frames[i], landmarks_only[i],
            "frame {i}: the matte wins"
        );
    }
    assert_eq!(
        run.frames[4], landmarks_only[4],
        "empty matte: the landmarks"
    );
    assert_eq!(no_face_warnings(&run.stderr), 0, "{}", run.stderr);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for e in std::fs::read_dir(from).expect("list dir") {
        let e = e.expect("dir entry");
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).expect("copy file");
        }
    }
}

/// A face model folder with its own `head.png` (what `anchor train --stage face` writes): the
/// effect takes it as the head reference before the body's photo, in the CLI's order.
#[test]
fn the_face_models_head_photo_is_the_default_head_reference_as_in_the_cli() {
    let tmp = TempDir::new("face-head-png");
    let (poses, _) = inputs(tmp.path());
    let file = tmp.join("landmarks.json");
    landmarks_file(&file, &[Some(landmarks(0)), Some(landmarks(1))]);
    // A copy of the tiny face model beside a link to `tiny`, so its anchor.json resolves.
    let model = tmp.join("tiny_face");
    copy_dir(&fixtures().join("tiny_face"), &model);
    std::os::unix::fs::symlink(fixtures().join("tiny"), tmp.join("tiny")).expect("link tiny");
    let head = fixtures().join("../../examples/appearance.png");
    std::fs::copy(&head, model.join("head.png")).expect("copy head.png");
    let mut face = cli_face(Some(&file), None);
    face[1] = model.display().to_string();
    let want = cli(&poses, &tmp.join("cli-head"), &face);
    let body_photo = cli(&poses, &tmp.join("cli-photo"), &cli_face(Some(&file), None));
    assert!(
        changed(&want[0], &body_photo[0]) > 0,
        "head.png must change the face render"
    );
    let out = TempDir::new("face-head-png-out");
    let args = [
        format!("faceModelFolder={}", model.display()),
        format!("faceLandmarksFile={}", file.display()),
    ]
    .into_iter()
    .flat_map(|p| ["--param".to_string(), p])
    .collect::<Vec<_>>();
    let run = ofx(&poses, out.path(), true, &args);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    for i in 0..N {
        assert!(
            run.frames[i] == want[i],
            "frame {i} differs from anchor render in {} pixels",
            changed(&run.frames[i], &want[i])
        );
    }
}

#[test]
fn bad_face_models_fail_with_what_to_do() {
    let tmp = TempDir::new("face-bad");
    let (poses, _) = inputs(tmp.path());
    let out = TempDir::new("face-bad-out");
    // A face model whose head UNet is the body's 4-channel one: it cannot inpaint.
    let four = tmp.join("four-channel-face");
    copy_dir(&fixtures().join("tiny/unet"), &four.join("head/unet"));
    copy_dir(
        &fixtures().join("tiny_face/head/controlnet"),
        &four.join("head/controlnet"),
    );
    let tiny = fixtures().join("tiny");
    let component = |c: &str| format!("\"{c}\": \"{}\"", tiny.join(c).display());
    std::fs::write(
        four.join("anchor.json"),
        format!(
            "{{\"components\": {{{}}}}}",
            ["vae", "scheduler", "text_encoder", "image_encoder"]
                .map(component)
                .join(", ")
        ),
    )
    .expect("write anchor.json");
    let body_as_face = [
        "--frames".to_string(),
        "0".to_string(),
        "--param".to_string(),
        format!("faceModelFolder={}", four.display()),
    ];
    let run = ofx(&poses, out.path(), true, &body_as_face);
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("plugin error: The face model folder"))
        .unwrap_or_else(|| panic!("no face-model error:\n{}", run.stderr));
    assert!(
        line.contains("the head UNet takes 4 and returns 4 channels")
            && line.contains("it must take 9 and return 4")
            && line.ends_with("or turn faceEnhance off"),
        "{line}"
    );
    // A landmarks file that is not JSON.
    let bad = tmp.join("bad.json");
    std::fs::write(&bad, "not json").expect("write bad landmarks");
    let bad_file = [
        "--frames".to_string(),
        "0".to_string(),
        "--param".to_string(),
        format!("faceLandmarksFile={}", bad.display()),
    ];
    let run = ofx(&poses, out.path(), true, &bad_file);
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("plugin error: The face landmarks file"))
        .unwrap_or_else(|| panic!("no landmarks-file error:\n{}", run.stderr));
    assert!(
        line.ends_with("give faceLandmarksFile a JSON object mapping frames (000012 or 12) to five [x, y] points or null, or clear it"),
        "{line}"
    );
    // faceEnhance on without a face model folder.
    let empty = [
        "--frames".to_string(),
        "0".to_string(),
        "--param".to_string(),
        "faceModelFolder=".to_string(),
    ];
    let run = ofx(&poses, out.path(), true, &empty);
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("plugin error: faceEnhance is on but faceModelFolder is empty: set faceModelFolder to a Make-Your-Anchor face model folder, or turn faceEnhance off"),
        "{}",
        run.stderr
    );
}

#[test]
fn face_parameters_are_listed() {
    let out = Command::new(env!("CARGO_BIN_EXE_ofx-render"))
        .args(["--bundle", bundle().to_str().expect("utf-8")])
        .args([
            "--plugin",
            PLUGIN_ID,
            "--list-params",
            "--context",
            "general",
        ])
        .output()
        .expect("spawn ofx-render");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for name in [
        "faceEnhance",
        "faceModelFolder",
        "faceUsePoints",
        "faceLeftEye",
        "faceRightEye",
        "faceNose",
        "faceMouthLeft",
        "faceMouthRight",
        "faceLandmarksFile",
        "faceParser",
        "faceSmoothing",
        "faceTemporal",
        "faceWindow",
        "faceOverlap",
        "faceCrop",
        "faceSize",
        "faceSteps",
        "faceGuidance",
        "faceControlScale",
        "faceSeed",
        "faceErode",
        "faceBlur",
    ] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} is listed:\n{text}"
        );
    }
    let point = text
        .lines()
        .find(|l| l.starts_with("faceNose"))
        .unwrap_or_default();
    assert!(point.contains("Double2D"), "{point}");
}

#[test]
fn smoothing_matches_the_cli_face_smooth() {
    let tmp = TempDir::new("face-smooth");
    let (poses, _) = inputs(tmp.path());
    // A jittery track: the head moves 2 px a frame, the landmarks jump ±3 px around it.
    let file = tmp.join("landmarks.json");
    let jitter = [0.0, 3.0, -3.0, 2.0, -1.0];
    let all: Vec<_> = (0..N)
        .map(|i| {
            let (cx, cy) = head(i);
            Some(landmarks_at(cx + jitter[i], cy - jitter[i] / 2.0))
        })
        .collect();
    landmarks_file(&file, &all);
    // faceSmoothing 0.5 = weight 0.5 on the new frame = --face-smooth 0.5.
    let mut face = cli_face(Some(&file), None);
    face.extend(["--face-smooth".into(), "0.5".into()]);
    let want = cli(&poses, &tmp.join("cli-smooth"), &face);
    let raw = cli(&poses, &tmp.join("cli-raw"), &cli_face(Some(&file), None));
    let out = TempDir::new("face-smooth-out");
    let args = [
        "--param".to_string(),
        format!("faceLandmarksFile={}", file.display()),
        "--param".to_string(),
        "faceSmoothing=0.5".to_string(),
        "--order".to_string(),
        "reverse".to_string(),
    ];
    let run = ofx(&poses, out.path(), true, &args);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    for i in 0..N {
        assert!(
            run.frames[i] == want[i],
            "frame {i} differs from anchor render --face-smooth in {} pixels",
            changed(&run.frames[i], &want[i])
        );
    }
    assert_eq!(run.frames[0], raw[0], "the first frame has no history");
    let farm = farm_split(&poses, &args[..4]);
    assert!(farm == want, "a farm split gives the CLI's frames");
    let smoothed = (1..N).filter(|&i| run.frames[i] != raw[i]).count();
    assert_eq!(smoothed, N - 1, "smoothing moves every later crop");
}

#[test]
fn temporal_face_matches_the_cli_face_temporal() {
    let tmp = TempDir::new("face-temporal");
    let (poses, _) = inputs(tmp.path());
    // Frames 0-2 and 4 have a face, frame 3 is null: the face windows run over 4 crops.
    let file = tmp.join("landmarks.json");
    let mut all: Vec<_> = (0..N).map(|i| Some(landmarks(i))).collect();
    all[3] = None;
    landmarks_file(&file, &all);
    let mut face = cli_face(Some(&file), None);
    face.extend(
        [
            "--face-temporal",
            "--face-window",
            "2",
            "--face-overlap",
            "1",
        ]
        .map(String::from),
    );
    face.extend(["--face-smooth".into(), "0.5".into()]);
    let want = cli(&poses, &tmp.join("cli-temporal"), &face);
    let per_frame = cli(&poses, &tmp.join("cli-per-frame"), &{
        let mut f = cli_face(Some(&file), None);
        f.extend(["--face-smooth".into(), "0.5".into()]);
        f
    });
    let body = cli(&poses, &tmp.join("cli-body"), &[]);
    let param = |p: &str| ["--param".to_string(), p.to_string()];
    for (tag, order) in [("sequential", "sequential"), ("random order", "random")] {
        let out = TempDir::new("face-temporal-out");
        let mut args: Vec<String> = Vec::new();
        args.extend(param(&format!("faceLandmarksFile={}", file.display())));
        args.extend(param("faceTemporal=on"));
        args.extend(param("faceWindow=2"));
        args.extend(param("faceOverlap=1"));
        args.extend(param("faceSmoothing=0.5"));
        args.extend(["--order".to_string(), order.to_string()]);
        let run = ofx(&poses, out.path(), true, &args);
        assert_eq!(run.code, Some(0), "{tag}: {}\n{}", run.stdout, run.stderr);
        for i in 0..N {
            assert!(
                run.frames[i] == want[i],
                "{tag}: frame {i} differs from anchor render --face-temporal in {} pixels",
                changed(&run.frames[i], &want[i])
            );
        }
        assert_eq!(run.frames[3], body[3], "{tag}: frame 3 has no face");
        let differs = [0, 1, 2, 4]
            .iter()
            .filter(|&&i| run.frames[i] != per_frame[i])
            .count();
        assert!(
            differs > 0,
            "{tag}: the joint windows change the faces of the per-frame pass"
        );
        assert_eq!(no_face_warnings(&run.stderr), 1, "{tag}: {}", run.stderr);
        if order == "random" {
            let farm = farm_split(&poses, &args[..args.len() - 2]);
            assert!(farm == want, "a farm split gives the CLI's frames");
        }
    }
}

#[test]
fn linear_float_host_matches_the_cli_within_two_levels() {
    let tmp = TempDir::new("face-linear");
    let (poses, _) = inputs(tmp.path());
    let file = tmp.join("landmarks.json");
    let all: Vec<_> = (0..N).map(|i| Some(landmarks(i))).collect();
    landmarks_file(&file, &all);
    let want = cli(&poses, &tmp.join("cli-face"), &cli_face(Some(&file), None));
    let out = TempDir::new("face-linear-out");
    let args = [
        "--param".to_string(),
        format!("faceLandmarksFile={}", file.display()),
        "--depth".to_string(),
        "float".to_string(),
        "--linear".to_string(),
    ];
    let run = ofx(&poses, out.path(), true, &args);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let mut worst = 0u8;
    for i in 0..N {
        let d = run.frames[i]
            .iter()
            .zip(&want[i])
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(u8::MAX);
        worst = worst.max(d);
    }
    eprintln!("linear float host vs the sRGB CLI: max difference {worst}/255");
    assert!(worst <= 2, "max difference {worst}/255");
}
