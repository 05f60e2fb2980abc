"""The steps of plugin/benches/gpu/check.sh (issue 18), one per subcommand:

  step1   GPU, driver, the binaries' CUDA kernels (PTX) and the CUDA libraries cudarc loads
  step2   CUDA against CPU on the tiny parity model: latents after 4 steps (f32, f16, bf16)
  step3   full-size random SD1.5 UNet + ControlNet, one 16 × 64² window, both CFG halves:
          ours (`anchor render`, one window) and PyTorch/diffusers (torch_window.py)
  step4   48-frame temporal render at 512² (20 steps, 16/4, CFG): s/frame and peak GPU memory
  step5   the bundle through `ofx-render` on CUDA against `anchor render` on CUDA, bytewise
  report  RESULTS.md + results.json from the steps' JSON

check.sh sets the environment (GPUCHECK_*: results and work folders, dry run, the step's
deadline; ANCHOR, OFX_RENDER, BUNDLE, PYTHON) and runs each step under its own timeout. Each step
writes $GPUCHECK_WORK/stepN.json; its log is its stdout. In a dry run everything runs on the CPU
at tiny sizes (see SIZES).
"""

import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, HERE)
import gpuio  # noqa: E402
from gpuio import np, run  # noqa: E402

E = os.environ
DRY = E.get("GPUCHECK_DRY") == "1"
WORK = E.get("GPUCHECK_WORK", "/tmp/mya-gpucheck")
RESULTS = E.get("GPUCHECK_RESULTS", os.path.join(WORK, "results"))
ANCHOR = E.get("ANCHOR", os.path.join(ROOT, "target", "release", "anchor"))
OFX_RENDER = E.get("OFX_RENDER", os.path.join(ROOT, "target", "release", "ofx-render"))
BUNDLE = E.get("BUNDLE", os.path.join(ROOT, "target", "bundle", "MakeYourAnchor.ofx.bundle"))
PYTHON = E.get("PYTHON", sys.executable)
PLUGIN_ID = "org.makeyouranchor.Anchor"

DEVICE = "cpu" if DRY else "cuda:0"  # `anchor render --device`
OFX_DEVICE = "CPU" if DRY else "CUDA 0"  # the effect's `device` choice
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TINY = os.path.join(FIXTURES, "tiny")
PHOTO = os.path.join(FIXTURES, "photo.png")
PARITY_POSES = os.path.join(FIXTURES, "temporal", "poses")  # 11 frames, 64²

# Sizes of the GPU run, and of the dry run (CPU, tiny).
SIZES = {
    False: dict(model="sd15", win_frames=16, win_res=512, win_window=16, win_overlap=0, win_steps=4,
                dtypes=["f16", "bf16"], torch_device="cuda", torch_iters=5,
                r_frames=48, r_res=512, r_window=16, r_overlap=4, r_steps=20,
                parity_precisions=["f32", "f16", "bf16"], ofx_precisions=["f32", "f16"]),
    True: dict(model="mini", win_frames=4, win_res=64, win_window=4, win_overlap=0, win_steps=2,
               dtypes=["f32"], torch_device="cpu", torch_iters=2,
               r_frames=6, r_res=64, r_window=4, r_overlap=1, r_steps=2,
               parity_precisions=["f32", "f16", "bf16"], ofx_precisions=["f32"]),
}[DRY]
CFG, CONTROL_SCALE, SEED = "7.5", "2.0", "42"
F32_TOLERANCE = 1e-4  # relative (max |cuda - cpu| / max |cpu|) on the latents after 4 steps
GOAL_S_PER_FRAME = 0.4
GOAL_RATIO = 1.0
GOAL_PEAK_MIB = 13e9 / 2**20  # 13 GB = 12,398 MiB


def log(msg=""):
    print(msg, flush=True)


def left():
    """Seconds to this step's deadline (set by check.sh)."""
    return float(E.get("GPUCHECK_STEP_DEADLINE", time.time() + 1e6)) - time.time()


def budget(cap, reserve=0.0):
    """A sub-run's timeout: at most `cap`, and leaving `reserve` seconds of the step."""
    return max(0.0, min(cap, left() - reserve))


def save(n, data):
    data.setdefault("step", n)
    with open(os.path.join(WORK, f"step{n}.json"), "w") as fh:
        json.dump(data, fh, indent=1, default=str)
    log(f"step {n}: {data.get('status')}: {data.get('summary', '')}")


def anchor_cmd(model, poses, out, res, steps, window, overlap, precision, device=DEVICE, dump=None,
               extra=()):
    shutil.rmtree(out, ignore_errors=True)
    cmd = [ANCHOR, "render", "--model", model, "--poses", poses, "--appearance", PHOTO, "--out", out,
           "--resolution", str(res), "--steps", str(steps), "--window", str(window),
           "--overlap", str(overlap), "--seed", SEED, "--cfg", CFG, "--control-scale", CONTROL_SCALE,
           "--device", device, "--precision", precision, "--threads", "1", "--framing", "squash",
           "--progress", "plain"]
    if dump:
        cmd += ["--dump-latents", dump]
    return cmd + list(extra)


def run_env():
    env = dict(E)
    env.setdefault("RAYON_NUM_THREADS", str(os.cpu_count() or 2))
    env.pop("MAKE_YOUR_ANCHOR_MODEL", None)
    env.pop("MAKE_YOUR_ANCHOR_MEMORY_MIB", None)
    return env


def windows_of(frames, window, overlap):
    """Window count of the engine's plan (the reference's, paper tail): a window starts at every
    j = 0, W-O, 2(W-O), … < L (fixtures_temporal.windows)."""
    return len(range(0, frames, window - overlap))


# ---------------------------------------------------------------------------------------------
# step 1


PTX_TO_CUDA = {(7, 8): (11, 8), (8, 0): (12, 0), (8, 1): (12, 1), (8, 2): (12, 2), (8, 3): (12, 3),
               (8, 4): (12, 4), (8, 5): (12, 5), (8, 6): (12, 7), (8, 7): (12, 8), (8, 8): (12, 9)}


def ptx_needs(isa):
    """The CUDA (driver) version a PTX ISA version needs: 9.m → 13.m, 8.x by table."""
    if isa[0] >= 9:
        return (isa[0] + 4, isa[1])
    return PTX_TO_CUDA.get(isa)


def cuda_to_ptx(cuda):
    if cuda[0] >= 13:
        return (cuda[0] - 4, cuda[1])
    best = None
    for isa, c in sorted(PTX_TO_CUDA.items()):
        if c <= cuda:
            best = isa
    return best


def ptx_info(path):
    """PTX modules embedded in a binary: their `.version` and `.target`, and the nvcc release."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        return {"error": str(e)}
    mods = re.findall(rb"\n\.version (\d+)\.(\d+)\s*\n\.target (\w+)", data)
    rel = sorted(set(re.findall(rb"Cuda compilation tools, release (\d+\.\d+), V([\d.]+)", data)))
    versions = sorted({(int(a), int(b)) for a, b, _ in mods})
    return {
        "modules": len(mods),
        "ptx_isa": [f"{a}.{b}" for a, b in versions],
        "targets": sorted({t.decode() for _, _, t in mods}),
        "nvcc": [f"{r.decode()} (V{v.decode()})" for r, v in rel],
    }


def patch_ptx(src, dst, old, new):
    """Copies `src` to `dst` with every `.version old` PTX header rewritten to `.version new`
    (same length, so the binary's layout is unchanged)."""
    with open(src, "rb") as fh:
        data = fh.read()
    a = b"\n.version %d.%d\n" % old
    b = b"\n.version %d.%d\n" % new
    assert len(a) == len(b)
    n = data.count(a)
    with open(dst, "wb") as fh:
        fh.write(data.replace(a, b))
    os.chmod(dst, 0o755)
    return n


def bundle_library(bundle):
    hits = glob.glob(os.path.join(bundle, "Contents", "*", "*.ofx"))
    return hits[0] if hits else None


LIBS = {  # what cudarc dlopens (by name, through the library path), and cuBLAS's own dependency
    "libcuda": ["libcuda.so.1", "libcuda.so"],
    "libcublas": ["libcublas.so.{major}", "libcublas.so", "libcublas.so.13", "libcublas.so.12"],
    "libcublasLt": ["libcublasLt.so.{major}", "libcublasLt.so", "libcublasLt.so.13", "libcublasLt.so.12"],
    "libcurand": ["libcurand.so.10", "libcurand.so"],
    "libnvrtc": ["libnvrtc.so.{major}", "libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"],
    # candle-kernels links its statically built kernels against the CUDA runtime (-lcudart).
    "libcudart": ["libcudart.so.{major}", "libcudart.so", "libcudart.so.13", "libcudart.so.12"],
}


def python_dirs():
    """torch's folder and the site-packages folders of $PYTHON (for nvidia/*/lib)."""
    code = ("import os, site, sys\n"
            "out = []\n"
            "try:\n import torch; out.append(os.path.dirname(torch.__file__))\nexcept Exception: pass\n"
            "out += [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]\n"
            "print('\\n'.join(out))\n")
    try:
        r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
        return [d for d in r.stdout.split("\n") if d]
    except Exception:
        return []


def find_libs(major):
    """{lib: (path, source)}: each library from the system if it has it, else from the PyTorch
    installation (torch/lib, site-packages/nvidia/*/lib)."""
    cache = {}
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=20).stdout
        for line in out.splitlines():
            m = re.match(r"\s*(\S+) \(.*\) => (\S+)", line)
            if m and "x86-64" in line:
                cache.setdefault(m.group(1), m.group(2))
    except Exception:
        pass
    system = [d for d in E.get("LD_LIBRARY_PATH", "").split(":") if d]
    system += ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/x86_64-linux-gnu",
               "/usr/lib64", "/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
    for var in ("CUDA_HOME", "CUDA_ROOT", "CUDA_PATH"):
        if E.get(var):
            system += [os.path.join(E[var], "lib64"), os.path.join(E[var], "lib")]
    pydirs = python_dirs()
    torch_dirs = []
    for d in pydirs:
        torch_dirs += [os.path.join(d, "lib")] if d.endswith("torch") else []
        torch_dirs += sorted(glob.glob(os.path.join(d, "nvidia", "*", "lib")))
        torch_dirs += sorted(glob.glob(os.path.join(d, "nvidia", "cu*", "lib")))
    found = {}
    for lib, names in LIBS.items():
        names = [n.format(major=major) for n in names]
        hit = None
        for n in names:
            if n in cache:
                hit = (cache[n], "system (ldconfig)")
                break
            for d in system:
                if os.path.exists(os.path.join(d, n)):
                    hit = (os.path.join(d, n), "system")
                    break
            if hit:
                break
        if hit is None:
            for n in names:
                for d in torch_dirs:
                    if os.path.exists(os.path.join(d, n)):
                        hit = (os.path.join(d, n), "PyTorch installation")
                        break
                if hit:
                    break
        found[lib] = hit
    return found, {"python_dirs": pydirs, "torch_lib_dirs": torch_dirs}


VERIFY = r"""
import ctypes, json, sys
major = sys.argv[1]
res = {}
def cand(lib):  # cudarc 0.19's get_lib_name_candidates on Linux, in its order
    return [f"{lib}.so", f"{lib}.so.{major}", f"{lib}.so.12", f"{lib}.so.11", f"{lib}.so.10",
            f"{lib}.so.9", f"{lib}.so.1"]
handles = {}
for lib in ("libcuda", "libcublas", "libcublasLt", "libcurand", "libnvrtc", "libcudart"):
    for n in cand(lib):
        try:
            handles[lib] = ctypes.CDLL(n)
            res[lib] = {"loaded": n}
            break
        except OSError as e:
            res.setdefault(lib, {"error": str(e)})
maps = open("/proc/self/maps").read().split("\n")
for lib, r in res.items():
    if "loaded" in r:
        paths = sorted({l.split()[-1] for l in maps if "/" + lib + ".so" in l})
        r["path"] = paths[0] if paths else "?"
if "libcuda" in handles:
    c = handles["libcuda"]
    v = ctypes.c_int(0)
    res["cuInit"] = c.cuInit(0)
    c.cuDriverGetVersion(ctypes.byref(v))
    res["driver_cuda"] = v.value
    n = ctypes.c_int(0)
    res["cuDeviceGetCount"] = [c.cuDeviceGetCount(ctypes.byref(n)), n.value]
print(json.dumps(res))
"""


def step1():
    r = {"title": "GPU, driver and the CUDA libraries cudarc loads", "dry_run": DRY}
    ok = True
    notes = []
    # The GPU.
    if shutil.which("nvidia-smi"):
        run(["nvidia-smi"], 30)
        q = run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"], 30)
        rows = [l for _, s, l in q.lines if s == "out" and l.strip()]
        if len(rows) >= 2:
            name, mem, drv = [x.strip() for x in rows[1].split(",")][:3]
            r["gpu"] = {"name": name, "memory_total": mem, "driver_version": drv}
        full = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
        m = re.search(r"CUDA Version:\s*([\d.]+)", full)
        if m:
            r.setdefault("gpu", {})["driver_cuda"] = m.group(1)
    else:
        r["gpu"] = None
        notes.append("no nvidia-smi on this machine")
        ok = ok and DRY
    for tool in (["nvcc", "--version"],):
        if shutil.which(tool[0]):
            t = run(tool, 30)
            r["nvcc"] = t.text("out").strip().splitlines()[-1] if t.ok and t.lines else None
    # The binaries and their CUDA kernels.
    bins = {}
    blib = bundle_library(BUNDLE)
    for label, path in (("anchor", ANCHOR), ("ofx-render", OFX_RENDER), ("bundle", blib or BUNDLE)):
        info = {"path": path, "exists": bool(path) and os.path.isfile(path)}
        if info["exists"]:
            info["bytes"] = os.path.getsize(path)
            if label != "ofx-render":
                info["ptx"] = ptx_info(path)
        bins[label] = info
        if not info["exists"]:
            ok = False
            notes.append(f"{label} missing: {path}")
    r["binaries"] = bins
    if bins["anchor"]["exists"]:
        v = run([ANCHOR, "--version"], 30)
        r["anchor_version"] = v.text("out").strip()
    ptx = (bins["anchor"].get("ptx") or {})
    isa = [tuple(int(x) for x in s.split(".")) for s in ptx.get("ptx_isa", [])]
    major = 13
    if ptx.get("nvcc"):
        major = int(ptx["nvcc"][0].split(".")[0])
    if not isa:
        msg = "the anchor binary holds no PTX: it was built without `--features cuda`"
        notes.append(msg)
        if not DRY:
            ok = False
    # Libraries.
    found, dirs = find_libs(major)
    r["libraries"] = {k: (v[0] if v else None) for k, v in found.items()}
    r["library_sources"] = {k: (v[1] if v else "not found") for k, v in found.items()}
    r["search"] = dirs
    add = []
    for lib, hit in found.items():
        if hit and hit[1] != "system (ldconfig)":
            d = os.path.dirname(hit[0])
            if d not in add:
                add.append(d)
    ld = ":".join(add + [d for d in E.get("LD_LIBRARY_PATH", "").split(":") if d and d not in add])
    r["LD_LIBRARY_PATH"] = ld
    env = dict(E, LD_LIBRARY_PATH=ld)
    v = subprocess.run([PYTHON, "-c", VERIFY, str(major)], capture_output=True, text=True, env=env,
                       timeout=60)
    try:
        r["dlopen"] = json.loads(v.stdout.strip().splitlines()[-1])
    except Exception:
        r["dlopen"] = {"error": (v.stdout + v.stderr)[-2000:]}
    log("dlopen by cudarc's names with that LD_LIBRARY_PATH: " + json.dumps(r["dlopen"], indent=1))
    for lib in ("libcuda", "libcublas", "libcurand"):
        if "loaded" not in r["dlopen"].get(lib, {}):
            notes.append(f"{lib} cannot be loaded")
            ok = ok and DRY
    # candle links cudarc dynamically (DT_NEEDED libcuda, libcublas, libcublasLt, libcurand,
    # libnvrtc, libcudart): every one must resolve, and every symbol (Rust links with -z now).
    r["ldd"] = {}
    for label, path in (("anchor", ANCHOR), ("bundle", blib)):
        if path and os.path.isfile(path) and shutil.which("ldd"):
            p = subprocess.run(["ldd", "-r", path], capture_output=True, text=True, env=env, timeout=60)
            lines = (p.stdout + p.stderr).splitlines()
            cuda = [l.strip() for l in lines if re.search(r"cu|nvrtc|not found|undefined", l)]
            bad = [l for l in cuda if "not found" in l or "undefined symbol" in l]
            r["ldd"][label] = {"cuda_lines": cuda[:20], "problems": bad[:20]}
            log(f"ldd -r {path}:\n  " + "\n  ".join(cuda[:20]))
            if bad:
                notes.append(f"{label}: unresolved at load time: {'; '.join(bad[:4])}")
                ok = ok and DRY
    # PTX ISA against the driver: a newer PTX than the driver knows fails at the first kernel
    # (CUDA_ERROR_UNSUPPORTED_PTX_VERSION). Same-length rewrite of `.version` as a workaround.
    exports = {"LD_LIBRARY_PATH": ld}
    drv = r["dlopen"].get("driver_cuda")
    if isinstance(drv, int) and drv > 0 and isa:
        driver = (drv // 1000, (drv % 1000) // 10)
        r["driver_cuda"] = f"{driver[0]}.{driver[1]}"
        need = max((ptx_needs(i) or (0, 0)) for i in isa)
        r["ptx_needs_cuda"] = f"{need[0]}.{need[1]}"
        if need > driver:
            target = cuda_to_ptx(driver)
            msg = (f"the binaries' PTX (ISA {', '.join(ptx['ptx_isa'])}, nvcc {ptx.get('nvcc')}) needs a "
                   f"CUDA {need[0]}.{need[1]} driver; this driver is CUDA {driver[0]}.{driver[1]}")
            notes.append(msg)
            if E.get("PTX_PATCH", "1") == "0" or not target:
                ok = False
            else:
                bindir = os.path.join(WORK, "patched")
                shutil.rmtree(bindir, ignore_errors=True)
                os.makedirs(bindir)
                patched = {}
                a = os.path.join(bindir, "anchor")
                shutil.copy2(ANCHOR, a)
                n = sum(patch_ptx(a, a, old, target) for old in isa if (ptx_needs(old) or (0, 0)) > driver)
                patched["anchor"] = n
                exports["ANCHOR"] = a
                if blib:
                    b = os.path.join(bindir, os.path.basename(BUNDLE))
                    shutil.copytree(BUNDLE, b)
                    lib = bundle_library(b)
                    patched["bundle"] = sum(patch_ptx(lib, lib, old, target)
                                            for old in isa if (ptx_needs(old) or (0, 0)) > driver)
                    exports["BUNDLE"] = b
                r["ptx_patched"] = {"to_isa": f"{target[0]}.{target[1]}", "modules": patched,
                                    "copies": bindir}
                notes.append(f"WORKAROUND: copies with `.version {target[0]}.{target[1]}` in {bindir} are "
                             "used by the next steps (rebuild with the driver's CUDA wheels to avoid it)")
    with open(os.path.join(WORK, "env.sh"), "w") as fh:
        for k, v in exports.items():
            fh.write(f"export {k}='{v}'\n")
    # PyTorch.
    t = subprocess.run([PYTHON, "-c", "import torch, json; print(json.dumps({'torch': torch.__version__, "
                        "'cuda': torch.version.cuda, 'available': torch.cuda.is_available(), 'device': "
                        "torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))"],
                       capture_output=True, text=True, timeout=120)
    try:
        r["torch"] = json.loads(t.stdout.strip().splitlines()[-1])
    except Exception:
        r["torch"] = {"error": (t.stderr or t.stdout)[-500:]}
    r["notes"] = notes
    r["status"] = ("info" if DRY else ("pass" if ok else "fail"))
    gpu = r.get("gpu") or {}
    r["summary"] = (f"{gpu.get('name', 'no GPU')}, driver {gpu.get('driver_version', '-')} (CUDA "
                    f"{r.get('driver_cuda', gpu.get('driver_cuda', '-'))}); PTX {', '.join(ptx.get('ptx_isa', [])) or 'none'}; "
                    + ", ".join(f"{k}: {r['library_sources'][k]}" for k in LIBS)
                    + ("; " + "; ".join(notes) if notes else ""))
    save(1, r)


# ---------------------------------------------------------------------------------------------
# step 2


def rel_errors(ref, got):
    """Per step: max |got - ref| / max |ref|, and the max-abs figures."""
    out = []
    for k in sorted(ref, key=lambda s: int(s.replace("latents_step", ""))):
        a, b = ref[k], got.get(k)
        if b is None:
            out.append({"key": k, "error": "missing"})
            continue
        diff = float(np.abs(a - b).max())
        scale = float(np.abs(a).max())
        out.append({"key": k, "max_abs_diff": diff, "ref_max_abs": scale,
                    "rel": diff / scale if scale else float("inf"),
                    "finite": bool(np.isfinite(b).all())})
    return out


def step2():
    r = {"title": "CUDA against CPU on the tiny parity model (latents after 4 steps)", "dry_run": DRY}
    base = os.path.join(WORK, "s2")
    os.makedirs(base, exist_ok=True)
    # The reference (CPU f32), then the device in each precision (in a dry run the device is the
    # CPU again, and bf16, which candle runs on CUDA only, is skipped).
    runs = [("ref", "cpu", "f32")] + [("test", DEVICE, p) for p in SIZES["parity_precisions"]]
    dumps, info = {}, []
    for role, dev, prec in runs:
        tag = f"{role}-{dev.replace(':', '')}-{prec}"
        item = {"role": role, "device": dev, "precision": prec}
        if dev == "cpu" and prec == "bf16":
            item.update(status="skip",
                        reason="bf16 is CUDA-only (candle has no CPU bf16 matmul): dry run on the CPU")
            info.append(item)
            log(f"{tag}: skipped: {item['reason']}")
            continue
        dump = os.path.join(base, f"{tag}.safetensors")
        if os.path.exists(dump):
            os.remove(dump)
        cmd = anchor_cmd(TINY, PARITY_POSES, os.path.join(base, tag), 64, 4, 4, 1, prec, device=dev,
                         dump=dump)
        res = run(cmd, budget(90 if not DRY else 150, reserve=2), env=run_env())
        item.update(status="ok" if res.ok else "fail", result=res.brief(), seconds=round(res.wall, 2),
                    summary=gpuio.summary(res), ran_on=gpuio.device_of(res))
        if res.ok and item["ran_on"] and item["ran_on"][0] != dev:
            item.update(status="fail", result=f"ran on {item['ran_on'][0]}, not {dev}")
        if item["status"] == "ok" and os.path.exists(dump):
            dumps[(role, prec)] = dump
        info.append(item)
    ref = dumps.get(("ref", "f32"))
    comparisons = []
    if np is None:
        r["error"] = "numpy missing: no comparison"
    elif ref:
        a = gpuio.st_load_numpy(ref)
        for (role, prec), path in dumps.items():
            if role != "test":
                continue
            errs = rel_errors(a, gpuio.st_load_numpy(path))
            final = errs[-1]
            c = {"device": DEVICE, "precision": prec, "per_step": errs, "final_rel": final.get("rel"),
                 "final_max_abs_diff": final.get("max_abs_diff"), "final_finite": final.get("finite")}
            if prec == "f32":
                c["threshold"] = F32_TOLERANCE
                c["pass"] = bool(final.get("rel") is not None and final["rel"] <= F32_TOLERANCE)
            comparisons.append(c)
            log(f"{DEVICE} {prec} vs cpu f32: " + ", ".join(
                f"{e['key']}: rel {e.get('rel', float('nan')):.3e}" for e in errs))
    r["runs"] = info
    r["comparisons"] = comparisons
    f32 = [c for c in comparisons if c["precision"] == "f32"]
    r["status"] = "pass" if f32 and all(c["pass"] for c in f32) else "fail"
    r["summary"] = "; ".join(
        f"{c['device']} {c['precision']}: rel {c['final_rel']:.2e}" + (
            f" (≤ {F32_TOLERANCE:g}: {'PASS' if c['pass'] else 'FAIL'})" if "pass" in c else "")
        for c in comparisons) or "no comparison: " + "; ".join(
        f"{i['device']} {i['precision']}: {i.get('result', i.get('reason'))}" for i in info)
    save(2, r)


# ---------------------------------------------------------------------------------------------
# step 3


def ensure_model():
    name = SIZES["model"]
    manifest = os.path.join(HERE, f"manifest_{name}.json")
    out = os.path.join(WORK, f"model-{name}")
    stamp = os.path.join(out, ".written")
    mtime = str(os.path.getmtime(manifest))
    if os.path.exists(stamp) and open(stamp).read() == mtime:
        log(f"model folder {out} exists")
        return out
    shutil.rmtree(out, ignore_errors=True)
    gpuio.write_model(manifest, out, seed=0, log=log)
    with open(stamp, "w") as fh:
        fh.write(mtime)
    return out


def ensure_poses(frames, res):
    p = os.path.join(WORK, f"poses-{frames}x{res}")
    if os.path.isdir(p) and len([n for n in os.listdir(p) if n.endswith(".png")]) == frames:
        return p
    t0 = time.time()
    gpuio.write_poses(p, frames, res)
    log(f"wrote {frames} poses of {res}² in {time.time() - t0:.1f} s: {p}")
    return p


def torch_env():
    """The environment in which `import diffusers` works for $PYTHON: as it is, or with the
    carried wheels installed offline into $GPUCHECK_WORK/pydeps. None (and why) if neither."""
    env = dict(E)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    force = E.get("GPUCHECK_FORCE_WHEELS") == "1"
    probe = [PYTHON, "-c", "import diffusers, torch; print(diffusers.__version__, torch.__version__)"]
    if not force:
        p = subprocess.run(probe, capture_output=True, text=True, env=env, timeout=180)
        if p.returncode == 0:
            return env, "installed: diffusers " + p.stdout.strip()
    pydeps = E.get("GPUCHECK_PYDEPS")
    if pydeps and os.path.isdir(pydeps):  # pack.sh's archive, unpacked by check.sh
        env["PYTHONPATH"] = pydeps + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        p = subprocess.run(probe, capture_output=True, text=True, env=env, timeout=180)
        if p.returncode == 0:
            return env, ("carried (forced): " if force else "carried: ") + "diffusers " + \
                p.stdout.strip() + f" from {pydeps}"
        return None, "diffusers from the carried archive does not import: " + (p.stderr or p.stdout)[-600:]
    wheels = sorted(glob.glob(os.path.join(HERE, "wheels", "*.whl")))
    if not wheels:
        return None, ("diffusers is not importable, and neither plugin/benches/gpu/carry/bins.tar.xz "
                      "(pack.sh) nor plugin/benches/gpu/wheels/ was carried")
    target = os.path.join(WORK, "pydeps")
    shutil.rmtree(target, ignore_errors=True)
    res = run([PYTHON, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--target", target] + wheels, budget(120), env=env)
    if not res.ok:
        return None, "offline install of the wheels failed: " + res.brief()
    env["PYTHONPATH"] = target + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.run(probe, capture_output=True, text=True, env=env, timeout=180)
    if p.returncode != 0:
        return None, "diffusers from the wheels does not import: " + (p.stderr or p.stdout)[-600:]
    return env, ("wheels (forced): " if force else "wheels: ") + "diffusers " + p.stdout.strip() + \
        " from " + ", ".join(os.path.basename(w) for w in wheels)


def ours_window(model, poses, prec, steps, timeout):
    """One `anchor render` of the window clip: total, load and per-call times, peak memory."""
    s = SIZES
    out = os.path.join(WORK, "s3", f"ours-{prec}-s{steps}")
    cmd = anchor_cmd(model, poses, out, s["win_res"], steps, s["win_window"], s["win_overlap"], prec)
    res = run(cmd, timeout, env=run_env(), smi=not DRY)
    item = {"steps": steps, "result": res.brief(), "wall_s": round(res.wall, 2), "wall_s_exact": res.wall,
            "summary": gpuio.summary(res), "gpu_peak_mib": res.gpu_mib(), "gpu_peak_abs_mib": res.gpu_peak}
    t_load = gpuio.rendering_at(res)
    pts = gpuio.progress_points(res)
    item["t_rendering_s"] = t_load
    item["progress"] = [[round(t, 3), b] for t, b in pts]
    if t_load is not None and pts:
        item["first_call_s"] = round(pts[0][0] - t_load, 3)
        iv = [(t2 - t1) / (b2 - b1) for (t1, b1), (t2, b2) in zip(pts, pts[1:]) if b2 > b1]
        item["interval_s"] = [round(x, 4) for x in iv]
        if iv:
            item["interval_median_s"] = round(statistics.median(iv), 4)
    item["ok"] = res.ok and item["summary"] is not None
    item["ran_on"] = gpuio.device_of(res)
    if item["ok"] and item["ran_on"] and item["ran_on"][0] != DEVICE:
        item["ok"] = False
        item["result"] = f"ran on {item['ran_on'][0]}, not {DEVICE}"
    if item["ok"] and item["summary"]["windows"] != 1:
        item["ok"] = False
        item["result"] = f"expected one window, the render planned {item['summary']['windows']}"
    return item


def step3():
    s = SIZES
    r = {"title": f"one 3D window: {s['win_frames']} × {s['win_res'] // 8}² latents, both CFG halves "
                  f"(batch {2 * s['win_frames']}), {s['model']} UNet + ControlNet", "dry_run": DRY}
    os.makedirs(os.path.join(WORK, "s3"), exist_ok=True)
    try:
        model = ensure_model()
    except Exception as e:
        r.update(status="error", summary=f"could not write the model: {e}")
        save(3, r)
        return
    poses = ensure_poses(s["win_frames"], s["win_res"])
    r["model"] = model
    ours, torch_runs = {}, {}
    tenv, how = torch_env()
    r["diffusers"] = how
    log(f"PyTorch side: {how}")
    for i, prec in enumerate(s["dtypes"]):
        later = len(s["dtypes"]) - i - 1
        o = {}
        # 1 step first: load, encodes, decodes and writes plus one call (with any kernel JIT).
        if left() > 30:
            o["run_1"] = ours_window(model, poses, prec, 1, budget(60 if DRY else 90, reserve=5))
        # PyTorch on the same window.
        if tenv is None:
            torch_runs[prec] = {"status": "skip", "reason": how}
        elif left() > 20:
            js = os.path.join(WORK, "s3", f"torch-{prec}.json")
            if os.path.exists(js):
                os.remove(js)
            t = budget(150 if DRY else 120, reserve=3)
            cmd = [PYTHON, os.path.join(HERE, "torch_window.py"), "--model", model,
                   "--frames", str(s["win_frames"]), "--latent", str(s["win_res"] // 8),
                   "--dtype", prec, "--device", s["torch_device"], "--warmup", "1",
                   "--iters", str(s["torch_iters"]), "--max-seconds", str(max(t - 15, 10)), "--json", js]
            res = run(cmd, t, env=tenv, smi=not DRY)
            item = {"result": res.brief(), "wall_s": round(res.wall, 2), "gpu_peak_mib": res.gpu_mib(),
                    "gpu_peak_abs_mib": res.gpu_peak}
            if os.path.exists(js):
                with open(js) as fh:
                    item.update(json.load(fh))
            torch_runs[prec] = item
        else:
            torch_runs[prec] = {"status": "skip", "reason": "deadline"}
        # Then k steps (k ≤ win_steps, as many as fit while keeping the later precisions' share):
        # per call = (T_k − T_1) / (k − 1), everything but the calls cancels.
        b = o.get("run_1")
        if b and b["ok"]:
            c1 = b.get("first_call_s") or max(0.05, b["wall_s"] - (b.get("t_rendering_s") or 0))
            share = (b["wall_s"] + torch_runs[prec].get("wall_s", 0)) * later
            k = min(s["win_steps"], 1 + int((left() - share - b["wall_s"] - 10) / max(c1, 1e-3)))
            o["steps_planned"] = k
            if k >= 2:
                t = budget(b["wall_s"] + (k - 1) * c1 * 1.5 + 30, reserve=3 + share)
                o["run_s"] = ours_window(model, poses, prec, k, t)
            else:
                o["run_s_skipped"] = f"no time for a second run (first call {c1:.1f} s, {left():.0f} s left)"
        a = o.get("run_s")
        if a and b and a["ok"] and b["ok"]:
            # Process wall times (the summary line's seconds are rounded to 0.1 s).
            o["per_call_marginal_s"] = round((a["wall_s_exact"] - b["wall_s_exact"]) / (a["steps"] - 1), 4)
        if a and a.get("interval_median_s") is not None:
            o["per_call_interval_median_s"] = a["interval_median_s"]
        if b and b.get("first_call_s") is not None:
            o["first_call_s"] = b["first_call_s"]
        o["per_call_s"] = o.get("per_call_marginal_s", o.get("per_call_interval_median_s"))
        o["per_call_method"] = ("marginal" if "per_call_marginal_s" in o else
                                "progress interval" if o["per_call_s"] is not None else None)
        if o["per_call_s"] is None and o.get("first_call_s") is not None:
            o["per_call_s"] = o["first_call_s"]
            o["per_call_method"] = "first call only (an upper bound: includes warm-up)"
        o["gpu_peak_mib"] = max([x.get("gpu_peak_mib") or 0 for x in (a, b) if x] or [0]) or None
        ours[prec] = o
        tm = torch_runs[prec].get("median_s")
        if o.get("per_call_s") and tm:
            o["ratio_vs_pytorch"] = round(o["per_call_s"] / tm, 3)
    r["ours"] = ours
    r["pytorch"] = torch_runs
    r["what_was_timed"] = (
        f"Ours: `anchor render` of a {s['win_frames']}-frame clip at {s['win_res']}² with --window "
        f"{s['win_window']} --overlap 0 (exactly one window: the plan starts a window every window − "
        "overlap frames, so 16/4 would add a short second window at frame 12), "
        f"CFG {CFG}, control scale {CONTROL_SCALE}, "
        f"run with --steps 1 and then with --steps k (k = {s['win_steps']}, fewer when the deadline "
        "demands: steps_planned). Each step is exactly one network call (UNet + ControlNet on the batch "
        f"of 2 × {s['win_frames']} frames, both CFG halves) plus the DDIM update and the window cache. "
        "Per call = (process wall time of the k-step run − that of the 1-step run) / (k − 1): model "
        "load, CLIP encodes, VAE decodes and PNG writes cancel; it is the mean of calls 2..k (the first "
        "call, with any kernel JIT, is in both runs). The median interval between the timestamped "
        "`--progress plain` lines of the k-step run is a cross-check (it can mislead if the GPU work "
        "runs asynchronously behind the host). Peak GPU memory: nvidia-smi memory.used sampled every "
        "0.2 s during the run, minus the reading before it (CUDA context included). PyTorch: "
        "torch_window.py, the reference window call (fixtures_temporal.denoise_clip's) with SDPA "
        "full-frame attention, the same weights, 1 warm-up call then the median of timed calls "
        "(torch.cuda.synchronize around each); peak: nvidia-smi sampled the same way, and torch's "
        "max_memory_allocated.")
    oks = [p for p in s["dtypes"] if ours[p].get("per_call_s") is not None]
    r["status"] = "info" if oks else "fail"
    parts = []
    for p in s["dtypes"]:
        o, t = ours[p], torch_runs.get(p, {})
        if o.get("per_call_s") is None:
            why = (o.get("run_1") or {}).get("result") or "not run (deadline)"
            ours_txt = f"ours failed: {why}"
        else:
            ours_txt = (f"ours {fmt(o.get('per_call_s'), 's')}/call ({o.get('per_call_method')}), "
                        f"peak {fmt(o.get('gpu_peak_mib'), 'MiB', 0)}")
        if t.get("median_s") is None:
            torch_txt = "PyTorch: " + str(t.get("reason") or t.get("result") or "not run")[:200]
        else:
            torch_txt = (f"PyTorch {fmt(t.get('median_s'), 's')}, peak {fmt(t.get('gpu_peak_mib'), 'MiB', 0)}")
        parts.append(f"{p}: {ours_txt}; {torch_txt}; ratio {fmt(o.get('ratio_vs_pytorch'), '×')}")
    r["summary"] = " | ".join(parts)
    save(3, r)


def fmt(v, unit="", digits=3):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        v = f"{v:.{digits}f}" if digits else f"{v:.0f}"
    return f"{v} {unit}".strip() if unit not in ("×",) else f"{v}×"


# ---------------------------------------------------------------------------------------------
# step 4


def step4():
    s = SIZES
    L, res_px, W, O, S = s["r_frames"], s["r_res"], s["r_window"], s["r_overlap"], s["r_steps"]
    r = {"title": f"{L}-frame temporal render at {res_px}², {S} steps, windows {W}/{O}, CFG {CFG}",
         "dry_run": DRY}
    s3 = load_step(3) or {}
    ours3 = s3.get("ours", {})
    cands = [(v.get("per_call_s"), p) for p, v in ours3.items() if v.get("per_call_s")]
    prec = min(cands)[1] if cands else s["dtypes"][0]
    per_call = min(cands)[0] if cands else None
    r["precision"] = prec
    r["precision_reason"] = ("the faster of step 3's precisions" if cands else
                             "default (step 3 gave no per-call time)")
    model = os.path.join(WORK, f"model-{s['model']}")
    if not os.path.isdir(model):
        try:
            model = ensure_model()
        except Exception as e:
            r.update(status="error", summary=f"no model: {e}")
            save(4, r)
            return
    poses = ensure_poses(L, res_px)
    windows = windows_of(L, W, O)
    steps = S
    allowed = budget(1e9, reserve=3)
    # Fixed costs of the L-frame process (load, encodes, L decodes and writes), from step 3's
    # 1-step run of W frames: its load (up to the `rendering` line) plus the rest less one call,
    # scaled by L / W.
    b1 = ours3.get(prec, {}).get("run_1") or {}
    fixed = None
    if b1.get("summary") and per_call and b1.get("t_rendering_s") is not None:
        load = b1["t_rendering_s"]
        rest = max(0.0, b1["wall_s"] - load - per_call)
        fixed = load + rest * L / max(s["win_frames"], 1)
    est = (fixed or 30.0) + windows * S * (per_call or 0)
    r["estimate"] = {"per_call_s": per_call, "fixed_s": fixed, "windows": windows, "total_s": round(est, 1)}
    if per_call and est > 0.85 * allowed:
        steps = int((0.85 * allowed - (fixed or 30.0)) / (windows * per_call))
        steps = max(1, min(S, steps))
        r["reduced_steps"] = {"from": S, "to": steps,
                              "why": f"estimated {est:.0f} s for {S} steps > the {allowed:.0f} s left"}
        log(f"reducing steps {S} → {steps}: estimated {est:.0f} s > {allowed:.0f} s left")
    out = os.path.join(WORK, "s4", "out")
    cmd = anchor_cmd(model, poses, out, res_px, steps, W, O, prec)
    res = run(cmd, allowed, env=run_env(), smi=not DRY)
    sm = gpuio.summary(res)
    t_load = gpuio.rendering_at(res)
    pts = gpuio.progress_points(res)
    t_end = next((t for t, st, line in res.lines if st == "out" and gpuio.SUMMARY.search(line)), None)
    r["ran_on"] = gpuio.device_of(res)
    r.update(result=res.brief(), wall_s=round(res.wall, 2), summary_line=sm, t_rendering_s=t_load,
             progress=[[round(t, 2), b] for t, b in pts], gpu_peak_mib=res.gpu_mib(),
             gpu_peak_abs_mib=res.gpu_peak, steps_run=steps, calls_expected=windows * steps)
    rate = None
    if len(pts) >= 2 and pts[-1][1] > pts[0][1]:
        rate = (pts[-1][0] - pts[0][0]) / (pts[-1][1] - pts[0][1])
        r["s_per_call_progress"] = round(rate, 4)
    if sm and t_load is not None and t_end is not None:
        r["s_per_frame_whole_process"] = round(res.wall / L, 4)
        r["s_per_frame_excluding_load"] = round((t_end - t_load) / L, 4)
        r["load_s"] = round(t_load, 2)
        if steps < S:
            pc = rate or per_call
            r["s_per_frame_extrapolated_to_full_steps"] = round(
                ((t_end - t_load) + (S - steps) * windows * pc) / L, 4)
            r["extrapolation"] = (f"measured {steps} steps; + ({S} − {steps}) × {windows} windows × "
                                  f"{pc:.3f} s/call ({'progress rate' if rate else 'step 3'})")
        r["status"] = "info"
    elif res.timed_out and rate:
        r["s_per_frame_extrapolated_to_full_steps"] = round(windows * S * rate / L, 4)
        r["extrapolation"] = f"timed out; {windows} × {S} calls × {rate:.3f} s/call from the progress lines / {L} (denoising only)"
        r["status"] = "timeout"
    else:
        r["status"] = "fail"
    key = ("s_per_frame_excluding_load" if steps == S else "s_per_frame_extrapolated_to_full_steps")
    r["goal_s_per_frame"] = r.get(key, r.get("s_per_frame_extrapolated_to_full_steps"))
    r["goal_s_per_frame_basis"] = key
    r["summary"] = (f"{prec}, {steps}/{S} steps: {fmt(r.get('s_per_frame_excluding_load'), 's')}/frame "
                    f"excluding load ({fmt(r.get('s_per_frame_whole_process'), 's')} whole process"
                    + (f"; extrapolated to {S} steps {fmt(r.get('s_per_frame_extrapolated_to_full_steps'), 's')}"
                       if "s_per_frame_extrapolated_to_full_steps" in r else "")
                    + f"), peak GPU {fmt(r.get('gpu_peak_mib'), 'MiB', 0)}; {res.brief()}")
    save(4, r)


def load_step(n):
    try:
        with open(os.path.join(WORK, f"step{n}.json")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# step 5


def compare_frames(a_dir, b_dir):
    names = sorted(n for n in os.listdir(a_dir) if n.endswith(".png") and ".partial." not in n)
    same, diffs = 0, []
    for n in names:
        pb = os.path.join(b_dir, n)
        if not os.path.exists(pb):
            diffs.append(f"{n}: missing from ofx-render's output")
            continue
        wa, ha, ca, da = gpuio.read_png(os.path.join(a_dir, n))
        wb, hb, cb, db = gpuio.read_png(pb)
        if (wa, ha) != (wb, hb):
            diffs.append(f"{n}: size {wa}x{ha} vs {wb}x{hb}")
            continue
        rgb_a = da if ca == 3 else b"".join(da[i:i + 3] for i in range(0, len(da), ca))
        rgb_b = db if cb == 3 else bytes(b for i in range(0, len(db), cb) for b in db[i:i + 3])
        alpha_ok = cb != 4 or all(db[i] == 255 for i in range(3, len(db), 4))
        if rgb_a == rgb_b and alpha_ok:
            same += 1
        else:
            nd = sum(1 for x, y in zip(rgb_a, rgb_b) if x != y)
            md = max((abs(x - y) for x, y in zip(rgb_a, rgb_b)), default=0)
            diffs.append(f"{n}: {nd} channel values differ (max {md}){'' if alpha_ok else ', alpha ≠ 255'}")
    return len(names), same, diffs


def step5():
    r = {"title": "the bundle through ofx-render on CUDA against anchor render on CUDA", "dry_run": DRY}
    base = os.path.join(WORK, "s5")
    os.makedirs(base, exist_ok=True)
    comps = []
    for prec in SIZES["ofx_precisions"]:
        if left() < 15:
            comps.append({"precision": prec, "status": "skip", "reason": "deadline"})
            continue
        a_out = os.path.join(base, f"anchor-{prec}")
        o_out = os.path.join(base, f"ofx-{prec}")
        ra = run(anchor_cmd(TINY, PARITY_POSES, a_out, 64, 4, 4, 1, prec), budget(90, reserve=10),
                 env=run_env())
        shutil.rmtree(o_out, ignore_errors=True)
        os.makedirs(o_out)
        plog = os.path.join(base, f"plugin-{prec}.log")
        if os.path.exists(plog):
            os.remove(plog)
        env = run_env()
        env.update(MAKE_YOUR_ANCHOR_LOG=plog, MAKE_YOUR_ANCHOR_LOG_LEVEL="debug")
        params = [f"modelFolder={TINY}", "resolution=64", "steps=4", "window=4", "overlap=1",
                  f"seed={SEED}", f"guidance={CFG}", f"controlScale={CONTROL_SCALE}",
                  f"device={OFX_DEVICE}", f"precision={prec}"]
        cmd = [OFX_RENDER, "--bundle", BUNDLE, "--plugin", PLUGIN_ID, "--input", PARITY_POSES,
               "--output", o_out, "--appearance", PHOTO]
        for p in params:
            cmd += ["--param", p]
        ro = run(cmd, budget(90, reserve=3), env=env)
        c = {"precision": prec, "anchor": ra.brief(), "ofx_render": ro.brief(),
             "anchor_s": round(ra.wall, 2), "ofx_render_s": round(ro.wall, 2)}
        if os.path.exists(plog):
            with open(plog, errors="replace") as fh:
                lines = fh.read().splitlines()
            c["plugin_log_device_lines"] = [l for l in lines if re.search(r"cuda|cpu|device|loaded body", l, re.I)][:8]
            log("plugin log (tail):\n  " + "\n  ".join(lines[-15:]))
            loaded = [l for l in lines if "loaded body model" in l]
            c["plugin_device_ok"] = bool(loaded) and all(f"on {DEVICE})" in l for l in loaded)
        c["anchor_ran_on"] = gpuio.device_of(ra)
        if not c.get("plugin_device_ok") or (c["anchor_ran_on"] or ("?",))[0] != DEVICE:
            c["device_problem"] = (f"expected both on {DEVICE}: anchor on {c['anchor_ran_on']}, plugin log "
                                   f"{c.get('plugin_log_device_lines')}")
        if ra.ok and ro.ok:
            n, same, diffs = compare_frames(a_out, o_out)
            c.update(frames=n, identical=same, differences=diffs[:10],
                     status="pass" if n > 0 and same == n and "device_problem" not in c else "fail")
        else:
            c["status"] = "fail"
        comps.append(c)
        log(f"{prec}: {c.get('identical', 0)}/{c.get('frames', 0)} frames identical; {c['status']}")
    r["comparisons"] = comps
    ran = [c for c in comps if c["status"] != "skip"]
    r["status"] = "pass" if ran and all(c["status"] == "pass" for c in ran) else "fail"
    def line(c):
        if c["status"] == "skip":
            return f"{c['precision']}: skipped: {c['reason']}"
        if "frames" in c:
            return (f"{c['precision']}: {c['identical']}/{c['frames']} frames byte-identical"
                    + (f" ({c['device_problem']})" if "device_problem" in c else ""))
        bad = c["anchor"] if c["anchor"] != "ok" else c["ofx_render"]
        return f"{c['precision']}: not compared: {'anchor' if c['anchor'] != 'ok' else 'ofx-render'} {bad[:200]}"
    r["summary"] = "; ".join(line(c) for c in comps)
    save(5, r)


# ---------------------------------------------------------------------------------------------
# report


def goal(text, value, target, passed, note=""):
    return {"goal": text, "value": value, "target": target,
            "pass": passed, "note": note}


def step_status(n):
    p = os.path.join(WORK, f"step{n}.status")
    try:
        with open(p) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def report():
    steps = {n: load_step(n) for n in range(1, 6)}
    stats = {n: step_status(n) for n in range(1, 6)}
    s1 = steps[1] or {}
    gpu = s1.get("gpu") or {}
    card = gpu.get("name") or ("CPU (dry run)" if DRY else "unknown")
    is_h100 = "H100" in card
    goals = []
    # A goal whose step ran but gave no figure FAILs ("not measured"); one whose step did not run
    # (skipped, not selected) is n/a.
    s2 = steps[2] or {}
    f32 = [c for c in s2.get("comparisons", []) if c["precision"] == "f32" and c["device"] == DEVICE]
    text = "CUDA f32 latents after 4 steps within 1e-4 relative of the CPU (tiny model)"
    if f32:
        goals.append(goal(text, f32[0]["final_rel"], "≤ 1e-4", f32[0]["pass"]))
    else:
        goals.append(goal(text, None, "≤ 1e-4", False if s2 else None,
                          ("not measured: " + s2.get("summary", "")[:300]) if s2 else "step 2 did not run"))
    for c in s2.get("comparisons", []):
        if c["precision"] != "f32":
            goals.append(goal(f"{c['precision']} latents after 4 steps vs CPU f32 (reported, no threshold)",
                              c["final_rel"], "report", None))
    s3 = steps[3] or {}
    for p, o in (s3.get("ours") or {}).items():
        text = f"window call ≤ 1.0× PyTorch on the same device, {p}"
        r = o.get("ratio_vs_pytorch")
        t = (s3.get("pytorch") or {}).get(p, {})
        if r is not None:
            goals.append(goal(text, r, "≤ 1.0", r <= GOAL_RATIO,
                              f"ours {o['per_call_s']:.3f} s ({o.get('per_call_method')}), PyTorch "
                              f"{t.get('median_s')} s"))
        elif o.get("per_call_s") is None:
            why = (o.get("run_1") or {}).get("result") or "not run (deadline)"
            goals.append(goal(text, None, "≤ 1.0", False, f"ours not measured: {why[:300]}"))
        else:
            goals.append(goal(text, None, "≤ 1.0", None,
                              f"ours {o['per_call_s']:.3f} s/call; no PyTorch figure: "
                              + str(t.get("reason") or t.get("result"))[:300]))
    if not s3:
        goals.append(goal("window call ≤ 1.0× PyTorch on the same device", None, "≤ 1.0", None,
                          "step 3 did not run"))
    s4 = steps[4] or {}
    v = s4.get("goal_s_per_frame")
    note = ("" if is_h100 or DRY or not s4 else f"measured on {card}, not an H100")
    if s4.get("reduced_steps") or (s4.get("goal_s_per_frame_basis") or "").startswith("s_per_frame_extra"):
        note = (note + "; " if note else "") + "extrapolated: " + str(s4.get("extrapolation"))
    if v is None:
        note = ("not measured: " + str(s4.get("result"))[:300]) if s4 else "step 4 did not run"
    goals.append(goal(f"≤ 0.4 s per frame at 512², 20 steps, 16/4, CFG, {s4.get('precision', 'f16/bf16')}"
                      " (excluding model load)", v, "≤ 0.4 s",
                      (v <= GOAL_S_PER_FRAME) if v is not None else (False if s4 else None), note))
    pk = s4.get("gpu_peak_mib") if s4.get("status") in ("info", "timeout") else None
    goals.append(goal("peak GPU memory ≤ 13 GB for that render (nvidia-smi, above idle)",
                      pk, "≤ 12398 MiB", None if pk is None else pk <= GOAL_PEAK_MIB,
                      "the render timed out: peak so far" if s4.get("status") == "timeout" else
                      ("" if pk is not None else "not measured" if s4 else "step 4 did not run")))
    s5 = steps[5] or {}
    goals.append(goal("bundle via ofx-render on CUDA byte-identical to anchor render on CUDA",
                      (s5.get("summary") or "")[:300] or None, "all frames",
                      None if not s5 else s5.get("status") == "pass",
                      "" if s5 else "step 5 did not run"))
    started = float(E.get("GPUCHECK_START", time.time()))
    data = {
        "schema": "make-your-anchor/gpucheck/1",
        "dry_run": DRY,
        "card": card,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(time.time() - started, 1),
        "budget_s": float(E.get("GPUCHECK_BUDGET", 0)),
        "git": E.get("GPUCHECK_GIT", ""),
        "binaries": {"anchor": ANCHOR, "ofx_render": OFX_RENDER, "bundle": BUNDLE},
        "goals": goals,
        "steps": {str(n): dict(steps[n] or {"status": stats[n].get("status", "not run"),
                                            "summary": stats[n].get("reason", "")},
                               runner=stats[n]) for n in range(1, 6)},
    }
    with open(os.path.join(RESULTS, "results.json"), "w") as fh:
        json.dump(data, fh, indent=1, default=str)
    md = markdown(data, steps, stats)
    with open(os.path.join(RESULTS, "RESULTS.md"), "w") as fh:
        fh.write(md)
    # The summary on stdout: goals and one line per step.
    print(md.split("\n## Step details")[0])


def verdict(p):
    return {True: "PASS", False: "FAIL", None: "n/a"}[p]


def markdown(data, steps, stats):
    out = []
    mode = "DRY RUN (CPU, tiny sizes: not a GPU result)" if DRY else "GPU run"
    out.append(f"# GPU check (issue 18): {data['card']}\n")
    out.append(f"{mode}; started {data['started_utc']}, {data['wall_s']:.0f} s of a {data['budget_s']:.0f} s "
               f"budget; {data['git']}\n")
    out.append("## Goals\n")
    for g in data["goals"]:
        v = g["value"]
        if isinstance(v, float):
            v = f"{v:.3g}"
        out.append(f"- **{verdict(g['pass'])}{' (dry run)' if DRY else ''}** {g['goal']}: {v} (target {g['target']})"
                   + (f". {g['note']}" if g.get("note") else ""))
    out.append("\n## Steps\n")
    out.append("| step | status | seconds | summary |\n|---|---|---|---|")
    for n in range(1, 6):
        st = steps[n] or {}
        ru = stats[n]
        status = st.get("status") or ru.get("status", "not run")
        if ru.get("status") in ("timeout", "crashed") and st:
            status += f" (runner: {ru['status']})"
        if ru.get("status") == "not selected" and st:
            status += " (earlier run, not rerun)"
        summ = (st.get("summary") or ru.get("reason") or "").replace("|", "/").replace("\n", " ")
        out.append(f"| {n} {st.get('title', '')} | {status} | {ru.get('seconds', '')} | {summ} |")
    out.append("\n## Step details\n")
    s1 = steps[1] or {}
    if s1:
        out.append("### 1. GPU, driver, libraries\n")
        out.append(f"- GPU: {s1.get('gpu')}; driver CUDA (cuDriverGetVersion): {s1.get('driver_cuda')}; "
                   f"PTX needs CUDA {s1.get('ptx_needs_cuda')}; nvcc on the machine: {s1.get('nvcc')}")
        for k, v in (s1.get("binaries") or {}).items():
            out.append(f"- {k}: {v.get('path')} ({v.get('bytes', 'missing')} bytes) PTX {v.get('ptx')}")
        for k, v in (s1.get("libraries") or {}).items():
            out.append(f"- {k}: {v} ({s1['library_sources'].get(k)}); dlopen: {s1.get('dlopen', {}).get(k)}")
        out.append(f"- LD_LIBRARY_PATH for the next steps: `{s1.get('LD_LIBRARY_PATH')}`")
        if s1.get("ptx_patched"):
            out.append(f"- PTX patched copies used: {s1['ptx_patched']}")
        out.append(f"- PyTorch: {s1.get('torch')}")
        for n in s1.get("notes", []):
            out.append(f"- note: {n}")
    s2 = steps[2] or {}
    if s2:
        out.append("\n### 2. CUDA against CPU, tiny model, 11 frames, 64², 4 steps, window 4/1, seed 42\n")
        out.append("Relative error = max |x − x_cpu| / max |x_cpu| over the latents after each step "
                   "(`--dump-latents`).\n")
        out.append("| device | precision | step 1 | step 2 | step 3 | step 4 | max abs diff (step 4) | pass |")
        out.append("|---|---|---|---|---|---|---|---|")
        for c in s2.get("comparisons", []):
            rels = [f"{e.get('rel', float('nan')):.2e}" for e in c["per_step"]]
            out.append(f"| {c['device']} | {c['precision']} | " + " | ".join(rels) +
                       f" | {c['final_max_abs_diff']:.2e} | {verdict(c.get('pass'))} |")
        for i in s2.get("runs", []):
            out.append(f"- run {i['device']} {i['precision']}: {i.get('result', i.get('reason'))} "
                       f"({i.get('seconds', '-')} s)")
    s3 = steps[3] or {}
    if s3:
        out.append(f"\n### 3. {s3.get('title')}\n")
        out.append(f"PyTorch/diffusers: {s3.get('diffusers')}\n")
        out.append("| precision | ours s/call | method | ours interval median | ours first call | ours peak MiB "
                   "| PyTorch median s | PyTorch calls | PyTorch peak MiB (smi / allocated) | ratio ours/PyTorch |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for p, o in (s3.get("ours") or {}).items():
            t = (s3.get("pytorch") or {}).get(p, {})
            fc = o.get("first_call_s")
            out.append(f"| {p} | {fmt(o.get('per_call_s'))} | {o.get('per_call_method')} | "
                       f"{fmt(o.get('per_call_interval_median_s'))} | {fmt(fc)} | {fmt(o.get('gpu_peak_mib'), '', 0)} | "
                       f"{fmt(t.get('median_s'))} | {t.get('times_s', t.get('reason', t.get('result')))} | "
                       f"{fmt(t.get('gpu_peak_mib'), '', 0)} / {fmt(t.get('peak_allocated_mib'), '', 0)} | "
                       f"{fmt(o.get('ratio_vs_pytorch'), '×')} |")
        for p, o in (s3.get("ours") or {}).items():
            for k in ("run_s", "run_1"):
                x = o.get(k)
                if x:
                    out.append(f"- ours {p} --steps {x['steps']}: {x['result']}, {x['wall_s']} s wall; "
                               f"summary {x.get('summary')}")
        out.append(f"\nWhat was timed: {s3.get('what_was_timed')}")
    s4 = steps[4] or {}
    if s4:
        out.append(f"\n### 4. {s4.get('title')}\n")
        for k in ("precision", "precision_reason", "steps_run", "calls_expected", "result", "wall_s", "load_s",
                  "s_per_frame_whole_process", "s_per_frame_excluding_load",
                  "s_per_frame_extrapolated_to_full_steps", "extrapolation", "s_per_call_progress",
                  "gpu_peak_mib", "gpu_peak_abs_mib", "estimate", "reduced_steps", "summary_line"):
            if k in s4:
                out.append(f"- {k}: {s4[k]}")
        out.append("\nSeconds per frame excluding load = (time of the closing summary line − time of the "
                   "`rendering …` line, printed once the model is loaded) / frames: denoising, VAE decodes and "
                   "PNG writes. Peak: nvidia-smi memory.used every 0.2 s, minus the idle reading before.")
    s5 = steps[5] or {}
    if s5:
        out.append(f"\n### 5. {s5.get('title')}\n")
        out.append("Tiny model, the 11 fixture poses at 64², 4 steps, window 4/1, seed 42, CFG 7.5, control "
                   f"2.0; `anchor render --device {DEVICE} --framing squash` against `ofx-render` with "
                   f"`device={OFX_DEVICE}`; decoded RGB compared byte for byte, alpha 255.\n")
        for c in s5.get("comparisons", []):
            out.append(f"- {c['precision']}: {c.get('identical', 0)}/{c.get('frames', 0)} identical; "
                       f"anchor {c.get('anchor')} ({c.get('anchor_s')} s), ofx-render {c.get('ofx_render')} "
                       f"({c.get('ofx_render_s')} s); differences: {c.get('differences', c.get('reason'))}; "
                       f"plugin log: {c.get('plugin_log_device_lines')}")
    return "\n".join(out) + "\n"


def main():
    os.makedirs(WORK, exist_ok=True)
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    fns = {"step1": step1, "step2": step2, "step3": step3, "step4": step4, "step5": step5,
           "report": report}
    if cmd not in fns:
        sys.exit(f"usage: gpucheck.py {'|'.join(fns)}")
    fns[cmd]()


if __name__ == "__main__":
    main()
