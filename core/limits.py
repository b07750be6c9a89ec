"""Every limit a request or a stage is held to, defined once: the API's schemas and the workers' checks
both read them from here, so what the API accepts is always what a worker runs."""

import math

# A prompt, a negative prompt, an index entry's text, a search query.
MAX_PROMPT_CHARS = 2000
# Seeds are stored as Postgres bigints; image `i` of a job uses `seed + i`.
MAX_SEED = 2**32 - 1
MAX_IMAGES_PER_JOB = 8
MAX_STEPS = 1000
MAX_GUIDANCE = 50.0
# Noise-conditioning augmentation draws from a 1000-step schedule; each preset caps its stages lower.
MAX_NOISE_LEVEL = 1000
# Captioning: tokens per caption, and beams of the search.
MAX_NEW_TOKENS = 100
MAX_BEAMS = 8
# Images or texts in one forward pass of any model: the captioner, the embedder, a denoising stage.
MAX_BATCH = 64
# Images one denoising forward pass takes unless IMAGEN_MAX_BATCH says otherwise.
DEFAULT_MAX_BATCH = 8
MAX_METADATA_BYTES = 16_384
# Quotas are Postgres integers (a value <= 0 means unlimited).
MAX_QUOTA = 2**31 - 1
MAX_SEARCH_RESULTS = 100


def check_int(name: str, value: object, low: int, high: int) -> None:
    """A ValueError naming `name` unless `value` is an integer in [low, high]."""
    # bool is an int to Python, but `steps=True` is a caller's mistake.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def check_guidance(guidance_scale: object) -> None:
    """A ValueError unless `guidance_scale` is a finite number in [0, MAX_GUIDANCE]."""
    if (
        not isinstance(guidance_scale, int | float)
        or isinstance(guidance_scale, bool)
        or not math.isfinite(guidance_scale)
        or not 0.0 <= guidance_scale <= MAX_GUIDANCE
    ):
        raise ValueError(f"guidance_scale must be a number in [0, {MAX_GUIDANCE}], got {guidance_scale!r}")


def check_text(name: str, value: object, *, allow_empty: bool = False) -> None:
    """A ValueError naming `name` unless `value` is a string of at most MAX_PROMPT_CHARS characters
    (with some text in it, unless `allow_empty`)."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"{name} must not be empty")
    if len(value) > MAX_PROMPT_CHARS:
        raise ValueError(f"{name} must be at most {MAX_PROMPT_CHARS} characters, got {len(value)}")


def parse_quota(text: str) -> int:
    """A quota written as a whole number that the database can hold; a ValueError saying what is allowed."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"a quota is a whole number, got {text!r}") from None
    if not -MAX_QUOTA - 1 <= value <= MAX_QUOTA:
        raise ValueError(f"a quota is at most {MAX_QUOTA} (0 or less: unlimited), got {value}")
    return value


# Job priority: 0..9, 9 runs first. A tenant may use up to its ceiling (``max_priority``).
MAX_PRIORITY = 9


def parse_priority_ceiling(text: str) -> int:
    """A tenant's priority ceiling written as a number 0..9; a ValueError saying what is allowed."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"a priority ceiling is a whole number 0..{MAX_PRIORITY}, got {text!r}") from None
    if not 0 <= value <= MAX_PRIORITY:
        raise ValueError(f"a priority ceiling is between 0 and {MAX_PRIORITY}, got {value}")
    return value
