"""Per-network-call time of the temporal pass on the mid model, ours against PyTorch, interleaved.

The ratio part of `temporal_bench.py --configs mid` alone (its sections 2 and 3 are skipped):
ours is `anchor render` on 48 frames at 128², window 16 / overlap 4, 4 steps, and the same pass
with 1 step; per call = (full − one-step) / (call difference), so load, encode and decode cancel.
PyTorch is `fixtures_temporal.denoise_clip` timed alone, divided by its call count. `--pairs N`
runs N (PyTorch, ours) pairs one after the other and prints every pair, the load average at
each, and the medians.

Usage (after `cargo build --release -p anchor-cli --bin anchor`):
    python3 plugin/benches/mid_call.py --anchor /tmp/anchor-copy --pairs 3 [--mid-model /tmp/mya-mid]
    python3 plugin/benches/mid_call.py --anchor /tmp/anchor-copy --pairs 3 --config tiny
"""

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import temporal_bench as tb  # noqa: E402  (sets OMP_WAIT_POLICY before torch loads)

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--anchor", default=os.path.join(tb.ROOT, "target", "release", "anchor"),
                    help="one binary, or several separated by commas (each runs in every pair)")
    ap.add_argument("--work", default="/tmp/mya-midcall")
    ap.add_argument("--mid-model", default="/tmp/mya-mid")
    ap.add_argument("--config", default="mid", choices=sorted(tb.CONFIGS),
                    help="the model and clip of temporal_bench.py's config (tiny: the committed "
                         "fixture model, 64², 20 steps)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--skip-pytorch", action="store_true")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(2)
    config = tb.CONFIGS[args.config]
    model, res = config["model"] or args.mid_model, config["res"]
    L, W, O, S = config["full"]
    base = args.work if args.config == "mid" else f"{args.work}-{args.config}"
    os.makedirs(base, exist_ok=True)
    appearance = os.path.join(base, "appearance.png")
    tb.fixtures_temporal.draw_appearance().save(appearance)
    poses = tb.write_clip(os.path.join(base, f"poses{L}"), L, res)
    noise_path = os.path.join(base, "noise.safetensors")
    noise = torch.randn((4, res // 8, res // 8), generator=torch.Generator().manual_seed(tb.SEED))
    save_file({"noise": noise.contiguous()}, noise_path)
    dump = os.path.join(base, "ours_latents.safetensors")

    rows = []
    for i in range(args.pairs):
        row = {"pair": i}
        if not args.skip_pytorch:
            row["load_py"] = os.getloadavg()[0]
            ref = tb.pytorch_reference(model, poses, appearance, noise, W, O, S)
            row["py_per_call"] = ref["denoise_s"] / ref["calls"]
        for j, exe in enumerate(args.anchor.split(",")):
            tag = "" if j == 0 else f"_{j}"
            row["load_ours" + tag] = os.getloadavg()[0]
            full = tb.anchor(exe, model, poses, appearance, os.path.join(base, "out_full"),
                             res, S, W, O, cache_mib=4096, noise=noise_path, dump=dump)
            one = tb.anchor(exe, model, poses, appearance, os.path.join(base, "out_one"),
                            res, 1, W, O, cache_mib=4096, noise=noise_path)
            per_call = (full["wall_s"] - one["wall_s"]) / (full["calls"] - one["calls"])
            row["ours_per_call" + tag] = per_call
            row["ours_full_s" + tag] = full["wall_s"]
            row["ours_peak_rss_mib" + tag] = full["peak_rss_mib"]
            if not args.skip_pytorch:
                ours_final = load_file(dump)[f"latents_step{S - 1}"]
                row["final_latent_max_abs" + tag] = float((ours_final - ref["final"]).abs().max())
                row["ratio" + tag] = per_call / row["py_per_call"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    for key in sorted({k for r in rows for k in r if k.startswith(("py_per", "ours_per", "ratio"))}):
        vals = [r[key] for r in rows if key in r]
        print(f"median {key}: {statistics.median(vals):.4f}")


if __name__ == "__main__":
    main()
