//! VAE, CLIP and preprocessing parity against diffusers 0.42.1 / transformers 5.23.0 / Pillow 13
//! (fixtures `tests/fixtures/vae_clip.safetensors` and `tiny/`, made by `fixtures_vae_clip.py`).
//! CPU, f32. Errors are max-abs differences divided by the reference's max-abs value, and printed.
use std::collections::HashMap;
use std::path::PathBuf;

use anchor_engine::networks::clip::{
    check_appearance_width, ClipImageProcessor, ClipTextEncoder, ClipVisionEncoder,
};
use anchor_engine::networks::vae::AutoencoderKl;
use candle_core::{DType, Device, IndexOp, Tensor};

const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn load() -> HashMap<String, Tensor> {
    let p = fixtures().join("vae_clip.safetensors");
    candle_core::safetensors::load(&p, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn get<'a>(m: &'a HashMap<String, Tensor>, k: &str) -> &'a Tensor {
    m.get(k)
        .unwrap_or_else(|| panic!("fixture key {k} missing"))
}

fn scalar_max(t: Tensor) -> f32 {
    t.flatten_all()
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .unwrap_or(f32::INFINITY)
}

/// max |a − b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape");
    let d = scalar_max(
        (a - b)
            .and_then(|d| d.abs())
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let s = scalar_max(b.abs().unwrap_or_else(|e| panic!("{e}")));
    d / s.max(1e-12)
}

fn check(name: &str, got: &Tensor, want: &Tensor) {
    let e = rel_err(got, want);
    println!(
        "{name}: max abs err / scale = {e:.3e} (shape {:?})",
        want.dims()
    );
    assert!(e <= TOL, "{name}: {e} > {TOL}");
}

fn read_png(path: &std::path::Path) -> (Vec<u8>, usize, usize) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .to_rgb8();
    let (w, h) = img.dimensions();
    (img.into_raw(), w as usize, h as usize)
}

fn run_vae(dir: &str, m: &HashMap<String, Tensor>) {
    let (vae, report) =
        AutoencoderKl::load(&fixtures().join("tiny").join(dir), DType::F32, &Device::Cpu)
            .unwrap_or_else(|e| panic!("load {dir}: {e}"));
    println!(
        "{dir}: {} tensors, {} parameters, on-disk dtypes {:?}",
        report.used, report.parameters, report.dtypes
    );
    let post = vae
        .encode(get(m, "vae.input"))
        .unwrap_or_else(|e| panic!("{e}"));
    check(
        &format!("{dir} posterior mean"),
        &post.mean,
        get(m, "vae.mean"),
    );
    check(
        &format!("{dir} posterior logvar"),
        &post.logvar,
        get(m, "vae.logvar"),
    );
    let s = post
        .sample(get(m, "vae.noise"))
        .unwrap_or_else(|e| panic!("{e}"));
    check(&format!("{dir} posterior sample"), &s, get(m, "vae.sample"));
    let d = vae
        .decode(get(m, "vae.latents"))
        .unwrap_or_else(|e| panic!("{e}"));
    check(&format!("{dir} decode"), &d, get(m, "vae.decoded"));
    let d = vae
        .decode_scaled(get(m, "vae.latents"))
        .unwrap_or_else(|e| panic!("{e}"));
    check(
        &format!("{dir} decode_scaled"),
        &d,
        get(m, "vae.decoded_scaled"),
    );
    // Sliced decoding (one frame at a time) of a batch of two equals decoding each.
    let z = get(m, "vae.latents");
    let half = (z * 0.5).unwrap_or_else(|e| panic!("{e}"));
    let z2 = Tensor::cat(&[z, &half], 0).unwrap_or_else(|e| panic!("{e}"));
    let both = vae
        .decode_scaled_sliced(&z2)
        .unwrap_or_else(|e| panic!("{e}"));
    let first = both.narrow(0, 0, 1).unwrap_or_else(|e| panic!("{e}"));
    check(
        &format!("{dir} sliced decode, frame 0"),
        &first,
        get(m, "vae.decoded_scaled"),
    );
    let second = both.narrow(0, 1, 1).unwrap_or_else(|e| panic!("{e}"));
    let alone = vae.decode_scaled(&half).unwrap_or_else(|e| panic!("{e}"));
    check(&format!("{dir} sliced decode, frame 1"), &second, &alone);
}

#[test]
fn vae_safetensors_f32_new_key_names() {
    run_vae("vae", &load());
}

#[test]
fn vae_pytorch_bin_f16_legacy_key_names() {
    // Same weights as `vae` (f16-exact), saved as an f16 PyTorch pickle with query/key/value/proj_attn.
    run_vae("vae_legacy", &load());
}

#[test]
fn clip_preprocessing_matches_pil_clip_image_processor() {
    let m = load();
    let proc = ClipImageProcessor::from_file(
        &fixtures().join("tiny/image_encoder/preprocessor_config.json"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(proc, ClipImageProcessor::default());
    let (rgb, w, h) = read_png(&fixtures().join("photo.png"));
    assert_eq!((w, h), (320, 240));

    // Case 1: 320×240 photo, short side 240 → 224 (downscaling, antialiased), centre crop.
    let (u8s, cw, ch) = proc
        .resize_and_crop(&rgb, w, h)
        .unwrap_or_else(|e| panic!("{e}"));
    let want: Vec<u8> = get(&m, "pre.photo.resized_cropped_u8")
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((cw, ch), (224, 224));
    let diff = u8s.iter().zip(&want).filter(|(a, b)| a != b).count();
    let maxd = u8s
        .iter()
        .zip(&want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(255);
    println!(
        "photo 320x240: PIL bicubic resize+crop: {diff} of {} bytes differ, max {maxd}",
        want.len()
    );
    assert_eq!(diff, 0, "8-bit resize must equal PIL's");

    let px = proc
        .preprocess(&rgb, w, h, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    let want_px = get(&m, "pre.photo.pixel_values");
    let d = scalar_max(
        (&px - want_px)
            .and_then(|d| d.abs())
            .unwrap_or_else(|e| panic!("{e}")),
    );
    // One 8-bit step is 1/255 before normalisation, i.e. (1/255)/std ≈ 0.0151 after it.
    let one_step = (1.0 / 255.0) / 0.261_302_6_f32;
    println!("photo pixel_values: max abs err {d:.3e} (one 8-bit step after normalisation = {one_step:.4})");
    assert!(d <= one_step, "preprocessing differs by more than 1/255");
    assert!(
        d <= 1e-6,
        "preprocessing should be exact up to f32 rounding, got {d}"
    );

    // Case 2: a 120×150 sub-image (portrait, upscaling 120 → 224, 150 → 280).
    let (x0, y0, x1, y1) = (10usize, 20usize, 130usize, 170usize);
    let mut sub = Vec::with_capacity((x1 - x0) * (y1 - y0) * 3);
    for y in y0..y1 {
        sub.extend_from_slice(&rgb[(y * w + x0) * 3..(y * w + x1) * 3]);
    }
    let (u8s, _, _) = proc
        .resize_and_crop(&sub, x1 - x0, y1 - y0)
        .unwrap_or_else(|e| panic!("{e}"));
    let want: Vec<u8> = get(&m, "pre.photo_sub.resized_cropped_u8")
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .unwrap_or_else(|e| panic!("{e}"));
    let diff = u8s.iter().zip(&want).filter(|(a, b)| a != b).count();
    println!(
        "sub-image 120x150: PIL bicubic upscale+crop: {diff} of {} bytes differ",
        want.len()
    );
    assert_eq!(diff, 0);
}

#[test]
fn clip_vision_tokens_before_post_layernorm() {
    let m = load();
    let dir = fixtures().join("tiny/image_encoder");
    let (enc, report) =
        ClipVisionEncoder::load(&dir, DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "image_encoder: {} tensors used, ignored {:?}",
        report.used, report.ignored
    );
    assert_eq!(report.ignored, vec!["visual_projection.weight".to_string()]);
    assert_eq!(enc.config().num_tokens(), 50);
    let px = get(&m, "pre.photo.pixel_values");
    let tokens = enc.forward_pixels(px).unwrap_or_else(|e| panic!("{e}"));
    check(
        "clip last_hidden_state (pre post-LN)",
        &tokens,
        get(&m, "clip.last_hidden_state"),
    );
    // The pooled post-LN token is something else: make sure we did not return it.
    let pooled = get(&m, "clip.pooled_post_ln");
    let cls = tokens.i((.., 0, ..)).unwrap_or_else(|e| panic!("{e}"));
    assert!(rel_err(&cls, pooled) > 1e-2);
    // End to end from the PNG.
    let (rgb, w, h) = read_png(&fixtures().join("photo.png"));
    let tokens2 = enc
        .encode_image(&rgb, w, h)
        .unwrap_or_else(|e| panic!("{e}"));
    check(
        "clip tokens from photo.png end to end",
        &tokens2,
        get(&m, "clip.last_hidden_state"),
    );
}

#[test]
fn clip_text_negative_embedding() {
    let m = load();
    let dir = fixtures().join("tiny/text_encoder");
    let (enc, report) =
        ClipTextEncoder::load(&dir, DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "text_encoder: {} tensors, on-disk dtypes {:?}",
        report.used, report.dtypes
    );
    assert_eq!(report.dtypes, vec!["f16".to_string()]);
    let neg = enc
        .empty_prompt_embedding(50)
        .unwrap_or_else(|e| panic!("{e}"));
    check(
        "text negative embedding (50 tokens)",
        &neg,
        get(&m, "text.negative_embedding"),
    );
    let full = enc
        .empty_prompt_embedding(77)
        .unwrap_or_else(|e| panic!("{e}"));
    check(
        "text embedding (77 tokens)",
        &full,
        get(&m, "text.embedding77"),
    );
    assert!(enc.empty_prompt_embedding(78).is_err());
}

#[test]
fn appearance_width_check_names_both_numbers() {
    assert!(check_appearance_width("model", 768, "unet", 768).is_ok());
    let e = check_appearance_width("model folder /m", 32, "unet", 768)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    println!("{e}");
    assert!(e.contains("32") && e.contains("768") && e.contains("unet"));
}

#[test]
fn vae_and_text_run_in_half_precision_on_cpu() {
    // The body pass runs the VAE and the text tower in f16; check that they load in f16
    // (f32/f16 files cast to the run dtype) and stay close to the f32 reference. (bf16 on the
    // CPU keeps f32 tensors and rounds only the matrix products: `networks::gemm_bf16`.)
    let m = load();
    let (dtype, tol) = (DType::F16, 1e-2f32);
    {
        let (vae, _) = AutoencoderKl::load(&fixtures().join("tiny/vae"), dtype, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{e}"));
        let z = get(&m, "vae.latents")
            .to_dtype(dtype)
            .unwrap_or_else(|e| panic!("{e}"));
        let d = vae
            .decode(&z)
            .and_then(|d| Ok(d.to_dtype(DType::F32)?))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = rel_err(&d, get(&m, "vae.decoded"));
        println!("vae decode in {dtype:?}: max abs err / scale = {e:.3e}");
        assert!(e <= tol);
        let (text, _) =
            ClipTextEncoder::load(&fixtures().join("tiny/text_encoder"), dtype, &Device::Cpu)
                .unwrap_or_else(|e| panic!("{e}"));
        let n = text
            .empty_prompt_embedding(50)
            .and_then(|t| Ok(t.to_dtype(DType::F32)?))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = rel_err(&n, get(&m, "text.negative_embedding"));
        println!("text negative embedding in {dtype:?}: max abs err / scale = {e:.3e}");
        assert!(e <= tol);
    }
}

#[test]
fn openai_clip_repo_layout_is_accepted() {
    // `openai/clip-vit-base-patch32` (what the reference loads) ships a full CLIPModel config with a
    // nested `vision_config`, and an old-style preprocessor config with integer sizes.
    let d = std::env::temp_dir().join(format!("mya-openai-clip-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        d.join("config.json"),
        r#"{"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 512,
            "text_config": {"hidden_size": 512, "num_attention_heads": 8},
            "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                              "num_hidden_layers": 12, "patch_size": 32, "image_size": 224,
                              "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05}}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        d.join("preprocessor_config.json"),
        r#"{"crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
            "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cfg = anchor_engine::networks::clip::ClipVisionConfig::from_dir(&d)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.hidden_size, 768);
    assert_eq!(cfg.num_tokens(), 50);
    let p = ClipImageProcessor::from_file(&d.join("preprocessor_config.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p, ClipImageProcessor::default());
    let _ = std::fs::remove_dir_all(&d);
}
