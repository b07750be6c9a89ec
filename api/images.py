"""IMAGE inputs (base64, an earlier job's artifact, or a URL) turned into validated, stored uploads."""

import binascii
import hashlib
import io
import math
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Self
from uuid import UUID

from PIL import BmpImagePlugin, GifImagePlugin, Image, ImageFile, JpegImagePlugin, PngImagePlugin, WebPImagePlugin
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError
from sqlalchemy.orm import Session

from core.address_guard import DEFAULT_ALLOWED_PORTS, MAX_URL_CHARS, BlockedAddress, FetchError, fetch
from core.config import Settings
from core.errors import InvalidInput, NotFound
from core.job_input import ImageSource, InputImage
from db.jobs import image_artifact_key
from storage.errors import ObjectNotFound
from storage.keys import query_image_key, upload_key
from storage.object_store import ObjectStore

MAX_IMAGE_BYTES = 20 * 1024 * 1024
# Padded base64 of MAX_IMAGE_BYTES, plus slack for the padding: anything longer is refused undecoded.
MAX_BASE64_CHARS = math.ceil(MAX_IMAGE_BYTES * 4 / 3) + 4
MAX_SIDE = 8192
MAX_PIXELS = 40_000_000
MAX_ASPECT = 20
URL_TIMEOUT_S = 10.0

# Pillow warns past MAX_IMAGE_PIXELS and refuses past twice that, when it reads the header and before
# it decodes a pixel; keep that guard, at our limit. Smaller images never reach it.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp"}
_FORMAT_NAMES = "PNG, JPEG, WebP, GIF or BMP"
_HEADER_READERS: tuple[type[ImageFile.ImageFile], ...] = (
    PngImagePlugin.PngImageFile,
    JpegImagePlugin.JpegImageFile,
    WebPImagePlugin.WebPImageFile,
    GifImagePlugin.GifImageFile,
    BmpImagePlugin.BmpImageFile,
)
# What Pillow raises for data it cannot parse (it has no single base class for them).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, struct.error)


class InvalidImage(ValueError):
    """The bytes are not an image we accept: not an image, corrupt, truncated or too large."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str  # Pillow's name: PNG, JPEG, WEBP, GIF or BMP
    mime: str


@dataclass(frozen=True)
class StoredImage:
    key: str
    sha256: str
    width: int
    height: int
    mime: str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArtifactRef(_Strict):
    """An image an earlier job of the same tenant produced."""

    job_id: UUID
    stage: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$", description="a stage name, e.g. sr_1024")
    index: int = Field(ge=0, le=10_000, description="which of the stage's images, from 0")


class ImageInput(_Strict):
    """An IMAGE: exactly one of ``base64``, ``artifact`` or ``url``."""

    base64: str | None = Field(
        default=None,
        min_length=1,
        description=f"the image file, base64-encoded (a data: URL is accepted); at most {MAX_IMAGE_BYTES} bytes",
    )
    artifact: ArtifactRef | None = None
    url: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_URL_CHARS,
        description="an https URL to fetch the image from; private and loopback addresses are refused",
    )

    @field_validator("base64")
    @classmethod
    def _base64_is_small(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return _compact_base64(value)
        except InvalidImage as err:
            raise PydanticCustomError("image_base64", str(err)) from None

    @model_validator(mode="after")
    def _exactly_one_form(self) -> Self:
        given = [name for name in ("base64", "artifact", "url") if getattr(self, name) is not None]
        if len(given) != 1:
            extra = f", not {' and '.join(given)}" if given else ""
            raise PydanticCustomError("image_form", f"give exactly one of base64, artifact or url{extra}")
        return self


def decode_image_bytes(data: bytes) -> ImageInfo:
    """Check that ``data`` is a whole PNG, JPEG, WebP, GIF (first frame) or BMP within the size limits.

    The size is read from the header and checked before any pixel is decoded. Raises InvalidImage.
    """
    try:
        img = Image.open(io.BytesIO(data), formats=tuple(_MIME))
    except Image.UnidentifiedImageError:
        raise InvalidImage(f"not an image (a {_FORMAT_NAMES} file is expected)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImage(_too_large_message(_header_size(data))) from None
    except _DECODE_ERRORS as err:
        raise InvalidImage(f"corrupt image header ({err})") from None
    with img:
        fmt = str(img.format)
        width, height = img.size
        if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
            raise InvalidImage(_too_large_message((width, height)))
        if max(width, height) > MAX_ASPECT * min(width, height):
            # The models resize to a square: a sliver would be stretched into noise.
            raise InvalidImage(
                f"{width}x{height} is too elongated; the long side may be at most {MAX_ASPECT}x the short"
            )
        # Image.open read the header only; decoding the pixels finds truncated and corrupt files
        # (as long as ImageFile.LOAD_TRUNCATED_IMAGES stays False, its default).
        try:
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidImage(_too_large_message((width, height))) from None
        except _DECODE_ERRORS as err:
            raise InvalidImage(f"truncated or corrupt {fmt} ({err})") from None
    return ImageInfo(width=width, height=height, format=fmt, mime=_MIME[fmt])


def store_upload(store: ObjectStore, data: bytes, *, temporary: bool = False) -> StoredImage:
    """Validate ``data`` and store it under ``uploads/{sha256}`` (or, ``temporary``, a fresh query key).

    Uploads are content-addressed: the same bytes share one object. It is written again on every use all
    the same: the sweeper deletes uploads no job refers to once they are an hour old, and a write makes
    this one young, so it cannot be deleted between here and the commit of the job that refers to it.
    """
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidImage(f"the image is {len(data)} bytes; at most {MAX_IMAGE_BYTES} (20 MiB) are allowed")
    info = decode_image_bytes(data)
    sha256 = hashlib.sha256(data).hexdigest()
    key = query_image_key() if temporary else upload_key(sha256)
    store.put(key, data, info.mime)
    return StoredImage(key=key, sha256=sha256, width=info.width, height=info.height, mime=info.mime)


def resolve_image(
    image: ImageInput,
    *,
    store: ObjectStore,
    allow_private: bool,
    find_artifact: Callable[[UUID, str, int], str | None],
    field: str,
    temporary: bool = False,
    allowed_ports: Collection[int] = DEFAULT_ALLOWED_PORTS,
) -> StoredImage:
    """The stored, validated image that ``image`` names (an upload or a URL's image under a query key that
    the caller deletes when done, if ``temporary``).

    Blocks (a URL is fetched for up to URL_TIMEOUT_S): call it from a sync handler or a worker thread.
    ``find_artifact(job_id, stage, index)`` returns the key of that image if it belongs to one of the
    caller's jobs, else None. Raises InvalidInput, or NotFound for an unknown artifact; ``field`` (as
    "input.image") prefixes the field they name.
    """
    if image.base64 is not None:
        return _resolve_base64(image.base64, store=store, field=f"{field}.base64", temporary=temporary)
    if image.url is not None:
        return _resolve_url(
            image.url,
            store=store,
            allow_private=allow_private,
            allowed_ports=allowed_ports,
            field=f"{field}.url",
            temporary=temporary,
        )
    if image.artifact is not None:
        return _resolve_artifact(image.artifact, store=store, find_artifact=find_artifact, field=f"{field}.artifact")
    raise InvalidInput("give exactly one of base64, artifact or url", field=field)


def resolve_image_input(
    session: Session,
    image: ImageInput,
    *,
    tenant_id: UUID,
    store: ObjectStore,
    settings: Settings,
    field: str,
    temporary: bool = False,
) -> InputImage:
    """Store (or find among the tenant's jobs' artifacts) the image a request names: what the job records of it.

    Only an artifact needs the database. For a URL (fetched for up to URL_TIMEOUT_S) or an upload, the
    session's transaction ends first, so the pooled connection is not held while the network is waited on;
    the session's rows load again on their next use.
    """
    if image.artifact is None:
        session.rollback()
    stored = resolve_image(
        image,
        store=store,
        allow_private=settings.image_url_allow_private,
        allowed_ports=settings.image_url_allowed_ports,
        find_artifact=lambda job_id, stage, index: image_artifact_key(
            session, tenant_id=tenant_id, job_id=job_id, stage=stage, index=index
        ),
        field=field,
        temporary=temporary,
    )
    source: ImageSource = "base64" if image.base64 is not None else "url" if image.url is not None else "artifact"
    return InputImage(
        key=stored.key, sha256=stored.sha256, width=stored.width, height=stored.height, mime=stored.mime, source=source
    )


def _resolve_base64(text: str, *, store: ObjectStore, field: str, temporary: bool) -> StoredImage:
    try:
        compact = _compact_base64(text)
    except InvalidImage as err:
        raise InvalidInput(str(err), field=field) from None
    try:
        data = binascii.a2b_base64(compact, strict_mode=True)
    except (binascii.Error, ValueError) as err:
        raise InvalidInput(f"not valid base64 ({err})", field=field) from None
    try:
        return store_upload(store, data, temporary=temporary)
    except InvalidImage as err:
        raise InvalidInput(str(err), field=field) from None


def _resolve_url(
    url: str, *, store: ObjectStore, allow_private: bool, allowed_ports: Collection[int], field: str, temporary: bool
) -> StoredImage:
    try:
        result = fetch(
            url,
            allow_private=allow_private,
            allowed_ports=allowed_ports,
            max_bytes=MAX_IMAGE_BYTES,
            timeout_s=URL_TIMEOUT_S,
        )
    except BlockedAddress as err:
        raise InvalidInput(str(err), field=field) from None
    except FetchError as err:
        raise InvalidInput(f"cannot fetch the image: {err}", field=field) from None
    try:
        return store_upload(store, result.content, temporary=temporary)
    except InvalidImage as err:
        raise InvalidInput(f"{result.final_url}: {err}", field=field) from None


def _resolve_artifact(
    ref: ArtifactRef, *, store: ObjectStore, find_artifact: Callable[[UUID, str, int], str | None], field: str
) -> StoredImage:
    name = f"image {ref.index} of stage {ref.stage!r} of job {ref.job_id}"
    key = find_artifact(ref.job_id, ref.stage, ref.index)
    if key is None:
        raise NotFound(f"no artifact {name} among your jobs", field=field)
    try:
        data = store.get(key)
    except ObjectNotFound:
        raise NotFound(f"the artifact {name} is no longer stored", field=field) from None
    try:
        info = decode_image_bytes(data)
    except InvalidImage as err:
        raise InvalidInput(f"the artifact {name} is not a usable image: {err}", field=field) from None
    return StoredImage(
        key=key, sha256=hashlib.sha256(data).hexdigest(), width=info.width, height=info.height, mime=info.mime
    )


def _compact_base64(text: str) -> str:
    """``text`` without a data: URL prefix and whitespace; InvalidImage if it would decode past the limit."""
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise InvalidImage("a data: URL must be base64-encoded, as in data:image/png;base64,<data>")
    if len(text) > 2 * MAX_BASE64_CHARS:  # not even whitespace explains that much
        raise InvalidImage(_base64_too_large_message(len(text)))
    compact = "".join(text.split())
    if len(compact) > MAX_BASE64_CHARS:
        raise InvalidImage(_base64_too_large_message(len(compact)))
    return compact


def _base64_too_large_message(chars: int) -> str:
    return (
        f"the base64 is {chars} characters, about {chars * 3 // 4} bytes decoded; at most {MAX_IMAGE_BYTES} bytes"
        f" (20 MiB, {MAX_BASE64_CHARS} base64 characters) are allowed"
    )


def _too_large_message(size: tuple[int, int] | None) -> str:
    limit = f"the {MAX_SIDE}x{MAX_SIDE} / {MAX_PIXELS // 1_000_000} MP limit"
    if size is None:
        return f"the image is larger than {limit}"
    return f"{size[0]}x{size[1]} is larger than {limit}"


def _header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header alone, without Pillow's decompression-bomb check (to name them)."""
    for reader in _HEADER_READERS:
        try:
            with reader(io.BytesIO(data)) as img:
                return img.size
        except _DECODE_ERRORS:
            continue
    return None
