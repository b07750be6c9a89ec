"""Loading a preset's cascade (one diffusers pipeline per stage), once per worker process."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

# From their modules, not `diffusers`: its lazy top level shows type checkers placeholder classes.
from diffusers.pipelines.deepfloyd_if.pipeline_if import IFPipeline
from diffusers.pipelines.deepfloyd_if.pipeline_if_superresolution import IFSuperResolutionPipeline
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_upscale import (
    StableDiffusionUpscalePipeline,
)
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from core.model_loads import record_model_load
from core.preset_files import PIPELINE_FILE, ModelsNotFoundError
from core.presets import Preset, StageKind, StageSpec, get_preset

logger = logging.getLogger(__name__)

_Pipeline = TypeVar("_Pipeline", bound=DiffusionPipeline)

# The diffusers class each kind of stage runs.
PIPELINE_CLASSES: dict[StageKind, type[DiffusionPipeline]] = {
    "if": IFPipeline,
    "if_sr": IFSuperResolutionPipeline,
    "sd_upscale": StableDiffusionUpscalePipeline,
}


class Cascade:
    """A preset's pipelines, one per stage by stage name, resident on one device."""

    def __init__(
        self,
        preset: Preset,
        pipelines: dict[str, DiffusionPipeline],
        *,
        device: str,
        dtype: torch.dtype,
        load_seconds: float,
    ) -> None:
        missing = [spec.name for spec in preset.stages if spec.name not in pipelines]
        if missing:
            raise ValueError(f"pipelines lacks stages {missing} of preset {preset.name!r}")
        self.preset = preset
        self.pipelines = pipelines
        self.device = device
        self.dtype = dtype
        self.load_seconds = load_seconds
        # Schedulers keep per-run state (timesteps), so two threads must not run a stage at once.
        self.run_lock = threading.Lock()

    @property
    def base(self) -> IFPipeline:
        """The base stage's pipeline, whose text encoder encodes prompts for the whole cascade."""
        return self.pipeline(self.preset.base_stage.name, IFPipeline)

    def pipeline(self, stage: str, pipeline_class: type[_Pipeline]) -> _Pipeline:
        """The pipeline of the stage called `stage`, which must be a `pipeline_class`."""
        pipeline = self.pipelines[self.preset.stage(stage).name]
        if not isinstance(pipeline, pipeline_class):
            raise TypeError(f"stage {stage} runs a {type(pipeline).__name__}, not a {pipeline_class.__name__}")
        return pipeline

    def __repr__(self) -> str:
        return f"Cascade(preset={self.preset.name!r}, device={self.device!r}, dtype={self.dtype})"


def pick_device(preset: Preset) -> tuple[str, torch.dtype]:
    """CUDA when there is one (in half precision if the preset allows it), else the CPU in fp32."""
    if torch.cuda.is_available():
        return "cuda", torch.float16 if preset.fp16_on_cuda else torch.float32
    return "cpu", torch.float32


def load_cascade(preset: Preset, models_dir: Path) -> Cascade:
    """Load `preset`'s pipelines from `models_dir` (or the Hugging Face cache) onto the best device."""
    device, dtype = pick_device(preset)
    started = time.perf_counter()
    with quiet_progress_bars():
        pipelines = _load_stages(preset, models_dir, dtype)

    # Progress is reported through the denoising callback, not tqdm bars in the worker's log.
    for pipeline in pipelines.values():
        pipeline.to(device)
        pipeline.set_progress_bar_config(disable=True)

    load_seconds = time.perf_counter() - started
    logger.info("loaded preset %s on %s (%s) in %.2f s", preset.name, device, dtype, load_seconds)
    return Cascade(preset, pipelines, device=device, dtype=dtype, load_seconds=load_seconds)


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Silence the loading and saving bars of diffusers and transformers for the block's duration."""
    diffusers_on = diffusers_logging.is_progress_bar_enabled()
    transformers_on = transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if diffusers_on:
            diffusers_logging.enable_progress_bar()
        if transformers_on:
            transformers_logging.enable_progress_bar()


def _load_stages(preset: Preset, models_dir: Path, dtype: torch.dtype) -> dict[str, DiffusionPipeline]:
    base = _load_stage(IFPipeline, preset, preset.base_stage, models_dir, dtype)
    pipelines: dict[str, DiffusionPipeline] = {preset.base_stage.name: base}
    for spec in preset.stages[1:]:
        components: dict[str, Any] = {}
        if spec.kind == "if_sr":
            # IF's super-resolution stages get their text embeddings from stage I: no text encoder of their own.
            components = {"text_encoder": None, "tokenizer": None}
        elif spec.kind == "sd_upscale":
            # The x4 upscaler has no safety modules of its own; diffusers' IF recipe lends it stage I's.
            components = {
                name: getattr(base, name, None)
                for name in ("safety_checker", "feature_extractor", "watermarker")
                if getattr(base, name, None) is not None
            }
        pipelines[spec.name] = _load_stage(PIPELINE_CLASSES[spec.kind], preset, spec, models_dir, dtype, **components)
    return pipelines


class _Loaded(Protocol):
    load_seconds: float


_Resident = TypeVar("_Resident", bound=_Loaded)
_resident: dict[tuple[str, str, Path], Any] = {}
_resident_lock = threading.Lock()


def resident(role: str, preset_name: str, models_dir: Path, load: Callable[[Preset, Path], _Resident]) -> _Resident:
    """This process's ``role`` model of a preset: loaded on first use (its load time published), then kept."""
    key = (role, preset_name, models_dir.expanduser().resolve())
    with _resident_lock:
        model: _Resident | None = _resident.get(key)
        if model is None:
            model = load(get_preset(preset_name), key[2])
            _resident[key] = model
            record_model_load(preset_name, role, model.load_seconds)
        return model


def get_cascade(preset_name: str, models_dir: Path) -> Cascade:
    """This process's cascade for `preset_name`: loaded on first use, then kept resident."""
    return resident("cascade", preset_name, models_dir, load_cascade)


def _load_stage(
    pipeline_class: type[_Pipeline],
    preset: Preset,
    spec: StageSpec,
    models_dir: Path,
    dtype: torch.dtype,
    **components: Any,
) -> _Pipeline:
    location = _locate(preset, spec, models_dir)
    options: dict[str, Any] = {"dtype": dtype, "local_files_only": True, **components}
    if dtype == torch.float16 and spec.variant is not None:
        options["variant"] = spec.variant
    try:
        pipeline = pipeline_class.from_pretrained(location, **options)
    except OSError as exc:
        # A hub id that is not cached fails fast here (local_files_only), never downloads.
        raise ModelsNotFoundError(
            f"cannot load stage {spec.name} of preset {preset.name!r} from {location!r}: {exc}"
        ) from exc
    if not isinstance(pipeline, pipeline_class):
        raise TypeError(f"{location!r} holds a {type(pipeline).__name__}, expected {pipeline_class.__name__}")
    return pipeline


def _locate(preset: Preset, spec: StageSpec, models_dir: Path) -> str:
    folder = models_dir / spec.source
    if (folder / PIPELINE_FILE).is_file():
        return str(folder)
    if preset.local:
        hint = f"; run `{preset.build_command}`" if preset.build_command else ""
        raise ModelsNotFoundError(f"preset {preset.name!r} has no weights for stage {spec.name} in {folder}{hint}")
    return spec.source
