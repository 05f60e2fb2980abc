//! Bad inputs give named errors (issue 3, "Done when"): a missing folder, a missing `config.json`, a
//! truncated or corrupt weights file, a wrong shape, a config from another architecture, a
//! cross-attention width that differs from the appearance-token width, an unexpected key and a
//! missing key. Also the model-folder rules (`body/`, `anchor.json`) and a whole tiny body model.
//! Every message is printed.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anchor_engine::model::{inspect_model, BodyModel, ModelLayout};
use anchor_engine::networks::clip::{ClipTextEncoder, ClipVisionEncoder};
use anchor_engine::networks::vae::AutoencoderKl;
use anchor_engine::weights::StrictWeights;
use anchor_engine::EngineError;
use candle_core::{DType, Device, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn tiny(c: &str) -> PathBuf {
    fixtures().join("tiny").join(c)
}

/// A fresh temporary folder for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mya-werr-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
    d
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{e}"));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{e}")) {
        let entry = entry.unwrap_or_else(|e| panic!("{e}"));
        let p = entry.path();
        if p.is_file() {
            std::fs::copy(&p, to.join(entry.file_name())).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

fn err_text<T>(r: Result<T, EngineError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn vae_err(dir: &Path) -> String {
    let e = err_text(AutoencoderKl::load(dir, DType::F32, &Device::Cpu));
    println!("{e}");
    e
}

fn vae_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        tiny("vae").join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn write_vae(dir: &Path, tensors: &HashMap<String, Tensor>) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(tiny("vae").join("config.json"), dir.join("config.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    candle_core::safetensors::save(tensors, dir.join("diffusion_pytorch_model.safetensors"))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn missing_folder_and_missing_config() {
    let d = scratch("missing");
    let e = vae_err(&d.join("nope"));
    assert!(e.contains("nope") && e.contains("does not exist"));

    let v = d.join("vae");
    copy_dir(&tiny("vae"), &v);
    std::fs::remove_file(v.join("config.json")).unwrap_or_else(|e| panic!("{e}"));
    let e = vae_err(&v);
    assert!(e.contains("config.json") && e.contains("has no config.json"));

    let e = err_text(BodyModel::load(
        &d.join("no-model"),
        DType::F32,
        &Device::Cpu,
    ));
    println!("{e}");
    assert!(e.contains("no-model") && e.contains("does not exist"));

    // A model folder without unet/config.json says so in those words.
    let m = d.join("model");
    std::fs::create_dir_all(m.join("unet")).unwrap_or_else(|e| panic!("{e}"));
    let e = err_text(BodyModel::load(&m, DType::F32, &Device::Cpu));
    println!("{e}");
    assert!(e.contains("has no unet/config.json"));
    let _ = std::fs::remove_dir_all(&d);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn truncated_and_corrupt_weights_are_named() {
    let d = scratch("corrupt");
    // Truncated safetensors.
    let v = d.join("vae_trunc");
    copy_dir(&tiny("vae"), &v);
    let f = v.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap_or_else(|e| panic!("{e}"));
    let e = vae_err(&v);
    assert!(
        e.contains("diffusion_pytorch_model.safetensors") && e.contains("truncated or corrupt")
    );
    // Garbage safetensors.
    std::fs::write(&f, b"this is not a safetensors file at all").unwrap_or_else(|e| panic!("{e}"));
    let e = vae_err(&v);
    assert!(e.contains("truncated or corrupt"));
    // Truncated PyTorch .bin (zip).
    let b = d.join("vae_bin");
    copy_dir(&tiny("vae_legacy"), &b);
    let f = b.join("diffusion_pytorch_model.bin");
    let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&f, &bytes[..bytes.len() * 2 / 3]).unwrap_or_else(|e| panic!("{e}"));
    let e = vae_err(&b);
    assert!(e.contains("diffusion_pytorch_model.bin"));
    // A .bin whose zip structure is intact but one byte of tensor data is flipped: the CRC-32
    // recorded in the archive no longer matches.
    copy_dir(&tiny("vae_legacy"), &b);
    let mut bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{e}"));
    let data_at = find(&bytes, b"/data/0").unwrap_or_else(|| panic!("no data/0 entry in {f:?}"));
    // The local header's name is followed by the entry's bytes; flip one well inside them.
    let at = data_at + 7 + 64 + 100;
    bytes[at] ^= 0x5a;
    std::fs::write(&f, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let e = vae_err(&b);
    assert!(
        e.contains("diffusion_pytorch_model.bin") && e.contains("CRC-32"),
        "flipped tensor byte not detected: {e}"
    );
    // Garbage .bin.
    std::fs::write(&f, vec![0x50u8; 4096]).unwrap_or_else(|e| panic!("{e}"));
    let e = vae_err(&b);
    assert!(e.contains("diffusion_pytorch_model.bin") && e.contains("truncated or corrupt"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn missing_unexpected_and_misshapen_keys_are_named() {
    let d = scratch("keys");
    // Missing key.
    let mut t = vae_tensors();
    t.remove("decoder.conv_out.bias");
    write_vae(&d.join("missing"), &t);
    let e = vae_err(&d.join("missing"));
    assert!(
        e.contains("missing key 'decoder.conv_out.bias'")
            && e.contains("diffusion_pytorch_model.safetensors")
    );
    // Unexpected key.
    let mut t = vae_tensors();
    t.insert(
        "encoder.extra_layer.weight".into(),
        Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{e}")),
    );
    write_vae(&d.join("unexpected"), &t);
    let e = vae_err(&d.join("unexpected"));
    assert!(e.contains("unexpected key 'encoder.extra_layer.weight'"));
    // Wrong shape.
    let mut t = vae_tensors();
    t.insert(
        "quant_conv.weight".into(),
        Tensor::zeros((8, 8, 3, 3), DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{e}")),
    );
    write_vae(&d.join("shape"), &t);
    let e = vae_err(&d.join("shape"));
    assert!(e.contains("shape mismatch for key 'quant_conv.weight'") && e.contains("[8, 8, 3, 3]"));
    // A config that does not match the weights (wrong width) is also a named shape error.
    let v = d.join("cfg");
    copy_dir(&tiny("vae"), &v);
    let cfg = std::fs::read_to_string(v.join("config.json")).unwrap_or_default();
    std::fs::write(
        v.join("config.json"),
        cfg.replace("\"latent_channels\": 4", "\"latent_channels\": 8"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let e = vae_err(&v);
    assert!(e.contains("shape mismatch for key"));
    // CLIP: a missing class_embedding is an error, not a random draw (issue 3).
    let c = d.join("clip");
    copy_dir(&tiny("image_encoder"), &c);
    let mut t = candle_core::safetensors::load(c.join("model.safetensors"), &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    t.remove("vision_model.embeddings.class_embedding");
    candle_core::safetensors::save(&t, c.join("model.safetensors"))
        .unwrap_or_else(|e| panic!("{e}"));
    let e = err_text(ClipVisionEncoder::load(&c, DType::F32, &Device::Cpu));
    println!("{e}");
    assert!(e.contains("missing key 'vision_model.embeddings.class_embedding'"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn config_from_another_architecture_is_named() {
    let d = scratch("arch");
    let v = d.join("vae");
    copy_dir(&tiny("vae"), &v);
    std::fs::copy(tiny("unet").join("config.json"), v.join("config.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let e = vae_err(&v);
    assert!(e.contains("UNet2DConditionModel") && e.contains("AutoencoderKL"));
    // A VAE config given to the text tower.
    let t = d.join("text");
    copy_dir(&tiny("text_encoder"), &t);
    std::fs::copy(tiny("vae").join("config.json"), t.join("config.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let e = err_text(ClipTextEncoder::load(&t, DType::F32, &Device::Cpu));
    println!("{e}");
    assert!(e.contains("AutoencoderKL") && e.contains("clip_text_model"));
    let _ = std::fs::remove_dir_all(&d);
}

/// A body model assembled from the tiny fixtures: `body/{unet,controlnet}` plus an anchor.json
/// mapping the rest (relative and absolute paths).
fn tiny_model(d: &Path) -> PathBuf {
    let m = d.join("model");
    copy_dir(&tiny("unet"), &m.join("body/unet"));
    copy_dir(&tiny("controlnet"), &m.join("body/controlnet"));
    copy_dir(&tiny("vae"), &m.join("vae"));
    let anchor = format!(
        r#"{{
  "components": {{
    "scheduler": "{}",
    "text_encoder": "{}",
    "image_encoder": "{}"
  }},
  "defaults": {{ "steps": 25, "seed": 7 }},
  "face_defaults": {{ "size": 32, "erode": 2, "blur": 3 }}
}}"#,
        tiny("scheduler").display(),
        tiny("text_encoder").display(),
        tiny("image_encoder").display()
    );
    std::fs::write(m.join("anchor.json"), anchor).unwrap_or_else(|e| panic!("{e}"));
    m
}

#[test]
fn tiny_body_model_loads_and_inspects() {
    let d = scratch("model");
    let m = tiny_model(&d);
    let layout = ModelLayout::resolve(&m).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        layout.component("unet").ok(),
        Some(m.join("body/unet").as_path())
    );
    assert_eq!(layout.component("vae").ok(), Some(m.join("vae").as_path()));
    assert_eq!(layout.defaults.steps, 25);
    assert_eq!(layout.defaults.window, 16);
    // Face defaults: the given keys, the reference's for the rest.
    let f = &layout.face_defaults;
    assert_eq!((f.size, f.erode, f.blur), (32, 2, 3));
    assert_eq!(
        (f.crop, f.steps, f.guidance_scale, f.seed),
        (512, 20, 3.5, 999)
    );

    let info = inspect_model(&m, true).unwrap_or_else(|e| panic!("{e}"));
    println!("{info}");
    assert!(info.is_ok());
    assert!(info
        .components
        .iter()
        .filter(|c| c.name != "scheduler")
        .all(|c| c.keys_checked));

    let model = BodyModel::load(&m, DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(model.negative_embedding.dims(), &[1, 50, 32]);
    let want =
        candle_core::safetensors::load(fixtures().join("vae_clip.safetensors"), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{e}"));
    let r = want
        .get("text.negative_embedding")
        .unwrap_or_else(|| panic!("fixture missing"));
    let err = (&model.negative_embedding - r)
        .and_then(|x| x.abs())
        .and_then(|x| x.flatten_all())
        .and_then(|x| x.max(0))
        .and_then(|x| x.to_scalar::<f32>())
        .unwrap_or(f32::INFINITY);
    println!("model negative embedding: max abs err {err:e}");
    assert!(err < 1e-5);
    for (name, r) in &model.reports {
        println!(
            "{name}: {} tensors, {} parameters, {:?}",
            r.used, r.parameters, r.dtypes
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn cross_attention_width_mismatch_is_named() {
    let d = scratch("width");
    let m = tiny_model(&d);
    let cfg_path = m.join("body/unet/config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap_or_default();
    let cfg = cfg.replace("\"cross_attention_dim\": 32", "\"cross_attention_dim\": 48");
    std::fs::write(&cfg_path, cfg).unwrap_or_else(|e| panic!("{e}"));
    let e = err_text(BodyModel::load(&m, DType::F32, &Device::Cpu));
    println!("{e}");
    assert!(
        e.contains("32")
            && e.contains("48")
            && e.contains("cross_attention_dim")
            && e.contains("unet")
    );
    let info = inspect_model(&m, false).unwrap_or_else(|e| panic!("{e}"));
    println!("{info}");
    assert!(!info.is_ok());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn anchor_json_errors_are_named() {
    let d = scratch("anchor");
    let m = tiny_model(&d);
    std::fs::write(
        m.join("anchor.json"),
        r#"{"components": {"vae": "../elsewhere/vae"}}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let e = err_text(ModelLayout::resolve(&m));
    println!("{e}");
    assert!(e.contains("elsewhere") && e.contains("does not exist") && e.contains("maps vae"));
    std::fs::write(m.join("anchor.json"), r#"{"components": {"vea": "vae"}}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    let e = err_text(ModelLayout::resolve(&m));
    println!("{e}");
    assert!(e.contains("vea"));
    std::fs::write(m.join("anchor.json"), r#"{"defaults": {"stepz": 3}}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    let e = err_text(ModelLayout::resolve(&m));
    println!("{e}");
    assert!(e.contains("stepz"));
    std::fs::write(
        m.join("anchor.json"),
        r#"{"defaults": {"window": 4, "overlap": 4}}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let e = err_text(ModelLayout::resolve(&m));
    println!("{e}");
    assert!(e.contains("overlap"));
    std::fs::write(m.join("anchor.json"), r#"{"face_defaults": {"blur": 4}}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    let e = err_text(ModelLayout::resolve(&m));
    println!("{e}");
    assert!(e.contains("face_defaults") && e.contains("blur = 4"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn strict_weights_reports_counts() {
    let w = StrictWeights::open_dir(&tiny("vae")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(w.index().len(), 180);
    assert_eq!(w.parameter_count(), 261_079);
}

#[test]
fn inspect_finds_key_problems_without_loading() {
    let d = scratch("inspect");
    let m = tiny_model(&d);
    let mut t = vae_tensors();
    t.remove("encoder.mid_block.attentions.0.to_k.weight");
    std::fs::remove_dir_all(m.join("vae")).unwrap_or_else(|e| panic!("{e}"));
    write_vae(&m.join("vae"), &t);
    let info = inspect_model(&m, true).unwrap_or_else(|e| panic!("{e}"));
    println!("{info}");
    assert!(!info.is_ok());
    let vae = info
        .components
        .iter()
        .find(|c| c.name == "vae")
        .unwrap_or_else(|| panic!("no vae entry"));
    assert!(!vae.keys_checked);
    assert!(vae
        .problems
        .iter()
        .any(|p| p.contains("encoder.mid_block.attentions.0.to_k.weight")));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn sharded_safetensors_load() {
    let d = scratch("shards");
    let v = d.join("vae");
    std::fs::create_dir_all(&v).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(tiny("vae").join("config.json"), v.join("config.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let t = vae_tensors();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (k, x) in t {
        let shard = if k.starts_with("encoder.") { "a" } else { "b" };
        let file = format!(
            "diffusion_pytorch_model-0000{}.safetensors",
            if shard == "a" { 1 } else { 2 }
        );
        map.insert(k.clone(), serde_json::Value::String(file));
        if shard == "a" {
            a.insert(k, x);
        } else {
            b.insert(k, x);
        }
    }
    candle_core::safetensors::save(&a, v.join("diffusion_pytorch_model-00001.safetensors"))
        .unwrap_or_else(|e| panic!("{e}"));
    candle_core::safetensors::save(&b, v.join("diffusion_pytorch_model-00002.safetensors"))
        .unwrap_or_else(|e| panic!("{e}"));
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(
        v.join("diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (_, r) =
        AutoencoderKl::load(&v, DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    println!("sharded: {} tensors from {}", r.used, r.path.display());
    assert_eq!(r.used, 180);
    // A missing shard is named.
    std::fs::remove_file(v.join("diffusion_pytorch_model-00002.safetensors"))
        .unwrap_or_else(|e| panic!("{e}"));
    let e = vae_err(&v);
    assert!(
        e.contains("diffusion_pytorch_model-00002.safetensors") && e.contains("names this shard")
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn head_model_resolves_from_head_folder() {
    use anchor_engine::model::{DiffusionModel, ModelPart};
    let d = scratch("head");
    let m = tiny_model(&d);
    copy_dir(&tiny("unet_inpaint"), &m.join("head/unet"));
    copy_dir(&tiny("controlnet"), &m.join("head/controlnet"));
    let layout = ModelLayout::resolve_part(&m, ModelPart::Head).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        layout.component("unet").ok(),
        Some(m.join("head/unet").as_path())
    );
    assert_eq!(layout.component("vae").ok(), Some(m.join("vae").as_path()));
    let head = DiffusionModel::load_part(&m, ModelPart::Head, DType::F32, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(head.unet.architecture().in_channels(), 9);
    assert_eq!(head.negative_embedding.dims(), &[1, 50, 32]);
    // The body still gets the 4-channel UNet.
    let body = BodyModel::load(&m, DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body.unet.architecture().in_channels(), 4);
    // A 9-channel UNet in body/ is a named error.
    std::fs::remove_dir_all(m.join("body/unet")).unwrap_or_else(|e| panic!("{e}"));
    copy_dir(&tiny("unet_inpaint"), &m.join("body/unet"));
    let e = err_text(BodyModel::load(&m, DType::F32, &Device::Cpu));
    println!("{e}");
    assert!(e.contains("takes 9") && e.contains("must take 4"));
    // A folder without head/ says which file is missing.
    let e = err_text(DiffusionModel::load_part(
        &d.join("model/body"),
        ModelPart::Head,
        DType::F32,
        &Device::Cpu,
    ));
    println!("{e}");
    assert!(e.contains("head/unet"));
    let _ = std::fs::remove_dir_all(&d);
}

/// `anchor cast` (`weights::cast_folder`): an f16 copy of the tiny VAE is half the size, keeps
/// its config byte for byte, loads into the f32 network, and decodes within f16 rounding of the
/// original; an existing output or a missing input is refused without writing anything.
#[test]
fn cast_folder_halves_the_weights_and_decodes_alike() {
    use anchor_engine::weights::cast_folder;
    let dir = scratch("cast");
    let out = dir.join("vae16");
    let r = cast_folder(&tiny("vae"), &out, DType::F16).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("cast: {r:?}");
    assert_eq!(r.files, 1);
    assert!(r.tensors > 10, "{r:?}");
    assert!(
        (r.bytes_after as f64) < 0.55 * r.bytes_before as f64,
        "f16 copy is {} of {} bytes",
        r.bytes_after,
        r.bytes_before
    );
    assert!(!dir.join("vae16.partial").exists());
    let cfg = |d: &Path| std::fs::read(d.join("config.json")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg(&tiny("vae")), cfg(&out));
    let file = out.join("diffusion_pytorch_model.safetensors");
    let stored = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    assert!(stored.values().all(|t| t.dtype() == DType::F16));

    let load = |d: &Path| AutoencoderKl::load(d, DType::F32, &Device::Cpu).unwrap().0;
    let (a, b) = (load(&tiny("vae")), load(&out));
    let z = Tensor::arange(0f32, 64.0, &Device::Cpu)
        .unwrap()
        .affine(0.05, -1.6)
        .unwrap()
        .sin()
        .unwrap()
        .reshape((1, 4, 4, 4))
        .unwrap();
    let (ya, yb) = (a.decode(&z).unwrap(), b.decode(&z).unwrap());
    let diff = (ya - yb)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("decode of the f16 copy vs the f32 original: max |diff| {diff:.2e}");
    assert!(diff < 1e-2, "max |diff| {diff}");

    let e = err_text(cast_folder(&tiny("vae"), &out, DType::F16));
    assert!(e.contains("already exists"), "{e}");
    let e = err_text(cast_folder(&dir.join("absent"), &dir.join("x"), DType::F16));
    assert!(e.contains("absent"), "{e}");
    assert!(!dir.join("x").exists() && !dir.join("x.partial").exists());
}
