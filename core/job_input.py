"""A job's input as it runs: resolved once at submission, stored as the job's ``input``, read back by workers.

The API fills in everything a request left out (the seed, the resolution, each stage's parameters) and
stores the result; a worker reads the same type back, so it never guesses a default or casts a field.
"""

from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_serializer

from core.presets import Preset, StageParams, StageSpec

# What a caption job (or a generate job's auto-caption) runs with unless the request says otherwise.
DEFAULT_MAX_NEW_TOKENS = 30
DEFAULT_NUM_BEAMS = 1
# The collection an index job (or a generate job's auto-index) adds to unless the request names one.
DEFAULT_COLLECTION = "default"

# How a generate job's final images are stored: the media type and the key's file extension of each format.
# Intermediate images are always PNG: the next stage reads them, and they must not lose a bit.
OutputFormat = Literal["png", "webp", "jpeg"]
OUTPUT_FORMATS: dict[str, tuple[str, str]] = {
    "png": ("image/png", "png"),
    "webp": ("image/webp", "webp"),
    "jpeg": ("image/jpeg", "jpg"),
}
LOSSLESS_FORMATS = frozenset({"png"})
# The quality of a lossy final image (WebP or JPEG) unless the request names one.
DEFAULT_OUTPUT_QUALITY = 90


class _Stored(BaseModel):
    # Frozen: a worker never edits the input it was given. Unknown keys are kept out, so an older row
    # with a field this version dropped still reads.
    model_config = ConfigDict(frozen=True, extra="ignore")


class GenerateSpec(_Stored):
    """What a generate job draws: every stage up to ``resolution``, by stage name, with its parameters."""

    prompt: str
    negative_prompt: str | None = None
    num_images: int
    seed: int
    resolution: int
    stages: dict[str, StageParams]
    caption: bool = False
    index: bool = False
    # Older rows have neither: their images are PNG.
    output_format: OutputFormat = "png"
    output_quality: int | None = None

    @field_serializer("stages")
    def _stages_as_stored(self, stages: dict[str, StageParams]) -> dict[str, dict[str, Any]]:
        # A base stage has no noise level: its row says nothing of one (as clients have always seen it).
        return {
            name: {key: value for key, value in asdict(params).items() if value is not None}
            for name, params in stages.items()
        }

    def final_stage(self, preset: Preset) -> StageSpec:
        """The cascade stage whose images are the job's result."""
        return preset.final_stage(self.resolution)

    def image_format(self, stage: str, preset: Preset) -> OutputFormat:
        """The format ``stage``'s images are stored in: the requested one for the final stage, else PNG."""
        return self.output_format if stage == self.final_stage(preset).name else "png"

    def image_seed(self, index: int) -> int:
        """The seed of the job's image ``index``: each image depends on its own seed only."""
        return self.seed + index


ImageSource = Literal["base64", "url", "artifact"]


class InputImage(_Stored):
    """A client's image, checked and stored by the API before the job was recorded."""

    key: str
    sha256: str
    width: int
    height: int
    mime: str
    source: ImageSource


class CaptionSpec(_Stored):
    """An image to describe in words, and how."""

    image: InputImage
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    num_beams: int = DEFAULT_NUM_BEAMS


class IndexSpec(_Stored):
    """An image (and optional text) to add to one of the tenant's collections."""

    image: InputImage
    text: str | None = None
    collection: str = DEFAULT_COLLECTION


JobSpec = GenerateSpec | CaptionSpec | IndexSpec
_SPECS: dict[str, type[JobSpec]] = {"generate": GenerateSpec, "caption": CaptionSpec, "index": IndexSpec}
JOB_KINDS: tuple[str, ...] = tuple(_SPECS)


def read_job_input(kind: str, data: dict[str, Any]) -> JobSpec:
    """A job's stored ``input``, as the type of its ``kind``."""
    try:
        spec = _SPECS[kind]
    except KeyError:
        raise ValueError(f"kind must be one of {', '.join(_SPECS)}, got {kind!r}") from None
    return spec.model_validate(data)


def stored_input(spec: JobSpec) -> dict[str, Any]:
    """What a job row's ``input`` column holds for ``spec``."""
    return spec.model_dump(mode="json")
