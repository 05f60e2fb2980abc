//! `anchor train --stage face` end to end on the tiny face model (issue 7, "Training"): head data
//! built by `anchor face-data` from `anchor synth` output, a few dozen steps on the 9-channel
//! inpainting UNet and the 4-channel head ControlNet, the loss falling, an interrupted and
//! resumed run repeating the uninterrupted one bit for bit, the output loading as a head model,
//! and the head-format errors.
use std::path::{Path, PathBuf};

use anchor_cli::tools::synth::{self, SynthArgs};
use anchor_engine::face::inpaint::check_head_model;
use anchor_engine::model::{DiffusionModel, ModelPart};
use anchor_engine::train::checkpoint::LossRow;
use anchor_engine::train::diffusion::{self, Stage, TrainConfig, UnetInit};
use anchor_engine::train::face_data::{self, FaceDataArgs};
use anchor_engine::train::optim::AdamWParams;
use anchor_engine::train::TrainError;
use candle_core::{DType, Device};

type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Removes the folder when the test ends (the disk is shared).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("anchor-trainface-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).ok();
        Self(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One identity of 12 frames at 128², aligned at a 128 crop and saved at 32² (the tiny face
/// UNet's one downsampler and the VAE's factor 8 need a multiple of 16).
fn head_data(dir: &Path) -> R<face_data::FaceDataReport> {
    let mut a = SynthArgs::new(dir.join("synth"));
    a.identities = 1;
    a.frames = 12;
    a.size = 128;
    a.threads = Some(1);
    synth::run(&a)?;
    let mut f = FaceDataArgs::new(dir.join("synth/pre00"), dir.join("head"));
    f.resolution = 32;
    f.crop = 128;
    Ok(face_data::build(&f)?)
}

fn config(data: &Path, out: &Path, steps: usize) -> TrainConfig {
    let mut c = TrainConfig::new(
        Stage::Face,
        fixtures().join("tiny_face"),
        vec![data.to_path_buf()],
        out.to_path_buf(),
    );
    c.adamw = AdamWParams {
        lr: 1e-2,
        ..AdamWParams::default()
    };
    c.batch_size = 2;
    c.steps = Some(steps);
    c.seed = 5;
    c.checkpoint_every = 24;
    c
}

fn mean(rows: &[LossRow]) -> f64 {
    rows.iter().map(|r| f64::from(r.loss)).sum::<f64>() / rows.len() as f64
}

fn quiet(_: &str) {}

fn gray(path: &Path) -> R<Vec<u8>> {
    Ok(image::open(path)?.to_luma8().into_raw())
}

/// The head data: every synthetic frame is placed (no skips), the crops are 32², the mask is
/// inverted (a face hole of 0 inside a 255 border) and the JSON lines name all four images.
/// Then 48 steps (batch 2) from the tiny face model: the loss falls by at least 30 % (mean of the
/// last 8 steps against the first 8); the run stopped after 24 steps and resumed gives the same
/// loss curve and the same weights bit for bit; the model folder loads as a head model.
#[test]
fn face_stage_trains_and_resumes_exactly() -> R<()> {
    let t0 = std::time::Instant::now();
    let dir = TempDir::new("resume");
    let rep = head_data(&dir.0)?;
    assert_eq!((rep.samples, rep.skipped), (12, 0));
    let head = dir.0.join("head");
    let mask = gray(&head.join("raw_aligned_mask/000000.png"))?;
    assert_eq!(mask.len(), 32 * 32);
    let face = mask.iter().filter(|&&v| v < 128).count() as f64 / mask.len() as f64;
    assert!(
        (0.05..0.7).contains(&face),
        "face share of the mask {face:.3}"
    );
    assert_eq!(
        mask[0], 255,
        "the crop corner is kept (inverted convention)"
    );
    assert_eq!(
        image::image_dimensions(head.join("aligned/000000.png"))?,
        (32, 32)
    );
    let text = std::fs::read_to_string(&rep.jsonl)?;
    let first: serde_json::Value = serde_json::from_str(text.lines().next().ok_or("empty")?)?;
    assert_eq!(first["mask"], "raw_aligned_mask/000000.png");
    assert_eq!(first["reference"], "raw_aligned/000000.png");
    let t_data = t0.elapsed().as_secs_f64();

    let a_out = dir.0.join("a");
    let a = diffusion::train(&config(&rep.jsonl, &a_out, 48), &quiet)?;
    assert_eq!(a.losses.len(), 48);
    let (first, last) = (mean(&a.losses[..8]), mean(&a.losses[40..]));
    println!(
        "face loss: first 8 steps {first:.4}, last 8 {last:.4}; {:.2} steps/s; {} parameters; \
         data {t_data:.1} s",
        a.steps_per_second, a.parameters
    );
    assert!(
        last < 0.7 * first,
        "the face loss did not fall by 30 %: {first:.4} -> {last:.4}: {:?}",
        a.losses.iter().map(|r| r.loss).collect::<Vec<_>>()
    );
    let model_dir = a.model.clone().ok_or("no final model")?;
    assert!(model_dir.join("head/unet/config.json").is_file());
    assert_eq!(
        std::fs::read(model_dir.join("head.png"))?,
        std::fs::read(head.join("raw_aligned/000000.png"))?,
        "head.png is the head reference"
    );
    let model = DiffusionModel::load_part(&model_dir, ModelPart::Head, DType::F32, &Device::Cpu)?;
    check_head_model(&model)?;

    let b_out = dir.0.join("b");
    let mut b_cfg = config(&rep.jsonl, &b_out, 48);
    b_cfg.stop_after = Some(24);
    let b1 = diffusion::train(&b_cfg, &quiet)?;
    assert_eq!((b1.end_step, b1.model.is_none()), (24, true));
    b_cfg.stop_after = None;
    b_cfg.resume = true;
    let b2 = diffusion::train(&b_cfg, &quiet)?;
    assert_eq!(b2.start_step, 24);
    let bits = |rows: &[LossRow]| rows.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&b2.losses),
        bits(&a.losses),
        "resumed loss curve differs"
    );
    for c in ["unet", "controlnet"] {
        let f = format!("model/head/{c}/diffusion_pytorch_model.safetensors");
        assert!(
            std::fs::read(a_out.join(&f))? == std::fs::read(b_out.join(&f))?,
            "{c} weights differ after resume"
        );
    }
    println!("test time {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// `--init random` with a 9-channel UNet config: the head ControlNet is made from the UNet with
/// 4 input channels (the latent part of its `conv_in`), and the result loads as a head model.
/// A 4-channel UNet config is refused by name.
#[test]
fn face_stage_from_random_init_and_channel_check() -> R<()> {
    let dir = TempDir::new("random");
    let rep = head_data(&dir.0)?;
    let mut c = config(&rep.jsonl, &dir.0.join("r"), 2);
    c.init = UnetInit::Random;
    c.unet_config = Some(fixtures().join("tiny_face/head/unet/config.json"));
    c.controlnet_embedding = Some(vec![4, 4, 8, 8]);
    let r = diffusion::train(&c, &quiet)?;
    let model_dir = r.model.ok_or("no final model")?;
    let cn: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        model_dir.join("head/controlnet/config.json"),
    )?)?;
    assert_eq!(cn["in_channels"], 4);
    let model = DiffusionModel::load_part(&model_dir, ModelPart::Head, DType::F32, &Device::Cpu)?;
    check_head_model(&model)?;

    let mut c = config(&rep.jsonl, &dir.0.join("four"), 2);
    c.init = UnetInit::Random;
    c.unet_config = Some(fixtures().join("tiny/unet/config.json"));
    match diffusion::train(&c, &quiet) {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("in_channels = 4") && msg.contains("needs 9"),
                "{msg}"
            );
        }
        Ok(_) => return Err("a 4-channel UNet trained as a face model".into()),
    }
    Ok(())
}

/// A head line without "mask" and a line whose mask file is missing are named errors, before
/// any step; the body format ignores "mask".
#[test]
fn head_jsonl_mask_errors() -> R<()> {
    let dir = TempDir::new("bad");
    let rep = head_data(&dir.0)?;
    let good = std::fs::read_to_string(&rep.jsonl)?;
    let lines: Vec<&str> = good.lines().collect();
    let root = rep.jsonl.parent().ok_or("no parent")?.to_path_buf();

    let mut v: serde_json::Value = serde_json::from_str(lines[1])?;
    v.as_object_mut().ok_or("not an object")?.remove("mask");
    let no_mask = root.join("no_mask.jsonl");
    std::fs::write(&no_mask, format!("{}\n{v}\n", lines[0]))?;
    let out = dir.0.join("o1");
    match diffusion::train(&config(&no_mask, &out, 2), &quiet) {
        Err(e @ TrainError::NoMask { line: 2, .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("no_mask.jsonl:2") && msg.contains("\"mask\""),
                "{msg}"
            );
        }
        other => return Err(format!("expected NoMask on line 2, got {other:?}").into()),
    }
    assert!(!out.join("checkpoints").exists());

    let gone = root.join("gone.jsonl");
    let l3 = lines[2].replace("raw_aligned_mask/000002.png", "raw_aligned_mask/nope.png");
    std::fs::write(&gone, format!("{}\n{}\n{l3}\n", lines[0], lines[1]))?;
    match diffusion::train(&config(&gone, &dir.0.join("o2"), 2), &quiet) {
        Err(TrainError::MissingImage {
            line: 3,
            field,
            path,
            ..
        }) => {
            assert_eq!(field, "mask");
            assert!(path.ends_with("raw_aligned_mask/nope.png"));
        }
        other => return Err(format!("expected a missing mask on line 3, got {other:?}").into()),
    }

    // The body stages read the same file without complaint about the mask.
    let ds = anchor_engine::train::data::Dataset::open(&[no_mask], None)?;
    assert_eq!(ds.len(), 2);
    assert!(ds.samples.iter().all(|s| s.mask.is_none()));
    Ok(())
}
