"""Whether a preset's weights are on this machine: built or mirrored under the models dir, or in the Hugging Face
cache. Reads file names only (the API asks it), never a model, and never downloads.
"""

from pathlib import Path

from core.presets import Preset

# What a loader opens first in each folder: a diffusers pipeline's index, a transformers model's config.
PIPELINE_FILE = "model_index.json"
MODEL_FILE = "config.json"


class ModelsNotFoundError(FileNotFoundError):
    """A preset's weights are neither in the models dir nor in the Hugging Face cache."""


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
