"""The cascade's stages as plain functions: prompt in, images out; no Celery, database or storage.

Image `i` of a request follows its own CPU generator, seeded with `seed + i`, through each stage.
A stage denoises its images together (one request's, or several requests' with different prompts), in
forward passes of at most `max_batch` images (one generator per image): the noise an image gets
depends on its seed only, and its bytes are the
same in any process with the same weights, device, dtype, thread count and batches. The batch an
image shares changes the arithmetic a little (batched kernels sum in another order), so its pixels
can move slightly with `max_batch`, `num_images` or its companions; with `max_batch=1` every image runs alone and
depends on its seed only, byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

# From their modules, not `diffusers`: its lazy top level shows type checkers placeholder classes.
from diffusers.pipelines.deepfloyd_if.pipeline_if_superresolution import IFSuperResolutionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_upscale import (
    StableDiffusionUpscalePipeline,
)

from core.limits import (
    DEFAULT_MAX_BATCH,
    MAX_BATCH,
    MAX_IMAGES_PER_JOB,
    MAX_SEED,
    MAX_STEPS,
    check_guidance,
    check_int,
    check_text,
)
from core.presets import StageKind, StageParams, StageSpec
from workers.pipelines import TEXT_ENCODER, Cascade
from workers.stage_outputs import PromptEmbeds, embeds_from_bytes, embeds_to_bytes, image_to_png, png_to_image

ProgressFn = Callable[[float], None]
"""Called with the fraction of the stage done (0..1] after each denoising step; may raise to stop."""


def encode_prompt(cascade: Cascade, prompt: str, negative_prompt: str | None = None) -> PromptEmbeds:
    """Encode `prompt` (and `negative_prompt`, or the empty prompt) with stage I's text encoder."""
    return encode_prompts(cascade, [(prompt, negative_prompt)])[0]


def encode_prompts(
    cascade: Cascade, prompts: Sequence[tuple[str, str | None]], *, max_batch: int = DEFAULT_MAX_BATCH
) -> list[PromptEmbeds]:
    """Encode each `(prompt, negative prompt)` pair, in passes of at most `max_batch` pairs.

    The tokenizer pads every prompt to the same length with an attention mask, so a prompt's embeddings do
    not depend on its companions beyond the arithmetic of a batched pass.
    """
    # 1. Check inputs
    check_int("max_batch", max_batch, 1, MAX_BATCH)
    for prompt, negative_prompt in prompts:
        check_text("prompt", prompt)
        if negative_prompt is not None:
            check_text("negative_prompt", negative_prompt, allow_empty=True)

    # 2. Encode each batch of prompts and their negatives in one call, as the pipeline would for
    # classifier-free guidance (no negative prompt is the empty prompt, as in the pipeline)
    pipeline = cascade.text_encoder
    encoded: list[PromptEmbeds] = []
    with cascade.run_lock(TEXT_ENCODER):
        for batch in _batches(len(prompts), max_batch):
            prompt_embeds, negative_embeds = pipeline.encode_prompt(
                [prompts[i][0] for i in batch],
                do_classifier_free_guidance=True,
                num_images_per_prompt=1,
                device=torch.device(cascade.device),
                negative_prompt=[prompts[i][1] or "" for i in batch],
                # Caption cleaning needs bs4 and ftfy, and would change the prompt the user wrote.
                clean_caption=False,
            )
            encoded.extend(
                PromptEmbeds(prompt_embeds[j : j + 1].cpu(), negative_embeds[j : j + 1].cpu())
                for j in range(len(batch))
            )
    return encoded


@dataclass(frozen=True)
class ImageRequest:
    """One image for a denoising stage to make: its prompt's embeddings, its seed and, for a
    super-resolution stage, the image to upscale and the prompt (an x4 upscaler encodes it itself)."""

    embeds: PromptEmbeds
    seed: int
    image: PIL.Image.Image | None = None
    prompt: str = ""
    negative_prompt: str | None = None


def run_base(
    cascade: Cascade,
    embeds: PromptEmbeds,
    *,
    num_images: int,
    seed: int,
    steps: int,
    guidance_scale: float,
    max_batch: int = DEFAULT_MAX_BATCH,
    on_progress: ProgressFn | None = None,
) -> list[PIL.Image.Image]:
    """Stage I: `num_images` images of the base resolution from the prompt's embeddings."""
    check_int("num_images", num_images, 1, MAX_IMAGES_PER_JOB)
    check_int("seed", seed, 0, MAX_SEED)
    requests = [ImageRequest(embeds, seed + index) for index in range(num_images)]
    return run_base_batch(
        cascade, requests, steps=steps, guidance_scale=guidance_scale, max_batch=max_batch, on_progress=on_progress
    )


def run_base_batch(
    cascade: Cascade,
    requests: Sequence[ImageRequest],
    *,
    steps: int,
    guidance_scale: float,
    max_batch: int = DEFAULT_MAX_BATCH,
    on_progress: ProgressFn | None = None,
) -> list[PIL.Image.Image]:
    """Stage I for any mix of prompts and seeds (one job's images, or several jobs'), in order."""
    spec = cascade.preset.base_stage
    pipeline = cascade.base

    # 1. Check inputs
    _check_requests(requests)
    check_int("steps", steps, 1, MAX_STEPS)
    check_guidance(guidance_scale)
    check_int("max_batch", max_batch, 1, MAX_BATCH)
    for request in requests:
        check_int("seed", request.seed, 0, MAX_SEED + MAX_IMAGES_PER_JOB)
        _check_embeds(request.embeds, pipeline.unet.config["encoder_hid_dim"])

    # 2. Denoise the images a batch at a time, each from its own seed
    images: list[PIL.Image.Image] = []
    with cascade.run_lock(spec.name):
        for batch in _batches(len(requests), max_batch):
            prompt_embeds, negative_embeds = _embeds_on(cascade, [requests[i].embeds for i in batch])
            output = pipeline(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                height=spec.resolution,
                width=spec.resolution,
                generator=_generators([requests[i].seed for i in batch]),
                # Intermediates stay tensors, as in diffusers' IF recipe: the watermark and the
                # safety check belong to the final image.
                output_type="pt",
                callback=_step_callback(on_progress, batch, len(requests), steps),
                callback_steps=1,
                clean_caption=False,
            )
            images.extend(_tensor_to_image(image) for image in output.images)
    return images


def run_sr(
    cascade: Cascade,
    stage_name: str,
    images: Sequence[PIL.Image.Image],
    embeds: PromptEmbeds,
    prompt: str,
    negative_prompt: str | None,
    *,
    seed: int,
    steps: int,
    guidance_scale: float,
    noise_level: int,
    max_batch: int = DEFAULT_MAX_BATCH,
    on_progress: ProgressFn | None = None,
) -> list[PIL.Image.Image]:
    """Run the super-resolution stage called `stage_name` on one prompt's images, image `i` from `seed + i`."""
    if not isinstance(images, Sequence):
        raise ValueError(f"images must be a list of images, got {type(images).__name__}")
    check_int("seed", seed, 0, MAX_SEED)
    requests = [
        ImageRequest(embeds, seed + index, image, prompt, negative_prompt) for index, image in enumerate(images)
    ]
    return run_sr_batch(
        cascade,
        stage_name,
        requests,
        steps=steps,
        guidance_scale=guidance_scale,
        noise_level=noise_level,
        max_batch=max_batch,
        on_progress=on_progress,
    )


def run_sr_batch(
    cascade: Cascade,
    stage_name: str,
    requests: Sequence[ImageRequest],
    *,
    steps: int,
    guidance_scale: float,
    noise_level: int,
    max_batch: int = DEFAULT_MAX_BATCH,
    on_progress: ProgressFn | None = None,
) -> list[PIL.Image.Image]:
    """The super-resolution stage called `stage_name` for any mix of prompts, images and seeds, in order,
    giving it the conditioning its kind takes."""
    spec = _sr_stage(cascade, stage_name)
    _check_sr_inputs(cascade, spec, requests, steps, guidance_scale, noise_level, max_batch)
    if spec.kind == "if_sr":
        return _run_if_sr(cascade, spec, requests, steps, guidance_scale, noise_level, max_batch, on_progress)
    return _run_sd_upscale(cascade, spec, requests, steps, guidance_scale, noise_level, max_batch, on_progress)


def _run_if_sr(
    cascade: Cascade,
    spec: StageSpec,
    requests: Sequence[ImageRequest],
    steps: int,
    guidance_scale: float,
    noise_level: int,
    max_batch: int,
    on_progress: ProgressFn | None,
) -> list[PIL.Image.Image]:
    """An IF-II stage: upscale each image, conditioned on its prompt's embeddings."""
    pipeline = cascade.pipeline(spec.name, IFSuperResolutionPipeline)
    for request in requests:
        _check_embeds(request.embeds, pipeline.unet.config["encoder_hid_dim"])

    upscaled: list[PIL.Image.Image] = []
    with cascade.run_lock(spec.name):
        for batch in _batches(len(requests), max_batch):
            prompt_embeds, negative_embeds = _embeds_on(cascade, [requests[i].embeds for i in batch])
            output = pipeline(
                image=[_low_res(requests[i]) for i in batch],
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                noise_level=noise_level,
                height=spec.resolution,
                width=spec.resolution,
                generator=_generators([requests[i].seed for i in batch]),
                output_type="pt",
                callback=_step_callback(on_progress, batch, len(requests), steps),
                callback_steps=1,
                clean_caption=False,
            )
            upscaled.extend(_tensor_to_image(image) for image in output.images)
    return upscaled


def _run_sd_upscale(
    cascade: Cascade,
    spec: StageSpec,
    requests: Sequence[ImageRequest],
    steps: int,
    guidance_scale: float,
    noise_level: int,
    max_batch: int,
    on_progress: ProgressFn | None,
) -> list[PIL.Image.Image]:
    """An x4-upscaler stage: upscale each image x4; the upscaler encodes each prompt itself."""
    pipeline = cascade.pipeline(spec.name, StableDiffusionUpscalePipeline)
    for request in requests:
        check_text("prompt", request.prompt)
        if request.negative_prompt is not None:
            check_text("negative_prompt", request.negative_prompt, allow_empty=True)

    upscaled: list[PIL.Image.Image] = []
    with cascade.run_lock(spec.name), torch.no_grad():
        # Each prompt encoded once, as the pipeline itself would for one image, and repeated for its images.
        guided = guidance_scale > 1.0
        encoded: dict[tuple[str, str | None], tuple[torch.Tensor, torch.Tensor | None]] = {}
        for request in requests:
            pair = (request.prompt, request.negative_prompt)
            if pair not in encoded:
                encoded[pair] = pipeline.encode_prompt(
                    request.prompt,
                    torch.device(cascade.device),
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=guided,
                    negative_prompt=request.negative_prompt,
                )
        for batch in _batches(len(requests), max_batch):
            pairs = [encoded[(requests[i].prompt, requests[i].negative_prompt)] for i in batch]
            negatives = [negative for _, negative in pairs]
            output = pipeline(
                prompt_embeds=torch.cat([prompt for prompt, _ in pairs]),
                negative_prompt_embeds=None if None in negatives else torch.cat(negatives),  # type: ignore[arg-type]
                image=[_low_res(requests[i]) for i in batch],
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                noise_level=noise_level,
                generator=_generators([requests[i].seed for i in batch]),
                output_type="pil",
                callback=_step_callback(on_progress, batch, len(requests), steps),
                callback_steps=1,
                return_dict=False,
            )
            upscaled.extend(output[0])
    return upscaled


def run_direct(
    cascade: Cascade,
    prompt: str,
    negative_prompt: str | None = None,
    *,
    num_images: int,
    seed: int,
    resolution: int,
    params: Mapping[str, StageParams] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> dict[str, list[PIL.Image.Image]]:
    """The whole cascade in this process, each stage's images by stage name.

    Embeddings and images cross from stage to stage as bytes, as they do through storage between
    Celery tasks, so this is a fair baseline for the distributed path and gives the same images.
    """
    # 1. Check inputs
    chosen = cascade.preset.resolve_params(resolution, params)
    stages = cascade.preset.stages_up_to(resolution)

    # 2. Encode the prompt once for every stage that takes embeddings
    embeds = embeds_from_bytes(embeds_to_bytes(encode_prompt(cascade, prompt, negative_prompt)))

    # 3. Run the stages, each reading the previous stage's PNGs
    outputs: dict[str, list[PIL.Image.Image]] = {}
    images: list[PIL.Image.Image] = []
    for spec in stages:
        stage_params = chosen[spec.name]
        if spec.is_base:
            images = run_base(
                cascade,
                embeds,
                num_images=num_images,
                seed=seed,
                steps=stage_params.steps,
                guidance_scale=stage_params.guidance_scale,
                max_batch=max_batch,
            )
        else:
            assert stage_params.noise_level is not None  # filled in by resolve_params
            images = run_sr(
                cascade,
                spec.name,
                images,
                embeds,
                prompt,
                negative_prompt,
                seed=seed,
                steps=stage_params.steps,
                guidance_scale=stage_params.guidance_scale,
                noise_level=stage_params.noise_level,
                max_batch=max_batch,
            )
        images = [png_to_image(image_to_png(image)) for image in images]
        outputs[spec.name] = images
    return outputs


def _check_embeds(embeds: PromptEmbeds, width: int) -> None:
    for name in ("prompt_embeds", "negative_embeds"):
        tensor = getattr(embeds, name)
        if tensor.ndim != 3 or tensor.shape[0] != 1 or tensor.shape[-1] != width:
            raise ValueError(
                f"embeds.{name} must have shape (1, tokens, {width}) for this preset's text encoder,"
                f" got {tuple(tensor.shape)}"
            )


def _sr_stage(cascade: Cascade, stage_name: str, kind: StageKind | None = None) -> StageSpec:
    """The spec of the super-resolution stage `stage_name` (of `kind`, if given), else a ValueError."""
    allowed = [spec.name for spec in cascade.preset.stages[1:] if kind is None or spec.kind == kind]
    if stage_name not in allowed:
        what = f"a {kind} stage" if kind else "a super-resolution stage"
        raise ValueError(
            f"stage_name must be {what} of preset {cascade.preset.name!r} ({', '.join(allowed) or 'none'}),"
            f" got {stage_name!r}"
        )
    return cascade.preset.stage(stage_name)


def _check_sr_inputs(
    cascade: Cascade,
    spec: StageSpec,
    requests: Sequence[ImageRequest],
    steps: int,
    guidance_scale: float,
    noise_level: int,
    max_batch: int,
) -> None:
    stages = cascade.preset.stages
    source_resolution = stages[stages.index(spec) - 1].resolution
    _check_requests(requests)
    for index, request in enumerate(requests):
        image = request.image
        if not isinstance(image, PIL.Image.Image):
            raise ValueError(f"images[{index}] must be a PIL image, got {type(image).__name__}")
        if image.size != (source_resolution, source_resolution):
            raise ValueError(
                f"images[{index}] must be {source_resolution}x{source_resolution} for stage"
                f" {spec.name}, got {image.size[0]}x{image.size[1]}"
            )
        check_int("seed", request.seed, 0, MAX_SEED + MAX_IMAGES_PER_JOB)
    check_int("steps", steps, 1, MAX_STEPS)
    check_guidance(guidance_scale)
    check_int("noise_level", noise_level, 0, spec.max_noise_level or 0)
    check_int("max_batch", max_batch, 1, MAX_BATCH)


def _check_requests(requests: Sequence[ImageRequest]) -> None:
    if not 1 <= len(requests) <= MAX_BATCH:
        raise ValueError(f"images must hold 1 to {MAX_BATCH} images, got {len(requests)}")


def _low_res(request: ImageRequest) -> PIL.Image.Image:
    assert request.image is not None  # checked by _check_sr_inputs
    return request.image.convert("RGB")


def _embeds_on(cascade: Cascade, embeds: Sequence[PromptEmbeds]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's prompt and negative-prompt embeddings, one row per image, where the model is."""
    return (
        torch.cat([e.prompt_embeds for e in embeds]).to(cascade.device, cascade.dtype),
        torch.cat([e.negative_embeds for e in embeds]).to(cascade.device, cascade.dtype),
    )


def _batches(count: int, max_batch: int) -> list[range]:
    """The indexes of `count` images, in runs of at most `max_batch`."""
    return [range(start, min(start + max_batch, count)) for start in range(0, count, max_batch)]


def _generators(seeds: Sequence[int]) -> list[torch.Generator]:
    # One CPU generator per image: diffusers draws image i's noise from generator i alone, in the same
    # order as a one-image call would, and a CPU generator draws the same noise on any device.
    return [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]


def _step_callback(
    on_progress: ProgressFn | None, batch: range, count: int, steps: int
) -> Callable[[int, int, torch.Tensor], None] | None:
    if on_progress is None:
        return None
    total = count * steps

    def report(step: int, timestep: int, latents: torch.Tensor) -> None:
        # A step advances every image of the batch; batches before this one are done.
        on_progress((batch.start * steps + (step + 1) * len(batch)) / total)

    return report


def _tensor_to_image(image: torch.Tensor) -> PIL.Image.Image:
    # The same rounding as diffusers' numpy_to_pil, from the model's [-1, 1] range.
    pixels = (image.float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return PIL.Image.fromarray((pixels * 255).round().astype(np.uint8))
