"""Loading a preset's captioner (GIT) and embedder (CLIP), once per worker process."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import PIL.Image
import torch
from transformers import AutoProcessor, CLIPModel, CLIPProcessor, GitForCausalLM, GitProcessor, PreTrainedModel

from core.limits import MAX_BATCH
from core.preset_files import ModelsNotFoundError
from core.presets import Preset
from workers.pipelines import pick_device, quiet_progress_bars, resident

logger = logging.getLogger(__name__)

# Processors scale an image's short side to the model's input size, so a sliver (say 1x20000 px)
# would become a huge array before the centre crop; no photo or render is that elongated.
MAX_ASPECT_RATIO = 20.0

_Model = TypeVar("_Model", bound=PreTrainedModel)
_Processor = TypeVar("_Processor")


class _ResidentModel(Generic[_Model, _Processor]):
    """A model and its processor, loaded once and kept resident on one device."""

    def __init__(
        self,
        preset: Preset,
        model: _Model,
        processor: _Processor,
        *,
        device: str,
        dtype: torch.dtype,
        load_seconds: float,
    ) -> None:
        self.preset = preset
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.load_seconds = load_seconds
        # One forward pass at a time: two threads would only contend for the same device.
        self.run_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(preset={self.preset.name!r}, device={self.device!r}, dtype={self.dtype})"


class Captioner(_ResidentModel[GitForCausalLM, GitProcessor]):
    """A preset's image-to-text model (GIT) and its processor."""


class Embedder(_ResidentModel[CLIPModel, CLIPProcessor]):
    """A preset's image/text embedding model (CLIP) and its processor."""

    def __init__(self, preset: Preset, model: CLIPModel, processor: CLIPProcessor, **where: Any) -> None:
        super().__init__(preset, model, processor, **where)
        # The tag stored beside every vector, and the vectors' length (checked against the weights on load).
        self.model_id = preset.embedder.model_id
        self.dim = preset.embedder.dim


def load_captioner(preset: Preset, models_dir: Path) -> Captioner:
    """Load `preset`'s captioner from `models_dir` (or the Hugging Face cache) onto the best device."""
    device, dtype = pick_device(preset)
    started = time.perf_counter()
    location = _locate(preset, "captioner", preset.captioner.source, models_dir)
    model = _load_model(GitForCausalLM, preset, "captioner", location, dtype)
    processor = _load_processor(GitProcessor, preset, "captioner", location)
    # transformers wraps `to` in a way type checkers read as unbound.
    model.to(device)  # type: ignore[arg-type]
    load_seconds = time.perf_counter() - started
    logger.info("loaded captioner of preset %s on %s (%s) in %.2f s", preset.name, device, dtype, load_seconds)
    return Captioner(preset, model, processor, device=device, dtype=dtype, load_seconds=load_seconds)


def load_embedder(preset: Preset, models_dir: Path) -> Embedder:
    """Load `preset`'s embedder from `models_dir` (or the Hugging Face cache) onto the best device."""
    device, dtype = pick_device(preset)
    started = time.perf_counter()
    location = _locate(preset, "embedder", preset.embedder.source, models_dir)
    model = _load_model(CLIPModel, preset, "embedder", location, dtype)
    processor = _load_processor(CLIPProcessor, preset, "embedder", location)
    # Stored vectors are tagged with the preset's model id and length: weights of another shape
    # under the same name would put vectors of two spaces under one tag.
    if model.config.projection_dim != preset.embedder.dim:
        raise ValueError(
            f"embedder of preset {preset.name!r} at {location!r} makes {model.config.projection_dim}-dimensional"
            f" vectors; the preset says {preset.embedder.dim}"
        )
    model.to(device)  # type: ignore[arg-type]
    load_seconds = time.perf_counter() - started
    logger.info("loaded embedder of preset %s on %s (%s) in %.2f s", preset.name, device, dtype, load_seconds)
    return Embedder(preset, model, processor, device=device, dtype=dtype, load_seconds=load_seconds)


def get_captioner(preset_name: str, models_dir: Path) -> Captioner:
    """This process's captioner for `preset_name`: loaded on first use, then kept resident."""
    return resident("captioner", preset_name, models_dir, load_captioner)


def get_embedder(preset_name: str, models_dir: Path) -> Embedder:
    """This process's embedder for `preset_name`: loaded on first use, then kept resident."""
    return resident("embedder", preset_name, models_dir, load_embedder)


def check_images(images: object) -> Sequence[PIL.Image.Image]:
    """`images` if it is a list of 1 to MAX_BATCH usable PIL images, else a ValueError naming the culprit."""
    if not isinstance(images, Sequence) or isinstance(images, str | bytes):
        raise ValueError(f"images must be a list of PIL images, got {type(images).__name__}")
    if not 1 <= len(images) <= MAX_BATCH:
        raise ValueError(f"images must hold 1 to {MAX_BATCH} images, got {len(images)}")
    for index, image in enumerate(images):
        if not isinstance(image, PIL.Image.Image):
            raise ValueError(f"images[{index}] must be a PIL image, got {type(image).__name__}")
        width, height = image.size
        if min(width, height) < 1 or max(width, height) > MAX_ASPECT_RATIO * min(width, height):
            raise ValueError(
                f"images[{index}] is {width}x{height}; its sides may differ by a factor of at most {MAX_ASPECT_RATIO:g}"
            )
    return images


def _locate(preset: Preset, role: str, source: str, models_dir: Path) -> str:
    folder = models_dir / source
    if (folder / "config.json").is_file():
        return str(folder)
    if preset.local:
        hint = f"; run `{preset.build_command}`" if preset.build_command else ""
        raise ModelsNotFoundError(f"preset {preset.name!r} has no weights for its {role} in {folder}{hint}")
    return source


def _load_model(model_class: type[_Model], preset: Preset, role: str, location: str, dtype: torch.dtype) -> _Model:
    try:
        with quiet_progress_bars():
            model = model_class.from_pretrained(location, dtype=dtype, local_files_only=True)
    except OSError as exc:
        # A hub id that is not cached fails fast here (local_files_only), never downloads.
        raise ModelsNotFoundError(f"cannot load the {role} of preset {preset.name!r} from {location!r}: {exc}") from exc
    if not isinstance(model, model_class):
        raise TypeError(f"{location!r} holds a {type(model).__name__}, expected {model_class.__name__}")
    return model.eval()


def _load_processor(processor_class: type[_Processor], preset: Preset, role: str, location: str) -> _Processor:
    try:
        processor: Any = AutoProcessor.from_pretrained(location, local_files_only=True)
    except OSError as exc:
        raise ModelsNotFoundError(
            f"cannot load the {role}'s processor of preset {preset.name!r} from {location!r}: {exc}"
        ) from exc
    if not isinstance(processor, processor_class):
        raise TypeError(f"{location!r} holds a {type(processor).__name__}, expected {processor_class.__name__}")
    return processor
