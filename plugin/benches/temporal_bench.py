"""Benchmark of the temporal engine (issue 4): `anchor render` against the PyTorch reference.

For a tiny config (the fixture model `tests/fixtures/tiny`, 64² working resolution) and a mid-size
config (the random-weight folder written by `make_mid_model.py`, 128²), in one run on one machine:

1. Full sequential pass: network calls per frame, checked against the offline script's
   `windows × steps` (windows from `fixtures_temporal.windows`).
2. Single-frame cost against clip length: `--frames M-M` (M = L // 2) of clips of L = 50, 100,
   200, 400 frames, with short dependency cones (4 steps, window 4 / overlap 1; and 2 steps,
   16 / 4): network calls (against an independent count of the cone's windows), seconds and the
   cache's peak bytes.
3. Cache budget: the full pass under a large and a tight `--cache-mib`: calls, seconds, peak, and
   the output frames compared bytewise.
4. Ratio against PyTorch: `fixtures_temporal.denoise_clip` (the reference pseudocode of 
   f32, CPU, `torch.set_num_threads(2)`, the 3D inflation of `fixtures_unet` with SDPA full-frame
   attention from `unet_window.py`) on the same clip, same noise and settings, timed without model
   load; ours is timed as a whole process and, without load/encode/decode, as the marginal cost per
   network call between a full-step and a 1-step pass. The final latents of both are compared.

Usage (after `cargo build --release -p anchor-cli --bin anchor`):
    python3 plugin/benches/temporal_bench.py [--anchor target/release/anchor] [--work /tmp/mya-bench]
        [--mid-model /tmp/mya-mid] [--configs tiny,mid] [--json results.jsonl]
Prints Markdown tables on stdout (progress on stderr).
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

# OpenMP's default spin-waiting makes 2 torch threads 20-50x slower when other processes (the
# team's compilers) hold the 2 cores; passive waiting keeps them usable. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
sys.path.insert(0, HERE)
import fixtures_temporal  # noqa: E402  (the reference joint denoising)
import fixtures_unet  # noqa: E402  (the 3D inflation)
from unet_window import SdpaFullFrameAttnProcessor  # noqa: E402

from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextModel, CLIPVisionModelWithProjection  # noqa: E402
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402

GUIDANCE = fixtures_temporal.GUIDANCE  # 7.5
CONTROL_SCALE = fixtures_temporal.CONTROL_SCALE  # 2.0
SEED = 7

CONFIGS = {
    # full: (frames, window, overlap, steps) of the full pass; tight_mib: --cache-mib of the tight
    # run, below the large-cache peak (5.5 / 11.6 MiB). Mid at 1 MiB thrashes (stopped after 420 s
    # on 2026-11-25), so the run uses 4 MiB; tight_timeout stops a thrashing run.
    "tiny": dict(model=os.path.join(ROOT, "tests", "fixtures", "tiny"), res=64,
                 full=(48, 16, 4, 20), tight_mib=1, tight_timeout=240),
    "mid": dict(model=None, res=128, full=(48, 16, 4, 4), tight_mib=4, tight_timeout=300),
}
CLIP_LENGTHS = (50, 100, 200, 400)
CONE_SETTINGS = ((4, 4, 1), (2, 16, 4))  # (steps, window, overlap)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Inputs


def write_clip(path, frames, res):
    """`frames` pose PNGs at the working resolution (no resampling on either side). Frame i is the
    fixtures' stick figure for i % 24, upscaled, with i written in binary into the top row, so
    that every frame's content (and content hash) is distinct."""
    os.makedirs(path, exist_ok=True)
    names = sorted(n for n in os.listdir(path) if n.endswith(".png"))
    if len(names) == frames:
        return path
    for n in names:
        os.remove(os.path.join(path, n))
    for i in range(frames):
        img = fixtures_temporal.draw_pose(i % 24)
        if res != img.width:
            img = img.resize((res, res), Image.NEAREST)
        a = np.asarray(img).copy()
        for b in range(12):
            a[0, b] = (255, 255, 255) if (i >> b) & 1 else (0, 0, 0)
        Image.fromarray(a).save(os.path.join(path, f"{i:04d}.png"))
    return path


def read_controls(path):
    """PIL `convert("RGB")`, /255, NCHW, as the fixture script reads its poses."""
    names = sorted(n for n in os.listdir(path) if n.endswith(".png"))
    frames = [np.asarray(Image.open(os.path.join(path, n)).convert("RGB")) for n in names]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0


def expected_cone_calls(length, window, overlap, steps, frame):
    """Independent count of the window calls one frame needs: the windows covering the frame at
    the last step, then the windows covering any frame of those at the step before, and so on."""
    wins = fixtures_temporal.windows(length, window, overlap)
    frames, total = {frame}, 0
    for _ in range(steps):
        ws = [r for r in wins if any(f in r for f in frames)]
        total += len(ws)
        frames = set().union(*(set(r) for r in ws))
    return total


# ---------------------------------------------------------------------------------------------
# Ours

SUMMARY = re.compile(
    r"rendered (\d+) frames of (\d+) \((\d+) windows x (\d+) steps\): (\d+) network calls, "
    r"(\d+) decodes, cache (\d+) hits / (\d+) misses, cache peak ([\d.]+) MiB, peak RSS (\S+) MiB, "
    r"([\d.]+) s"
)


def anchor(exe, model, poses, appearance, out, res, steps, window, overlap, frames=None,
           cache_mib=None, noise=None, dump=None, timeout=None):
    cmd = [exe, "render", "--model", model, "--poses", poses, "--appearance", appearance,
           "--out", out, "--steps", str(steps), "--window", str(window), "--overlap", str(overlap),
           "--resolution", str(res), "--cfg", str(GUIDANCE), "--control-scale", str(CONTROL_SCALE),
           "--device", "cpu", "--precision", "f32", "--threads", "1"]
    cmd += ["--noise", noise] if noise else ["--seed", str(SEED)]
    if frames is not None:
        cmd += ["--frames", f"{frames[0]}-{frames[1]}"]
    if cache_mib is not None:
        cmd += ["--cache-mib", str(cache_mib)]
    if dump:
        cmd += ["--dump-latents", dump]
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"timed_out": True, "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.strip()}")
    m = SUMMARY.search(p.stdout)
    if not m:
        raise RuntimeError(f"no summary line in: {p.stdout!r}")
    g = m.groups()
    return {
        "requested": int(g[0]), "clip": int(g[1]), "windows": int(g[2]), "steps": int(g[3]),
        "calls": int(g[4]), "decodes": int(g[5]), "hits": int(g[6]), "misses": int(g[7]),
        "cache_peak_mib": float(g[8]), "peak_rss_mib": g[9], "seconds": float(g[10]),
        "wall_s": wall,
    }


def frames_bytes(out):
    """The decoded RGB bytes of every output frame, by name."""
    return {n: np.asarray(Image.open(os.path.join(out, n)).convert("RGB")).tobytes()
            for n in sorted(os.listdir(out)) if n.endswith(".png") and ".partial." not in n}


# ---------------------------------------------------------------------------------------------
# PyTorch reference

_INFLATED = {}


def sdpa_inflate(model, frames, full_frame_attention):
    """`fixtures_unet.inflate`, memoised (so model copies are made before timing) and with the
    full-frame attention through torch's SDPA (same maths, no materialised score matrix)."""
    key = (id(model), frames, full_frame_attention)
    if key not in _INFLATED:
        m = fixtures_unet.inflate(model, frames, full_frame_attention=False)
        if full_frame_attention:
            for name, module in m.named_modules():
                if name.endswith("attn1"):
                    module.set_processor(SdpaFullFrameAttnProcessor(frames))
        _INFLATED[key] = m
    return _INFLATED[key]


fixtures_temporal.inflate = sdpa_inflate  # denoise_clip looks `inflate` up in its module


def pytorch_reference(model_dir, poses, appearance, noise, window, overlap, steps):
    """Load, encode, denoise (timed alone) and decode the clip as the reference does."""
    f32 = dict(torch_dtype=torch.float32)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(model_dir, "unet"), **f32).eval()
    cnet = ControlNetModel.from_pretrained(os.path.join(model_dir, "controlnet"), **f32).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(model_dir, "vae"), **f32).eval()
    vision = CLIPVisionModelWithProjection.from_pretrained(
        os.path.join(model_dir, "image_encoder"), **f32).eval()
    text = CLIPTextModel.from_pretrained(os.path.join(model_dir, "text_encoder"), **f32).eval()
    proc = CLIPImageProcessorPil.from_pretrained(os.path.join(model_dir, "image_encoder"))
    sched = DDIMScheduler.from_pretrained(os.path.join(model_dir, "scheduler"))
    sched.set_timesteps(steps)
    load_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ctrl = read_controls(poses)
    length = ctrl.shape[0]
    # Appearance tokens (CLIP vision last_hidden_state) and the EOS-padded empty prompt.
    px = proc(images=Image.open(appearance).convert("RGB"), return_tensors="pt").pixel_values
    cond = vision.vision_model(pixel_values=px.float()).last_hidden_state
    bos, eos = text.config.vocab_size - 2, text.config.vocab_size - 1
    uncond = text(input_ids=torch.tensor([[bos] + [eos] * (cond.shape[1] - 1)])).last_hidden_state
    ctx = torch.cat([uncond, cond])
    encode_s = time.perf_counter() - t0

    wins = fixtures_temporal.windows(length, window, overlap)
    for size in sorted({len(r) for r in wins}):  # model copies outside the timed region
        sdpa_inflate(unet, size, True)
        sdpa_inflate(cnet, size, False)
    t0 = time.perf_counter()
    latents = fixtures_temporal.denoise_clip(unet, cnet, ctx, ctrl, noise, sched, wins)
    denoise_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    sf = vae.config.scaling_factor
    x = latents[-1]
    for i in range(length):
        (vae.decode(x[i: i + 1] / sf).sample / 2 + 0.5).clamp(0, 1)
    decode_s = time.perf_counter() - t0
    _INFLATED.clear()
    return {
        "load_s": load_s, "encode_s": encode_s, "denoise_s": denoise_s, "decode_s": decode_s,
        "calls": len(wins) * steps, "final": latents[-1],
    }


# ---------------------------------------------------------------------------------------------


def run_config(name, cfg, exe, work, records):
    model, res = cfg["model"], cfg["res"]
    L, W, O, S = cfg["full"]
    base = os.path.join(work, name)
    appearance = os.path.join(base, "appearance.png")
    os.makedirs(base, exist_ok=True)
    fixtures_temporal.draw_appearance().save(appearance)
    poses = write_clip(os.path.join(base, f"poses{L}"), L, res)
    h = res // 8
    noise_path = os.path.join(base, "noise.safetensors")
    noise = torch.randn((4, h, h), generator=torch.Generator().manual_seed(SEED))
    save_file({"noise": noise.contiguous()}, noise_path)

    def rec(kind, result, **kw):
        r = {"config": name, "kind": kind} | result | kw
        records.append(r)
        log(json.dumps({k: v for k, v in r.items() if k != "final"}))
        return r

    # 1 + 4: the full pass (large cache), its 1-step twin, and PyTorch on the same clip.
    dump = os.path.join(base, "ours_latents.safetensors")
    full = anchor(exe, model, poses, appearance, os.path.join(base, "out_full"), res, S, W, O,
                  cache_mib=4096, noise=noise_path, dump=dump)
    one = anchor(exe, model, poses, appearance, os.path.join(base, "out_one"), res, 1, W, O,
                 cache_mib=4096, noise=noise_path)
    expected = len(fixtures_temporal.windows(L, W, O)) * S
    rec("full", full, frames=L, window=W, overlap=O, steps=S, expected_calls=expected)
    rec("one_step", one, frames=L, window=W, overlap=O, steps=1)
    torch.set_num_threads(2)
    ref = pytorch_reference(model, poses, appearance, noise, W, O, S)
    ours_final = load_file(dump)[f"latents_step{S - 1}"]
    gap = float((ours_final - ref["final"]).abs().max())
    rec("pytorch", {k: v for k, v in ref.items() if k != "final"}, frames=L, window=W, overlap=O,
        steps=S, final_latent_max_abs_diff=gap)

    # 2: one middle frame of longer and longer clips.
    for steps, w, o in CONE_SETTINGS:
        for length in CLIP_LENGTHS:
            p = write_clip(os.path.join(base, f"poses{length}"), length, res)
            m = length // 2
            r = anchor(exe, model, p, appearance, os.path.join(base, f"out_mid{length}"), res,
                       steps, w, o, frames=(m, m), cache_mib=4096)
            rec("single", r, frames=length, frame=m, window=w, overlap=o, steps=steps,
                expected_calls=expected_cone_calls(length, w, o, steps, m))

    # 3: tight cache budget, same pass, bytewise comparison of the frames.
    tight = anchor(exe, model, poses, appearance, os.path.join(base, "out_tight"), res, S, W, O,
                   cache_mib=cfg["tight_mib"], noise=noise_path, timeout=cfg["tight_timeout"])
    same = not tight.get("timed_out") and (
        frames_bytes(os.path.join(base, "out_full")) == frames_bytes(os.path.join(base, "out_tight")))
    rec("tight", tight, frames=L, window=W, overlap=O, steps=S, cache_mib=cfg["tight_mib"],
        identical_frames=same)


def machine():
    def sh(c):
        return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    return {
        "nproc": sh("nproc"),
        "cpu": sh("lscpu | grep 'Model name' | sed 's/.*: *//'"),
        "mem": sh("free -g | awk '/Mem:/{print $2\" GiB total, \"$7\" GiB available\"}'"),
        "load": sh("cat /proc/loadavg"),
        "busy": sh("ps -eo comm= | grep -cE '^(rustc|cargo|cc1plus|cc|ld)$'"),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def markdown(records, info):
    out = []
    out.append(f"Machine: {info['cpu']}, nproc {info['nproc']}, {info['mem']}; "
               f"torch {info['torch']} (2 threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), `anchor` release, f32 CPU, 1 request thread. "
               f"Load average at start/end: {info['load']} / {info.get('load_end', '?')}; "
               f"compiler processes running at start: {info['busy']}.")
    by = {}
    for r in records:
        by.setdefault((r["config"], r["kind"]), []).append(r)
    configs = list(dict.fromkeys(r["config"] for r in records))

    out.append("\n**Full sequential pass: network calls per frame**\n")
    out.append("| config | frames | window/overlap | steps | windows | calls (ours) | windows × steps "
               "(offline script) | calls / frame | decodes |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for c in configs:
        r = by[(c, "full")][0]
        out.append(f"| {c} | {r['frames']} | {r['window']}/{r['overlap']} | {r['steps']} | "
                   f"{r['windows']} | {r['calls']} | {r['expected_calls']} | "
                   f"{r['calls'] / r['frames']:.3f} | {r['decodes']} |")

    out.append("\n**One middle frame (`--frames M-M`, M = L/2) against clip length L**\n")
    out.append("| config | steps, window/overlap | L | M | calls | cone windows (predicted) | "
               "seconds (process) | cache peak MiB | peak RSS MiB |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for c in configs:
        for r in by.get((c, "single"), []):
            out.append(f"| {c} | {r['steps']}, {r['window']}/{r['overlap']} | {r['frames']} | "
                       f"{r['frame']} | {r['calls']} | {r['expected_calls']} | {r['wall_s']:.2f} | "
                       f"{r['cache_peak_mib']:.2f} | {r['peak_rss_mib']} |")

    out.append("\n**Cache budget: full pass under a large and a tight `--cache-mib`**\n")
    out.append("| config | frames, steps | --cache-mib | calls | cache hits / misses | "
               "cache peak MiB | seconds | frames bytewise equal to the large-cache pass |")
    out.append("|---|---|---|---|---|---|---|---|")
    for c in configs:
        f, t = by[(c, "full")][0], by[(c, "tight")][0]
        out.append(f"| {c} | {f['frames']}, {f['steps']} | 4096 | {f['calls']} | {f['hits']} / "
                   f"{f['misses']} | {f['cache_peak_mib']:.2f} | {f['wall_s']:.2f} | (reference) |")
        if t.get("timed_out"):
            out.append(f"| {c} | {t['frames']}, {t['steps']} | {t['cache_mib']} | - | - | - | "
                       f"> {t['wall_s']:.0f} (stopped) | - |")
            continue
        out.append(f"| {c} | {t['frames']}, {t['steps']} | {t['cache_mib']} | {t['calls']} | "
                   f"{t['hits']} / {t['misses']} | {t['cache_peak_mib']:.2f} | {t['wall_s']:.2f} | "
                   f"{'yes' if t['identical_frames'] else 'NO'} |")

    out.append("\n**Full pass against PyTorch (same clip, noise, steps, windows; f32 CPU)**\n")
    out.append("| config | frames, W/O, steps | calls | PyTorch load s | PyTorch denoise s | "
               "PyTorch s / call | ours process s | ours s / call (marginal) | ours denoise s "
               "(calls × s/call) | ratio ours/PyTorch per call | ratio total (process vs load+"
               "encode+denoise+decode) | final-latent max abs diff |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in configs:
        f, o, p = by[(c, "full")][0], by[(c, "one_step")][0], by[(c, "pytorch")][0]
        per_ours = (f["wall_s"] - o["wall_s"]) / (f["calls"] - o["calls"])
        per_ref = p["denoise_s"] / p["calls"]
        ref_total = p["load_s"] + p["encode_s"] + p["denoise_s"] + p["decode_s"]
        out.append(f"| {c} | {f['frames']}, {f['window']}/{f['overlap']}, {f['steps']} | "
                   f"{f['calls']} | {p['load_s']:.2f} | {p['denoise_s']:.2f} | {per_ref:.4f} | "
                   f"{f['wall_s']:.2f} | {per_ours:.4f} | {per_ours * f['calls']:.2f} | "
                   f"{per_ours / per_ref:.2f} | {f['wall_s'] / ref_total:.2f} | "
                   f"{p['final_latent_max_abs_diff']:.2e} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--anchor", default=os.path.join(ROOT, "target", "release", "anchor"))
    ap.add_argument("--work", default="/tmp/mya-bench")
    ap.add_argument("--mid-model", default="/tmp/mya-mid")
    ap.add_argument("--configs", default="tiny,mid")
    ap.add_argument("--json", default=None, help="also write every record as JSON lines here")
    ap.add_argument("--from-json", default=None, help="only print the tables of a --json file")
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as fh:
            lines = [json.loads(line) for line in fh]
        print(markdown(lines[1:], lines[0]))
        return
    torch.set_grad_enabled(False)
    torch.set_num_threads(2)
    CONFIGS["mid"]["model"] = args.mid_model
    if "mid" in args.configs and not os.path.exists(os.path.join(args.mid_model, "unet")):
        import make_mid_model
        log(json.dumps(make_mid_model.build(args.mid_model)))
    info = machine()
    t0 = time.perf_counter()
    records = []
    for name in args.configs.split(","):
        run_config(name, CONFIGS[name], args.anchor, args.work, records)
    info["load_end"] = machine()["load"]
    log(f"total {time.perf_counter() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(json.dumps(info) + "\n")
            for r in records:
                fh.write(json.dumps(r) + "\n")
    print(markdown(records, info))


if __name__ == "__main__":
    main()
