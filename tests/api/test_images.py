"""IMAGE inputs: what is stored, and every way a bad image is refused with the field it came in."""

import base64
import hashlib
import io
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageFile
from pydantic import ValidationError

from api.images import (
    MAX_BASE64_CHARS,
    ArtifactRef,
    ImageInput,
    InvalidImage,
    StoredImage,
    decode_image_bytes,
    resolve_image,
    store_upload,
)
from core.errors import InvalidInput, NotFound
from storage import LocalObjectStore, image_key

FIELD = "input.image"


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    store = LocalObjectStore(tmp_path / "objects", "http://testserver", b"secret")
    store.ensure_bucket()
    return store


def _png(width: int = 48, height: int = 32, *, noise: bool = False) -> bytes:
    if noise:
        img = Image.frombytes("RGB", (width, height), bytes((i * 7919) % 251 for i in range(width * height * 3)))
    else:
        img = Image.new("RGB", (width, height), (200, 30, 90))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _image(data: bytes, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def _huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels, built row by row (it compresses to kB)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _resolve(image: ImageInput, store: LocalObjectStore, **kwargs: Any) -> StoredImage:
    options: dict[str, Any] = {"allow_private": False, "find_artifact": lambda *_: None, "field": FIELD, **kwargs}
    return resolve_image(image, store=store, **options)


def _b64(data: bytes) -> ImageInput:
    return ImageInput(base64=base64.b64encode(data).decode())


# The three forms.


def test_exactly_one_form_is_accepted() -> None:
    assert ImageInput.model_validate({"url": "https://example.com/a.png"}).url == "https://example.com/a.png"
    ref = ImageInput.model_validate({"artifact": {"job_id": str(uuid.uuid4()), "stage": "sr_1024", "index": 0}})
    assert ref.artifact is not None and ref.artifact.stage == "sr_1024"
    for bad in ({}, {"url": "https://a/b", "base64": "AAAA"}, {"url": None}):
        with pytest.raises(ValidationError, match="give exactly one of base64, artifact or url"):
            ImageInput.model_validate(bad)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ImageInput.model_validate({"path": "/etc/passwd"})


@pytest.mark.parametrize(
    "artifact",
    [
        {"job_id": "not-a-uuid", "stage": "sr_1024", "index": 0},
        {"job_id": str(uuid.uuid4()), "stage": "../../etc", "index": 0},
        {"job_id": str(uuid.uuid4()), "stage": "sr_1024", "index": -1},
        {"job_id": str(uuid.uuid4()), "stage": "sr_1024", "index": 0, "key": "uploads/x"},
    ],
)
def test_a_malformed_artifact_reference_is_refused(artifact: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ImageInput.model_validate({"artifact": artifact})


# Base64.


def test_a_base64_png_is_stored_under_its_sha256_and_written_on_each_use(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _png(48, 32)
    stored = _resolve(_b64(data), store)
    sha256 = hashlib.sha256(data).hexdigest()
    assert stored == StoredImage(key=f"uploads/{sha256}", sha256=sha256, width=48, height=32, mime="image/png")
    assert store.get(stored.key) == data

    puts: list[str] = []
    original_put = store.put

    def counting_put(key: str, data: bytes, content_type: str) -> None:
        puts.append(key)
        original_put(key, data, content_type)

    monkeypatch.setattr(store, "put", counting_put)
    assert _resolve(_b64(data), store) == stored
    # One object for both submissions, written again: the unused-upload sweep counts age from the last use.
    assert puts == [stored.key]


def test_a_temporary_image_gets_a_query_key_of_its_own(store: LocalObjectStore) -> None:
    data = _png(48, 32)
    first = store_upload(store, data, temporary=True)
    second = store_upload(store, data, temporary=True)
    assert first.key.startswith("queries/") and second.key.startswith("queries/") and first.key != second.key
    assert store.get(first.key) == data


def test_a_data_url_and_line_breaks_are_accepted(store: LocalObjectStore) -> None:
    encoded = base64.encodebytes(_png()).decode()  # MIME style: a line break every 76 characters
    stored = _resolve(ImageInput(base64=f"data:image/png;base64,{encoded}"), store)
    assert (stored.width, stored.height) == (48, 32)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "GIF", "BMP"])
def test_other_formats_are_accepted(store: LocalObjectStore, fmt: str) -> None:
    stored = _resolve(_b64(_image(_png(40, 30), fmt)), store)
    assert (stored.width, stored.height) == (40, 30)
    assert stored.mime == f"image/{fmt.lower()}"


def test_not_base64_is_refused(store: LocalObjectStore) -> None:
    with pytest.raises(InvalidInput, match="not valid base64") as caught:
        _resolve(ImageInput(base64="this is *not* base64!"), store)
    assert caught.value.field == "input.image.base64"


def test_text_is_not_an_image(store: LocalObjectStore) -> None:
    with pytest.raises(InvalidInput, match="not an image") as caught:
        _resolve(_b64(b"just some text, certainly not a picture\n" * 10), store)
    assert caught.value.field == "input.image.base64"
    assert not (store.root / "uploads").exists()


def test_a_truncated_png_is_refused(store: LocalObjectStore) -> None:
    data = _png(128, 128, noise=True)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(InvalidInput, match="truncated or corrupt PNG") as caught:
        _resolve(_b64(data[: len(data) // 2]), store)
    assert caught.value.field == "input.image.base64"


def test_a_20000_by_20000_png_is_refused_from_its_header(store: LocalObjectStore) -> None:
    data = _huge_png(20_000, 20_000)
    assert len(data) < 1_000_000
    started = time.monotonic()
    with pytest.raises(InvalidInput, match=r"20000x20000 is larger than the 8192x8192 / 40 MP limit"):
        _resolve(_b64(data), store)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(("width", "height"), [(9000, 10), (10, 9000), (7000, 7000)])
def test_too_many_pixels_or_too_long_a_side_is_refused(width: int, height: int) -> None:
    # 7000x7000 is 49 MP: past the limit, in the band where Pillow only warns (an error under pytest).
    with pytest.raises(InvalidImage, match=f"{width}x{height} is larger than"):
        decode_image_bytes(_huge_png(width, height))


def test_the_largest_allowed_image_passes() -> None:
    info = decode_image_bytes(_huge_png(8192, 4882))  # 39.99 MP
    assert (info.width, info.height, info.mime) == (8192, 4882, "image/png")


def test_base64_past_20_mb_is_refused_before_decoding(store: LocalObjectStore) -> None:
    too_long = "!" * (MAX_BASE64_CHARS + 4)  # not even base64: the size is checked first
    with pytest.raises(ValidationError, match="at most 20971520 bytes") as caught:
        ImageInput(base64=too_long)
    assert caught.value.errors()[0]["loc"] == ("base64",)
    with pytest.raises(InvalidInput, match="at most 20971520 bytes") as refused:
        _resolve(ImageInput.model_construct(base64=too_long), store)
    assert refused.value.field == "input.image.base64"


def test_store_upload_refuses_more_than_20_mib_undecoded(store: LocalObjectStore) -> None:
    with pytest.raises(InvalidImage, match="at most 20971520"):
        store_upload(store, _png() + b"\0" * (20 * 1024 * 1024))
    assert not (store.root / "uploads").exists()


# URLs.


class _ImageHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body = b""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = self.body if self.path == "/image.png" else b"not found"
        self.send_response(200 if self.path == "/image.png" else 404)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    handler = type("Handler", (_ImageHandler,), {"body": _png(64, 40)})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_url_on_loopback_is_refused(store: LocalObjectStore, image_server: str) -> None:
    port = image_server.rpartition(":")[2]
    for url in (f"https://127.0.0.1:{port}/image.png", f"https://localhost:{port}/image.png"):
        with pytest.raises(InvalidInput, match="addresses are refused") as caught:
            _resolve(ImageInput(url=url), store, allow_private=False, allowed_ports={int(port)})
        assert caught.value.field == "input.image.url"
    with pytest.raises(InvalidInput, match="only https URLs are allowed"):
        _resolve(ImageInput(url=f"{image_server}/image.png"), store, allow_private=False)


def test_a_url_on_a_port_no_web_server_uses_is_refused(store: LocalObjectStore) -> None:
    # Refused before the host is resolved: nothing leaves this machine.
    with pytest.raises(InvalidInput, match="has port 6379; only ports 80, 443, 8080, 8443 are allowed") as caught:
        _resolve(ImageInput(url="https://images.example.com:6379/image.png"), store, allow_private=False)
    assert caught.value.field == "input.image.url"


def test_the_metadata_address_is_refused(store: LocalObjectStore) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidInput, match=r"169\.254\.169\.254 is a link-local") as caught:
        _resolve(ImageInput(url="https://169.254.169.254/latest/meta-data/"), store)
    assert caught.value.field == "input.image.url"
    assert time.monotonic() - started < 1.0


def test_a_url_is_fetched_and_stored_when_private_addresses_are_allowed(
    store: LocalObjectStore, image_server: str
) -> None:
    stored = _resolve(ImageInput(url=f"{image_server}/image.png"), store, allow_private=True)
    assert (stored.width, stored.height, stored.mime) == (64, 40, "image/png")
    assert store.get(stored.key) == _png(64, 40)


def test_a_url_that_fails_names_the_status(store: LocalObjectStore, image_server: str) -> None:
    with pytest.raises(InvalidInput, match=r"cannot fetch the image: .*answered 404") as caught:
        _resolve(ImageInput(url=f"{image_server}/missing.png"), store, allow_private=True)
    assert caught.value.field == "input.image.url"


# Artifacts.


def test_an_artifact_of_ones_own_job_is_used_in_place(store: LocalObjectStore) -> None:
    job_id = uuid.uuid4()
    key = image_key(job_id, "sr_1024", 1)
    store.put(key, _png(64, 64), "image/png")
    asked: list[tuple[uuid.UUID, str, int]] = []

    def find_artifact(job: uuid.UUID, stage: str, index: int) -> str | None:
        asked.append((job, stage, index))
        return key

    image = ImageInput(artifact=ArtifactRef(job_id=job_id, stage="sr_1024", index=1))
    stored = _resolve(image, store, find_artifact=find_artifact)
    assert (stored.key, stored.width, stored.height) == (key, 64, 64)
    assert asked == [(job_id, "sr_1024", 1)]
    assert not (store.root / "uploads").exists()  # no copy


def test_an_unknown_artifact_is_not_found(store: LocalObjectStore) -> None:
    image = ImageInput(artifact=ArtifactRef(job_id=uuid.uuid4(), stage="sr_1024", index=0))
    with pytest.raises(NotFound, match="no artifact image 0 of stage 'sr_1024'") as caught:
        _resolve(image, store, find_artifact=lambda *_: None)
    assert caught.value.field == "input.image.artifact"
    with pytest.raises(NotFound, match="no longer stored"):
        _resolve(image, store, find_artifact=lambda *_: "jobs/gone/sr_1024/0.png")
