"""Loading a preset's cascade, part by part (the text encoder, then one diffusers pipeline per stage), each
part once per worker process and only in the processes that run it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

# From their modules, not `diffusers`: its lazy top level shows type checkers placeholder classes.
from diffusers.pipelines.deepfloyd_if.pipeline_if import IFPipeline
from diffusers.pipelines.deepfloyd_if.pipeline_if_superresolution import IFSuperResolutionPipeline
from diffusers.pipelines.deepfloyd_if.safety_checker import IFSafetyChecker
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_upscale import (
    StableDiffusionUpscalePipeline,
)
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from core.config import get_settings
from core.model_loads import record_model_load
from core.preset_files import PIPELINE_FILE, ModelsNotFoundError
from core.presets import Preset, StageKind, StageSpec, get_preset

logger = logging.getLogger(__name__)

_Pipeline = TypeVar("_Pipeline", bound=DiffusionPipeline)


class UpscalePipeline(StableDiffusionUpscalePipeline):
    """diffusers' x4 upscaler, able to run the IF safety checker it borrows from stage I.

    The upscaler hands its checker the decoded images as a tensor, but IF's checker blanks a flagged image by
    assigning a NumPy array to it, which a tensor refuses: every flagged image failed its stage. The checker
    gets a NumPy copy here, and the images come back as a tensor, flagged ones black.
    """

    def run_safety_checker(self, image: Any, device: Any, dtype: torch.dtype) -> tuple[Any, Any, Any]:
        if self.safety_checker is None or not isinstance(image, torch.Tensor):
            return super().run_safety_checker(image, device, dtype)
        pil_images = self.image_processor.postprocess(image, output_type="pil")
        clip_input = self.feature_extractor(pil_images, return_tensors="pt").to(device).pixel_values.to(dtype=dtype)
        arrays = image.detach().float().cpu().numpy()
        arrays, nsfw_detected, watermark_detected = self.safety_checker(images=arrays, clip_input=clip_input)
        checked = torch.from_numpy(np.asarray(arrays, dtype=np.float32)).to(device=image.device, dtype=image.dtype)
        return checked, nsfw_detected, watermark_detected


# The diffusers class each kind of stage runs.
PIPELINE_CLASSES: dict[StageKind, type[DiffusionPipeline]] = {
    "if": IFPipeline,
    "if_sr": IFSuperResolutionPipeline,
    "sd_upscale": UpscalePipeline,
}


def _complete_safety_checker_init() -> None:
    """diffusers' IFSafetyChecker, a transformers model, never calls ``post_init``, whose attributes
    (``all_tied_weights_keys``) transformers 5 reads while loading: DeepFloyd IF's stage I and II could not
    load their safety checker. Its constructor finishes the job here, once, where it was left undone."""
    init = IFSafetyChecker.__init__
    if getattr(init, "_completed", False):
        return

    def __init__(self: IFSafetyChecker, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if not hasattr(self, "all_tied_weights_keys"):
            self.post_init()

    __init__._completed = True  # type: ignore[attr-defined]
    IFSafetyChecker.__init__ = __init__  # type: ignore[method-assign]


_complete_safety_checker_init()


TEXT_ENCODER = "text_encoder"
"""The part of a preset that encodes prompts: stage I's frozen text encoder and its tokenizer."""


@dataclass
class Part:
    """One model of a preset resident in this process: the text encoder, or one stage's pipeline."""

    name: str
    pipeline: DiffusionPipeline
    load_seconds: float
    # Schedulers keep per-run state (timesteps), so two threads must not run one pipeline at once.
    run_lock: threading.Lock = field(default_factory=threading.Lock)


class Cascade:
    """Some or all of a preset's parts, on one device: the text encoder and each stage's pipeline by name.

    A worker holds only the parts its queues need (see ``get_cascade``); a stage asks for the part it runs.
    """

    def __init__(self, preset: Preset, parts: Mapping[str, Part], *, device: str, dtype: torch.dtype) -> None:
        known = {TEXT_ENCODER, *(spec.name for spec in preset.stages)}
        unknown = sorted(set(parts) - known)
        if unknown:
            raise ValueError(f"parts {unknown} are not parts of preset {preset.name!r}")
        self.preset = preset
        self.parts = dict(parts)
        self.device = device
        self.dtype = dtype

    @property
    def load_seconds(self) -> float:
        """How long its parts took to load, together."""
        return sum(part.load_seconds for part in self.parts.values())

    @property
    def text_encoder(self) -> IFPipeline:
        """The pipeline that encodes prompts for the whole cascade (stage I's, holding no UNet)."""
        return self.pipeline(TEXT_ENCODER, IFPipeline)

    @property
    def base(self) -> IFPipeline:
        """The base stage's pipeline (holding no text encoder: it takes encoded prompts)."""
        return self.pipeline(self.preset.base_stage.name, IFPipeline)

    def part(self, name: str) -> Part:
        """The part called ``name``; a KeyError that names the parts held when it is not."""
        try:
            return self.parts[name]
        except KeyError:
            raise KeyError(f"this cascade of {self.preset.name!r} holds {sorted(self.parts)}, not {name!r}") from None

    def pipeline(self, name: str, pipeline_class: type[_Pipeline]) -> _Pipeline:
        """The pipeline of the part called ``name``, which must be a ``pipeline_class``."""
        pipeline = self.part(name).pipeline
        if not isinstance(pipeline, pipeline_class):
            raise TypeError(f"{name} runs a {type(pipeline).__name__}, not a {pipeline_class.__name__}")
        return pipeline

    def run_lock(self, name: str) -> threading.Lock:
        """The lock held while the part called ``name`` runs."""
        return self.part(name).run_lock

    def __repr__(self) -> str:
        parts = ", ".join(self.parts)
        return f"Cascade(preset={self.preset.name!r}, parts=[{parts}], device={self.device!r}, dtype={self.dtype})"


def part_names(preset: Preset) -> tuple[str, ...]:
    """Every part of a preset: the text encoder, then each stage."""
    return (TEXT_ENCODER, *(spec.name for spec in preset.stages))


def pick_device(preset: Preset) -> tuple[str, torch.dtype]:
    """CUDA when there is one (in half precision if the preset allows it), else the CPU in fp32."""
    if torch.cuda.is_available():
        return "cuda", torch.float16 if preset.fp16_on_cuda else torch.float32
    return "cpu", torch.float32


def load_cascade(preset: Preset, models_dir: Path, parts: Sequence[str] | None = None) -> Cascade:
    """Load ``parts`` of ``preset`` (all of them by default) from ``models_dir`` (or the Hugging Face
    cache) onto the best device, for this call only; workers keep theirs resident with ``get_cascade``."""
    device, dtype = pick_device(preset)
    loaded: dict[str, Part] = {}
    for name in parts if parts is not None else part_names(preset):
        loaded[name] = load_part(preset, name, models_dir, device, dtype, lend=loaded)
    return Cascade(preset, loaded, device=device, dtype=dtype)


def load_part(
    preset: Preset,
    name: str,
    models_dir: Path,
    device: str,
    dtype: torch.dtype,
    *,
    lend: Mapping[str, Part] | None = None,
) -> Part:
    """Load one part of ``preset`` onto ``device``: the text encoder, or the pipeline of the stage ``name``.

    Stage I's folder holds both the text encoder and the base UNet; each is loaded without the other, so a
    worker that only encodes prompts never holds a UNet and one that only denoises never holds the encoder.
    An x4-upscaler stage borrows stage I's safety modules, from ``lend`` when the base stage is there.
    """
    started = time.perf_counter()
    with quiet_progress_bars():
        pipeline = _load_pipeline(preset, name, models_dir, dtype, lend or {})
    offload = device == "cuda" and get_settings().cpu_offload
    if offload:
        # Each model moves onto the GPU when the pipeline calls it, and back when the next one runs.
        pipeline.enable_model_cpu_offload()
    else:
        pipeline.to(device)
    # Progress is reported through the denoising callback, not tqdm bars in the worker's log.
    pipeline.set_progress_bar_config(disable=True)
    load_seconds = time.perf_counter() - started
    where = f"{device} (offloaded to the CPU between calls)" if offload else device
    logger.info("loaded %s of preset %s on %s (%s) in %.2f s", name, preset.name, where, dtype, load_seconds)
    return Part(name, pipeline, load_seconds)


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


# Stage I's safety modules: the base pipeline runs them on final images, and the x4 upscaler borrows them.
_SAFETY_MODULES = ("safety_checker", "feature_extractor", "watermarker")
# The components of a stage's folder that a part never loads: the text encoder part holds no UNet, IF's
# stages take encoded prompts, and the x4 upscaler gets stage I's safety modules (read with no UNet or
# text encoder when this process does not hold stage I). `models fetch` downloads nothing else.
TEXT_ENCODER_LEAVES_OUT = ("unet", *_SAFETY_MODULES)
LEAVES_OUT: dict[StageKind, tuple[str, ...]] = {
    "if": ("text_encoder", "tokenizer"),
    "if_sr": ("text_encoder", "tokenizer"),
    "sd_upscale": _SAFETY_MODULES,
}
SAFETY_LENDER_LEAVES_OUT = ("unet", "text_encoder", "tokenizer")


def folders_read(preset: Preset, name: str) -> list[tuple[StageSpec, tuple[str, ...]]]:
    """The stage folders (hub repositories) part ``name`` of ``preset`` may read, each with the components
    of its ``model_index.json`` that the part leaves out."""
    base = preset.base_stage
    if name == TEXT_ENCODER:
        return [(base, TEXT_ENCODER_LEAVES_OUT)]
    spec = preset.stage(name)
    folders = [(spec, LEAVES_OUT[spec.kind])]
    if spec.kind == "sd_upscale":
        folders.append((base, SAFETY_LENDER_LEAVES_OUT))
    return folders


def _load_pipeline(
    preset: Preset, name: str, models_dir: Path, dtype: torch.dtype, lend: Mapping[str, Part]
) -> DiffusionPipeline:
    base = preset.base_stage
    if name == TEXT_ENCODER:
        skip = dict.fromkeys(TEXT_ENCODER_LEAVES_OUT)
        return _load_stage(IFPipeline, preset, base, models_dir, dtype, requires_safety_checker=False, **skip)
    spec = preset.stage(name)
    components: dict[str, Any] = {}
    if spec.kind in ("if", "if_sr"):
        # IF's stages take their text embeddings from the text encoder part: no text encoder of their own.
        components = dict.fromkeys(LEAVES_OUT[spec.kind])
    elif spec.kind == "sd_upscale":
        # The x4 upscaler has no safety modules of its own; diffusers' IF recipe lends it stage I's.
        lender: DiffusionPipeline
        if base.name in lend:
            lender = lend[base.name].pipeline
        else:
            skip = dict.fromkeys(SAFETY_LENDER_LEAVES_OUT)
            lender = _load_stage(IFPipeline, preset, base, models_dir, dtype, **skip)
        components = {m: getattr(lender, m) for m in LEAVES_OUT[spec.kind] if getattr(lender, m, None) is not None}
    return _load_stage(PIPELINE_CLASSES[spec.kind], preset, spec, models_dir, dtype, **components)


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


def get_cascade(preset_name: str, models_dir: Path, parts: Sequence[str] | None = None) -> Cascade:
    """This process's ``parts`` of ``preset_name`` (all of them by default), each loaded on first use and
    kept resident: a worker loads only what the stages it runs need, and each part once."""
    preset = get_preset(preset_name)
    device, dtype = pick_device(preset)
    loaded: dict[str, Part] = {}
    for name in parts if parts is not None else part_names(preset):

        def load(preset: Preset, folder: Path, name: str = name) -> Part:
            # Called under the residency lock: an x4 upscaler borrows stage I's modules if this process
            # holds stage I already (a worker serving every queue loads parts in cascade order).
            base_key = (preset.base_stage.name, preset.name, folder)
            lend = {preset.base_stage.name: _resident[base_key]} if base_key in _resident else {}
            return load_part(preset, name, folder, device, dtype, lend=lend)

        loaded[name] = resident(name, preset_name, models_dir, load)
    return Cascade(preset, loaded, device=device, dtype=dtype)


def resident_models() -> list[tuple[str, str]]:
    """The (preset, model) pairs this process holds."""
    with _resident_lock:
        return sorted((preset, role) for role, preset, _ in _resident)


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
    if spec.variant is not None:
        # The files of the variant on every device (`models fetch` downloads no others): a CPU reads the
        # fp16 weights and computes in fp32.
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
