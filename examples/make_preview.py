#!/usr/bin/env python3
"""Builds examples/preview.png: held-out frames rendered by the embedded model next to their mesh
render and the ground truth (columns: render | mesh | truth), 4x nearest-neighbour upscale.

    bash examples/render.sh && python3 examples/make_preview.py out
"""
import sys
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent
render = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "out"
frames = [int(f) for f in sys.argv[2:]] or [20, 75, 130]
SCALE, PAD, HEAD = 4, 6, 16
cols = [("render", render), ("mesh", ROOT / "poses"), ("truth", ROOT / "truth")]
first = Image.open(cols[0][1] / f"{frames[0]:06d}.png")
w, h = first.width * SCALE, first.height * SCALE
sheet = Image.new("RGB", (len(cols) * (w + PAD) + PAD, HEAD + len(frames) * (h + PAD) + PAD), "white")
draw = ImageDraw.Draw(sheet)
for c, (label, _) in enumerate(cols):
    draw.text((PAD + c * (w + PAD) + 4, 3), label, fill="black")
for r, f in enumerate(frames):
    for c, (_, folder) in enumerate(cols):
        img = Image.open(folder / f"{f:06d}.png").convert("RGB").resize((w, h), Image.NEAREST)
        sheet.paste(img, (PAD + c * (w + PAD), HEAD + PAD + r * (h + PAD)))
sheet.save(ROOT / "preview.png")
print(f"wrote {ROOT / 'preview.png'} (frames {frames} of {render})")
