"""Writes the model manifests that `gpucheck.py` turns into random-weight model folders.

A manifest names every component of a Make-Your-Anchor body model folder (unet/, controlnet/,
vae/, image_encoder/, text_encoder/, scheduler/) with its config.json and the name and shape of
every tensor of its safetensors file, as diffusers 0.42.1 / transformers 5.23.0 write them
(`save_pretrained`). The GPU machine has no diffusers and no package registry, so the check
writes the weights from the manifest (random values, f16) without either library; PyTorch's half
of the check loads the same files with diffusers from a carried wheel.

Two configs:
- `sd15`: Stable Diffusion 1.5 at full size: UNet (320, 640, 1280, 1280), 2 layers per block,
  cross-attention 768 (859.5 M parameters); ControlNet `from_unet` (361.3 M); the SD1.5 VAE
  (83.7 M); CLIP ViT-B/32 vision tower with projection (the appearance tokens: 50 × 768) and the
  CLIP ViT-L/14 text tower of SD1.5 (123.1 M); the SD1.5 scheduler config.
- `mini`: the same architecture at a few channels, for the CPU dry run.

Run here once, in an environment with the pinned versions (tests/fixtures/requirements.txt):
    /tmp/fxvenv/bin/python plugin/benches/gpu/make_manifest.py
which rewrites plugin/benches/gpu/manifest_{sd15,mini}.json (committed). Nothing is allocated:
the models are built on PyTorch's meta device.
"""

import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))

from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel  # noqa: E402
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

SCHEDULER = {  # the SD1.5 scheduler/scheduler_config.json (a PNDM config that DDIM reads)
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def preprocessor():
    with open(os.path.join(ROOT, "tests", "fixtures", "tiny", "image_encoder",
                           "preprocessor_config.json")) as fh:
        return json.load(fh)  # CLIP's: 224 px, bicubic, CLIP mean/std


def configs(name):
    if name == "sd15":
        unet = dict(cross_attention_dim=768)  # every other default is SD1.5's
        vae = dict(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
            norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
        )
        vision = CLIPVisionConfig(  # CLIP ViT-B/32
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            image_size=224, patch_size=32, projection_dim=512, hidden_act="quick_gelu",
        )
        text = CLIPTextConfig(  # CLIP ViT-L/14's text tower, as SD1.5's text_encoder
            vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
        )
    elif name == "mini":
        unet = dict(
            sample_size=8, block_out_channels=(32, 32, 64, 64), layers_per_block=2,
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
        )
        vae = dict(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 16, 32, 32), layers_per_block=1, latent_channels=4,
            norm_num_groups=8, sample_size=64, scaling_factor=0.18215,
        )
        vision = CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=224, patch_size=32, projection_dim=16, hidden_act="quick_gelu",
        )
        text = CLIPTextConfig(
            vocab_size=1000, bos_token_id=998, eos_token_id=999, pad_token_id=999,
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=16, hidden_act="quick_gelu",
        )
    else:
        raise SystemExit(f"unknown config {name}")
    return unet, vae, vision, text


def tensors(model):
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def diffusers_config(model):
    cfg = dict(model.config)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    out = {"_class_name": type(model).__name__, "_diffusers_version": "0.42.1"}
    out.update(cfg)
    return json.loads(json.dumps(out, default=list))


def transformers_config(model, arch):
    cfg = model.config.to_dict()
    cfg["architectures"] = [arch]
    cfg["dtype"] = "float16"
    return json.loads(json.dumps(cfg, default=list))


def build(name):
    unet_kw, vae_kw, vision_cfg, text_cfg = configs(name)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_kw)
        controlnet = ControlNetModel.from_unet(unet)
        vae = AutoencoderKL(**vae_kw)
        vision = CLIPVisionModelWithProjection(vision_cfg)
        text = CLIPTextModel(text_cfg)
    diff = "diffusion_pytorch_model.safetensors"
    comps = {
        "unet": dict(config=diffusers_config(unet), weights=diff, tensors=tensors(unet)),
        "controlnet": dict(config=diffusers_config(controlnet), weights=diff,
                           tensors=tensors(controlnet)),
        "vae": dict(config=diffusers_config(vae), weights=diff, tensors=tensors(vae)),
        "image_encoder": dict(config=transformers_config(vision, "CLIPVisionModelWithProjection"),
                              weights="model.safetensors", tensors=tensors(vision)),
        "text_encoder": dict(config=transformers_config(text, "CLIPTextModel"),
                             weights="model.safetensors", tensors=tensors(text)),
    }
    params = {}
    for c, d in comps.items():
        n = 0
        for _, shape in d["tensors"]:
            k = 1
            for s in shape:
                k *= s
            n += k
        params[c] = n
    return {
        "name": name,
        "written_by": "plugin/benches/gpu/make_manifest.py (diffusers 0.42.1, transformers 5.23.0)",
        "parameters": params,
        "components": comps,
        "files": {
            "image_encoder/preprocessor_config.json": preprocessor(),
            "scheduler/scheduler_config.json": SCHEDULER,
        },
    }


def main():
    names = sys.argv[1:] or ["sd15", "mini"]
    for name in names:
        m = build(name)
        path = os.path.join(HERE, f"manifest_{name}.json")
        with open(path, "w") as fh:
            json.dump(m, fh, separators=(",", ":"))
            fh.write("\n")
        total = sum(m["parameters"].values())
        print(f"{path}: {json.dumps(m['parameters'])} ({total / 1e6:.1f} M parameters)")


if __name__ == "__main__":
    main()
