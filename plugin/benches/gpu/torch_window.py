"""PyTorch/diffusers half of the GPU check's step 3: one inflated 3D window through the UNet +
ControlNet of a model folder, both CFG halves, timed on one device.

The computation is the reference's window call (tests/fixtures/fixtures_temporal.denoise_clip):
the CFG batch "(b f)" = the window's frames twice (uncond, cond), the ControlNet with
per-frame attention and window GroupNorm, then the UNet with full-frame attn1 over all frames of
the window through torch's fused SDPA (plugin/benches/unet_window.py's processor), window
GroupNorm, and the ControlNet residuals added as the original 3D UNet adds them
(`fixtures_unet.original_controlled`). Inputs are random; the timestep is 501.

Prints one JSON line (and writes it to --json): load time, warm-up time, every timed call,
their median, and peak memory (torch's allocator; the caller samples nvidia-smi too).

Usage: python3 torch_window.py --model DIR [--frames 16] [--latent 64] [--dtype f16|bf16|f32]
           [--device cuda|cpu] [--warmup 1] [--iters 5] [--json OUT]
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
sys.path.insert(0, os.path.join(ROOT, "plugin", "benches"))

import diffusers  # noqa: E402
from diffusers import ControlNetModel, UNet2DConditionModel  # noqa: E402

import fixtures_unet  # noqa: E402  (inflate, original_controlled)
import gpuio  # noqa: E402
from unet_window import SdpaFullFrameAttnProcessor  # noqa: E402

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def load_weights(path):
    try:
        from safetensors.torch import load_file
        return load_file(path)
    except ImportError:
        return gpuio.st_load_torch(path)


def load(cls, folder):
    """The model of `folder` without random initialisation (built on the meta device, then the
    file's tensors assigned), on the CPU in the file's dtype."""
    config = cls.load_config(folder)
    state = load_weights(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
        model.load_state_dict(state, strict=True, assign=True)
    except Exception as e:  # fall back to a normal (initialised) build
        print(f"meta build failed ({e}); building normally", file=sys.stderr)
        model = cls.from_config(config)
        model.load_state_dict(state, strict=True)
    return model.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--dtype", default="f16", choices=sorted(DTYPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--max-seconds", type=float, default=1e9,
                    help="stop timing further calls once this much time has passed")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    dev = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    cuda = dev.type == "cuda"
    start = time.perf_counter()

    t0 = time.perf_counter()
    unet = load(UNet2DConditionModel, os.path.join(args.model, "unet"))
    cnet = load(ControlNetModel, os.path.join(args.model, "controlnet"))
    f, lat = args.frames, args.latent
    unet = fixtures_unet.inflate(unet, f, full_frame_attention=False)
    for name, module in unet.named_modules():
        if name.endswith("attn1"):
            module.set_processor(SdpaFullFrameAttnProcessor(f))
    cnet = fixtures_unet.inflate(cnet, f, full_frame_attention=False)
    unet = unet.to(dev, dtype)
    cnet = cnet.to(dev, dtype)
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0

    gen = torch.Generator().manual_seed(1)
    cross = unet.config.cross_attention_dim
    sample = torch.randn(f, 4, lat, lat, generator=gen)
    ctx = torch.randn(2, 50, cross, generator=gen)  # [uncond, cond] tokens, 50 as CLIP ViT-B/32
    ctrl = torch.rand(f, 3, 8 * lat, 8 * lat, generator=gen)
    xin = torch.cat([sample, sample]).to(dev, dtype)
    ehs = torch.cat([ctx[:1].expand(f, -1, -1), ctx[1:].expand(f, -1, -1)]).contiguous().to(dev, dtype)
    cin = torch.cat([ctrl, ctrl]).to(dev, dtype)
    t = torch.tensor(501, device=dev)

    def call():
        down, mid = cnet(xin, t, encoder_hidden_states=ehs, controlnet_cond=cin,
                         conditioning_scale=2.0, return_dict=False)
        return fixtures_unet.original_controlled(unet, xin, t, ehs, down, mid)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
        weights_mib = torch.cuda.memory_allocated() / 2**20
    t0 = time.perf_counter()
    for _ in range(max(args.warmup, 0)):
        out = call()
    sync()
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(args.iters):
        if times and time.perf_counter() - start > args.max_seconds:
            break
        t0 = time.perf_counter()
        out = call()
        sync()
        times.append(time.perf_counter() - t0)
    report = {
        "engine": "pytorch",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "dtype": args.dtype,
        "frames": f,
        "latent": lat,
        "batch": 2 * f,
        "attention": "torch SDPA (flash/efficient/math chosen by torch), full-frame attn1",
        "load_s": round(load_s, 3),
        "warmup_calls": args.warmup,
        "warmup_s": round(warmup_s, 4),
        "times_s": [round(x, 4) for x in times],
        "median_s": round(statistics.median(times), 4) if times else None,
        "output_finite": bool(torch.isfinite(out).all()),
        "output_max_abs": float(out.float().abs().max()),
    }
    if cuda:
        report["weights_mib"] = round(weights_mib, 1)
        report["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        report["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
        report["sdpa_enabled"] = {
            "flash": torch.backends.cuda.flash_sdp_enabled(),
            "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "cudnn": getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: None)(),
        }
    else:
        report["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    line = json.dumps(report)
    print(line, flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
