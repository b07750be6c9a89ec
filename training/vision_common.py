"""What the captioner and embedder trainers share: the image pool, augmentation, resuming and fp16 export.

Both models see images the way the product feeds them: a render at stage II's resolution (what it outputs)
scaled to the vision tower's 64 px by `CLIPImageProcessorPil` and normalized with CLIP's mean and deviation.
Rendering a scene that size (4x4 supersampled) costs more than a training step of these small models, so the
random scenes are rendered once into a pool, scaled to 64 px and kept as 8-bit pixels (as a PNG would hold them);
each step draws its batch from the pool by the step number and augments it afresh.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import PIL.Image
import torch
import torch.nn.functional as F
from transformers import CLIPImageProcessorPil, PreTrainedModel

from core.presets import TINY, EmbedderSpec, ModelSpec, Preset
from training import world
from training.architectures import SR_RESOLUTION, WEIGHTS_DIR
from training.common import RUNS_DIR
from workers.preprocessors import clip_image_processor

logger = logging.getLogger("training")

# The vision towers see 64 px images in 8 px patches: an 8x8 grid, fine enough to tell the shapes apart.
IMAGE_SIZE = 64
PATCH_SIZE = 8
POOL_SIZE = 16384
_POOL_DIR = RUNS_DIR / "vision_pool"
_RENDER_CHUNK = 64


def image_processor() -> CLIPImageProcessorPil:
    """The exported folders' image preprocessing: short side to 64 px, a centre crop, CLIP's normalization."""
    return clip_image_processor(IMAGE_SIZE)


def scene_pool(seed: int, count: int = POOL_SIZE) -> tuple[list[world.Scene], torch.Tensor]:
    """`count` random scenes and their renders at stage II's resolution scaled to 64 px, as (N, 3, 64, 64) uint8.

    The scenes follow from `seed` alone; the pixels are cached under training/runs/vision_pool, so a
    resumed run (or the other vision trainer) does not render them again.
    """
    rng = random.Random(seed)
    scenes = [world.random_scene(rng) for _ in range(count)]
    path = _POOL_DIR / f"seed{seed}-{count}-{SR_RESOLUTION}to{IMAGE_SIZE}.pt"
    if path.is_file():
        pixels: torch.Tensor = torch.load(path)
        if pixels.shape == (count, 3, IMAGE_SIZE, IMAGE_SIZE):
            return scenes, pixels
    logger.info("rendering a pool of %d scenes at %d px (cached in %s)", count, SR_RESOLUTION, path)
    chunks = []
    for start in range(0, count, _RENDER_CHUNK):
        rendered = world.render(scenes[start : start + _RENDER_CHUNK], SR_RESOLUTION)
        # What the product's image is: 8-bit pixels.
        rendered = (rendered * 255).round() / 255
        chunks.append(to_uint8(downscale(rendered)))
    pixels = torch.cat(chunks)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(pixels, partial)
    os.replace(partial, path)
    return scenes, pixels


def downscale(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] scaled to 64 px: antialiased bicubic, which is close to the processor's PIL resize."""
    return F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", antialias=True).clamp(0, 1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Floats in [0, 1] as 8-bit pixels."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light damage of the kind a generated image shows, applied at 64 px to floats in [0, 1].

    Stage II's images have soft edges, a slight colour cast and some grain. The cast is kept well below
    the distance between the closest palette colours (red and orange, blue and purple), so it never
    changes which colour an image shows.
    """
    n = len(images)
    # Blur half of the images, each with its own width (0.3 to 1 px at this size).
    sigma = torch.empty(n).uniform_(0.3, 1.0, generator=generator)
    blurred = _gaussian_blur(images, sigma)
    use_blur = torch.rand(n, generator=generator) < 0.5
    images = torch.where(use_blur[:, None, None, None], blurred, images)
    # Colour cast: a gain and an offset per channel.
    gain = torch.empty(n, 3, 1, 1).uniform_(0.93, 1.07, generator=generator)
    offset = torch.empty(n, 3, 1, 1).uniform_(-0.03, 0.03, generator=generator)
    images = images * gain + offset
    # Grain of a random strength per image, none to a little.
    strength = torch.empty(n, 1, 1, 1).uniform_(0.0, 0.04, generator=generator)
    images = images + strength * torch.randn(images.shape, generator=generator)
    return images.clamp(0, 1)


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    radius = 3
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    kernels = kernels / kernels.sum(dim=1, keepdim=True)
    n, channels, height, width = images.shape
    # One separable kernel per image: fold the images into the channel axis and convolve by groups.
    flat = images.reshape(1, n * channels, height, width)
    weight = kernels.repeat_interleave(channels, dim=0)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, weight[:, None, None, :], groups=n * channels)
    flat = F.conv2d(flat, weight[:, None, :, None], groups=n * channels)
    return flat.reshape(n, channels, height, width)


def sincos_positions(table: torch.nn.Embedding, *, scale: float = 0.5) -> None:
    """Initialize a ViT's learned position table (class token first, then the patch grid row by row)
    with 2D sine-cosine features of each patch's row and column, and zeros for the class token.

    From a random table of the default, tiny scale, a captioner learns early which axis the shape is off
    centre along but, for a long while, not which side: a symmetric plateau (left read as right, top as
    bottom). Strong, distinct features for every patch from the start make the side as easy as the axis.
    """
    count, dim = table.weight.shape
    side = round((count - 1) ** 0.5)
    if side * side != count - 1 or dim % 4:
        raise ValueError(f"a {count}x{dim} table is not a class token plus a square grid with dim divisible by 4")
    quarter = dim // 4
    frequencies = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    rows, columns = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    features = []
    for axis in (rows, columns):
        angles = axis.flatten().float()[:, None] * frequencies[None, :]
        features += [angles.sin(), angles.cos()]
    with torch.no_grad():
        table.weight.zero_()
        table.weight[1:] = scale * torch.cat(features, dim=1)


def normalize(images: torch.Tensor, processor: CLIPImageProcessorPil) -> torch.Tensor:
    """Floats in [0, 1] as the processor hands them to the model: minus the mean, over the deviation."""
    mean = torch.tensor(processor.image_mean, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(processor.image_std, dtype=torch.float32)[None, :, None, None]
    return (images - mean) / std


def training_images(
    pixels: torch.Tensor, indices: list[int], generator: torch.Generator, processor: CLIPImageProcessorPil
) -> torch.Tensor:
    """The pool's images at `indices`, augmented and normalized: the model's `pixel_values`."""
    images = pixels[indices].float() / 255
    # Quantized again after augmentation: the product only ever sees 8-bit images.
    images = to_uint8(augment(images, generator)).float() / 255
    return normalize(images, processor)


def pretrained_weights(folder: Path, load: Callable[[Path], PreTrainedModel]) -> dict[str, torch.Tensor] | None:
    """The weights of an exported save_pretrained `folder`, or None if there is none.

    Read with `load`, the way the product reads them: these folders leave tied weights out of the file.
    """
    return load(folder).state_dict() if (folder / "config.json").is_file() else None


def export_fp16(model: PreTrainedModel, processor: object, folder: Path) -> None:
    """Replace `folder` with `model`'s weights in fp16 (half the disk; they load into fp32) and `processor`.

    The new folder is written beside the old one and swapped in, so no stale file of an earlier export
    survives and a crash mid-write leaves the old folder whole.
    """
    partial = folder.with_name(f".{folder.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    model.half()
    try:
        model.save_pretrained(partial, safe_serialization=True)
    finally:
        model.float()
    processor.save_pretrained(partial)  # type: ignore[attr-defined]
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(partial, folder)


def product_preset(folder: Path, *, model_id: str = "toy-check", dim: int = 64) -> tuple[Preset, Path]:
    """A throwaway preset whose captioner and embedder are both `folder`, and the models dir to pass with it:
    what the worker's `load_captioner` / `load_embedder` need to load an exported folder."""
    models_dir = WEIGHTS_DIR.parent
    source = str(folder.resolve().relative_to(models_dir.resolve()))
    # The tiny preset's stages and flags (local folders, fp32 on the CPU), with only the two models swapped.
    preset = dataclasses.replace(
        TINY,
        name="toy-check",
        captioner=ModelSpec(source),
        embedder=EmbedderSpec(source, model_id=model_id, dim=dim),
    )
    return preset, models_dir


def evaluation_images() -> tuple[list[world.Scene], list[PIL.Image.Image]]:
    """The 180 distinct scenes at their nominal size, rendered at stage II's resolution as 8-bit RGB images."""
    scenes = world.all_scenes()
    pixels = to_uint8(world.render(scenes, SR_RESOLUTION)).permute(0, 2, 3, 1).numpy()
    return scenes, [PIL.Image.fromarray(array) for array in pixels]
