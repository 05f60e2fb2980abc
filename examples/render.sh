#!/usr/bin/env bash
# The README's main command: builds `anchor`, renders the held-out example poses with the embedded
# default model (resources/models/tiny-anchor: body, then the face pass) into out/, scores them
# against the ground truth and the mean-training-frame baseline, and writes out/preview.mp4
# (ffmpeg) or out/preview.gif (ImageMagick) when either tool is installed.
#
#   bash examples/render.sh            # body and face pass
#   FACE=0 bash examples/render.sh     # the body model only
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
EX=examples
MODEL=resources/models/tiny-anchor
OUT=${OUT:-out}
cargo build --release --locked -p anchor-cli --bin anchor
ANCHOR=target/release/anchor

face=()
if [ "${FACE:-1}" = 1 ]; then
  face=(--face-model "$MODEL" --face-landmarks "$EX/landmarks.json")
fi
"$ANCHOR" render --model "$MODEL" --poses "$EX/poses" --appearance "$EX/appearance.png" \
  --out "$OUT" "${face[@]}"
"$ANCHOR" eval --pred "$OUT" --truth "$EX/truth" --mesh "$EX/poses" \
  --baseline "$EX/mean_frame.png" --json "$OUT/eval.json"

# Preview: 4x nearest-neighbour upscale, 30 fps. A failing tool only costs the preview.
preview=""
if command -v ffmpeg >/dev/null 2>&1 && ffmpeg -loglevel error -y -framerate 30 \
  -i "$OUT/%06d.png" -vf "scale=iw*4:ih*4:flags=neighbor,format=yuv420p" "$OUT/preview.mp4"; then
  preview=$OUT/preview.mp4
elif command -v convert >/dev/null 2>&1 && convert -delay 3.33 -loop 0 "$OUT"/[0-9]*.png \
  -filter point -resize 400% "$OUT/preview.gif" 2>/dev/null; then
  preview=$OUT/preview.gif
fi
if [ -n "$preview" ]; then
  echo "preview: $preview"
else
  echo "preview: no working ffmpeg or ImageMagick convert; the frames are in $OUT/"
fi
