"""Train the toy cascade's stage II: from stage I's resolution to the preset's final one, conditioned on the
upsampled stage I image, the text and a noise level (noise-conditioning augmentation, as in Imagen and IF-II).

The low-resolution input is prepared exactly as `IFSuperResolutionPipeline` prepares it: 8-bit pixels
(stage I's PNG), bilinear upsampling with aligned corners, then noise from IF-II's noising schedule at a
random level, which the model is told. As in Imagen's super-resolution models, it trains on crops (a
quarter of the image here) and runs on the whole image: it is convolutional, and attends only at its
lowest resolution.

    python -m training.train_sr --steps 4000
"""

from __future__ import annotations

import argparse
import logging
import random

import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.deepfloyd_if.pipeline_if_superresolution import IFSuperResolutionPipeline

from training import world
from training.architectures import (
    BASE_RESOLUTION,
    SR_RESOLUTION,
    SR_STAGE,
    committed_folder,
    noising_scheduler,
    sampling_scheduler,
    sr_unet,
    training_scheduler,
)
from training.checker import read
from training.common import (
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
from workers.if_pipelines import if_sr_pipeline

logger = logging.getLogger("training")
STAGE_DIR = committed_folder(SR_STAGE.source)
CAPTION_DROPOUT = 0.1
EMA_DECAY = 0.999
WARMUP_STEPS = 200
CROP = 64
# Augmentation levels seen in training: every level up to the preset's cap, so any a request may ask for.
assert SR_STAGE.max_noise_level is not None, "core.presets gives every super-resolution stage a cap"
NOISE_LEVEL_CAP = SR_STAGE.max_noise_level


def low_resolution(scenes: list[world.Scene]) -> torch.Tensor:
    """The scenes at stage I's resolution in [-1, 1], rounded to 8 bits as stage I's PNGs are."""
    pixels = (world.render(scenes, BASE_RESOLUTION) * 255).round() / 255
    return pixels * 2 - 1


def batch(
    step: int, size: int, seed: int, texts: TextCache, noising: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step `step`'s target crops, their noised upsampled conditions, noise levels and text states."""
    rng = random.Random(seed * 1_000_003 + step)
    scenes = [world.random_scene(rng) for _ in range(size)]
    captions = ["" if rng.random() < CAPTION_DROPOUT else world.caption(scene, rng) for scene in scenes]
    targets = world.render(scenes, SR_RESOLUTION) * 2 - 1
    upscaled = F.interpolate(
        low_resolution(scenes), (SR_RESOLUTION, SR_RESOLUTION), mode="bilinear", align_corners=True
    )
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step + 7)
    levels = torch.randint(0, NOISE_LEVEL_CAP, (size,), generator=generator)
    noise = torch.randn(upscaled.shape, generator=generator)
    upscaled = noising.add_noise(upscaled, noise, levels)  # type: ignore[attr-defined]
    # One crop per image, at the same place in the target and the condition.
    crops_t, crops_c = [], []
    for index in range(size):
        top, left = rng.randrange(SR_RESOLUTION - CROP + 1), rng.randrange(SR_RESOLUTION - CROP + 1)
        crops_t.append(targets[index, :, top : top + CROP, left : left + CROP])
        crops_c.append(upscaled[index, :, top : top + CROP, left : left + CROP])
    return torch.stack(crops_t), torch.stack(crops_c), levels, texts(captions)


def main() -> None:
    args = arguments("sr", steps=4000, batch=16, lr=3e-4).parse_args()
    setup_logging(args.run_dir)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    unet = sr_unet()
    ema, optimizer, start = start_training(
        unet, args.run_dir, STAGE_DIR, lambda: unet_weights(STAGE_DIR), lr=args.lr, ema_decay=EMA_DECAY
    )
    scheduler = training_scheduler()
    noising = noising_scheduler()
    texts = TextCache()
    params = sum(p.numel() for p in unet.parameters())
    logger.info("sr unet: %.2f M parameters; batch %d, lr %g", params / 1e6, args.batch, args.lr)

    unet.train()
    log = StepLog()
    for step in progress(start, args.steps):
        targets, condition, levels, states = batch(step, args.batch, args.seed, texts, noising)
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        set_lr(optimizer, args.lr, step, WARMUP_STEPS)
        loss = diffusion_loss(
            unet, scheduler, targets, states, generator, condition=condition, class_labels=levels, bf16=args.bf16
        )
        optimize(unet, optimizer, loss)
        ema.update(unet, step)

        done = step + 1
        log(done, loss.item())
        end_of_step(done, args, unet, ema, optimizer, lambda step: export(unet, ema.shadow, step, args))


def export(unet: UNet2DConditionModel, shadow: dict[str, torch.Tensor], step: int, args: argparse.Namespace) -> None:
    """Write the EMA weights as stage II's pipeline folder (fp16) and report how well it upsamples."""
    model = sr_unet()
    model.load_state_dict(shadow)
    model.eval()
    pipeline_for(model.half()).save_pretrained(STAGE_DIR, safe_serialization=True)
    model.float()
    quality = evaluate(pipeline_for(model))
    record(STAGE_DIR, steps=step, batch=args.batch, lr=args.lr, seed=args.seed, eval=quality)
    logger.info("exported stage II at step %d: %s", step, quality)


def pipeline_for(unet: UNet2DConditionModel) -> IFSuperResolutionPipeline:
    """Stage II's pipeline around `unet`; it takes stage I's prompt embeddings, so has no text encoder."""
    pipeline = if_sr_pipeline(unet, sampling_scheduler())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@torch.no_grad()
def evaluate(
    pipeline: IFSuperResolutionPipeline, *, count: int = 12, steps: int = 10, guidance: float = 1.0
) -> dict[str, float]:
    """Upsample true stage I-sized scenes: the checker's accuracy on the output and its mean error against the truth."""
    rng = random.Random(4321)
    scenes = [world.random_scene(rng) for _ in range(count)]
    prompts = [world.full_caption(scene, rng) for scene in scenes]
    texts = TextCache()
    output = pipeline(
        image=low_resolution(scenes),
        prompt_embeds=texts(prompts),
        negative_prompt_embeds=texts([""] * count),
        num_inference_steps=steps,
        guidance_scale=guidance,
        noise_level=100,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    pixels = ((output.float() / 2 + 0.5).clamp(0, 1) * 255).round()
    truth = (world.render(scenes, SR_RESOLUTION) * 255).round()
    arrays = pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    correct = sum(read(array).matches(scene)["all"] for array, scene in zip(arrays, scenes, strict=True))
    return {"all": round(correct / count, 3), "mean_abs_error": round((pixels - truth).abs().mean().item(), 2)}


if __name__ == "__main__":
    main()
