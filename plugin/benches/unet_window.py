"""Full-size benchmark companion: an SD1.5-config UNet with random weights, and PyTorch timing.

1. Creates (once) a diffusers `UNet2DConditionModel` with the Stable Diffusion 1.5 config
   (cross_attention_dim 768) and random weights, saved with `save_pretrained` as safetensors into
   `--out` (3.4 GB at f32; not committed).
2. Runs one inflated 3D window (`--frames` frames at `--latent`² latents: full-frame attn1,
   GroupNorm over the window) on the CPU in f32, with the same inflation as the parity fixtures
   but SDPA (memory-efficient) attention, and prints wall time and peak RSS.
3. Writes the inputs and the output to `--out/window_{frames}x{latent}.safetensors`, which the Rust
   benchmark (`cargo bench --bench unet_window`) reuses and compares against.

Usage: python3 plugin/benches/unet_window.py --out /tmp/sd15-unet --frames 16 --latent 64

With `--profile` the window runs under `torch.profiler` (CPU) and a table of self CPU time per op
kind follows the JSON line, grouped like the Rust benchmark's `--profile` table.

With `--autocast-bf16` the window runs under `torch.autocast("cpu", dtype=torch.bfloat16)` (the
PyTorch counterpart of our `--bf16`) and is compared with the f32 output already written for the
same size (it runs after the f32 run; the f32 reference file is left as it is).
"""

import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures"))
import fixtures_unet  # noqa: E402  (the inflation helpers)

from diffusers import UNet2DConditionModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402


class SdpaFullFrameAttnProcessor(fixtures_unet.FullFrameAttnProcessor):
    """Same joint attention as the fixture reference, through torch's fused SDPA so that the
    65,536-token window does not build its score matrix."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        bf, n, _ = hidden_states.shape
        f = self.frames
        b = bf // f
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        inner = q.shape[-1]
        heads = attn.heads
        d = inner // heads

        def split(t):
            return t.reshape(b, f * n, heads, d).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        out = out.transpose(1, 2).reshape(bf, n, inner)
        return attn.to_out[1](attn.to_out[0](out))


def vm_status(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


# aten op (without the "aten::" prefix) → op kind of the Rust profile table.
OP_KINDS = {
    "conv2d": ("conv2d", "convolution", "_convolution", "mkldnn_convolution", "_slow_conv2d_forward",
               "thnn_conv2d", "_nnpack_spatial_convolution", "_mkldnn_convolution"),
    "matmul/linear": ("linear", "addmm", "mm", "bmm", "matmul", "baddbmm", "_addmm_activation"),
    "attention": ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
                  "_flash_attention_forward", "_scaled_dot_product_flash_attention",
                  "_scaled_dot_product_efficient_attention", "softmax", "_softmax"),
    "group_norm": ("group_norm", "native_group_norm"),
    "layer_norm": ("layer_norm", "native_layer_norm"),
    "activation": ("silu", "silu_", "gelu", "gelu_"),
    "elementwise/layout": ("add", "add_", "mul", "mul_", "div", "div_", "sub", "cat", "copy_",
                           "contiguous", "clone", "to", "_to_copy", "empty", "empty_like",
                           "empty_strided", "reshape", "view", "transpose", "permute", "expand",
                           "chunk", "split", "narrow", "slice", "as_strided", "unsqueeze",
                           "squeeze", "t", "_unsafe_view", "flatten", "resolve_conj",
                           "resolve_neg", "detach", "alias", "fill_", "zero_", "zeros"),
    "resample": ("upsample_nearest2d", "_upsample_nearest_exact2d", "constant_pad_nd", "pad",
                 "interpolate"),
}
KIND_OF = {op: kind for kind, ops in OP_KINDS.items() for op in ops}


def print_profile(prof, window_s):
    """Self CPU time of the window's aten ops, summed per op kind (Markdown)."""
    totals, calls = {}, {}
    for evt in prof.key_averages():
        name = evt.key
        if not name.startswith("aten::"):
            continue
        kind = KIND_OF.get(name[len("aten::"):], "other")
        totals[kind] = totals.get(kind, 0.0) + evt.self_cpu_time_total / 1e6
        calls[kind] = calls.get(kind, 0) + evt.count
    print("| op kind | time (s) | % of window | calls |\n|---|---:|---:|---:|")
    for kind, t in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {t:.3f} | {100 * t / window_s:.1f} | {calls[kind]} |")
    rest = max(window_s - sum(totals.values()), 0.0)
    print(f"| (not in an op: Python, module calls) | {rest:.3f} | {100 * rest / window_s:.1f} | |")
    print(f"| **window** | {window_s:.3f} | 100.0 | |")
    others = sorted(
        ((e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages()
         if e.key.startswith("aten::") and e.key[len("aten::"):] not in KIND_OF),
        key=lambda kv: -kv[1])[:6]
    if others:
        print("other: " + ", ".join(f"{k} {t:.3f} s" for k, t in others))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/sd15-unet")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--timestep", type=int, default=501)
    ap.add_argument("--profile", action="store_true",
                    help="run the window under torch.profiler and print self CPU time per op kind")
    ap.add_argument("--autocast-bf16", action="store_true",
                    help="run under CPU autocast to bf16 and compare with the stored f32 output")
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    if not os.path.exists(os.path.join(args.out, "diffusion_pytorch_model.safetensors")):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(cross_attention_dim=768)  # every other default is SD1.5's
        unet.save_pretrained(args.out, safe_serialization=True)
        del unet
    t0 = time.perf_counter()
    # Read the weights into anonymous memory (as the Rust engine does) rather than keeping the file
    # mmapped, so that RSS counts them once and the timed forward does not fault pages in.
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(args.out)).eval()
    state = load_file(os.path.join(args.out, "diffusion_pytorch_model.safetensors"))
    unet.load_state_dict(state, strict=True)
    del state
    load_s = time.perf_counter() - t0

    f, lat = args.frames, args.latent
    unet = fixtures_unet.inflate(unet, f, full_frame_attention=False)
    for name, module in unet.named_modules():
        if name.endswith("attn1"):
            module.set_processor(SdpaFullFrameAttnProcessor(f))
    reference = os.path.join(args.out, f"window_{f}x{lat}.safetensors")
    if args.autocast_bf16 and not os.path.exists(reference):
        sys.exit(f"--autocast-bf16 compares with {reference}: run without it first")
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(f, 4, lat, lat, generator=gen)
    ehs = torch.randn(1, 50, 768, generator=gen).expand(f, 50, 768).contiguous()
    rss_loaded = vm_status("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
        fh.write("5")
    prof = None
    if args.profile:
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        prof.__enter__()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast_bf16)
    t0 = time.perf_counter()
    with autocast:
        out = unet(sample, torch.tensor(args.timestep), encoder_hidden_states=ehs).sample
    run_s = time.perf_counter() - t0
    out = out.float()
    if prof is not None:
        prof.__exit__(None, None, None)
    report = {
        "engine": "pytorch-autocast-bf16" if args.autocast_bf16 else "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "frames": f,
        "latent": lat,
        "load_s": round(load_s, 2),
        "window_s": round(run_s, 2),
        "rss_after_load_gib": round(rss_loaded / 2**30, 3),
        "peak_rss_during_window_gib": round(vm_status("VmHWM") / 2**30, 3),
        "peak_rss_process_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }
    if args.autocast_bf16:
        want = load_file(reference)["out"]
        report["max_abs_vs_f32"] = float((out - want).abs().max())
        report["f32_max_abs"] = float(want.abs().max())
    else:
        save_file(
            {"sample": sample, "encoder_hidden_states": ehs[:1].contiguous(), "out": out.contiguous()},
            reference,
            metadata={"timestep": str(args.timestep)},
        )
    print(json.dumps(report))
    if prof is not None:
        print_profile(prof, run_s)


if __name__ == "__main__":
    main()
