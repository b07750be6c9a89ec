"""Train the toy cascade's stage I: images at its resolution from the frozen MiniLM's token states.

v-prediction on a cosine schedule, captions dropped 10% of the time so that
classifier-free guidance has an unconditional model to steer away from. Every step's batch is drawn
from the step number, so a resumed run sees exactly the data an uninterrupted one would.

    python -m training.train_base --steps 12000        # resumes from training/runs/base if there is one
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

from training import world
from training.architectures import (
    BASE_RESOLUTION,
    BASE_STAGE,
    base_unet,
    committed_folder,
    sampling_scheduler,
    training_scheduler,
    write_json,
)
from training.checker import read
from training.common import (
    Ema,
    StepLog,
    TextCache,
    arguments,
    diffusion_loss,
    end_of_step,
    optimize,
    progress,
    record,
    set_lr,
    setup_logging,
    start_training,
    unet_weights,
)
from workers.if_pipelines import if_pipeline

logger = logging.getLogger("training")
STAGE_DIR = committed_folder(BASE_STAGE.source)
CAPTION_DROPOUT = 0.1
EMA_DECAY = 0.999
WARMUP_STEPS = 300
# What reads the text in the IF-style UNet: the projection of the encoder's states, their attention-pooled
# summary added to the time embedding, and each attention layer's keys, values and norm for the text tokens.
TEXT_READING_PREFIXES = ("encoder_hid_proj.", "add_embedding.")
TEXT_READING_SUFFIXES = tuple(
    f"{part}.{kind}" for part in ("add_k_proj", "add_v_proj", "norm_cross") for kind in ("weight", "bias")
)


def batch(step: int, size: int, seed: int, texts: TextCache) -> tuple[torch.Tensor, torch.Tensor]:
    """Step `step`'s images in [-1, 1] and their captions' token states, a pure function of (seed, step)."""
    rng = random.Random(seed * 1_000_003 + step)
    scenes = [world.random_scene(rng) for _ in range(size)]
    captions = ["" if rng.random() < CAPTION_DROPOUT else world.caption(scene, rng, synonyms=True) for scene in scenes]
    return world.render(scenes, BASE_RESOLUTION) * 2 - 1, texts(captions)


def main() -> None:
    parser = arguments("base", steps=12000, batch=48, lr=4e-4)
    parser.add_argument(
        "--text-only",
        action="store_true",
        help="train only the parts that read the text (its projection, pooling and attention keys/values)",
    )
    args = parser.parse_args()
    setup_logging(args.run_dir)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    unet = base_unet()
    ema, optimizer, start = start_training(
        unet, args.run_dir, STAGE_DIR, lambda: unet_weights(STAGE_DIR), lr=args.lr, ema_decay=EMA_DECAY
    )
    if args.text_only:
        for name, parameter in unet.named_parameters():
            parameter.requires_grad_(name.startswith(TEXT_READING_PREFIXES) or name.endswith(TEXT_READING_SUFFIXES))
    scheduler = training_scheduler()
    texts = TextCache()
    params = sum(p.numel() for p in unet.parameters())
    trained = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    logger.info(
        "base unet: %.2f M parameters (%.2f M trained); batch %d, lr %g, %d threads",
        params / 1e6,
        trained / 1e6,
        args.batch,
        args.lr,
        args.threads,
    )

    unet.train()
    log = StepLog()
    for step in progress(start, args.steps):
        images, states = batch(step, args.batch, args.seed, texts)
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        set_lr(optimizer, args.lr, step, WARMUP_STEPS)
        loss = diffusion_loss(unet, scheduler, images, states, generator, bf16=args.bf16)
        optimize(unet, optimizer, loss)
        ema.update(unet, step)

        done = step + 1
        log(done, loss.item(), f", {len(texts)} captions cached")
        end_of_step(done, args, unet, ema, optimizer, lambda step: export(ema, step, args))


def export(ema: Ema, step: int, args: argparse.Namespace) -> None:
    """Write the EMA weights as stage I's pipeline folder (fp16) and report accuracy on a fixed prompt set."""
    unet = base_unet()
    ema.copy_to(unet)
    unet.eval()
    save_stage(unet, STAGE_DIR)
    accuracy = evaluate(unet, samples=args.run_dir / "samples.png")
    record(STAGE_DIR, steps=step, batch=args.batch, lr=args.lr, seed=args.seed, eval=accuracy)
    logger.info("exported stage I at step %d: %s", step, accuracy)


def save_stage(unet: UNet2DConditionModel, folder: Path) -> None:
    """An `IFPipeline` folder whose text encoder and tokenizer are all-MiniLM-L6-v2's (added at build time)."""
    pipeline = if_pipeline(unet.half(), sampling_scheduler())
    pipeline.save_pretrained(folder, safe_serialization=True)
    unet.float()
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "BertModel"]
    index["tokenizer"] = ["transformers", "BertTokenizerFast"]
    write_json(folder / "model_index.json", index)


@torch.no_grad()
def evaluate(
    unet: UNet2DConditionModel, *, samples: Path | None = None, steps: int = 20, guidance: float = 4.0
) -> dict[str, float]:
    """Checker accuracy of samples at stage I's resolution, one prompt per scene (light and dark, 180 in all): in
    the plain training wording, and (keys prefixed `heldout_`) in held-out wording that training never uses."""
    scenes = world.all_scenes()
    rng = random.Random(1234)
    prompt_sets = {
        "": [world.full_caption(scene, rng) for scene in scenes],
        "heldout_": [world.heldout_prompt(scene, rng) for scene in scenes],
    }
    texts = TextCache()
    pipeline = if_pipeline(unet, sampling_scheduler())
    pipeline.set_progress_bar_config(disable=True)
    accuracy: dict[str, float] = {}
    for prefix, prompts in prompt_sets.items():
        images = pipeline(
            prompt_embeds=texts(prompts),
            negative_prompt_embeds=texts([""] * len(prompts)),
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=BASE_RESOLUTION,
            width=BASE_RESOLUTION,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).images
        pixels = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        scores = {"colour": 0, "shape": 0, "position": 0, "all": 0}
        for scene, array in zip(scenes, pixels, strict=True):
            match = read(array).matches(scene)
            for key in scores:
                scores[key] += match[key]
        accuracy.update({prefix + key: round(value / len(scenes), 3) for key, value in scores.items()})
        if samples is not None and not prefix:
            rows = [np.concatenate(list(pixels[row * 18 : row * 18 + 18]), axis=1) for row in range(10)]
            grid = np.concatenate(rows, axis=0)
            size = (grid.shape[1] * 2, grid.shape[0] * 2)
            PIL.Image.fromarray(grid).resize(size, PIL.Image.Resampling.NEAREST).save(samples)
    return accuracy


if __name__ == "__main__":
    main()
