//! Benchmark (not a test): one inflated 3D window through a full-size SD1.5-config UNet on CPU.
//!
//! Needs a diffusers UNet folder made by `plugin/benches/unet_window.py` (random weights, not
//! committed). Reports load time, window time and peak RSS (VmHWM, reset after loading through
//! `/proc/self/clear_refs` so that the weights' load-time mmap does not count). If the Python
//! script left `window_{F}x{L}.safetensors` beside the weights, the same inputs are used and the
//! output is compared with PyTorch's.
//!
//! `cargo bench -p make-your-anchor-engine --bench unet_window -- /tmp/sd15-unet 16 64`
//! (or `MYA_BENCH_UNET=/tmp/sd15-unet`). Without a folder it prints why and exits.
//!
//! With `--profile` (or `ANCHOR_PROFILE=1`) the engine's per-operation profile is recorded during
//! the window and printed after the JSON line as a Markdown table sorted by time, with each op
//! kind's share of the window (compare with `unet_window.py --profile`).
//!
//! With `--bf16` the window runs as `--precision bf16` runs on the CPU: f32 tensors, matrix
//! products in bf16 with f32 accumulation (AMX or AVX-512 BF16; f32 where the processor has
//! neither); the JSON line names the kernel.
use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use anchor_engine::networks::unet::{Temporal, UNet2DConditionConfig, UNet2DConditionModel};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

fn proc_status_bytes(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn gib(bytes: Option<u64>) -> String {
    bytes.map_or("n/a".into(), |b| {
        format!("{:.3}", b as f64 / (1u64 << 30) as f64)
    })
}

fn main() -> Result<(), Box<dyn Error>> {
    // `cargo bench` appends `--bench`; positional arguments are folder, frames, latent size.
    let profile = std::env::args().any(|a| a == "--profile");
    let bf16 = std::env::args().any(|a| a == "--bf16");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let dir = match args
        .first()
        .cloned()
        .or_else(|| std::env::var("MYA_BENCH_UNET").ok())
    {
        Some(d) => PathBuf::from(d),
        None => {
            eprintln!(
                "unet_window: skipped: no UNet folder given (run plugin/benches/unet_window.py, \
                 then pass its --out folder)"
            );
            return Ok(());
        }
    };
    let frames: usize = args.get(1).map_or(Ok(16), |s| s.parse())?;
    let latent: usize = args.get(2).map_or(Ok(64), |s| s.parse())?;
    let device = Device::Cpu;

    let t0 = Instant::now();
    let cfg = UNet2DConditionConfig::from_file(dir.join("config.json"))?;
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let unet = {
        // SAFETY: the weights file is not modified while it is mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &device)? };
        UNet2DConditionModel::new(vb, &cfg)?
    };
    let load_s = t0.elapsed().as_secs_f64();
    let rss_loaded = proc_status_bytes("VmRSS:");
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();

    let reference = dir.join(format!("window_{frames}x{latent}.safetensors"));
    let (sample, ehs, want, timestep) = if reference.exists() {
        let t = candle_core::safetensors::load(&reference, &device)?;
        let get = |k: &str| {
            t.get(k)
                .cloned()
                .ok_or(format!("{k} missing in {reference:?}"))
        };
        (
            get("sample")?,
            get("encoder_hidden_states")?,
            Some(get("out")?),
            501.0,
        )
    } else {
        let sample = Tensor::randn(0f32, 1.0, (frames, 4, latent, latent), &device)?;
        let ehs = Tensor::randn(0f32, 1.0, (1, 50, cfg_width(&cfg)), &device)?;
        (sample, ehs, None, 501.0)
    };
    let _scope = anchor_engine::networks::gemm_bf16::scope(bf16);
    let kernel = anchor_engine::networks::gemm_bf16::active();
    if kernel.is_some() {
        // The layers pack their weights for the bf16 kernel at first use, once per model load
        // (a render reuses them for every window): a one-frame 8² window does it untimed.
        let s = Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &device)?;
        unet.forward(&s, timestep, &ehs, None, Temporal::Window)?;
    }
    if profile {
        anchor_engine::profile::enable();
    }
    let profiling = anchor_engine::profile::enabled();
    anchor_engine::profile::reset();
    let t1 = Instant::now();
    let out = unet.forward(&sample, timestep, &ehs, None, Temporal::Window)?;
    let window = t1.elapsed();
    let window_s = window.as_secs_f64();
    let parity = match &want {
        Some(w) => {
            let err = (&out - w)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            let scale = w.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            format!("{err:.3e} (PyTorch output max-abs {scale:.3e})")
        }
        None => "n/a (no PyTorch output for these sizes)".into(),
    };
    println!(
        "{{\"engine\": \"candle\", \"bf16_kernel\": \"{kernel:?}\", \"threads\": {}, \"frames\": {frames}, \"latent\": {latent}, \
         \"load_s\": {load_s:.2}, \"window_s\": {window_s:.2}, \"rss_after_load_gib\": {}, \
         \"peak_rss_during_window_gib\": {}, \"peak_reset\": {reset}, \"max_abs_vs_pytorch\": \"{parity}\"}}",
        candle_core::utils::get_num_threads(),
        gib(rss_loaded),
        gib(proc_status_bytes("VmHWM:")),
    );
    if profiling {
        print!("{}", anchor_engine::profile::report(window));
    }
    Ok(())
}

fn cfg_width(cfg: &UNet2DConditionConfig) -> usize {
    cfg.validate().map_or(768, |a| a.cross_attention_dim())
}
