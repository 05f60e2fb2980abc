"""Writes the mid-size random-weight model folder used by `temporal_bench.py` (not committed).

A Make-Your-Anchor body model folder between the tiny fixture model and SD1.5, saved with
diffusers/transformers `save_pretrained` (safetensors, f32):

- `unet/`: SD1.5 topology (3 CrossAttnDown + Down, mid block, Up + 3 CrossAttnUp) at widths
  (64, 128, 256, 256), `layers_per_block` 1, (2, 4, 8, 8) heads (legacy `attention_head_dim`:
  head dim 32 at every level), 32 groups, cross-attention width 128;
- `controlnet/`: `ControlNetModel.from_unet(unet)` (SD1.5's conditioning embedding);
- `vae/`: a 4-level (32, 32, 64, 64) AutoencoderKL, downsample factor 8;
- `image_encoder/`: a 2-layer CLIP vision tower of width 128 (224 px, patch 32: 50 tokens), with
  the CLIP preprocessor config; `text_encoder/`: a 2-layer CLIP text tower of width 128;
- `scheduler/`: the SD1.5 scheduler config (a PNDM config that DDIM reads).

Every parameter is perturbed by the fixtures' seeded `perturb`, so that no zero-initialised layer
(ControlNet's zero convs) makes the control a no-op.

Usage: python3 plugin/benches/make_mid_model.py /tmp/mya-mid
"""

import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "fixtures"))
from fixtures_unet import perturb  # noqa: E402
from fixtures_vae_clip import sd15_scheduler_config  # noqa: E402

from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402

WIDTH = 128  # CLIP hidden size = UNet/ControlNet cross-attention width
SEED = 128


def build(out):
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(64, 128, 256, 256),
        layers_per_block=1,
        cross_attention_dim=WIDTH,
        attention_head_dim=(2, 4, 8, 8),  # legacy name: heads per level; head dim 32 everywhere
        norm_num_groups=32,
    ).eval()
    controlnet = ControlNetModel.from_unet(unet).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=128,
        scaling_factor=0.18215,
    ).eval()
    vision = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=WIDTH,
            intermediate_size=4 * WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=224,
            patch_size=32,
            projection_dim=64,
            hidden_act="quick_gelu",
        )
    ).eval()
    vocab = 1000  # BOS/EOS are the last two ids, as CLIP's 49406/49407
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab,
            bos_token_id=vocab - 2,
            eos_token_id=vocab - 1,
            pad_token_id=vocab - 1,
            hidden_size=WIDTH,
            intermediate_size=4 * WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=64,
            hidden_act="quick_gelu",
        )
    ).eval()
    with torch.no_grad():
        for m in (unet, controlnet, vae, vision, text):
            perturb(m, gen)
    unet.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    controlnet.save_pretrained(os.path.join(out, "controlnet"), safe_serialization=True)
    vae.save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
    vision.save_pretrained(os.path.join(out, "image_encoder"), safe_serialization=True)
    CLIPImageProcessorPil(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        do_center_crop=True,
        do_convert_rgb=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
    ).save_pretrained(os.path.join(out, "image_encoder"))
    text.save_pretrained(os.path.join(out, "text_encoder"), safe_serialization=True)
    DDIMScheduler.from_config(sd15_scheduler_config()).save_pretrained(os.path.join(out, "scheduler"))
    params = {
        name: sum(p.numel() for p in m.parameters())
        for name, m in (("unet", unet), ("controlnet", controlnet), ("vae", vae),
                        ("image_encoder", vision), ("text_encoder", text))
    }
    return params


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/mya-mid"
    torch.set_grad_enabled(False)
    params = build(out)
    print(json.dumps({"model": out, "parameters": params}))


if __name__ == "__main__":
    main()
