#!/usr/bin/env bash
# Held-out quality benchmark of the embedded model (issues 6 and 7): renders examples/poses with
# resources/models/tiny-anchor in several configurations, scores each with `anchor eval` against
# examples/truth and prints a Markdown table (the BENCHMARKS.md rows).
#
#   cargo build --release -p anchor-cli --bin anchor && bash plugin/benches/heldout.sh
#   CONFIGS="w1 w16-pyramid" bash plugin/benches/heldout.sh    # some rows (into the same OUT)
#
# Rows: frame-wise (window 1) vs windowed (16/4) with flat and pyramid fusion, the mean training
# frame baseline, and the face pass frame-wise vs temporal (face-region PSNR and flicker).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
ANCHOR=${ANCHOR:-target/release/anchor}
MODEL=resources/models/tiny-anchor
EX=examples
OUT=${OUT:-target/heldout-bench}
# The face rows run the face pass on the w16-flat body frames (--body): their seconds are the
# face pass alone.
FACE=(--face-model "$MODEL" --face-landmarks "$EX/landmarks.json" --body "$OUT/w16-flat")
mkdir -p "$OUT"

render() { # name, render flags...
  local name=$1; shift
  local t0; t0=$(date +%s%N)
  "$ANCHOR" render --model "$MODEL" --poses "$EX/poses" --appearance "$EX/appearance.png" \
    --out "$OUT/$name" "$@" 2>"$OUT/$name.log"
  echo "$(( ($(date +%s%N) - t0) / 1000000 ))e-3" > "$OUT/$name.seconds"
  "$ANCHOR" eval --pred "$OUT/$name" --truth "$EX/truth" --mesh "$EX/poses" \
    --baseline "$EX/mean_frame.png" --json "$OUT/$name.json" > /dev/null
  "$ANCHOR" eval --pred "$OUT/$name" --truth "$EX/truth" --mask "$EX/face_matte" \
    --json "$OUT/$name.face.json" > /dev/null
}

CONFIGS=${CONFIGS:-w1 w16-flat w16-pyramid face-framewise face-temporal}
for c in $CONFIGS; do
  case $c in
    w1) render w1 --window 1 --overlap 0 ;;
    w16-flat) render w16-flat --window 16 --overlap 4 --fusion flat ;;
    w16-pyramid) render w16-pyramid --window 16 --overlap 4 --fusion pyramid ;;
    face-framewise) render face-framewise "${FACE[@]}" ;;
    face-temporal) render face-temporal "${FACE[@]}" --face-temporal --face-smooth 0.5 ;;
    *) echo "unknown config $c"; exit 2 ;;
  esac
done

python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = [("w1", "frame-wise (window 1)"), ("w16-flat", "windowed 16/4, flat (reference)"),
        ("w16-pyramid", "windowed 16/4, pyramid"), ("face-framewise", "16/4 flat + face pass, frame-wise"),
        ("face-temporal", "16/4 flat + face pass, temporal 16/4, smoothing 0.5")]
f = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"
base = json.loads((out / "w16-flat.json").read_text())
print("| render | s | PSNR dB | SSIM | IoU | seam flicker | MAD inside | face PSNR dB | face flicker | face MAD inside |")
print("|---|---|---|---|---|---|---|---|---|---|")
b = base["baseline"]
print(f"| mean training frame (baseline) | | {f(b['psnr_db'])} | {f(b['ssim'],3)} | | | | | | |")
for key, label in rows:
    if not (out / f"{key}.json").exists():
        continue
    r = json.loads((out / f"{key}.json").read_text())
    fr = json.loads((out / f"{key}.face.json").read_text())
    secs = float((out / f"{key}.seconds").read_text())
    print(f"| {label} | {secs:.0f} | {f(r['psnr_db'])} | {f(r['ssim'],3)} | {f(r['silhouette_iou'],3)} | "
          f"{f(r['flicker']['ratio'],3)} | {f(r['flicker']['inside_mad'])} | {f(fr['psnr_db'])} | "
          f"{f(fr['flicker']['ratio'],3)} | {f(fr['flicker']['inside_mad'])} |")
t = base["flicker_truth"]; tf = json.loads((out / "w16-flat.face.json").read_text())["flicker_truth"]
print(f"| ground truth | | | | | {f(t['ratio'],3)} | {f(t['inside_mad'])} | | {f(tf['ratio'],3)} | {f(tf['inside_mad'])} |")
PY
