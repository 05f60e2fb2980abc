//! Integration tests of the offline tools: `anchor synth` (layout, determinism, shared silhouette,
//! landmarks) and `anchor eval` on its output.
use std::path::{Path, PathBuf};

use anchor_cli::tools::eval::{self, EvalArgs};
use anchor_cli::tools::synth::{self, SynthArgs};
use anchor_cli::tools::{Result, ToolsError};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("anchor-tools-{}-{name}", std::process::id()));
    // A leftover from an earlier run with the same pid would mix files into the comparison.
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn small(out: &Path, threads: usize) -> SynthArgs {
    SynthArgs {
        frames: 10,
        identities: 1,
        size: 48,
        heldout_fraction: 0.2,
        threads: Some(threads),
        ..SynthArgs::new(out)
    }
}

/// Every file under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn count(root: &Path, sub: &str) -> usize {
    tree(&root.join(sub)).len()
}

#[test]
fn synth_layout_is_complete_and_runs_are_byte_identical() -> Result<()> {
    let (a, b, c) = (scratch("det-a"), scratch("det-b"), scratch("det-c"));
    let s = synth::synthesize(&small(&a, 2))?;
    assert_eq!(s.identities, vec!["pre00", "target"]);
    assert_eq!((s.frames_written, s.heldout_frames), (20, 2));
    synth::synthesize(&small(&b, 1))?;

    // Same seed, different thread counts: the same files with the same bytes.
    let files = tree(&a);
    assert_eq!(files, tree(&b));
    for f in &files {
        assert!(
            read(&a.join(f)) == read(&b.join(f)),
            "{} differs",
            f.display()
        );
    }
    // Layout: 10 pre-training frames, 8 target training frames, 2 held out, numbered from 0.
    for sub in ["mesh", "person", "face_matte"] {
        assert_eq!(count(&a, &format!("pre00/{sub}")), 10, "pre00/{sub}");
        assert_eq!(count(&a, &format!("target/{sub}")), 8, "target/{sub}");
        assert_eq!(count(&a, &format!("heldout/{sub}")), 2, "heldout/{sub}");
    }
    assert!(a.join("heldout/mesh/000001.png").is_file());
    assert!(!a.join("target/mesh/000008.png").exists());
    for f in [
        "reference.png",
        "landmarks.json",
        "train.jsonl",
        "identity.json",
    ] {
        assert!(a.join("pre00").join(f).is_file(), "pre00/{f}");
        assert!(a.join("target").join(f).is_file(), "target/{f}");
    }
    assert!(a.join("heldout/segment.json").is_file());
    assert!(a.join("heldout/reference.png").is_file());
    assert!(read(&a.join("heldout/reference.png")) == read(&a.join("target/reference.png")));

    // JSON-Lines: the reference's format, paths relative to the file, training frames only.
    let text = String::from_utf8_lossy(&read(&a.join("target/train.jsonl"))).to_string();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| ToolsError::Input(e.to_string())))
        .collect::<Result<_>>()?;
    assert_eq!(lines.len(), 8);
    assert_eq!(lines[7]["source"], "mesh/000007.png");
    assert_eq!(lines[7]["target"], "person/000007.png");
    assert_eq!(lines[7]["reference"], "reference.png");
    for l in &lines {
        for key in ["source", "target", "reference"] {
            let rel = l[key].as_str().unwrap_or("");
            assert!(a.join("target").join(rel).is_file(), "{rel} missing");
        }
    }
    let pre_lines = String::from_utf8_lossy(&read(&a.join("pre00/train.jsonl")))
        .lines()
        .count();
    assert_eq!(pre_lines, 10);

    let seg: serde_json::Value = serde_json::from_slice(&read(&a.join("heldout/segment.json")))
        .map_err(|e| ToolsError::Input(e.to_string()))?;
    assert_eq!(seg["first_frame"], 8);
    assert_eq!(seg["frames"], 2);
    let lm: serde_json::Value = serde_json::from_slice(&read(&a.join("heldout/landmarks.json")))
        .map_err(|e| ToolsError::Input(e.to_string()))?;
    assert_eq!(lm.as_object().map(|m| m.len()), Some(2));
    assert_eq!(lm["000001"].as_array().map(|v| v.len()), Some(5));

    // The held-out frames are the target's frames 8 and 9, not a different motion.
    let ids = synth::identities(0, 1);
    let f9 = ids[1].render(&ids[1].pose(9.0 / 30.0), 48);
    let disk = eval::load_rgb(&a.join("heldout/person/000001.png"))?;
    assert_eq!(disk, f9.person);

    // Another seed gives other people.
    synth::synthesize(&SynthArgs {
        seed: 1,
        ..small(&c, 2)
    })?;
    assert!(read(&a.join("pre00/reference.png")) != read(&c.join("pre00/reference.png")));

    for d in [a, b, c] {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(())
}

#[test]
fn person_and_mesh_share_the_silhouette_and_landmarks_sit_on_the_head() {
    let size = 128;
    let ids = synth::identities(7, 4);
    let mut worst = 1.0f64;
    for (k, id) in ids.iter().enumerate() {
        for step in 0..12 {
            let t = 0.37 + 4.9 * step as f64 + 1.3 * k as f64;
            let r = id.render(&id.pose(t), size);
            let mesh = eval::mesh_silhouette(&r.mesh);
            let person = eval::foreground(&r.person);
            let iou = eval::iou(&person, &mesh);
            worst = worst.min(iou);
            assert!(iou >= 0.95, "{} t={t}: IoU {iou}", id.name);
            // The face matte lies inside the silhouette and is not empty.
            let matte: Vec<bool> = r.face_matte.iter().map(|&v| v == 255).collect();
            assert!(matte.iter().zip(&mesh).all(|(&m, &s)| !m || s));
            // Landmarks inside the head box (the matte's bounding box, 1 px margin).
            let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
            for (i, _) in matte.iter().enumerate().filter(|(_, &m)| m) {
                let (x, y) = (i % size, i / size);
                (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            }
            assert!(x0 <= x1, "{} t={t}: empty face matte", id.name);
            for [x, y] in r.landmarks {
                assert!(
                    x >= x0 as f64 - 1.0
                        && x <= x1 as f64 + 2.0
                        && y >= y0 as f64 - 1.0
                        && y <= y1 as f64 + 2.0,
                    "{} t={t}: landmark ({x}, {y}) outside head box x {x0}..={x1}, y {y0}..={y1}",
                    id.name
                );
            }
            // Order: image-left eye left of image-right eye; mouth below the eyes.
            let lm = r.landmarks;
            assert!(lm[0][0] < lm[1][0] && lm[3][0] < lm[4][0]);
            assert!(lm[3][1] > lm[0][1] && lm[4][1] > lm[1][1]);
        }
    }
    eprintln!("worst person/mesh silhouette IoU: {worst:.4}");
}

#[test]
fn eval_reads_synth_output() -> Result<()> {
    let out = scratch("eval");
    synth::synthesize(&SynthArgs {
        frames: 12,
        size: 64,
        ..small(&out, 2)
    })?;
    let pre = out.join("pre00");
    let json = out.join("report.json");
    let args = EvalArgs {
        pred: pre.join("person"),
        truth: pre.join("person"),
        window: 4,
        overlap: 1,
        mask: Some(pre.join("face_matte")),
        mesh: Some(pre.join("mesh")),
        json: Some(json.clone()),
        threads: Some(2),
        baseline: None,
        write_baseline: None,
    };
    eval::run(&args)?;
    let r = eval::evaluate(&args)?;
    assert_eq!((r.frames, r.frames_scored), (12, 12));
    assert_eq!(r.psnr_db, Some(eval::PSNR_CAP_DB));
    assert!((r.ssim.unwrap_or(0.0) - 1.0).abs() < 1e-12);
    assert!(
        r.silhouette_iou.unwrap_or(0.0) >= 0.95,
        "{:?}",
        r.silhouette_iou
    );
    // Stride 3 over 11 pairs: boundaries before frames 3, 6, 9.
    assert_eq!((r.flicker.boundary_pairs, r.flicker.inside_pairs), (3, 8));
    assert_eq!(r.flicker.ratio, r.flicker_truth.ratio);
    let written: serde_json::Value =
        serde_json::from_slice(&read(&json)).map_err(|e| ToolsError::Input(e.to_string()))?;
    assert_eq!(written["frames"], 12);

    // Mesh against person: a real difference, finite PSNR.
    let r = eval::evaluate(&EvalArgs {
        pred: pre.join("mesh"),
        mask: None,
        json: None,
        ..args.clone()
    })?;
    let p = r.psnr_db.unwrap_or(f64::NAN);
    assert!(p > 3.0 && p < 30.0, "psnr {p}");

    // The mean-frame baseline: the mean of the person frames, written out, scored against the
    // truth; its gain is the prediction's PSNR minus the baseline's.
    let mean_png = out.join("mean.png");
    let r = eval::evaluate(&EvalArgs {
        pred: pre.join("mesh"),
        mask: None,
        json: None,
        baseline: Some(pre.join("person")),
        write_baseline: Some(mean_png.clone()),
        ..args.clone()
    })?;
    let frames: Vec<eval::Rgb8> = eval::list_frames(&pre.join("person"))?
        .iter()
        .map(|f| eval::load_rgb(f))
        .collect::<Result<_>>()?;
    let mean = eval::mean_frame(&frames)?.expect("12 frames");
    assert_eq!(eval::load_rgb(&mean_png)?, mean);
    let want = frames
        .iter()
        .map(|f| eval::psnr(&mean, f, None).map(|v| v.unwrap_or(f64::NAN)))
        .sum::<Result<f64>>()?
        / 12.0;
    let b = r.baseline.clone().expect("baseline report");
    assert_eq!(b.frames_averaged, 12);
    assert!((b.psnr_db.unwrap_or(f64::NAN) - want).abs() < 1e-9);
    assert!(
        (r.psnr_gain_db.unwrap_or(f64::NAN) - (p - want)).abs() < 1e-9,
        "{r:?}"
    );
    // A still image works as a baseline too, and scores the same.
    let r2 = eval::evaluate(&EvalArgs {
        pred: pre.join("mesh"),
        mask: None,
        json: None,
        baseline: Some(mean_png.clone()),
        ..args.clone()
    })?;
    assert_eq!(
        r2.baseline.map(|b| (b.frames_averaged, b.psnr_db)),
        Some((1, b.psnr_db))
    );

    // A truth folder missing a frame is a clear error.
    let err = eval::evaluate(&EvalArgs {
        truth: out.join("target/person"),
        ..args.clone()
    });
    match err {
        Err(ToolsError::Input(msg)) => assert!(msg.contains("has no frame 000009.png"), "{msg}"),
        other => panic!("expected a missing-frame error, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(out);
    Ok(())
}
