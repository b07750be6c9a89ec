"""``imagen-queue models fetch PRESET``: put a preset's weights where the workers read them.

A hub preset (``deepfloyd-if``) is downloaded into the Hugging Face cache (``HF_HOME``, or ``HF_HUB_CACHE``),
which the workers read with ``local_files_only`` and never fill themselves. Only the files the worker's
loader opens are fetched: for each repository, the folders of the components its parts load (from the
repository's ``model_index.json``, less what ``workers.pipelines.folders_read`` says each part leaves
out), and in each folder its configs, tokenizer files and one set of weights: the preset's variant
(``fp16``) in safetensors where the repository has it, else the plain safetensors, else ``.bin``.
``tests/workers/test_hub_layout.py`` holds this list to what the loader opens. A local preset (``tiny``,
``toy``) is built instead.

The token is ``HF_TOKEN``: DeepFloyd IF is gated, so it must belong to an account that accepted its licence.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.presets import Preset, get_preset

MODEL_INDEX = "model_index.json"
# Weight files as diffusers and transformers name them: `<stem>[.<variant>][-00001-of-00002].<format>`,
# and their shard indexes, `<stem>.<format>.index[.<variant>].json`.
_STEMS = "(?:diffusion_pytorch_model|pytorch_model|model)"
_SHARD = r"(?:-\d{5}-of-\d{5})?"
_FORMATS = ("safetensors", "bin")
# What else a loader reads from a folder: configs (model, scheduler, processor, generation), tokenizer files.
_READ_SUFFIXES = (".json", ".txt", ".model", ".jinja")
_NEVER_READ_PREFIXES = ("README", "LICENSE", ".")
# A fast tokenizer is built from tokenizer.json alone; the slow one's vocabularies are read only without it.
_FAST_TOKENIZER = "tokenizer.json"
_SLOW_VOCABULARIES = ("vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")


@dataclass(frozen=True)
class RepoNeeds:
    """One hub repository of a preset: whether it is a diffusers pipeline (folders by component, listed in
    its ``model_index.json``) or a single transformers model (files at its root), the weights variant its
    loader asks for, and the pipeline components no part of the preset loads."""

    repo_id: str
    pipeline: bool
    variant: str | None = None
    left_out: frozenset[str] = frozenset()


def preset_repos(preset: Preset) -> list[RepoNeeds]:
    """Every hub repository ``preset`` loads from, as the worker's loader reads them."""
    from workers.pipelines import folders_read, part_names

    # A component is fetched if any part that reads its repository loads it.
    left_out: dict[str, set[str]] = {}
    variants: dict[str, str | None] = {}
    for part in part_names(preset):
        for spec, leaves in folders_read(preset, part):
            left_out[spec.source] = left_out.get(spec.source, set(leaves)) & set(leaves)
            variants[spec.source] = spec.variant
    repos = [RepoNeeds(repo, True, variants[repo], frozenset(skip)) for repo, skip in left_out.items()]
    repos += [RepoNeeds(source, False) for source in (preset.captioner.source, preset.embedder.source)]
    return repos


def allow_patterns(needs: RepoNeeds, repo_files: Sequence[str], model_index: Mapping[str, Any] | None) -> list[str]:
    """The files of a repository (``repo_files``, as the hub lists them) that its loader opens, as
    ``snapshot_download`` patterns: exact paths, so nothing else matches."""
    if not needs.pipeline:
        return sorted(folder_files(repo_files, "", None))
    if model_index is None:
        raise ValueError(f"{needs.repo_id} is a pipeline and needs its {MODEL_INDEX}")
    wanted = [MODEL_INDEX]
    for component, entry in model_index.items():
        # `_class_name`, `_diffusers_version`; a component saved as [null, null] is not part of the pipeline.
        if component.startswith("_") or component in needs.left_out:
            continue
        if not isinstance(entry, list) or None in entry:
            continue
        wanted += folder_files(repo_files, f"{component}/", needs.variant)
    return sorted(wanted)


def folder_files(repo_files: Sequence[str], folder: str, variant: str | None) -> list[str]:
    """What a loader reads of one folder (``""``: the repository's root): its configs, its tokenizer files
    (``tokenizer.json`` alone where there is one), and one set of weights (see ``_weights``)."""
    names = [path[len(folder) :] for path in repo_files if path.startswith(folder) and "/" not in path[len(folder) :]]
    read = [
        name
        for name in names
        if name.endswith(_READ_SUFFIXES)
        and not name.startswith(_NEVER_READ_PREFIXES)
        and ".index" not in name
        and name != MODEL_INDEX
    ]
    if _FAST_TOKENIZER in read:
        read = [name for name in read if name not in _SLOW_VOCABULARIES]
    return [folder + name for name in [*read, *_weights(names, variant)]]


def _weights(names: Collection[str], variant: str | None) -> list[str]:
    # diffusers' and transformers' own preference: the variant if the folder has it, safetensors over .bin.
    for fmt in _FORMATS:
        for tag in ([re.escape(variant)] if variant else []) + [None]:
            infix = rf"\.{tag}" if tag else ""
            files = re.compile(rf"^{_STEMS}{infix}{_SHARD}\.{fmt}$")
            index = re.compile(rf"^{_STEMS}\.{fmt}\.index{infix}\.json$")
            found = [name for name in names if files.match(name)]
            if found:
                return sorted(found + [name for name in names if index.match(name)])
    return []


def fetch_preset(
    preset_name: str,
    *,
    token: str | None = None,
    cache_dir: Path | None = None,
    out: Callable[[str], None] = print,
) -> list[Path]:
    """Download every repository of a hub preset, only the files its loader opens, into the Hugging Face
    cache (``cache_dir``, default: where ``HF_HOME`` puts it); the snapshot folders."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    preset = get_preset(preset_name)
    api = HfApi(token=token)
    folders: list[Path] = []
    for needs in preset_repos(preset):
        files = api.list_repo_files(needs.repo_id)
        model_index = None
        if needs.pipeline:
            path = hf_hub_download(needs.repo_id, MODEL_INDEX, token=token, cache_dir=cache_dir)
            model_index = json.loads(Path(path).read_text())
        patterns = allow_patterns(needs, files, model_index)
        out(f"{needs.repo_id}: {len(patterns)} files")
        folder = snapshot_download(needs.repo_id, allow_patterns=patterns, token=token, cache_dir=cache_dir)
        folders.append(Path(folder))
    return folders


def models_fetch(preset_name: str, models_dir: Path | None = None) -> int:
    """The ``models fetch`` command: a hub preset downloaded, a local one built; 0 when its weights are ready."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    from core.config import get_settings
    from core.preset_files import ModelsNotFoundError, is_available

    try:
        preset = get_preset(preset_name)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    target = models_dir or get_settings().resolved_models_dir
    if preset.local:
        from workers.preset_files import build_preset

        try:
            folder = build_preset(preset, target)
        except ModelsNotFoundError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"{preset.name} preset ready in {folder}")
        return 0
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        print("models fetch: HF_HUB_OFFLINE is set; unset it to download", file=sys.stderr)
        return 1
    try:
        fetch_preset(preset.name, token=os.environ.get("HF_TOKEN") or None)
    except GatedRepoError as exc:
        print(
            f"models fetch: {exc.response.url if exc.response is not None else exc} is gated: accept its licence on"
            " huggingface.co with the account of HF_TOKEN, and set HF_TOKEN",
            file=sys.stderr,
        )
        return 1
    except (RepositoryNotFoundError, HfHubHTTPError) as exc:
        print(f"models fetch: {exc}", file=sys.stderr)
        return 1
    if not is_available(preset, target):
        print(f"models fetch: {preset.name} is still not complete in the Hugging Face cache", file=sys.stderr)
        return 1
    print(f"{preset.name} preset ready in the Hugging Face cache")
    return 0
