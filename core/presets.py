"""Model presets: which weights each cascade stage, the captioner and the embedder load, and their defaults.

A preset is data, not a code path: its stages say which pipeline kind each one runs, and everything
else (the request's parameter keys, the Celery task and queue of a stage, the stage function) follows
from that.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Literal, Protocol, get_args

from core.limits import MAX_NOISE_LEVEL

StageKind = Literal["if", "if_sr", "sd_upscale"]
"""The pipeline a stage runs: `if` an IFPipeline (the base stage, text to image), `if_sr` an
IFSuperResolutionPipeline (fed the base stage's prompt embeddings), `sd_upscale` a
StableDiffusionUpscalePipeline (the x4 upscaler, which encodes the prompt itself)."""

STAGE_KINDS: tuple[StageKind, ...] = get_args(StageKind)
BASE_KIND: StageKind = "if"
BASE_REQUEST_KEY = "base"


@dataclass(frozen=True)
class StageParams:
    """The sampling parameters of one stage run; `noise_level` is None for the base stage."""

    steps: int
    guidance_scale: float
    noise_level: int | None = None


class StageOverrides(Protocol):
    """Parameters a caller chose for a stage; None leaves one to the stage's default."""

    @property
    def steps(self) -> int | None: ...

    @property
    def guidance_scale(self) -> float | None: ...

    @property
    def noise_level(self) -> int | None: ...


@dataclass(frozen=True)
class StageSpec:
    """One stage of a cascade: what it produces, where its weights come from, and its defaults."""

    name: str
    resolution: int
    source: str
    kind: StageKind
    default_steps: int
    default_guidance: float
    default_noise_level: int | None = None
    max_noise_level: int | None = None
    # The weight files' variant (e.g. "fp16"), used only where the preset runs in half precision.
    variant: str | None = None

    @property
    def is_base(self) -> bool:
        """Whether this stage makes images from text alone (the first stage of a preset)."""
        return self.kind == BASE_KIND


@dataclass(frozen=True)
class ModelSpec:
    """A single transformers model of a preset (the captioner): where its weights and processor come from."""

    source: str


@dataclass(frozen=True)
class EmbedderSpec:
    """The image/text embedding model of a preset, and how the vectors it makes are tagged when stored.

    Vectors of different models live in unrelated spaces: `model_id` names the space, so that stored
    vectors are only ever compared with vectors of the same model, and `dim` is their length.
    """

    source: str
    model_id: str
    dim: int


@dataclass(frozen=True)
class Preset:
    """A named set of weights for a cascade, the captioner and the embedder.

    The first stage is the base stage (kind `if`); each later one is a super-resolution stage that
    upscales the one before it. `local` presets are folders under the models dir made by `builder`
    (a `"module:function"` called with the models dir and `force=`; `build_command` is how a person
    runs it); the others are hub ids, read from a mirror folder of the same name under the models dir
    if there is one, else from the Hugging Face cache, and never downloaded.
    """

    name: str
    stages: tuple[StageSpec, ...]
    fp16_on_cuda: bool
    local: bool
    build_command: str | None = None
    _: KW_ONLY
    captioner: ModelSpec
    embedder: EmbedderSpec
    builder: str | None = None

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError(f"preset {self.name!r} has no stages")
        kinds = [spec.kind for spec in self.stages]
        if any(kind not in STAGE_KINDS for kind in kinds):
            raise ValueError(f"preset {self.name!r}: stage kinds must be among {STAGE_KINDS}, got {kinds}")
        if kinds[0] != BASE_KIND or BASE_KIND in kinds[1:]:
            raise ValueError(f"preset {self.name!r}: the first stage, and only it, must be of kind {BASE_KIND!r}")
        resolutions = [spec.resolution for spec in self.stages]
        if any(low >= high for low, high in itertools.pairwise(resolutions)):
            raise ValueError(f"preset {self.name!r}: stage resolutions must increase, got {resolutions}")
        names = [spec.name for spec in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"preset {self.name!r}: stage names must be distinct, got {names}")
        for spec in self.stages:
            # The base stage takes no noise level; a super-resolution stage needs a default and a cap.
            noise = (spec.default_noise_level, spec.max_noise_level)
            if spec.is_base != (noise == (None, None)) or (not spec.is_base and None in noise):
                raise ValueError(
                    f"preset {self.name!r}: stage {spec.name} ({spec.kind}) must have"
                    f" {'no' if spec.is_base else 'a default and a maximum'} noise level, got {noise}"
                )
            if (spec.max_noise_level or 0) > MAX_NOISE_LEVEL:
                raise ValueError(f"preset {self.name!r}: stage {spec.name} caps noise above {MAX_NOISE_LEVEL}")

    @property
    def embedder_id(self) -> str:
        """The tag of this preset's embedding space, stored beside every vector it makes."""
        return self.embedder.model_id

    def stage(self, name: str) -> StageSpec:
        """The stage called `name`."""
        for spec in self.stages:
            if spec.name == name:
                return spec
        allowed = ", ".join(spec.name for spec in self.stages)
        raise ValueError(f"stage {name!r} is not one of preset {self.name!r}'s stages ({allowed})")

    def stages_up_to(self, resolution: int) -> tuple[StageSpec, ...]:
        """The stages that run for a request of `resolution`: the cascade stops at the one producing it."""
        resolutions = [spec.resolution for spec in self.stages]
        if resolution not in resolutions:
            raise ValueError(f"resolution must be one of {resolutions}, got {resolution!r}")
        return self.stages[: resolutions.index(resolution) + 1]

    def final_stage(self, resolution: int) -> StageSpec:
        """The stage whose images a request of `resolution` gets: the last one that runs."""
        return self.stages_up_to(resolution)[-1]

    def resolve_params(
        self, resolution: int, chosen: Mapping[str, StageOverrides] | None = None
    ) -> dict[str, StageParams]:
        """The parameters of every stage that runs for `resolution`, by stage name: what `chosen` (by stage
        name) sets, else the stage's default. A base stage never gets a noise level."""
        chosen = chosen or {}
        names = [spec.name for spec in self.stages]
        unknown = sorted(set(chosen) - set(names))
        if unknown:
            raise ValueError(f"params has unknown stages {unknown}; allowed: {names}")
        resolved: dict[str, StageParams] = {}
        for spec in self.stages_up_to(resolution):
            given = chosen.get(spec.name)
            steps, guidance, noise = (None, None, None)
            if given is not None:
                steps, guidance, noise = given.steps, given.guidance_scale, given.noise_level
            resolved[spec.name] = StageParams(
                spec.default_steps if steps is None else steps,
                spec.default_guidance if guidance is None else guidance,
                None if spec.is_base else (spec.default_noise_level if noise is None else noise),
            )
        return resolved

    @property
    def base_stage(self) -> StageSpec:
        """The stage that makes images from the prompt; every other stage upscales the one before it."""
        return self.stages[0]

    @property
    def final_resolution(self) -> int:
        """The resolution of the last stage: what a request that names none gets."""
        return self.stages[-1].resolution

    def request_key(self, spec: StageSpec) -> str:
        """The key of `spec`'s parameters in a request's `input.stages`: `base`, or `sr<resolution>`."""
        return BASE_REQUEST_KEY if spec.is_base else f"sr{spec.resolution}"

    def request_keys(self) -> dict[str, StageSpec]:
        """Every stage by the key of its parameters in a request, in cascade order."""
        return {self.request_key(spec): spec for spec in self.stages}


TINY = Preset(
    name="tiny",
    stages=(
        StageSpec("base_64", 64, "tiny/stage_1", "if", default_steps=8, default_guidance=7.0),
        StageSpec(
            "sr_256",
            256,
            "tiny/stage_2",
            "if_sr",
            default_steps=5,
            default_guidance=4.0,
            default_noise_level=250,
            max_noise_level=999,
        ),
        StageSpec(
            "sr_1024",
            1024,
            "tiny/stage_3",
            "sd_upscale",
            default_steps=5,
            default_guidance=9.0,
            default_noise_level=100,
            max_noise_level=350,
        ),
    ),
    # Random weights overflow easily in half precision, and these are small enough for fp32 anywhere.
    fp16_on_cuda=False,
    local=True,
    build_command="imagen-queue models build-tiny",
    captioner=ModelSpec("tiny/caption"),
    # The version in the id changes whenever the tiny CLIP's weights do (see workers/tiny_models.py),
    # so vectors indexed by an older build are never ranked against the new model's.
    embedder=EmbedderSpec("tiny/embed", model_id="tiny-clip-1", dim=64),
    builder="workers.tiny_models:build_tiny",
)

# Small models trained on this project's synthetic scenes (see training/), committed under
# models/toy/ and assembled with the pretrained all-MiniLM-L6-v2 as stage I's frozen text encoder.
TOY = Preset(
    name="toy",
    stages=(
        StageSpec("base_32", 32, "toy/stage_1", "if", default_steps=20, default_guidance=4.0),
        StageSpec(
            "sr_128",
            128,
            "toy/stage_2",
            "if_sr",
            default_steps=10,
            default_guidance=1.0,
            default_noise_level=100,
            max_noise_level=400,
        ),
    ),
    fp16_on_cuda=True,
    local=True,
    build_command="imagen-queue models build-toy",
    captioner=ModelSpec("toy/caption"),
    # As for tiny: a new id whenever the toy CLIP's weights change meaning.
    embedder=EmbedderSpec("toy/embed", model_id="toy-clip-1", dim=64),
    builder="workers.toy_models:build_toy",
)

DEEPFLOYD_IF = Preset(
    name="deepfloyd-if",
    stages=(
        StageSpec(
            "base_64",
            64,
            "DeepFloyd/IF-I-XL-v1.0",
            "if",
            default_steps=50,
            default_guidance=7.0,
            variant="fp16",
        ),
        # IF-II draws its noise level from a 1000-step schedule: any timestep below 1000 is valid.
        StageSpec(
            "sr_256",
            256,
            "DeepFloyd/IF-II-L-v1.0",
            "if_sr",
            default_steps=25,
            default_guidance=4.0,
            default_noise_level=250,
            max_noise_level=999,
            variant="fp16",
        ),
        # The x4 upscaler was trained with noise levels up to 350 only. Its fp32 weights are cast to
        # fp16 on load, as diffusers' IF recipe does, rather than relying on an fp16 variant.
        StageSpec(
            "sr_1024",
            1024,
            "stabilityai/stable-diffusion-x4-upscaler",
            "sd_upscale",
            default_steps=25,
            default_guidance=9.0,
            default_noise_level=100,
            max_noise_level=350,
        ),
    ),
    fp16_on_cuda=True,
    local=False,
    captioner=ModelSpec("microsoft/git-base-coco"),
    embedder=EmbedderSpec("openai/clip-vit-base-patch32", model_id="openai/clip-vit-base-patch32", dim=512),
)

PRESETS: dict[str, Preset] = {preset.name: preset for preset in (TINY, TOY, DEEPFLOYD_IF)}


def get_preset(name: str) -> Preset:
    """The preset called `name`."""
    try:
        return PRESETS[name]
    except KeyError:
        allowed = ", ".join(sorted(PRESETS))
        raise ValueError(f"model preset {name!r} is unknown; allowed: {allowed}") from None
