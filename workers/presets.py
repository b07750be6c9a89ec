"""Model presets: which weights each cascade stage, the captioner and the embedder load, and their defaults."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

BASE_64 = "base_64"
SR_256 = "sr_256"
SR_1024 = "sr_1024"
STAGE_NAMES: tuple[str, ...] = (BASE_64, SR_256, SR_1024)


@dataclass(frozen=True)
class StageParams:
    """The sampling parameters of one stage run; `noise_level` is None for the base stage."""

    steps: int
    guidance_scale: float
    noise_level: int | None = None


@dataclass(frozen=True)
class StageSpec:
    """One stage of a cascade: what it produces, where its weights come from, and its defaults."""

    name: str
    resolution: int
    source: str
    default_steps: int
    default_guidance: float
    default_noise_level: int | None = None
    max_noise_level: int | None = None
    # The weight files' variant (e.g. "fp16"), used only where the preset runs in half precision.
    variant: str | None = None

    def default_params(self) -> StageParams:
        """The parameters a request that names none of its own gets."""
        return StageParams(self.default_steps, self.default_guidance, self.default_noise_level)


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
    """A named set of weights for the three-stage cascade, the captioner and the embedder.

    `local` presets are folders under the models dir made by `build_command`; the others are hub ids,
    read from a mirror folder of the same name under the models dir if there is one, else from the
    Hugging Face cache, and never downloaded.
    """

    name: str
    stages: tuple[StageSpec, ...]
    fp16_on_cuda: bool
    local: bool
    build_command: str | None = None
    _: KW_ONLY
    captioner: ModelSpec
    embedder: EmbedderSpec

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

    def default_params(self) -> dict[str, StageParams]:
        """Each stage's default parameters, by stage name."""
        return {spec.name: spec.default_params() for spec in self.stages}


TINY = Preset(
    name="tiny",
    stages=(
        StageSpec(BASE_64, 64, "tiny/stage_1", default_steps=8, default_guidance=7.0),
        StageSpec(
            SR_256,
            256,
            "tiny/stage_2",
            default_steps=5,
            default_guidance=4.0,
            default_noise_level=250,
            max_noise_level=999,
        ),
        StageSpec(
            SR_1024,
            1024,
            "tiny/stage_3",
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
)

DEEPFLOYD_IF = Preset(
    name="deepfloyd-if",
    stages=(
        StageSpec(
            BASE_64,
            64,
            "DeepFloyd/IF-I-XL-v1.0",
            default_steps=50,
            default_guidance=7.0,
            variant="fp16",
        ),
        # IF-II draws its noise level from a 1000-step schedule: any timestep below 1000 is valid.
        StageSpec(
            SR_256,
            256,
            "DeepFloyd/IF-II-L-v1.0",
            default_steps=25,
            default_guidance=4.0,
            default_noise_level=250,
            max_noise_level=999,
            variant="fp16",
        ),
        # The x4 upscaler was trained with noise levels up to 350 only. Its fp32 weights are cast to
        # fp16 on load, as diffusers' IF recipe does, rather than relying on an fp16 variant.
        StageSpec(
            SR_1024,
            1024,
            "stabilityai/stable-diffusion-x4-upscaler",
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

PRESETS: dict[str, Preset] = {preset.name: preset for preset in (TINY, DEEPFLOYD_IF)}


def get_preset(name: str) -> Preset:
    """The preset called `name`."""
    try:
        return PRESETS[name]
    except KeyError:
        allowed = ", ".join(sorted(PRESETS))
        raise ValueError(f"model preset {name!r} is unknown; allowed: {allowed}") from None
