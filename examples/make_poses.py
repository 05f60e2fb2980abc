"""Writes examples/poses/: a short procedural stand-in for an SMPL-X mesh-render track.

An untextured grey-blue shaded presenter on black, waving its right arm. Regenerate with
`python3 examples/make_poses.py` (Pillow only). Issue 6 replaces it with `anchor synth` output.
"""
import math
import os

from PIL import Image, ImageDraw

W, H, N = 256, 256, 12
here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "poses")
os.makedirs(out, exist_ok=True)


def limb(d, a, b, r, shade):
    d.line([a, b], fill=shade, width=2 * r)
    for p in (a, b):
        d.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=shade)


for i in range(N):
    ph = 2 * math.pi * i / N
    im = Image.new("RGB", (W, H), (0, 0, 0))
    d = ImageDraw.Draw(im)
    body = (118, 132, 168)
    dark = (88, 100, 134)
    sway = 3 * math.sin(ph)
    cx = W / 2 + sway
    d.ellipse([cx - 40, 92, cx + 40, 200], fill=body)              # torso
    d.rectangle([cx - 36, 180, cx + 36, H], fill=dark)               # hips / legs cut by frame
    d.ellipse([cx - 22, 40, cx + 22, 92], fill=(140, 152, 186))      # head
    sh_l, sh_r = (cx - 36, 108), (cx + 36, 108)
    limb(d, sh_l, (cx - 50, 160), 9, dark)                           # left arm resting
    limb(d, (cx - 50, 160), (cx - 30, 196), 8, dark)
    ang = -0.6 + 0.5 * math.sin(ph)                                  # right arm gesturing
    el = (sh_r[0] + 38 * math.cos(ang), sh_r[1] + 38 * math.sin(-ang) + 20)
    wr = (el[0] + 10 + 8 * math.sin(ph), el[1] - 34 - 6 * math.cos(ph))
    limb(d, sh_r, el, 9, body)
    limb(d, el, wr, 8, body)
    d.ellipse([wr[0] - 9, wr[1] - 9, wr[0] + 9, wr[1] + 9], fill=(150, 162, 196))  # hand
    im.save(os.path.join(out, f"pose_{i:04d}.png"), optimize=True)
