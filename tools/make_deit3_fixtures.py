"""Write tests/fixtures/deit3/: DeiT-3 anchors (LayerScale, no class position) against timm.

Run from the repository root (CPU, a second):

    pip install -r tools/requirements.txt
    python3 tools/make_deit3_fixtures.py

A reduced timm 0.6.13 ``VisionTransformer`` with DeiT-3's two differences from DeiT
(``init_values``: LayerScale on both residual branches, ``blocks.{i}.ls1.gamma``/``ls2.gamma``;
``no_embed_class``: ``pos_embed`` covers the patches only and is added before the class token is
prepended): img 32, patch 8, 3 channels, width 32, depth 3, 2 heads, mlp_ratio 4, qkv_bias,
LayerNorm eps 1e-6, 10 classes. Every parameter is seeded random (LayerScale gammas around 0.5,
so the scales matter), eval mode, float32.

Files:

* ``deit3_timm.safetensors``     - the state dict in timm's layout.
* ``deit3_official.safetensors`` - the same values in the DeiT-III release / SN-Netv2 layout
  (``blocks.{i}.gamma_1``, ``gamma_2``).
* ``deit3_reference.safetensors`` - probe ``images`` [3, 3, 32, 32] and timm's ``logits`` [3, 10].
"""
import pathlib

import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/deit3"


def main():
    assert torch.__version__.startswith("2.0.1") and timm.__version__ == "0.6.13", (torch.__version__, timm.__version__)
    torch.set_num_threads(1)
    model = VisionTransformer(
        img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=32, depth=3, num_heads=2,
        mlp_ratio=4.0, qkv_bias=True, init_values=1e-6, no_embed_class=True,
    ).eval()
    gen = torch.Generator().manual_seed(2023)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                p.copy_(0.5 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1 or name in ("cls_token", "pos_embed"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
    assert tuple(model.pos_embed.shape) == (1, 16, 32), "no class position"
    images = torch.randn(3, 3, 32, 32, generator=gen)
    with torch.no_grad():
        logits = model(images)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    official = {k.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2"): v for k, v in state.items()}
    assert sum(".gamma_" in k for k in official) == 6
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(state, str(OUT / "deit3_timm.safetensors"))
    save_file(official, str(OUT / "deit3_official.safetensors"))
    save_file({"images": images, "logits": logits}, str(OUT / "deit3_reference.safetensors"))
    print(f"wrote {OUT}: {len(state)} tensors, logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main()
