"""Train the tiny pipelines sdopt ships for measuring quality offline (issue 28), deterministically.

On the scene domain of `sdopt.quality` (64x64 renders captioned "a red circle at the top left on a
white background"), with fixed seeds and fixed step counts (not time boxes):

1. a small KL VAE (scale factor 4: 64x64 images, 16x16x4 latents), trained on 32x32 crops with the
   shape's pixels weighted up (a plain MSE learns the background and blurs the shape away);
2. a `StableDiffusionPipeline` UNet reading a frozen, seeded CLIP text encoder through a word-level
   tokenizer (one token per word of the domain);
3. a `PixArtAlphaPipeline` DiT reading a frozen, seeded T5 encoder the same way.

Denoisers learn epsilon on a scaled-linear DDPM schedule with 10% of captions dropped (classifier-free
guidance). Writes ``sdopt/simulation/trained_models/{vae,sd,dit}`` and ``record.json``: per folder the
SHA-256 of each weights file (a test checks the shipped files against it), the settings, the seconds
each part took, and the untouched pipelines' prompt accuracy and domain FID on the 144 captions.
Not part of CI.

    python tools/train_tiny_pipelines.py              # all three, ~50 minutes on 2 CPU cores
    python tools/train_tiny_pipelines.py --only dit   # one part (the VAE must exist for sd / dit)
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdopt.quality import all_scenes, dataset, domain_fid, field_accuracy, prompt_accuracy
from sdopt.quality.classifier import as_batch
from sdopt.quality.scenes import BACKGROUNDS
from sdopt.simulation import trained
from sdopt.simulation.parts import TEXT_DIM, clip_text_encoder, t5_text_encoder
from sdopt.simulation.tokenizers import word_clip_tokenizer, word_t5_tokenizer

SETTINGS: dict[str, Any] = {
    "threads": 2,
    "data": {"images": 20000, "seed": 10},
    "vae": {"blocks": [16, 32, 64], "steps": 1800, "batch": 64, "crop": 32, "lr": 1e-3, "shape_weight": 10.0},
    "sd": {"blocks": [32, 64], "steps": 2400, "batch": 96, "lr": 1e-3, "drop_caption": 0.1, "ema": 0.995},
    "dit": {
        "layers": 4,
        "heads": 4,
        "head_dim": 16,
        "steps": 16000,
        "batch": 64,
        "lr": 1e-3,
        "drop_caption": 0.1,
        "ema": 0.998,
    },
    "eval": {"steps": 20, "guidance": 4.5, "seed": 0},
}
SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def words() -> list[str]:
    """Every word of the domain's captions: each becomes one token."""
    return sorted({word for scene in all_scenes() for word in scene.caption.split()})


def train_vae(images: np.ndarray, labels: np.ndarray, settings: dict[str, Any]) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    levels = len(settings["blocks"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(settings["blocks"]),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    x = as_batch(images) * 2 - 1
    background = torch.tensor(list(BACKGROUNDS.values()), dtype=torch.float32) / 127.5 - 1
    shape_pixels = (x - background[torch.from_numpy(labels[:, 3])][:, :, None, None]).abs().amax(1, keepdim=True) > 0.25
    weight = 1 + settings["shape_weight"] * shape_pixels.float()
    optimizer = torch.optim.Adam(vae.parameters(), lr=settings["lr"])
    draw = torch.Generator().manual_seed(0)
    crop, offsets = settings["crop"], (64 - settings["crop"]) // 8 + 1
    for step in range(settings["steps"]):
        index = torch.randint(0, len(x), (settings["batch"],), generator=draw)
        top, left = (int(v) * 8 for v in torch.randint(0, offsets, (2,), generator=draw))
        batch = x[index, :, top : top + crop, left : left + crop]
        posterior = vae.encode(batch).latent_dist
        decoded = vae.decode(posterior.sample(generator=draw)).sample
        loss = ((decoded - batch) ** 2 * weight[index, :, top : top + crop, left : left + crop]).mean()
        loss = loss + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 300 == 0:
            print(f"vae {step + 1}: loss {float(loss):.4f}", flush=True)
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(x[i : i + 256]).latent_dist.mean for i in range(0, 4096, 256)])
    vae.register_to_config(scaling_factor=round(float(1 / means.std()), 5))
    return vae


def latents_of(vae: Any, images: np.ndarray) -> torch.Tensor:
    x = as_batch(images) * 2 - 1
    with torch.no_grad():
        return torch.cat([vae.encode(x[i : i + 256]).latent_dist.mean for i in range(0, len(x), 256)]) * float(
            vae.config.scaling_factor
        )


def sd_pipeline(vae: Any) -> Any:
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    settings = SETTINGS["sd"]
    torch.manual_seed(1)
    tokenizer = word_clip_tokenizer(words())
    text_encoder = clip_text_encoder(len(tokenizer), with_projection=False).eval()
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(settings["blocks"]),
        layers_per_block=1,
        # Attention at the 8x8 level only: half the cost of attending at 16x16, for the same accuracy.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    scheduler = PNDMScheduler(**SCHEDULE, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def dit_pipeline(vae: Any) -> Any:
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    settings = SETTINGS["dit"]
    torch.manual_seed(2)
    tokenizer = word_t5_tokenizer(words())
    text_encoder = t5_text_encoder(len(tokenizer)).eval()
    transformer = PixArtTransformer2DModel(
        sample_size=16,
        num_layers=settings["layers"],
        patch_size=settings.get("patch", 2),
        attention_head_dim=settings["head_dim"],
        num_attention_heads=settings["heads"],
        caption_channels=TEXT_DIM,
        in_channels=4,
        out_channels=4,
        cross_attention_dim=settings["heads"] * settings["head_dim"],
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    return PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(**SCHEDULE),
    )


def caption_embeddings(pipe: Any, captions: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """What the denoiser sees for each caption and for the empty one, through the pipeline's own
    ``encode_prompt`` (so training reads exactly what generation passes)."""
    with torch.no_grad():
        if hasattr(pipe, "unet"):
            embeds, _ = pipe.encode_prompt(captions + [""], "cpu", 1, False)
            return {"encoder_hidden_states": embeds[:-1]}, {"encoder_hidden_states": embeds[-1:]}
        embeds, mask, _, _ = pipe.encode_prompt(
            captions + [""], False, device="cpu", max_sequence_length=16, clean_caption=False
        )
        return (
            {"encoder_hidden_states": embeds[:-1], "encoder_attention_mask": mask[:-1]},
            {"encoder_hidden_states": embeds[-1:], "encoder_attention_mask": mask[-1:]},
        )


def train_denoiser(pipe: Any, latents: torch.Tensor, captions: list[str], settings: dict[str, Any]) -> None:
    from diffusers import DDPMScheduler

    model = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    names = sorted(set(captions))
    conditions, empty = caption_embeddings(pipe, names)
    which = torch.tensor([names.index(c) for c in captions])
    noise_schedule = DDPMScheduler(**SCHEDULE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=0.0)
    draw = torch.Generator().manual_seed(3)
    average = {name: value.detach().clone() for name, value in model.state_dict().items()}
    model.train()
    for step in range(settings["steps"]):
        index = torch.randint(0, len(latents), (settings["batch"],), generator=draw)
        clean = latents[index]
        noise = torch.randn(clean.shape, generator=draw)
        timesteps = torch.randint(0, 1000, (len(index),), generator=draw)
        noisy = noise_schedule.add_noise(clean, noise, timesteps)
        dropped = torch.rand(len(index), generator=draw) < settings["drop_caption"]
        condition = {}
        for key, value in conditions.items():
            picked = value[which[index]].clone()
            picked[dropped] = empty[key].to(picked.dtype)
            condition[key] = picked
        if hasattr(pipe, "unet"):
            predicted = model(noisy, timesteps, **condition).sample
        else:
            extra = {"resolution": None, "aspect_ratio": None}
            predicted = model(noisy, timestep=timesteps, added_cond_kwargs=extra, **condition).sample
        loss = torch.nn.functional.mse_loss(predicted, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # an exponential moving average of the weights is what ships
            for name, value in model.state_dict().items():
                if value.is_floating_point():
                    average[name].lerp_(value, 1 - settings["ema"])
                else:
                    average[name].copy_(value)
        if (step + 1) % 300 == 0:
            print(f"denoiser {step + 1}: loss {float(loss):.4f}", flush=True)
    model.load_state_dict(average)
    model.eval()


def evaluate(pipe: Any) -> dict[str, Any]:
    """The untouched pipeline on the 144 captions, one image each."""
    captions = [scene.caption for scene in all_scenes()]
    started = time.perf_counter()
    images = trained.generate(pipe, captions, **SETTINGS["eval"])
    return {
        "prompt_accuracy": prompt_accuracy(images, captions),
        "field_accuracy": field_accuracy(images, captions),
        "domain_fid": round(domain_fid(images, captions), 3),
        "seconds_per_image": round((time.perf_counter() - started) / len(captions), 4),
    }


def save(pipe: Any, kind: str, out: Path) -> None:
    folder = out / kind
    shutil.rmtree(folder, ignore_errors=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(folder / "vae")  # shared: trained.load() passes the one in out/vae


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("vae", "sd", "dit"), action="append")
    parser.add_argument("--out", type=Path, default=trained.ROOT)
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="score the saved sd / dit again (after changing 'eval'), no training",
    )
    args = parser.parse_args(argv)
    parts = args.only or ["vae", "sd", "dit"]
    torch.set_num_threads(SETTINGS["threads"])
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "record.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record["settings"] = SETTINGS
    record["machine"] = f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    started = time.perf_counter()
    images, labels, captions = dataset(SETTINGS["data"]["images"], seed=SETTINGS["data"]["seed"])
    print(f"data: {len(images)} renders in {time.perf_counter() - started:.0f} s", flush=True)
    for part in parts:
        began = time.perf_counter()
        if args.evaluate_only:
            if part != "vae":
                record.setdefault(part, {}).update(evaluate(trained.load(part, out)))
        elif part == "vae":
            train_vae(images, labels, SETTINGS["vae"]).save_pretrained(out / "vae", safe_serialization=True)
            record["vae"] = {"seconds": round(time.perf_counter() - began, 1)}
        else:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(out / "vae").eval()
            pipe = sd_pipeline(vae) if part == "sd" else dit_pipeline(vae)
            train_denoiser(pipe, latents_of(vae, images), captions, SETTINGS[part])
            seconds = round(time.perf_counter() - began, 1)
            save(pipe, part, out)
            record[part] = {"seconds": seconds, **evaluate(trained.load(part, out))}
        record.setdefault("sha256", {}).update(trained.hashes(out, part))
        print(json.dumps({part: record[part]}, indent=2), flush=True)
        record_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
