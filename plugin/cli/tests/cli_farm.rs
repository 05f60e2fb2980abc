//! `anchor render --shared-cache`: processes of one farm job, started together on disjoint
//! chunks, split the window batches through the shared folder and write exactly the frames of a
//! single render, also when one of them is killed mid-render.
mod common;
use common::frames;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anchor-farm-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `n` 64×64 pose frames: a figure that walks across the frame.
fn poses(dir: &Path, n: usize) -> PathBuf {
    let p = dir.join("poses");
    std::fs::create_dir_all(&p).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(64, 64, |x, y| {
            let cx = 12 + (i as u32 * 2) % 40;
            if x.abs_diff(cx) < 7 && y > 18 || x.abs_diff(cx) < 5 && y.abs_diff(11) < 5 {
                image::Rgb([118, 132, 168])
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        img.save(p.join(format!("f{i:03}.png"))).unwrap();
    }
    p
}

/// An `anchor render` of the tiny model: 64², window 4 / overlap 1, `steps` steps.
fn command(poses: &Path, out: &Path, steps: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_anchor"));
    c.args(["render", "--model"])
        .arg(fixtures().join("tiny"))
        .arg("--poses")
        .arg(poses)
        .arg("--appearance")
        .arg(fixtures().join("photo.png"))
        .arg("--out")
        .arg(out)
        .args(["--resolution", "64", "--steps", steps, "--window", "4"])
        .args(["--overlap", "1", "--device", "cpu", "--progress", "plain"])
        .args(extra)
        .env_remove("MAKE_YOUR_ANCHOR_SHARED_CACHE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn finish(c: Child) -> (String, String) {
    let out = c.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "anchor failed: {stderr}");
    (stdout, stderr)
}

fn calls(stdout: &str) -> u64 {
    let s = stdout.split(" network calls").next().unwrap();
    s.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn processes_sharing_a_folder_split_the_work_and_match_a_single_render() {
    let tmp = tempdir("split");
    let poses = poses(&tmp, 24);
    let single = tmp.join("single");
    let (stdout, _) = finish(command(&poses, &single, "4", &[]).spawn().unwrap());
    // 24 frames, window 4 / overlap 1: 8 windows × 4 steps.
    let one = calls(&stdout);
    assert_eq!(one, 32, "{stdout}");
    let shared = tmp.join("shared");
    let out = tmp.join("farm");
    let chunks = ["0-7", "8-15", "16-23"];
    let children: Vec<Child> = chunks
        .iter()
        .map(|c| {
            let extra = ["--frames", c, "--shared-cache", shared.to_str().unwrap()];
            command(&poses, &out, "4", &extra).spawn().unwrap()
        })
        .collect();
    let runs: Vec<(String, String)> = children.into_iter().map(finish).collect();
    let per: Vec<u64> = runs.iter().map(|(o, _)| calls(o)).collect();
    let total: u64 = per.iter().sum();
    assert!(
        total as f64 <= 1.15 * one as f64,
        "processes computed {per:?} = {total} batches; a single render computes {one}"
    );
    assert_eq!(
        frames(&out),
        frames(&single),
        "farm frames equal a single render"
    );
    for (stdout, stderr) in &runs {
        assert!(stdout.contains("shared cache"), "{stdout}");
        assert!(stderr.contains("anchor: progress 100%"), "{stderr}");
    }
    // A rerun of any chunk finds everything published: no network call.
    let again = tmp.join("again");
    let extra = [
        "--frames",
        "8-15",
        "--shared-cache",
        shared.to_str().unwrap(),
    ];
    let (stdout, _) = finish(command(&poses, &again, "4", &extra).spawn().unwrap());
    assert_eq!(calls(&stdout), 0, "{stdout}");
    let info = Command::new(env!("CARGO_BIN_EXE_anchor"))
        .args(["cache", "info"])
        .arg(&shared)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("leases: 0 live, 0 stale"), "{info}");
}

#[test]
fn a_killed_process_is_worked_around_and_its_chunk_reruns() {
    let tmp = tempdir("kill");
    let poses = poses(&tmp, 36);
    let single = tmp.join("single");
    finish(command(&poses, &single, "12", &[]).spawn().unwrap());
    let shared = tmp.join("shared");
    let out = tmp.join("farm");
    let chunks = ["0-11", "12-23", "24-35"];
    let spawn = |c: &str| {
        let extra = [
            "--frames",
            c,
            "--shared-cache",
            shared.to_str().unwrap(),
            "--shared-lease-seconds",
            "2",
        ];
        command(&poses, &out, "12", &extra).spawn().unwrap()
    };
    let mut victim = spawn(chunks[1]);
    let others: Vec<Child> = [chunks[0], chunks[2]].iter().map(|c| spawn(c)).collect();
    // Kill (SIGKILL) the middle chunk once it has reported progress: it holds claims then.
    let stderr = victim.stderr.take().unwrap();
    for line in BufReader::new(stderr).lines() {
        if line.unwrap().contains("anchor: progress") {
            break;
        }
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    for c in others {
        finish(c);
    }
    // Its chunk again: completes from the folder and the windows it never published.
    finish(spawn(chunks[1]));
    assert_eq!(
        frames(&out),
        frames(&single),
        "every frame equals a single render"
    );
}

#[test]
fn an_unwritable_shared_folder_falls_back_to_local_work_with_one_warning() {
    let tmp = tempdir("unwritable");
    let poses = poses(&tmp, 8);
    let single = tmp.join("single");
    finish(command(&poses, &single, "3", &[]).spawn().unwrap());
    // A regular file where the folder should be: nothing can be created in it, even as root.
    let blocked = tmp.join("blocked");
    std::fs::write(&blocked, b"not a folder").unwrap();
    let out = tmp.join("out");
    let extra = ["--shared-cache", blocked.to_str().unwrap()];
    let (stdout, stderr) = finish(command(&poses, &out, "3", &extra).spawn().unwrap());
    assert_eq!(frames(&out), frames(&single));
    assert!(stdout.contains("unwritable: worked locally"), "{stdout}");
    assert_eq!(
        stderr.matches("warning: shared cache").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn a_chunks_progress_counts_its_own_cone_and_climbs_to_the_end() {
    let tmp = tempdir("chunk-progress");
    let poses = poses(&tmp, 24);
    let (stdout, stderr) = finish(
        command(&poses, &tmp.join("out"), "4", &["--frames", "0-3"])
            .spawn()
            .unwrap(),
    );
    let pcts: Vec<u64> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("anchor: progress "))
        .filter_map(|l| l.split('%').next()?.parse().ok())
        .collect();
    // Frames 0-3 need a fraction of the clip's 32 batches: with the whole clip as the total the
    // bar stalled near 40 % and jumped to 100 % at the end.
    assert!(calls(&stdout) < 32, "{stdout}");
    assert!(
        pcts.iter().any(|&p| (80..100).contains(&p)),
        "progress {pcts:?} should climb past 80 % before the end:\n{stderr}"
    );
    assert!(pcts.windows(2).all(|w| w[0] < w[1]), "{pcts:?}");
    assert_eq!(pcts.last(), Some(&100), "{stderr}");
}
