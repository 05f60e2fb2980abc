"""Small I/O helpers of the GPU check, with no dependency beyond the standard library (numpy or
torch where present): safetensors read/write, PNG write/read, random-weight model folders from a
manifest (make_manifest.py), pose clips, and timed subprocess runs with GPU-memory sampling."""

import json
import math
import os
import re
import shlex
import signal
import struct
import subprocess
import threading
import time
import zlib

try:
    import numpy as np
except ImportError:  # the check then uses torch, or skips what needs arrays
    np = None

# ---------------------------------------------------------------------------------------------
# safetensors

_NP_DTYPES = {"F32": "float32", "F16": "float16", "F64": "float64", "I64": "int64", "I32": "int32",
              "U8": "uint8"}


def st_header(path):
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def st_load_numpy(path, names=None):
    """{name: float32 numpy array} of a safetensors file (F32/F16/BF16 widened to float32)."""
    if np is None:
        raise RuntimeError("numpy is not installed")
    header, base = st_header(path)
    out = {}
    with open(path, "rb") as fh:
        for name, info in header.items():
            if names is not None and name not in names:
                continue
            b, e = info["data_offsets"]
            fh.seek(base + b)
            raw = fh.read(e - b)
            dt = info["dtype"]
            if dt == "BF16":
                a = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                a = np.frombuffer(raw, dtype=_NP_DTYPES[dt]).astype(np.float32)
            out[name] = a.reshape(info["shape"])
    return out


def st_load_torch(path):
    """{name: torch tensor} of a safetensors file, without the safetensors package."""
    import torch
    tdt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}
    header, base = st_header(path)
    with open(path, "rb") as fh:
        fh.seek(base)
        data = bytearray(fh.read())
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        t = torch.frombuffer(data, dtype=tdt[info["dtype"]], count=(e - b) // tdt[info["dtype"]].itemsize,
                             offset=b) if e > b else torch.empty(0, dtype=tdt[info["dtype"]])
        out[name] = t.reshape(info["shape"]).clone()
    return out


# ---------------------------------------------------------------------------------------------
# random-weight model folders


def _std(name, shape):
    """Scale of a random tensor: norms 1/0, embeddings 0.02, others 1/sqrt(fan-in)."""
    if len(shape) == 1:
        if name.endswith(".bias"):
            return 0.0, 0.0
        if name.endswith(".weight"):
            return 1.0, 0.0  # GroupNorm/LayerNorm scale: exactly one
        return 0.0, 0.02  # e.g. CLIP's class_embedding
    if "token_embedding" in name or "position_embedding" in name:
        return 0.0, 0.02
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    return 0.0, 1.0 / math.sqrt(max(fan_in, 1))


def write_model(manifest_path, outdir, seed=0, log=print):
    """Writes the model folder of a manifest with random f16 weights (streamed, one tensor at a
    time). Each tensor is N(0, std) values (std by `_std`) drawn from a shared pool of 4 Mi
    normals at a random offset: independent enough for timing, and fast (~1.5 G parameters in
    seconds)."""
    with open(manifest_path) as fh:
        m = json.load(fh)
    t0 = time.time()
    if np is None:
        raise RuntimeError("writing a model folder needs numpy")
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal(1 << 22, dtype=np.float32)

    def values(n, mean, std):
        if std == 0.0:
            return np.full(n, mean, dtype=np.float16).tobytes()
        off = int(rng.integers(0, pool.size // 2))
        v = pool[off:off + n] if off + n <= pool.size else np.resize(pool[off:], n)
        return (v * np.float32(std) + np.float32(mean)).astype(np.float16).tobytes()
    total = 0
    for comp, d in m["components"].items():
        cdir = os.path.join(outdir, comp)
        os.makedirs(cdir, exist_ok=True)
        with open(os.path.join(cdir, "config.json"), "w") as fh:
            json.dump(d["config"], fh, indent=2)
        header, off = {}, 0
        for name, shape in d["tensors"]:
            n = 1
            for s in shape:
                n *= s
            header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [off, off + 2 * n]}
            off += 2 * n
        header["__metadata__"] = {"format": "pt"}
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * ((8 - len(hb) % 8) % 8)
        path = os.path.join(cdir, d["weights"])
        with open(path + ".partial", "wb") as fh:
            fh.write(struct.pack("<Q", len(hb)))
            fh.write(hb)
            for name, shape in d["tensors"]:
                n = 1
                for s in shape:
                    n *= s
                mean, std = _std(name, shape)
                fh.write(values(n, mean, std))
                total += n
        os.replace(path + ".partial", path)
    for rel, content in m.get("files", {}).items():
        p = os.path.join(outdir, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as fh:
            json.dump(content, fh, indent=2)
    log(f"wrote {outdir}: {total / 1e6:.1f} M parameters (f16, random, seed {seed}) in "
        f"{time.time() - t0:.1f} s")
    return total


# ---------------------------------------------------------------------------------------------
# PNG


def _chunk(kind, data):
    c = kind + data
    return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)


def write_png_rgb(path, width, height, rows):
    """8-bit RGB PNG from `rows` (bytes of 3·width each)."""
    raw = b"".join(b"\x00" + r for r in rows)
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))
    with open(path, "wb") as fh:
        fh.write(data)


def read_png(path):
    """(width, height, channels, bytes) of an 8-bit PNG; PIL when present, else a plain decoder
    (non-interlaced gray/RGB/RGBA)."""
    try:
        from PIL import Image
        im = Image.open(path)
        im.load()
        if im.mode not in ("RGB", "RGBA", "L"):
            im = im.convert("RGBA")
        return im.width, im.height, len(im.mode), im.tobytes()
    except ImportError:
        pass
    with open(path, "rb") as fh:
        data = fh.read()
    pos, idat = 8, b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    if depth != 8 or interlace or ctype not in (0, 2, 6):
        raise RuntimeError(f"{path}: unsupported PNG (depth {depth}, colour type {ctype})")
    ch = {0: 1, 2: 3, 6: 4}[ctype]
    raw = zlib.decompress(idat)
    stride = w * ch
    out = bytearray()
    prev = bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b = prev[i]
            c = prev[i - ch] if i >= ch else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pr = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pr) & 255
        out += line
        prev = line
    return w, h, ch, bytes(out)


def pose_frame_rows(n, size):
    """Mesh-render-like frame `n` (as tests/ofx-host/tests/engine_render.rs draws them) at 64²,
    upscaled to `size` by pixel repetition: a dark background, a moving body blob and a limb."""
    base = 64
    k = max(1, size // base)
    rows = []
    for y in range(base):
        row = bytearray()
        cx = 24.0 + 10.0 * math.sin(n * 0.21)
        cy = 30.0 + 4.0 * math.cos(n * 0.13)
        for x in range(base):
            d = math.hypot(x - cx, (y - cy) * 0.6)
            if d < 14.0:
                shade = int(200.0 - d * 6.0)
                px = (shade, int(shade * 0.8), min(255, int(120 + n * 3) % 256))
            elif abs(y - cy - 0.5 * (x - cx)) < 2.5 and x > cx:
                px = (90, 160, 40 + (n * 7) % 100)
            else:
                px = ((x * 2) % 32, y % 16, 20)
            row += bytes(px) * k
        rows.extend([bytes(row)] * k)
    return base * k, rows


def write_poses(folder, frames, size):
    """`frames` pose PNGs `pose_0000.png`… of `size`² (a multiple of 64) in a fresh folder."""
    os.makedirs(folder, exist_ok=True)
    for f in os.listdir(folder):
        os.remove(os.path.join(folder, f))
    for i in range(frames):
        s, rows = pose_frame_rows(i, size)
        write_png_rgb(os.path.join(folder, f"pose_{i:04d}.png"), s, s, rows)
    return folder


# ---------------------------------------------------------------------------------------------
# timed runs


class GpuSampler:
    """Samples `nvidia-smi --query-gpu=memory.used` every `period` s in the background (one
    looping nvidia-smi process); `peak` is the largest reading, `base` the reading before."""

    def __init__(self, period=0.2):
        self.period = period
        self.base = self.peak = None
        self.samples = 0
        self.proc = None
        self.thread = None

    @staticmethod
    def query():
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                  "-i", "0"], capture_output=True, text=True, timeout=10)
            return int(out.stdout.strip().splitlines()[0])
        except Exception:
            return None

    def start(self):
        self.base = self.query()
        if self.base is None:
            return self
        self.peak = self.base
        self.proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0",
             f"--loop-ms={int(self.period * 1000)}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)

        def read():
            for line in self.proc.stdout:
                try:
                    v = int(line.strip())
                except ValueError:
                    continue
                self.samples += 1
                self.peak = max(self.peak, v)
        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.proc is not None:
            v = self.query()  # one last reading
            if v is not None:
                self.peak = max(self.peak, v)
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
            self.thread.join(timeout=5)
        return self


class RunResult:
    def __init__(self, cmd):
        self.cmd = cmd
        self.rc = None
        self.wall = 0.0
        self.timed_out = False
        self.lines = []  # (seconds since start, "out"/"err", text)
        self.gpu_base = self.gpu_peak = None
        self.error = None

    @property
    def ok(self):
        return self.rc == 0 and not self.timed_out

    def text(self, stream=None):
        return "\n".join(t for _, s, t in self.lines if stream is None or s == stream)

    def tail(self, n=12):
        return "\n".join(t for _, _, t in self.lines[-n:])

    def gpu_mib(self):
        """Peak GPU memory above the reading before the run (MiB), or None."""
        if self.gpu_peak is None or self.gpu_base is None:
            return None
        return self.gpu_peak - self.gpu_base

    def brief(self):
        if self.error:
            return self.error
        if self.timed_out:
            return f"timed out after {self.wall:.0f} s"
        if self.rc != 0:
            last = [t for _, _, t in self.lines if t.strip()][-3:]
            msg = " | ".join(last)
            return f"exit {self.rc}: " + (msg if len(msg) <= 300 else msg[:297] + "...")
        return "ok"


def run(cmd, timeout, env=None, smi=False, log=print, echo_limit=300, cwd=None):
    """Runs `cmd` with a timeout (the whole process group is killed), echoing each output line
    with its time since start into the step's log; samples GPU memory when `smi`."""
    res = RunResult(cmd)
    log("$ " + " ".join(shlex.quote(str(c)) for c in cmd) + f"   (timeout {timeout:.0f} s)")
    if timeout <= 1:
        res.error = "skipped: no time left before the deadline"
        res.rc = -1
        log(res.error)
        return res
    sampler = GpuSampler().start() if smi else None
    start = time.time()
    try:
        p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, errors="replace", env=env, cwd=cwd, start_new_session=True)
    except OSError as e:
        res.error = f"cannot start: {e}"
        res.rc = -1
        log(res.error)
        if sampler:
            sampler.stop()
        return res
    lock = threading.Lock()
    echoed = [0]

    def pump(stream, name):
        for line in stream:
            t = time.time() - start
            line = line.rstrip("\n")
            with lock:
                res.lines.append((t, name, line))
                if echoed[0] < echo_limit:
                    log(f"[{t:8.2f}] {name}: {line}")
                    echoed[0] += 1
                elif echoed[0] == echo_limit:
                    log(f"[{t:8.2f}] (further output not echoed)")
                    echoed[0] += 1

    threads = [threading.Thread(target=pump, args=(p.stdout, "out"), daemon=True),
               threading.Thread(target=pump, args=(p.stderr, "err"), daemon=True)]
    for t in threads:
        t.start()
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        res.timed_out = True
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            try:
                p.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
    for t in threads:
        t.join(timeout=5)
    res.wall = time.time() - start
    res.rc = p.returncode
    if sampler:
        sampler.stop()
        res.gpu_base, res.gpu_peak = sampler.base, sampler.peak
    extra = ""
    if res.gpu_peak is not None:
        extra = f", GPU memory.used {res.gpu_base} → peak {res.gpu_peak} MiB ({sampler.samples} samples)"
    log(f"-> {res.brief()} in {res.wall:.2f} s{extra}")
    return res


# ---------------------------------------------------------------------------------------------
# anchor output parsing

SUMMARY = re.compile(
    r"rendered (\d+) frames of (\d+) \((\d+) windows x (\d+) steps\): (\d+) network calls, "
    r"(\d+) decodes, cache (\d+) hits / (\d+) misses, cache peak ([\d.]+) MiB, peak RSS (\S+) MiB, "
    r"([\d.]+) s")
RENDERING = re.compile(r"rendering .* on (\S+), (\w+), (\d+)x(\d+), (\d+) steps")
PROGRESS = re.compile(r"progress (\d+)% \((\d+) window batches\)")


def summary(res):
    """The closing line of `anchor render` as a dict, or None."""
    m = SUMMARY.search(res.text("out"))
    if not m:
        return None
    g = m.groups()
    return {"frames": int(g[0]), "clip": int(g[1]), "windows": int(g[2]), "steps": int(g[3]),
            "calls": int(g[4]), "decodes": int(g[5]), "cache_peak_mib": float(g[8]),
            "peak_rss_mib": g[9], "seconds": float(g[10])}


def rendering_at(res):
    """Seconds from the process start to the `rendering …` line (the model is loaded by then)."""
    for t, _, line in res.lines:
        if RENDERING.search(line):
            return t
    return None


def device_of(res):
    """(device, precision) of the `rendering … on DEVICE, PRECISION, …` line, or None."""
    for _, _, line in res.lines:
        m = RENDERING.search(line)
        if m:
            return m.group(1).rstrip(","), m.group(2)
    return None


def progress_points(res):
    """[(seconds, window batches done)] from `--progress plain` lines."""
    return [(t, int(m.group(2))) for t, _, line in res.lines for m in [PROGRESS.search(line)] if m]
