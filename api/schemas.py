"""Request and response schemas, separate from the ORM rows. Validation lives here."""

import json
import math
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from api.images import ImageInput
from core.job_input import (
    DEFAULT_COLLECTION,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_NUM_BEAMS,
    DEFAULT_OUTPUT_QUALITY,
    OutputFormat,
)
from core.job_view import JobPublic
from core.limits import (
    MAX_BEAMS,
    MAX_GUIDANCE,
    MAX_IMAGES_PER_JOB,
    MAX_METADATA_BYTES,
    MAX_NEW_TOKENS,
    MAX_NOISE_LEVEL,
    MAX_PRIORITY,
    MAX_PROMPT_CHARS,
    MAX_SEARCH_RESULTS,
    MAX_SEED,
    MAX_STEPS,
)
from core.presets import PRESETS, Preset, StageKind


def _storable_json(value: Any, path: str = "") -> None:
    """A ValueError naming where ``value`` holds what Postgres cannot store in text or JSONB: a NUL character,
    NaN or an infinity (such a request would fail at the insert)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{path or 'the text'} contains the NUL character (\\u0000), which cannot be stored")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path or 'a value'} is {value}; only finite numbers can be stored")
    elif isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                raise ValueError("a key contains the NUL character (\\u0000), which cannot be stored")
            _storable_json(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _storable_json(item, f"{path}[{index}]")


def _storable(value: str) -> str:
    _storable_json(value)
    return value


# Request text that will be stored.
StoredText = Annotated[str, AfterValidator(_storable)]


def _not_blank(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("must contain some text, not only whitespace")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    """What went wrong, for a program (``code``) and a person (``message``), and which request field it was."""

    code: str = Field(description="a stable, machine-readable name: not_found, invalid_request, conflict, ...")
    message: str = Field(description="what was wrong and what is allowed, in words")
    field: str | None = Field(
        description="the request field at fault as the client wrote it (input.steps, Authorization, job_id), or null"
    )


class ErrorResponse(BaseModel):
    """Every error the API answers, whatever its status."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "invalid_request",
                        "message": "input.num_images: Input should be less than or equal to 8",
                        "field": "input.num_images",
                    }
                }
            ]
        }
    )

    error: ErrorDetail


class StageParameters(_Strict):
    """Sampling parameters of one cascade stage; omitted ones take the preset's defaults."""

    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS, description=f"denoising steps, 1..{MAX_STEPS}")
    guidance_scale: float | None = Field(
        default=None,
        ge=0.0,
        le=MAX_GUIDANCE,
        description=f"classifier-free guidance scale, 0..{MAX_GUIDANCE:g} (1 = no guidance)",
    )
    noise_level: int | None = Field(
        default=None,
        ge=0,
        le=MAX_NOISE_LEVEL,
        description="super-resolution stages only: noise-conditioning augmentation of the low-resolution input"
        " (the preset caps it)",
    )


def _per_preset(describe: Callable[[Preset], str]) -> str:
    return "; ".join(f"{name}: {describe(preset)}" for name, preset in PRESETS.items())


STAGES_DESCRIPTION = (
    "Per-stage sampling parameters, by stage: `base` for the first (base) stage, `sr<resolution>` for each"
    " super-resolution stage of the server's model preset (see `GET /v1/models`). Keys by preset: "
    + _per_preset(lambda preset: ", ".join(preset.request_keys()))
    + ". A key the active preset lacks is a 422, and so is `noise_level` on `base`."
)
RESOLUTION_DESCRIPTION = (
    "one of the preset's stage resolutions: the cascade stops after the stage that produces it; default: the"
    " preset's last. By preset: "
    + _per_preset(lambda preset: ", ".join(str(spec.resolution) for spec in preset.stages))
)


class GenerateInput(_Strict):
    """What to draw, and how."""

    prompt: StoredText = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: StoredText | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    num_images: int = Field(default=1, ge=1, le=MAX_IMAGES_PER_JOB)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="fixes the output; random if omitted")
    resolution: int | None = Field(default=None, description=RESOLUTION_DESCRIPTION)
    stages: dict[str, StageParameters] = Field(
        default_factory=dict,
        description=STAGES_DESCRIPTION,
        examples=[{"base": {"steps": 50, "guidance_scale": 7.0}, "sr256": {"steps": 25, "noise_level": 250}}],
    )
    caption: bool = False
    index: bool = False
    output_format: OutputFormat = Field(
        default="png",
        description="how the final images are stored and served: png (lossless, the default), webp or jpeg;"
        " intermediate stages' images are always PNG",
    )
    output_quality: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description=f"webp and jpeg only: the encoder's quality, 1..100 (default {DEFAULT_OUTPUT_QUALITY});"
        " a 422 with png, which is lossless",
    )

    _prompt_has_words = field_validator("prompt")(classmethod(lambda cls, v: _not_blank(v)))


COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class CaptionInput(_Strict):
    """An image to describe in words (GIT)."""

    image: ImageInput
    max_new_tokens: int = Field(default=DEFAULT_MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS)
    num_beams: int = Field(default=DEFAULT_NUM_BEAMS, ge=1, le=MAX_BEAMS)


class IndexInput(_Strict):
    """An image (and optional text) to add to the tenant's search index."""

    image: ImageInput
    text: StoredText | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS)
    collection: str = Field(default=DEFAULT_COLLECTION, pattern=COLLECTION_PATTERN)

    _text_has_words = field_validator("text")(classmethod(lambda cls, v: _not_blank(v)))


WebhookEventName = Literal["started", "stage", "completed"]


class WebhookSpec(_Strict):
    """Where to POST the job's events (signed per the Standard Webhooks spec), and which ones."""

    url: StoredText = Field(min_length=1, max_length=2048)
    events: list[WebhookEventName] = Field(default=["started", "stage", "completed"], min_length=1, max_length=3)


class _JobCreateBase(_Strict):
    webhook: WebhookSpec | None = None
    priority: int = Field(
        default=5, ge=0, le=MAX_PRIORITY, description="0..9; 9 runs first; at most the tenant's max_priority"
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _metadata_is_small(cls, value: dict[str, Any]) -> dict[str, Any]:
        _storable_json(value)
        size = len(json.dumps(value))
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"is {size} bytes as JSON; at most {MAX_METADATA_BYTES} are allowed")
        return value


class GenerateJobCreate(_JobCreateBase):
    kind: Literal["generate"]
    input: GenerateInput


class CaptionJobCreate(_JobCreateBase):
    kind: Literal["caption"]
    input: CaptionInput


class IndexJobCreate(_JobCreateBase):
    kind: Literal["index"]
    input: IndexInput


# The body of ``POST /v1/jobs``: the kind selects the input's schema.
JobCreate = Annotated[GenerateJobCreate | CaptionJobCreate | IndexJobCreate, Field(discriminator="kind")]


class SearchRequest(_Strict):
    """The body of ``POST /v1/search``: a text or an image query."""

    text: StoredText | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS)
    image: ImageInput | None = None

    _text_has_words = field_validator("text")(classmethod(lambda cls, v: _not_blank(v)))
    collection: str = Field(default=DEFAULT_COLLECTION, pattern=COLLECTION_PATTERN)
    k: int = Field(default=10, ge=1, le=MAX_SEARCH_RESULTS)


class SearchResult(BaseModel):
    score: float
    image_url: str
    job_id: uuid.UUID
    caption: str | None
    text: str | None
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    results: list[SearchResult]


class PresetStage(BaseModel):
    """One stage of a preset's cascade, and the defaults a request that names no parameters gets."""

    name: str
    resolution: int
    request_key: str = Field(description="the key of this stage's parameters in a request's input.stages")
    kind: StageKind = Field(
        description="if: IFPipeline (base stage); if_sr: IFSuperResolutionPipeline; sd_upscale: the x4 upscaler"
    )
    default_steps: int
    default_guidance: float
    default_noise_level: int | None
    max_noise_level: int | None


class PresetCaptioner(BaseModel):
    source: str


class PresetEmbedder(BaseModel):
    model_id: str = Field(description="the tag of the vectors it makes: search compares only vectors of one model")
    dim: int


class PresetPublic(BaseModel):
    """A model preset: its cascade, captioner and embedder."""

    name: str
    active: bool = Field(description="whether this server's workers run it (IMAGEN_MODEL_PRESET)")
    available: bool = Field(
        description="whether its weights are on the API's machine: built or mirrored under IMAGEN_MODELS_DIR,"
        " or in the Hugging Face cache"
    )
    stages: list[PresetStage]
    captioner: PresetCaptioner
    embedder: PresetEmbedder

    @classmethod
    def from_preset(cls, preset: Preset, *, active: bool, available: bool) -> "PresetPublic":
        """The public view of a preset."""
        return cls(
            name=preset.name,
            active=active,
            available=available,
            stages=[
                PresetStage(
                    name=spec.name,
                    resolution=spec.resolution,
                    request_key=preset.request_key(spec),
                    kind=spec.kind,
                    default_steps=spec.default_steps,
                    default_guidance=spec.default_guidance,
                    default_noise_level=spec.default_noise_level,
                    max_noise_level=spec.max_noise_level,
                )
                for spec in preset.stages
            ],
            captioner=PresetCaptioner(source=preset.captioner.source),
            embedder=PresetEmbedder(model_id=preset.embedder.model_id, dim=preset.embedder.dim),
        )


class ModelCatalog(BaseModel):
    """The model presets this server knows, and the one its jobs run on."""

    active: str
    presets: list[PresetPublic]


class DeliveryAttempt(BaseModel):
    attempted_at: datetime
    status_code: int | None
    latency_ms: int
    error: str | None


class WebhookDelivery(BaseModel):
    """One event of a job for its webhook, and every attempt at delivering it."""

    id: uuid.UUID
    webhook_id: str
    type: str
    # The event's place among the job's events (1, 2, 3, ...), as its payload's ``sequence`` says.
    sequence: int
    url: str
    status: str
    attempts: list[DeliveryAttempt]
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime | None


class DeliveryList(BaseModel):
    items: list[WebhookDelivery]


class WebhookSecret(BaseModel):
    secret: str


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None
