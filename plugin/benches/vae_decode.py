"""Full-size benchmark companion: an SD1.5-config VAE with random weights, and PyTorch timing.

1. Creates (once) a diffusers `AutoencoderKL` with the Stable Diffusion 1.5 VAE config
   (block_out_channels 128/256/512/512, 2 layers per block, 32 groups, 4 latent channels) and
   seeded random weights, saved with `save_pretrained` as safetensors into `--out` (335 MB at f32;
   not committed).
2. Decodes one `1 × 4 × --latent²` latent (unscaled, `vae.decode(z)`) on the CPU in f32 with
   `torch.set_num_threads(--threads)`, `--repeat` times after one untimed warm-up, and prints the
   median wall time and peak RSS as one JSON line.
3. Writes the latent and the decoded image to `--out/decode_{latent}.safetensors`, which the Rust
   benchmark (`cargo bench --bench vae_decode`) reuses and compares against.

Usage: python3 plugin/benches/vae_decode.py --out /tmp/sd15-vae --latent 64

With `--profile` one more decode runs under `torch.profiler` (CPU) and a table of self CPU time
per op kind follows the JSON line, grouped like the Rust benchmark's `--profile` table (the op
kinds are `unet_window.py`'s).
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unet_window import print_profile, vm_status  # noqa: E402  (same op kinds, same table)

from diffusers import AutoencoderKL  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

# The SD1.5 `vae/config.json` (runwayml/stable-diffusion-v1-5).
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)


def make_model(out):
    """Seeded random weights; every GroupNorm affine and bias is perturbed too, so that no
    parameter keeps its trivial initial value."""
    torch.manual_seed(0)
    vae = AutoencoderKL(**SD15_VAE)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.05 * torch.randn_like(p))
    vae.save_pretrained(out, safe_serialization=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/sd15-vae")
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="timed decodes (median reported)")
    ap.add_argument("--profile", action="store_true",
                    help="one more decode under torch.profiler; print self CPU time per op kind")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)

    weights = os.path.join(args.out, "diffusion_pytorch_model.safetensors")
    if not os.path.exists(weights):
        make_model(args.out)
    t0 = time.perf_counter()
    # Weights read into anonymous memory (as the Rust engine does), not kept mmapped.
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(args.out)).eval()
    vae.load_state_dict(load_file(weights), strict=True)
    load_s = time.perf_counter() - t0

    lat = args.latent
    z = torch.randn(1, 4, lat, lat, generator=torch.Generator().manual_seed(1))
    out = vae.decode(z).sample  # warm-up (oneDNN primitive creation, allocator)
    rss_loaded = vm_status("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
        fh.write("5")
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        out = vae.decode(z).sample
        times.append(time.perf_counter() - t0)
    peak = vm_status("VmHWM")
    report = {
        "engine": "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "latent": lat,
        "load_s": round(load_s, 2),
        "decode_s": round(statistics.median(times), 3),
        "decode_runs_s": [round(t, 3) for t in times],
        "rss_after_load_gib": round(rss_loaded / 2**30, 3),
        "peak_rss_during_decode_gib": round(peak / 2**30, 3),
        "peak_rss_process_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "loadavg": os.getloadavg()[0],
    }
    save_file({"latent": z.contiguous(), "image": out.contiguous()},
              os.path.join(args.out, f"decode_{lat}.safetensors"))
    print(json.dumps(report))
    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            vae.decode(z)
            run_s = time.perf_counter() - t0
        print_profile(prof, run_s)


if __name__ == "__main__":
    main()
