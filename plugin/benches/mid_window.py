"""PyTorch side of one inflated 3D window through the mid model's UNet (`make_mid_model.py`),
for the per-op comparison with `cargo bench --bench unet_window -- DIR 16 16 --profile`.

`unet_window.py` with the mid model's cross-attention width (128) instead of SD1.5's 768: it loads
`--unet` (a diffusers UNet folder, e.g. a copy of /tmp/mya-mid/unet), runs `--repeat` windows of
`--frames` × `--latent`² after one warm-up, prints the best and median wall time, and with
`--profile` a torch.profiler table grouped like the Rust one. With `--write` it also saves the
inputs and output as `window_{F}x{L}.safetensors` beside the weights for the Rust bench's parity.

Usage: python3 plugin/benches/mid_window.py --unet /tmp/mid-unet-copy --frames 16 --latent 16 --profile
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from unet_window import SdpaFullFrameAttnProcessor, fixtures_unet, print_profile  # noqa: E402

from diffusers import UNet2DConditionModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--unet", required=True)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--latent", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(2)
    unet = UNet2DConditionModel.from_pretrained(args.unet, torch_dtype=torch.float32).eval()
    f, lat = args.frames, args.latent
    width = unet.config.cross_attention_dim
    unet = fixtures_unet.inflate(unet, f, full_frame_attention=False)
    for name, module in unet.named_modules():
        if name.endswith("attn1"):
            module.set_processor(SdpaFullFrameAttnProcessor(f))
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(f, 4, lat, lat, generator=gen)
    ehs = torch.randn(1, 50, width, generator=gen).expand(f, 50, width).contiguous()
    run = lambda: unet(sample, torch.tensor(501), encoder_hidden_states=ehs).sample  # noqa: E731
    out = run()
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"engine": "pytorch", "frames": f, "latent": lat,
                      "window_best_s": round(min(times), 4),
                      "window_median_s": round(statistics.median(times), 4),
                      "loadavg": os.getloadavg()[0]}))
    if args.write:
        save_file({"sample": sample, "encoder_hidden_states": ehs[:1].contiguous(),
                   "out": out.contiguous()},
                  os.path.join(args.unet, f"window_{f}x{lat}.safetensors"))
    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            run()
            run_s = time.perf_counter() - t0
        print_profile(prof, run_s)


if __name__ == "__main__":
    main()
