"""Commands for model presets: build-tiny, build-toy, models list."""

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from cli.output import print_json, print_table

_models_dir = click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None)


@click.group()
def models() -> None:
    """Model presets."""


@models.command(name="build-tiny")
@_models_dir
@click.option("--force", is_flag=True)
def build_tiny_command(models_dir: Path | None, force: bool) -> int:
    """Build the random-weight tiny preset (no download)."""
    from core.config import get_settings
    from workers.tiny_models import build_tiny

    folder = build_tiny(models_dir or get_settings().resolved_models_dir, force=force)
    print(f"tiny preset ready in {folder}")
    return 0


@models.command(name="build-toy")
@_models_dir
@click.option("--force", is_flag=True)
def build_toy_command(models_dir: Path | None, force: bool) -> int:
    """Assemble the toy preset from the committed weights (models/toy/) and all-MiniLM-L6-v2."""
    from core.config import get_settings
    from core.preset_files import ModelsNotFoundError
    from workers.toy_models import build_toy

    try:
        folder = build_toy(models_dir or get_settings().resolved_models_dir, force=force)
    except ModelsNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"toy preset ready in {folder}")
    return 0


@models.command(name="list")
@_models_dir
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of text")
def models_list(models_dir: Path | None, as_json: bool) -> int:
    """List the presets, their stages, and which are available here."""
    import os

    from core.config import get_settings
    from core.preset_files import is_available
    from core.presets import PRESETS

    settings = get_settings()
    models_dir = models_dir or settings.resolved_models_dir
    if os.environ.get("IMAGEN_MODEL_PRESET"):
        active, note = settings.model_preset, "IMAGEN_MODEL_PRESET"
    else:
        from cli.embedded import default_model_preset

        active = default_model_preset(models_dir)
        note = f"what `imagen-queue up` runs here; other processes default to {settings.model_preset}"
    if as_json:
        print_json(
            {
                "models_dir": str(models_dir),
                "active": active,
                "presets": [
                    {
                        "name": name,
                        "available": is_available(preset, models_dir),
                        "local": preset.local,
                        "stages": [
                            {
                                "name": spec.name,
                                "resolution": spec.resolution,
                                "kind": spec.kind,
                                "request_key": preset.request_key(spec),
                                "default_steps": spec.default_steps,
                                "default_guidance": spec.default_guidance,
                                "default_noise_level": spec.default_noise_level,
                                "max_noise_level": spec.max_noise_level,
                            }
                            for spec in preset.stages
                        ],
                        "captioner": preset.captioner.source,
                        "embedder": {"model_id": preset.embedder.model_id, "dim": preset.embedder.dim},
                    }
                    for name, preset in PRESETS.items()
                ],
            }
        )
        return 0
    print(f"models dir: {models_dir}")
    print(f"active preset: {active} ({note})")
    for name, preset in PRESETS.items():
        available = "available" if is_available(preset, models_dir) else "not available"
        if not preset.local:
            how = "read from the models dir or the Hugging Face cache, never downloaded"
        else:
            how = f"build: {preset.build_command}"
        print(f"\n{name}{'  [active]' if name == active else ''}  {available}  ({how})")
        rows = [
            (
                spec.name,
                str(spec.resolution),
                spec.kind,
                preset.request_key(spec),
                str(spec.default_steps),
                f"{spec.default_guidance:g}",
                "-" if spec.max_noise_level is None else f"{spec.default_noise_level} (max {spec.max_noise_level})",
            )
            for spec in preset.stages
        ]
        print_table(("  STAGE", "PX", "KIND", "REQUEST KEY", "STEPS", "GUIDANCE", "NOISE LEVEL"), _indent(rows))
        embedder = preset.embedder
        print(f"  captioner {preset.captioner.source}; embedder {embedder.source}", end="")
        print(f" ({embedder.model_id}, {embedder.dim} dims)")
    return 0


def _indent(rows: Sequence[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [(f"  {row[0]}", *row[1:]) for row in rows]


@models.command(name="fetch")
@click.argument("preset")
@_models_dir
def fetch_command(preset: str, models_dir: Path | None) -> int:
    """Download a hub preset's weights into the Hugging Face cache (token from HF_TOKEN), or build a local one."""
    from cli.models_fetch import models_fetch

    return models_fetch(preset, models_dir)


COMMANDS = [models]
