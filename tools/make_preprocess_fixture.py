"""Write the ImageFolder preprocessing parity fixture (crates/snnet-train/tests/fixtures/).

A deterministic 67x45 RGB PNG (smooth gradients plus a checkerboard, so resampling differences
show) and what timm 0.6.13's evaluation transform makes of it at size 32 (crop_pct 0.875:
bicubic resize of the shorter side to 36, centre crop 32, ImageNet mean/std), as PIL decodes and
resamples it. Pins: torch 2.0.1, torchvision 0.15.2, timm 0.6.13, Pillow as installed.

    python3 tools/make_preprocess_fixture.py
"""
import os

import numpy as np
import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform

assert torch.__version__.startswith("2.0.1"), torch.__version__
assert torchvision.__version__.startswith("0.15.2"), torchvision.__version__
assert timm.__version__ == "0.6.13", timm.__version__

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "snnet-train", "tests", "fixtures")


def main():
    os.makedirs(OUT, exist_ok=True)
    w, h = 67, 45
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 / (w - 1)).astype(np.uint8)
    g = (y * 255 / (h - 1)).astype(np.uint8)
    b = np.where((x // 3 + y // 3) % 2 == 0, 230, 20).astype(np.uint8)
    img = Image.fromarray(np.stack([r, g, b], axis=-1), "RGB")
    path = os.path.join(OUT, "preprocess.png")
    img.save(path)
    transform = create_transform(32, is_training=False, interpolation="bicubic", crop_pct=0.875)
    expected = transform(Image.open(path).convert("RGB"))
    save_file({"expected": expected.contiguous()}, os.path.join(OUT, "preprocess_expected.safetensors"),
              metadata={"transform": str(transform).replace("\n", " ")})
    print(transform)
    print("wrote", path, tuple(expected.shape))


if __name__ == "__main__":
    main()
