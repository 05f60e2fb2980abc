//! Picking a model folder in the effect's UI brings the settings its `anchor.json` recommends:
//! a user's edit of `modelFolder` (InstanceChanged, reason `OfxChangeUserEdited`) sets steps,
//! guidance, control scale, window, overlap, resolution and seed to the model's `defaults`, and
//! an edit of `faceModelFolder` sets the face parameters to its `face_defaults`. The frames then
//! equal `anchor render`'s with the same model and no options (the CLI uses the same defaults).
//! A value set without a user edit (a saved project, a farm job's `--param`) is kept.
//!
//! Model: the embedded `resources/models/tiny-anchor` (CFG 3.5, control 1.5, 20 steps; face:
//! crop 512 → 32², CFG 3.5, erode 6, blur 11), on the first 4 held-out example poses.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{anchor_exe, ofx_render_logged, TempDir};

const FRAMES: usize = 4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model() -> PathBuf {
    root().join("resources/models/tiny-anchor")
}

fn examples() -> PathBuf {
    root().join("examples")
}

/// The first [`FRAMES`] held-out poses.
fn poses(dir: &Path) -> PathBuf {
    let p = dir.join("poses");
    std::fs::create_dir_all(&p).expect("poses dir");
    for i in 0..FRAMES {
        let name = format!("{i:06}.png");
        std::fs::copy(examples().join("poses").join(&name), p.join(&name)).expect("copy pose");
    }
    p
}

fn read(dir: &Path) -> Vec<Vec<u8>> {
    (0..FRAMES)
        .map(|i| {
            let path = dir.join(format!("{i:06}.png"));
            image::open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .to_rgb8()
                .into_raw()
        })
        .collect()
}

/// `ofx-render` (General context, the example's appearance photo) with `args`; returns the
/// frames and the plugin's log.
fn ofx(poses: &Path, out: &Path, args: &[String]) -> (Vec<Vec<u8>>, String) {
    let mut all: Vec<String> = vec![
        "--input".into(),
        poses.display().to_string(),
        "--output".into(),
        out.display().to_string(),
        "--appearance".into(),
        examples().join("appearance.png").display().to_string(),
        "--param".into(),
        "device=CPU".into(),
    ];
    all.extend(args.iter().cloned());
    let r = ofx_render_logged(&all, &[]);
    assert!(
        r.code == Some(0),
        "ofx-render {all:?} failed:\n{}",
        r.stderr
    );
    (read(out), r.log)
}

fn cli(poses: &Path, out: &Path, extra: &[String]) -> Vec<Vec<u8>> {
    let o = Command::new(anchor_exe())
        .args(["render", "--model"])
        .arg(model())
        .arg("--poses")
        .arg(poses)
        .arg("--appearance")
        .arg(examples().join("appearance.png"))
        .arg("--out")
        .arg(out)
        .args(["--device", "cpu"])
        .args(extra)
        .output()
        .expect("spawn anchor");
    assert!(
        o.status.success(),
        "anchor render failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    read(out)
}

#[test]
fn choosing_a_model_folder_loads_its_recommended_settings() {
    let tmp = TempDir::new("model-defaults");
    let poses = poses(tmp.path());
    let m = model().display().to_string();
    let landmarks = examples().join("landmarks.json").display().to_string();

    // Body: the user picks the model folder.
    let (edited, log) = ofx(
        &poses,
        &tmp.join("edited"),
        &["--user-edit".into(), format!("modelFolder={m}")],
    );
    for want in [
        "guidance = Double(3.5)",
        "controlScale = Double(1.5)",
        "steps = Int(20)",
        "window = Int(16)",
        "resolution = Int(64)",
    ] {
        assert!(log.contains(want), "the log lacks {want:?}:\n{log}");
    }
    let reference = cli(&poses, &tmp.join("cli"), &[]);
    for i in 0..FRAMES {
        assert!(
            edited[i] == reference[i],
            "frame {i}: effect vs anchor render"
        );
    }
    // The same folder set without a user edit (a saved project, a farm job) keeps the
    // parameters' values (guidance 7.5, control scale 2.0; resolution set to 64 here, as its
    // default of 512 would be slow): other frames.
    let (kept, log) = ofx(
        &poses,
        &tmp.join("kept"),
        &[
            "--param".into(),
            format!("modelFolder={m}"),
            "--param".into(),
            "resolution=64".into(),
        ],
    );
    assert!(!log.contains("from the anchor.json"), "{log}");
    assert!(
        (0..FRAMES).all(|i| kept[i] != reference[i]),
        "the reference's 7.5 / 2.0 must give other frames"
    );

    // Face: the user picks the face model folder; the face pass takes its face_defaults.
    let (face, log) = ofx(
        &poses,
        &tmp.join("face"),
        &[
            "--user-edit".into(),
            format!("modelFolder={m}"),
            "--param".into(),
            "faceEnhance=on".into(),
            "--param".into(),
            format!("faceLandmarksFile={landmarks}"),
            "--user-edit".into(),
            format!("faceModelFolder={m}"),
        ],
    );
    for want in [
        "faceSize = Int(32)",
        "faceGuidance = Double(3.5)",
        "faceErode = Int(6)",
        "faceBlur = Int(11)",
    ] {
        assert!(log.contains(want), "the log lacks {want:?}:\n{log}");
    }
    let face_ref = cli(
        &poses,
        &tmp.join("cli-face"),
        &[
            "--face-model".into(),
            m.clone(),
            "--face-landmarks".into(),
            landmarks.clone(),
        ],
    );
    for i in 0..FRAMES {
        assert!(
            face[i] == face_ref[i],
            "frame {i}: face, effect vs anchor render"
        );
        assert!(
            face[i] != reference[i],
            "frame {i}: the face pass changed nothing"
        );
    }
}

#[test]
fn a_model_folder_from_the_environment_brings_its_recommended_settings_too() {
    let tmp = TempDir::new("model-defaults-env");
    let poses = poses(tmp.path());
    let m = model().display().to_string();
    let run = |out: &str, args: &[String]| {
        let mut all: Vec<String> = vec![
            "--input".into(),
            poses.display().to_string(),
            "--output".into(),
            tmp.join(out).display().to_string(),
            "--appearance".into(),
            examples().join("appearance.png").display().to_string(),
            "--param".into(),
            "device=CPU".into(),
        ];
        all.extend(args.iter().cloned());
        let r = ofx_render_logged(&all, &[("MAKE_YOUR_ANCHOR_MODEL", &m)]);
        assert!(r.code == Some(0), "ofx-render failed:\n{}", r.stderr);
        (read(&tmp.join(out)), r.log)
    };
    // No modelFolder: the folder of MAKE_YOUR_ANCHOR_MODEL, with its anchor.json's CFG 3.5,
    // control scale 1.5 and resolution 64, as `anchor render --model` uses them.
    let (env, log) = run("env", &[]);
    assert!(log.contains("controlScale = Double(1.5)"), "{log}");
    let reference = cli(&poses, &tmp.join("cli"), &[]);
    for i in 0..FRAMES {
        assert!(env[i] == reference[i], "frame {i}: effect vs anchor render");
    }
    // A value the project moved away from the table default stays.
    let (kept, _) = run("kept", &["--param".into(), "guidance=5.0".into()]);
    let five = cli(&poses, &tmp.join("cli-5"), &["--cfg".into(), "5.0".into()]);
    for i in 0..FRAMES {
        assert!(kept[i] == five[i], "frame {i}: guidance 5 kept");
    }
}
