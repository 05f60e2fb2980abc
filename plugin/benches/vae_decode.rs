//! Benchmark (not a test): one SD1.5-config VAE decode (a `1 × 4 × L²` latent to an `8L²` image)
//! on the CPU in f32.
//!
//! Needs a diffusers `AutoencoderKL` folder made by `plugin/benches/vae_decode.py` (random
//! weights, not committed), loaded through the engine's strict loader ([`AutoencoderKl::load`]).
//! Reports load time, decode time (median of the timed runs) and peak RSS (VmHWM, reset after
//! loading through `/proc/self/clear_refs`). If the Python script left
//! `decode_{L}.safetensors` beside the weights, the same latent is decoded and the image is
//! compared with PyTorch's.
//!
//! `cargo bench -p make-your-anchor-engine --bench vae_decode -- /tmp/sd15-vae 64`
//! (or `MYA_BENCH_VAE=/tmp/sd15-vae`). Without a folder it prints why and exits. `--warmup`
//! decodes once untimed first (as the Python side does); `--repeat=N` times N decodes.
//!
//! With `--profile` (or `ANCHOR_PROFILE=1`) the engine's per-operation profile of the last timed
//! decode is printed after the JSON line as a Markdown table (compare `vae_decode.py --profile`).
use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use anchor_engine::networks::vae::AutoencoderKl;
use candle_core::{DType, Device, Tensor};

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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "n/a".into())
}

fn max_abs(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

fn main() -> Result<(), Box<dyn Error>> {
    let flags: Vec<String> = std::env::args().filter(|a| a.starts_with("--")).collect();
    let profile = flags.iter().any(|a| a == "--profile");
    let warmup = flags.iter().any(|a| a == "--warmup");
    let repeat: usize = flags
        .iter()
        .find_map(|a| a.strip_prefix("--repeat="))
        .map_or(Ok(1), str::parse)?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let dir = match args
        .first()
        .cloned()
        .or_else(|| std::env::var("MYA_BENCH_VAE").ok())
    {
        Some(d) => PathBuf::from(d),
        None => {
            eprintln!(
                "vae_decode: skipped: no VAE folder given (run plugin/benches/vae_decode.py, \
                 then pass its --out folder)"
            );
            return Ok(());
        }
    };
    let latent: usize = args.get(1).map_or(Ok(64), |s| s.parse())?;
    let device = Device::Cpu;

    let t0 = Instant::now();
    let (vae, _) = AutoencoderKl::load(&dir, DType::F32, &device)?;
    let load_s = t0.elapsed().as_secs_f64();

    let reference = dir.join(format!("decode_{latent}.safetensors"));
    let (z, want) = if reference.exists() {
        let t = candle_core::safetensors::load(&reference, &device)?;
        let get = |k: &str| {
            t.get(k)
                .cloned()
                .ok_or(format!("{k} missing in {reference:?}"))
        };
        (get("latent")?, Some(get("image")?))
    } else {
        (
            Tensor::randn(0f32, 1.0, (1, 4, latent, latent), &device)?,
            None,
        )
    };
    if warmup {
        vae.decode(&z)?;
    }
    let rss_loaded = proc_status_bytes("VmRSS:");
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    if profile {
        anchor_engine::profile::enable();
    }
    let profiling = anchor_engine::profile::enabled();
    let mut times = Vec::with_capacity(repeat);
    let mut last = None;
    for _ in 0..repeat.max(1) {
        anchor_engine::profile::reset();
        let t1 = Instant::now();
        let out = vae.decode(&z)?;
        times.push(t1.elapsed());
        last = Some(out);
    }
    let last_run = *times.last().ok_or("no decode ran")?;
    let mut secs: Vec<f64> = times.iter().map(|t| t.as_secs_f64()).collect();
    let runs = secs
        .iter()
        .map(|s| format!("{s:.3}"))
        .collect::<Vec<_>>()
        .join(", ");
    secs.sort_by(f64::total_cmp);
    let median = secs[secs.len() / 2];
    let parity = match (&want, &last) {
        (Some(w), Some(out)) => {
            let err = max_abs(out, w)?;
            let scale = w.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            format!("{err:.3e} (PyTorch output max-abs {scale:.3e})")
        }
        _ => "n/a (no PyTorch output for this size)".into(),
    };
    println!(
        "{{\"engine\": \"candle\", \"threads\": {}, \"latent\": {latent}, \"load_s\": {load_s:.2}, \
         \"decode_s\": {median:.3}, \"decode_runs_s\": [{runs}], \"rss_after_load_gib\": {}, \
         \"peak_rss_during_decode_gib\": {}, \"peak_reset\": {reset}, \"loadavg\": {}, \
         \"max_abs_vs_pytorch\": \"{parity}\"}}",
        candle_core::utils::get_num_threads(),
        gib(rss_loaded),
        gib(proc_status_bytes("VmHWM:")),
        loadavg(),
    );
    if profiling {
        print!("{}", anchor_engine::profile::report(last_run));
    }
    Ok(())
}
