//! Full-size VAE / CLIP parity and a 512² VAE decode timing, against outputs made by
//! `tests/fixtures/fullsize_vae_clip.py` (random weights, ~1.2 GB, not committed).
//!
//! Ignored by default, so `cargo test` lists it as ignored with its reason: it needs ~1.2 GB of
//! SD1.5-size weights. Run it with `MYA_FULLSIZE_DIR=DIR cargo test -p anchor-cli --test
//! fullsize_vae_clip -- --ignored --nocapture`.
use std::path::PathBuf;
use std::time::Instant;

use anchor_engine::networks::clip::{ClipTextEncoder, ClipVisionEncoder};
use anchor_engine::networks::vae::AutoencoderKl;
use candle_core::{DType, Device, Tensor};

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let m = |t: Tensor| {
        t.abs()
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.max(0))
            .and_then(|t| t.to_scalar::<f32>())
            .unwrap_or(f32::INFINITY)
    };
    m((a - b).unwrap_or_else(|e| panic!("{e}"))) / m(b.clone()).max(1e-12)
}

#[test]
#[ignore = "needs MYA_FULLSIZE_DIR: ~1.2 GB of SD1.5-size weights from tests/fixtures/fullsize_vae_clip.py"]
fn fullsize_vae_clip_parity() {
    let Some(dir) = std::env::var_os("MYA_FULLSIZE_DIR").map(PathBuf::from) else {
        panic!("set MYA_FULLSIZE_DIR to the output of tests/fixtures/fullsize_vae_clip.py");
    };
    let dev = Device::Cpu;
    let m = candle_core::safetensors::load(dir.join("fullsize.safetensors"), &dev)
        .unwrap_or_else(|e| panic!("{e}"));
    let get = |k: &str| m.get(k).unwrap_or_else(|| panic!("missing {k}")).clone();

    let t0 = Instant::now();
    let (vae, r) =
        AutoencoderKl::load(&dir.join("vae"), DType::F32, &dev).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "vae: {} parameters, loaded in {:.2?}",
        r.parameters,
        t0.elapsed()
    );
    let post = vae
        .encode(&get("vae.input"))
        .unwrap_or_else(|e| panic!("{e}"));
    let e_mean = rel_err(&post.mean, &get("vae.mean"));
    let e_logvar = rel_err(&post.logvar, &get("vae.logvar"));
    println!("full VAE encode: mean {e_mean:.3e}, logvar {e_logvar:.3e}");
    let t0 = Instant::now();
    let dec = vae
        .decode_scaled(&get("vae.latents"))
        .unwrap_or_else(|e| panic!("{e}"));
    let took = t0.elapsed();
    let e_dec = rel_err(&dec, &get("vae.decoded"));
    println!("full VAE decode 64² -> 512²: err {e_dec:.3e}, {took:.2?} on CPU f32");
    assert!(e_mean <= 1e-4 && e_logvar <= 1e-4 && e_dec <= 1e-4);

    let (clip, r) = ClipVisionEncoder::load(&dir.join("image_encoder"), DType::F32, &dev)
        .unwrap_or_else(|e| panic!("{e}"));
    println!("clip vision: {} parameters", r.parameters);
    let photo = image::open(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/photo.png"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .to_rgb8();
    let (w, h) = photo.dimensions();
    let tokens = clip
        .encode_image(photo.as_raw(), w as usize, h as usize)
        .unwrap_or_else(|e| panic!("{e}"));
    let e_clip = rel_err(&tokens, &get("clip.last_hidden_state"));
    println!(
        "full CLIP ViT-B/32 tokens {:?}: err {e_clip:.3e}",
        tokens.dims()
    );
    assert!(e_clip <= 1e-4);

    let (text, r) = ClipTextEncoder::load(&dir.join("text_encoder"), DType::F32, &dev)
        .unwrap_or_else(|e| panic!("{e}"));
    println!("clip text: {} parameters", r.parameters);
    let neg = text
        .empty_prompt_embedding(50)
        .unwrap_or_else(|e| panic!("{e}"));
    let e_text = rel_err(&neg, &get("text.negative_embedding"));
    println!(
        "full text negative embedding {:?}: err {e_text:.3e}",
        neg.dims()
    );
    assert!(e_text <= 1e-4);
}
