"""Where a preset's weights are: local presets built by their builder, hub presets found without a download.

Imports no model code (the API asks it what is available), only the builder it runs, when it runs one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import cast

from workers.presets import Preset

# What a loader opens first in each folder: a diffusers pipeline's index, a transformers model's config.
PIPELINE_FILE = "model_index.json"
MODEL_FILE = "config.json"


class ModelsNotFoundError(FileNotFoundError):
    """A preset's weights are neither in the models dir nor in the Hugging Face cache."""


def build_preset(preset: Preset, models_dir: Path, *, force: bool = False) -> Path | None:
    """Build a local preset under `models_dir` unless a current build is there; its folder (None: no builder)."""
    if preset.builder is None:
        return None
    module_name, _, function_name = preset.builder.partition(":")
    build = cast(Callable[..., Path], getattr(importlib.import_module(module_name), function_name))
    return build(models_dir, force=force)


def is_available(preset: Preset, models_dir: Path) -> bool:
    """Whether every model of `preset` is on this machine: built under `models_dir`, mirrored there, or cached."""
    components = [(spec.source, PIPELINE_FILE) for spec in preset.stages]
    components += [(preset.captioner.source, MODEL_FILE), (preset.embedder.source, MODEL_FILE)]
    return all(_is_present(preset, source, filename, models_dir) for source, filename in components)


def _is_present(preset: Preset, source: str, filename: str, models_dir: Path) -> bool:
    if (models_dir / source / filename).is_file():
        return True
    if preset.local:
        return False
    from huggingface_hub import try_to_load_from_cache

    # Looks in the local cache only: never a network request.
    return isinstance(try_to_load_from_cache(source, filename), str)
