"""Building a local preset's weights with the builder it names."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import cast

from core.presets import Preset


def build_preset(preset: Preset, models_dir: Path, *, force: bool = False) -> Path | None:
    """Build a local preset under `models_dir` unless a current build is there; its folder (None: no builder)."""
    if preset.builder is None:
        return None
    module_name, _, function_name = preset.builder.partition(":")
    build = cast(Callable[..., Path], getattr(importlib.import_module(module_name), function_name))
    return build(models_dir, force=force)
