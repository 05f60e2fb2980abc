"""PyTorch side of the CPU convolution micro-benchmark (BENCHMARKS.md, "CPU convolution").

Times torch.nn.functional.conv2d (with bias, f32, 2 threads) on the SD1.5 UNet convolution
shapes at 64² latents, batch 4, best of 3 runs, in the same format as the Rust side:
`cargo test -p make-your-anchor-engine --lib conv::tests::bench -- --ignored --nocapture`.
"""
import time

import torch
import torch.nn.functional as F

SHAPES = [
    ("conv_in 4->320 3x3 @64", 4, 320, 64, 3, 1, 1),
    ("320->320 3x3 @64", 320, 320, 64, 3, 1, 1),
    ("320->320 3x3 s2 @64", 320, 320, 64, 3, 2, 1),
    ("640->640 3x3 @32", 640, 640, 32, 3, 1, 1),
    ("1280->1280 3x3 @16", 1280, 1280, 16, 3, 1, 1),
    ("1280->1280 3x3 @8", 1280, 1280, 8, 3, 1, 1),
    ("320->320 1x1 @64", 320, 320, 64, 1, 1, 0),
    ("640->640 1x1 @32", 640, 640, 32, 1, 1, 0),
]


def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    with torch.no_grad():
        for label, ci, co, size, k, s, p in SHAPES:
            x = torch.randn(4, ci, size, size)
            w = torch.randn(co, ci, k, k) * 0.05
            b = torch.randn(co)
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                y = F.conv2d(x, w, b, stride=s, padding=p)
                best = min(best, time.perf_counter() - t)
            gflop = 2.0 * y.numel() * ci * k * k / 1e9
            print(f"torch-conv {label:24} threads 2: {best * 1e3:8.1f} ms ({gflop / best:.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
