//! The farm job template `examples/farm/anchor-render.openjd.yaml` under the Open Job
//! Description CLI (`openjd`, from PyPI; `.ci/run` installs it and sets `OPENJD`): it validates,
//! and `openjd run` renders the tiny model's clip in chunks sharing one cache folder, writing
//! exactly the frames of a single `anchor render`.
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `openjd` executable: `OPENJD`, else `openjd` on PATH; `None` (the test is skipped, and
/// says so) when neither runs.
fn openjd() -> Option<PathBuf> {
    let exe = std::env::var_os("OPENJD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("openjd"));
    let ok = Command::new(&exe)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(exe)
}

#[test]
fn the_openjd_template_validates_and_its_chunks_equal_a_single_render() {
    let Some(openjd) = openjd() else {
        eprintln!(
            "SKIPPED: openjd (pip install openjd-cli) is not installed and OPENJD is not set; \
             .ci/run installs it"
        );
        return;
    };
    let template = root().join("examples/farm/anchor-render.openjd.yaml");
    let check = Command::new(&openjd)
        .arg("check")
        .arg(&template)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "openjd check: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let tmp = std::env::temp_dir().join(format!("anchor-openjd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let poses = tmp.join("poses");
    std::fs::create_dir_all(&poses).unwrap();
    for i in 0..12u32 {
        let img = image::RgbImage::from_fn(64, 64, |x, y| {
            let cx = 14 + i * 3;
            if x.abs_diff(cx) < 7 && y > 18 || x.abs_diff(cx) < 5 && y.abs_diff(11) < 5 {
                image::Rgb([118, 132, 168])
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        img.save(poses.join(format!("mesh.{:04}.png", 1001 + i)))
            .unwrap();
    }
    let fixtures = root().join("tests/fixtures");
    let (model, photo) = (fixtures.join("tiny"), fixtures.join("photo.png"));
    let (out, single) = (tmp.join("out"), tmp.join("single"));
    let p = |k: &str, v: &Path| format!("{k}={}", v.display());
    let run = Command::new(&openjd)
        .arg("run")
        .arg(&template)
        .args(["--extensions", "TASK_CHUNKING"])
        .args([
            "-p",
            &p("AnchorExe", Path::new(env!("CARGO_BIN_EXE_anchor"))),
        ])
        .args(["-p", &p("ModelFolder", &model)])
        .args(["-p", &p("PosesFolder", &poses)])
        .args(["-p", &p("Appearance", &photo)])
        .args(["-p", &p("OutputFolder", &out)])
        .args(["-p", &p("SharedCacheFolder", &tmp.join("shared"))])
        .args([
            "-p",
            "Frames=1001-1012",
            "-p",
            "ChunkSize=4",
            "-p",
            "Resolution=64",
        ])
        .args([
            "-p",
            "Steps=3",
            "-p",
            "Window=4",
            "-p",
            "Overlap=1",
            "-p",
            "Device=cpu",
        ])
        .env_remove("MAKE_YOUR_ANCHOR_SHARED_CACHE")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "openjd run: {log}");
    assert!(log.contains("Chunks run: 3"), "{log}");
    assert!(log.contains("openjd_progress: 100"), "{log}");
    let single_run = Command::new(env!("CARGO_BIN_EXE_anchor"))
        .args(["render", "--model"])
        .arg(&model)
        .arg("--poses")
        .arg(&poses)
        .arg("--appearance")
        .arg(&photo)
        .arg("--out")
        .arg(&single)
        .args(["--resolution", "64", "--steps", "3", "--window", "4"])
        .args(["--overlap", "1", "--device", "cpu", "-q"])
        .output()
        .unwrap();
    assert!(single_run.status.success());
    for i in 0..12 {
        let name = format!("mesh.{:04}.png", 1001 + i);
        let a = image::open(out.join(&name)).unwrap().to_rgb8().into_raw();
        let b = image::open(single.join(&name))
            .unwrap()
            .to_rgb8()
            .into_raw();
        assert!(
            a == b,
            "{name}: the chunked job differs from a single render"
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
