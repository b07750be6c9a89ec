"""Commands for model presets: build-tiny, build-toy, models list."""

import argparse
import sys
from collections.abc import Sequence

from cli.tables import print_table


def cmd_build_tiny(args: argparse.Namespace) -> int:
    from core.config import get_settings
    from workers.tiny_models import build_tiny

    folder = build_tiny(args.models_dir or get_settings().resolved_models_dir, force=args.force)
    print(f"tiny preset ready in {folder}")
    return 0


def cmd_build_toy(args: argparse.Namespace) -> int:
    from core.config import get_settings
    from core.preset_files import ModelsNotFoundError
    from workers.toy_models import build_toy

    try:
        folder = build_toy(args.models_dir or get_settings().resolved_models_dir, force=args.force)
    except ModelsNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"toy preset ready in {folder}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    import os

    from core.config import get_settings
    from core.preset_files import is_available
    from core.presets import PRESETS

    settings = get_settings()
    models_dir = args.models_dir or settings.resolved_models_dir
    if os.environ.get("IMAGEN_MODEL_PRESET"):
        active, note = settings.model_preset, "IMAGEN_MODEL_PRESET"
    else:
        from cli.embedded import default_model_preset

        active = default_model_preset(models_dir)
        note = f"what `imagen-queue up` runs here; other processes default to {settings.model_preset}"
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
