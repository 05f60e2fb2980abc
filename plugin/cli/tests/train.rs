//! `anchor train` end to end on the tiny model family (issue 6): synthetic data from
//! `anchor synth` (64², the smallest size the tiny UNet's three downsamplers allow), a few dozen
//! steps from a random init, the loss falling, an interrupted and resumed run repeating the
//! uninterrupted one bit for bit, and every bad-data error.
use std::path::{Path, PathBuf};

use anchor_cli::tools::synth::{self, SynthArgs};
use anchor_engine::model::BodyModel;
use anchor_engine::train::checkpoint::{self, LossRow};
use anchor_engine::train::diffusion::{self, Stage, TrainConfig, UnetInit};
use anchor_engine::train::optim::AdamWParams;
use anchor_engine::train::vae::{self, ReconLoss, VaeTrainConfig};
use anchor_engine::train::validate::ValidationSpec;
use anchor_engine::train::TrainError;
use candle_core::{DType, Device};

type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny")
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anchor-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).ok();
    d
}

/// One identity of 24 frames at 64² (20 for training after the held-out fraction of `target`;
/// `pre00` keeps all 24).
fn synth_data(dir: &Path) -> R<PathBuf> {
    let mut a = SynthArgs::new(dir.join("synth"));
    a.identities = 1;
    a.frames = 24;
    a.size = 64;
    a.threads = Some(1);
    synth::run(&a)?;
    Ok(dir.join("synth/pre00/train.jsonl"))
}

fn config(data: &Path, out: &Path, steps: usize) -> TrainConfig {
    let mut c = TrainConfig::new(
        Stage::Pretrain,
        tiny(),
        vec![data.to_path_buf()],
        out.to_path_buf(),
    );
    c.init = UnetInit::Random;
    c.adamw = AdamWParams {
        lr: 1e-3,
        ..AdamWParams::default()
    };
    c.batch_size = 2;
    c.steps = Some(steps);
    c.seed = 3;
    c.checkpoint_every = 8;
    c
}

fn mean(rows: &[LossRow]) -> f64 {
    rows.iter().map(|r| f64::from(r.loss)).sum::<f64>() / rows.len() as f64
}

fn quiet(_: &str) {}

/// 16 steps (batch 2) from a random init: the loss falls by at least 35 % (mean of the last 4
/// steps against the first 4). The same run interrupted after 8 steps (with a half-written
/// checkpoint left behind) and resumed gives exactly the same loss curve and the same weights.
#[test]
fn loss_falls_and_resume_is_exact() -> R<()> {
    let t0 = std::time::Instant::now();
    let dir = tempdir("resume");
    let data = synth_data(&dir)?;

    let a_out = dir.join("a");
    let a = diffusion::train(&config(&data, &a_out, 16), &quiet)?;
    assert_eq!(a.losses.len(), 16);
    let (first, last) = (mean(&a.losses[..4]), mean(&a.losses[12..]));
    println!(
        "loss: first 4 steps {first:.4}, last 4 {last:.4}; {:.2} steps/s; {} parameters",
        a.steps_per_second, a.parameters
    );
    assert!(
        last < 0.65 * first,
        "the loss did not fall by 35 %: {first:.4} -> {last:.4}"
    );
    let model = a.model.clone().ok_or("no final model")?;
    // The output is a model folder the renderer loads.
    BodyModel::load(&model, DType::F32, &Device::Cpu)?;
    assert!(a_out.join("loss.png").is_file());
    assert_eq!(
        image::image_dimensions(a_out.join("loss.png"))?,
        (640, 360),
        "loss plot size"
    );

    // Interrupted after 8 steps, with a validation render at step 8.
    let b_out = dir.join("b");
    let mut b_cfg = config(&data, &b_out, 16);
    b_cfg.stop_after = Some(8);
    b_cfg.validate_every = 8;
    b_cfg.validation = Some(ValidationSpec {
        poses: dir.join("synth/heldout/mesh"),
        appearance: None,
        frames: 2,
        steps: 3,
        seed: 42,
    });
    let b1 = diffusion::train(&b_cfg, &quiet)?;
    assert_eq!((b1.end_step, b1.model.is_none()), (8, true));
    let val = b_out.join("validation/step-00000008");
    let pngs = std::fs::read_dir(&val)?.count();
    assert_eq!(pngs, 2, "validation frames in {}", val.display());
    // A kill during the next checkpoint would leave this behind.
    let partial = b_out.join("checkpoints/.step-00000012.partial");
    std::fs::create_dir_all(partial.join("unet"))?;
    std::fs::write(
        partial.join("unet/diffusion_pytorch_model.safetensors"),
        b"trunc",
    )?;
    // Resuming without --resume is refused.
    b_cfg.stop_after = None;
    b_cfg.validate_every = 0;
    assert!(matches!(
        diffusion::train(&b_cfg, &quiet),
        Err(TrainError::Data(m)) if m.contains("--resume")
    ));
    b_cfg.resume = true;
    let b2 = diffusion::train(&b_cfg, &quiet)?;
    assert!(
        !partial.exists(),
        "the half-written checkpoint was not removed"
    );
    assert_eq!(b2.start_step, 8);
    let bits = |rows: &[LossRow]| rows.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&b2.losses),
        bits(&a.losses),
        "resumed loss curve differs"
    );
    let csv_a = anchor_engine::train::loss_log::read_csv_losses(&a_out.join("loss.csv"))?;
    let csv_b = anchor_engine::train::loss_log::read_csv_losses(&b_out.join("loss.csv"))?;
    assert_eq!(csv_a, csv_b);
    assert_eq!(csv_a.len(), 16);
    for c in ["unet", "controlnet"] {
        let f = format!("model/{c}/diffusion_pytorch_model.safetensors");
        assert!(
            std::fs::read(a_out.join(&f))? == std::fs::read(b_out.join(&f))?,
            "{c} weights differ after resume"
        );
    }
    let names: Vec<usize> = checkpoint::list(&b_out)?.iter().map(|c| c.0).collect();
    assert_eq!(names, vec![8, 16]);
    println!("test time {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// A NaN/inf loss stops the run at that step and keeps the last good checkpoint, which loads.
#[test]
fn non_finite_loss_stops_and_keeps_last_checkpoint() -> R<()> {
    let dir = tempdir("nan");
    let data = synth_data(&dir)?;
    let out = dir.join("out");
    let mut c = config(&data, &out, 5);
    // A learning rate of 1e30 throws every weight to ±1e30 after the first update.
    c.adamw.lr = 1e30;
    c.clip_grad_norm = None;
    c.batch_size = 1;
    c.checkpoint_every = 1;
    match diffusion::train(&c, &quiet) {
        Err(TrainError::NonFiniteLoss {
            step,
            last_checkpoint: Some(ck),
            ..
        }) => {
            assert_eq!(step, 2);
            assert_eq!(ck, out.join("checkpoints/step-00000001"));
            BodyModel::load(&ck, DType::F32, &Device::Cpu)?;
        }
        other => panic!("expected a non-finite loss at step 2, got {other:?}"),
    }
    let names: Vec<usize> = checkpoint::list(&out)?.iter().map(|c| c.0).collect();
    assert_eq!(names, vec![1]);
    assert!(!out.join("model").exists());
    Ok(())
}

/// Missing images, empty datasets and mixed resolutions fail before training, naming the line.
#[test]
fn bad_data_errors() -> R<()> {
    let dir = tempdir("bad");
    let data = synth_data(&dir)?;
    let root = data.parent().ok_or("no parent")?.to_path_buf();
    let good = std::fs::read_to_string(&data)?;
    let lines: Vec<&str> = good.lines().collect();

    // A missing image on line 3.
    let bad = root.join("missing.jsonl");
    let l3 = lines[2].replace("person/000002.png", "person/nope.png");
    std::fs::write(&bad, format!("{}\n{}\n{l3}\n", lines[0], lines[1]))?;
    let out = dir.join("o1");
    match diffusion::train(&config(&bad, &out, 2), &quiet) {
        Err(e @ TrainError::MissingImage { line: 3, .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("missing.jsonl:3") && msg.contains("nope.png"),
                "{msg}"
            );
        }
        other => panic!("expected a missing image on line 3, got {other:?}"),
    }
    assert!(!out.join("checkpoints").exists());

    // Empty (blank lines only).
    let empty = root.join("empty.jsonl");
    std::fs::write(&empty, "\n\n")?;
    assert!(matches!(
        diffusion::train(&config(&empty, &dir.join("o2"), 2), &quiet),
        Err(TrainError::EmptyDataset(_))
    ));

    // Mixed resolutions: line 2's target is 32².
    let small = root.join("person/small.png");
    image::RgbImage::new(32, 32).save(&small)?;
    let l2 = lines[1].replace("person/000001.png", "person/small.png");
    let mixed = root.join("mixed.jsonl");
    std::fs::write(&mixed, format!("{}\n{l2}\n", lines[0]))?;
    match diffusion::train(&config(&mixed, &dir.join("o3"), 2), &quiet) {
        Err(TrainError::MixedResolution {
            line: 2,
            found_w: 32,
            want_w: 64,
            ..
        }) => {}
        other => panic!("expected mixed resolutions on line 2, got {other:?}"),
    }
    // ...which --resolution resolves by resizing (1 step to prove it runs).
    let mut c = config(&mixed, &dir.join("o4"), 1);
    c.resolution = Some(64);
    c.batch_size = 2;
    let r = diffusion::train(&c, &quiet)?;
    assert_eq!(r.end_step, 1);
    Ok(())
}

/// `train-vae` on the tiny VAE config from a random init: the reconstruction loss falls by at
/// least 30 % in 12 steps (frames resized to 32²) and the result loads as a VAE.
#[test]
fn vae_trains_from_scratch() -> R<()> {
    let dir = tempdir("vae");
    let data = synth_data(&dir)?;
    let out = dir.join("out");
    let cfg = VaeTrainConfig {
        config: tiny().join("vae/config.json"),
        data: vec![data],
        out: out.clone(),
        resolution: Some(32),
        adamw: AdamWParams {
            lr: 2e-3,
            weight_decay: 0.0,
            ..AdamWParams::default()
        },
        batch_size: 2,
        steps: 12,
        kl_weight: 1e-4,
        recon: ReconLoss::L1,
        seed: 5,
        checkpoint_every: 6,
        resume: false,
        stop_after: None,
        device: Device::Cpu,
        init: None,
        decoder_only: false,
    };
    let r = vae::train_vae(&cfg, &quiet)?;
    let (first, last) = (mean(&r.losses[..3]), mean(&r.losses[9..]));
    println!(
        "vae loss {first:.4} -> {last:.4}, scaling factor {:?}, {:.2} steps/s",
        r.scaling_factor, r.steps_per_second
    );
    assert!(last < 0.7 * first, "vae loss {first:.4} -> {last:.4}");
    let sf = r.scaling_factor.ok_or("no scaling factor")?;
    assert!(sf.is_finite() && sf > 0.0);
    let (vae, _) = anchor_engine::networks::vae::AutoencoderKl::load(
        &out.join("vae"),
        DType::F32,
        &Device::Cpu,
    )?;
    assert!((vae.config().scaling_factor - sf).abs() < 1e-9);

    // Decoder-only fine-tune of that VAE: the reconstruction improves further, while the encoder
    // weights and the scaling factor (everything a diffusion model's latents depend on) are
    // bit-identical.
    let out2 = dir.join("decoder");
    let cfg2 = VaeTrainConfig {
        out: out2.clone(),
        init: Some(out.join("vae")),
        decoder_only: true,
        steps: 8,
        recon: ReconLoss::Mse,
        ..cfg.clone()
    };
    let r2 = vae::train_vae(&cfg2, &quiet)?;
    let (a, b) = (mean(&r2.losses[..2]), mean(&r2.losses[6..]));
    println!("decoder-only mse {a:.5} -> {b:.5}");
    assert!(b < a, "decoder-only loss {a:.5} -> {b:.5}");
    let sf2 = r2.scaling_factor.ok_or("no scaling factor")?;
    assert!((sf2 - sf).abs() < 1e-9, "scaling factor {sf} -> {sf2}");
    let before = candle_core::safetensors::load(
        out.join("vae/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )?;
    let after = candle_core::safetensors::load(
        out2.join("vae/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )?;
    let (mut same, mut changed) = (0, 0);
    for (k, t) in &before {
        let d = (t - &after[k])?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        if vae::is_decoder_param(k) {
            changed += usize::from(d > 0.0);
        } else {
            assert_eq!(d, 0.0, "encoder-side tensor {k} changed");
            same += 1;
        }
    }
    assert!(same > 20 && changed > 20, "{same} kept, {changed} changed");
    Ok(())
}

/// `from_unet`: the derived ControlNet config builds exactly the parameter set (names and shapes)
/// of the diffusers-made tiny ControlNet; shared blocks are copies of the UNet's and the zero
/// convolutions are zero.
#[test]
fn controlnet_from_unet() -> R<()> {
    use anchor_engine::train::params;
    let dev = Device::Cpu;
    let unet_json = params::read_config_json(&tiny().join("unet/config.json"))?;
    let (_, unet) = params::build_unet(unet_json.clone(), &dev)?;
    unet.load_strict(&tiny().join("unet"))?;
    let cn_json = params::controlnet_config_from_unet(&unet_json, &[16, 16, 32, 32]);
    let (_, cn) = params::build_controlnet(cn_json, &dev)?;
    // Same names and shapes as diffusers' ControlNetModel for this config: the fixture loads.
    cn.load_strict(&tiny().join("controlnet"))?;
    cn.random_init(7, |_| true)?;
    let copied = cn.copy_shared(&unet, &params::FROM_UNET_PREFIXES)?;
    let u = unet.tensors()?;
    let c = cn.tensors()?;
    let shared = c
        .keys()
        .filter(|k| params::FROM_UNET_PREFIXES.iter().any(|p| k.starts_with(p)))
        .count();
    assert_eq!(copied, shared);
    assert!(copied > 50, "only {copied} tensors copied");
    for k in [
        "conv_in.weight",
        "mid_block.resnets.0.conv1.weight",
        "time_embedding.linear_1.bias",
    ] {
        let diff = (&u[k] - &c[k])?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "{k}");
    }
    for k in [
        "controlnet_mid_block.weight",
        "controlnet_down_blocks.0.weight",
        "controlnet_cond_embedding.conv_out.weight",
    ] {
        let m = c[k].abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert_eq!(m, 0.0, "{k} is not zero");
    }
    let w = c["controlnet_cond_embedding.conv_in.weight"]
        .abs()?
        .flatten_all()?
        .max(0)?;
    assert!(w.to_scalar::<f32>()? > 0.0);
    Ok(())
}
