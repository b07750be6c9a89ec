"""The object stores against a real S3 server (moto) and a real folder."""

import multiprocessing
import os
import random
import socket
import stat
import struct
import time
import uuid
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from core.config import Settings
from storage import (
    InvalidKey,
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    S3ObjectStore,
    StoreError,
    StoreUnavailable,
    embeddings_key,
    get_store,
    image_key,
    job_prefix,
    read_or_create_secret,
    upload_key,
    verify_signature,
)


def png(width: int = 64, height: int = 64, seed: int = 0) -> bytes:
    """A valid RGB PNG of noise."""
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


JOB = str(uuid.UUID(int=1))
# moto accepts any credentials; these only have to be non-empty so requests are signed.
S3_ACCESS_KEY, S3_SECRET_KEY = "test-access-key", "test-secret-key"
LOCAL_BASE_URL = "http://testserver"


def closed_port() -> int:
    """A loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_put_then_get_returns_the_same_png(store: ObjectStore) -> None:
    key = image_key(JOB, "base_64", 0)
    data = png(seed=1)
    store.put(key, data, "image/png")
    assert store.get(key) == data


def test_put_replaces_an_existing_object(store: ObjectStore) -> None:
    key = image_key(JOB, "sr_256", 0)
    store.put(key, png(seed=1), "image/png")
    store.put(key, png(seed=2), "image/png")
    assert store.get(key) == png(seed=2)


def test_exists_tells_stored_from_missing_keys(store: ObjectStore) -> None:
    key = embeddings_key(JOB)
    assert not store.exists(key)
    store.put(key, b"\x00" * 128, "application/octet-stream")
    assert store.exists(key)
    assert not store.exists(image_key(JOB, "base_64", 0))


def test_get_of_a_missing_key_raises_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound) as caught:
        store.get(image_key(JOB, "sr_1024", 3))
    assert isinstance(caught.value, KeyError)
    assert caught.value.key == image_key(JOB, "sr_1024", 3)


def test_delete_prefix_deletes_only_that_job(store: ObjectStore) -> None:
    other = str(uuid.UUID(int=2))
    mine = [image_key(JOB, "base_64", 0), image_key(JOB, "sr_256", 0), embeddings_key(JOB)]
    theirs = [image_key(other, "base_64", 0), upload_key("ab" * 32)]
    for key in mine + theirs:
        store.put(key, png(), "image/png")

    assert store.delete_prefix(job_prefix(JOB)) == 3

    assert not any(store.exists(key) for key in mine)
    assert all(store.exists(key) for key in theirs)
    assert store.delete_prefix(job_prefix(JOB)) == 0


def test_delete_prefix_matches_like_s3_string_prefixes(store: ObjectStore) -> None:
    store.put("jobs/abc/0.png", b"1", "image/png")
    store.put("jobs/abd/0.png", b"2", "image/png")
    store.put("jobs/b/0.png", b"3", "image/png")
    assert store.delete_prefix("jobs/ab") == 2
    assert store.exists("jobs/b/0.png")


def test_list_keys_finds_objects_written_before_a_time_under_a_prefix(store: ObjectStore) -> None:
    prefix = f"uploads-{uuid.uuid4().hex[:8]}/"
    old = [f"{prefix}a", f"{prefix}b"]
    for key in old:
        store.put(key, b"1", "image/png")
    store.put(f"other-{prefix}c", b"1", "image/png")
    time.sleep(1.1)  # S3 keeps whole seconds
    between = datetime.now(UTC)
    time.sleep(1.1)
    store.put(f"{prefix}young", b"2", "image/png")
    assert sorted(store.list_keys(prefix, modified_before=between, limit=10)) == old
    assert len(store.list_keys(prefix, modified_before=between, limit=1)) == 1
    assert len(store.list_keys(prefix, modified_before=datetime.now(UTC) + timedelta(seconds=5), limit=10)) == 3


def test_delete_prefix_refuses_an_empty_prefix(store: ObjectStore) -> None:
    store.put("jobs/a/0.png", b"1", "image/png")
    with pytest.raises(ValueError, match="prefix"):
        store.delete_prefix("")
    assert store.exists("jobs/a/0.png")


@pytest.mark.parametrize(
    "key",
    ["../escape.png", "jobs/../../escape.png", "/etc/passwd", "jobs//0.png", "jobs/./0.png", "", "a\\b"],
)
def test_keys_that_could_escape_are_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put(key, b"x", "image/png")
    with pytest.raises(ValueError):
        store.get(key)


def test_rejected_key_writes_nothing_outside_the_root(local_store: LocalObjectStore) -> None:
    with pytest.raises(InvalidKey):
        local_store.put("../escape.png", b"x", "image/png")
    assert not (local_store.root.parent / "escape.png").exists()


def test_ensure_bucket_is_idempotent(store: ObjectStore) -> None:
    store.put("jobs/a/0.png", b"1", "image/png")
    store.ensure_bucket()
    store.ensure_bucket()
    assert store.get("jobs/a/0.png") == b"1"


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_ensure_bucket_survives_concurrent_creators(s3_url: str, region: str) -> None:
    bucket = f"race-{uuid.uuid4().hex[:20]}"
    stores = [S3ObjectStore(s3_url, S3_ACCESS_KEY, S3_SECRET_KEY, bucket, region=region) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda store: store.ensure_bucket(), stores))
    stores[0].ping()


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_ensure_bucket_tolerates_losing_the_creation_race(
    s3_url: str, region: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = f"race-{uuid.uuid4().hex[:20]}"
    winner = S3ObjectStore(s3_url, S3_ACCESS_KEY, S3_SECRET_KEY, bucket, region=region)
    loser = S3ObjectStore(s3_url, S3_ACCESS_KEY, S3_SECRET_KEY, bucket, region=region)
    check = loser._client.bucket_exists

    def winner_creates_it_right_after_the_check(name: str) -> bool:
        found = check(name)
        winner.ensure_bucket()
        return found

    monkeypatch.setattr(loser._client, "bucket_exists", winner_creates_it_right_after_the_check)
    loser.ensure_bucket()
    loser.put("jobs/a/0.png", b"1", "image/png")
    assert winner.get("jobs/a/0.png") == b"1"


def test_ping_succeeds_on_a_ready_store(store: ObjectStore) -> None:
    store.ping()


def test_ping_raises_when_the_bucket_is_missing(s3_url: str, tmp_path: Path) -> None:
    s3 = S3ObjectStore(s3_url, S3_ACCESS_KEY, S3_SECRET_KEY, f"missing-{uuid.uuid4().hex[:20]}")
    with pytest.raises(StoreUnavailable, match="does not exist"):
        s3.ping()
    local = LocalObjectStore(tmp_path / "never-created", LOCAL_BASE_URL, b"secret")
    with pytest.raises(StoreUnavailable):
        local.ping()


def test_presigned_url_downloads_the_object(s3_store: S3ObjectStore) -> None:
    key = image_key(JOB, "sr_1024", 0)
    data = png(seed=3)
    s3_store.put(key, data, "image/png")

    response = httpx.get(s3_store.presigned_url(key, ttl_s=60))

    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "image/png"


def test_presigned_url_uses_the_public_endpoint(s3_url: str, s3_store: S3ObjectStore) -> None:
    port = urlsplit(s3_url).port
    public = S3ObjectStore(
        s3_url,
        S3_ACCESS_KEY,
        S3_SECRET_KEY,
        s3_store.bucket,
        public_endpoint=f"http://localhost:{port}",
    )
    s3_store.put("jobs/a/0.png", png(seed=4), "image/png")

    url = public.presigned_url("jobs/a/0.png", ttl_s=60)

    assert url.startswith(f"http://localhost:{port}/{s3_store.bucket}/jobs/a/0.png?")
    assert "X-Amz-Signature=" in url
    assert httpx.get(url).content == png(seed=4)


def test_local_presigned_url_carries_a_signature_that_verifies(
    local_store: LocalObjectStore, local_secret: bytes
) -> None:
    key = image_key(JOB, "sr_1024", 0)
    local_store.put(key, png(seed=5), "image/png")
    before = int(time.time())

    url = local_store.presigned_url(key, ttl_s=600)

    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}" == LOCAL_BASE_URL
    assert parts.path == f"/files/{key}"
    expires, signature = int(query["expires"]), query["signature"]
    assert before + 600 <= expires <= int(time.time()) + 600
    assert verify_signature(key, expires, signature, local_secret)
    assert local_store.verify(key, expires, signature)
    assert local_store.file_path(key).read_bytes() == png(seed=5)
    assert local_store.content_type(key) == "image/png"


def test_local_signature_fails_when_tampered_or_expired(local_store: LocalObjectStore, local_secret: bytes) -> None:
    key = image_key(JOB, "sr_1024", 0)
    query = parse_qs(urlsplit(local_store.presigned_url(key, ttl_s=60)).query)
    expires, signature = int(query["expires"][0]), query["signature"][0]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]

    assert not verify_signature(key, expires, flipped, local_secret)
    assert not verify_signature(image_key(JOB, "sr_1024", 1), expires, signature, local_secret)
    assert not verify_signature(key, expires + 3600, signature, local_secret)
    assert not verify_signature(key, expires, signature, b"another secret")
    assert not verify_signature(key, expires, "not hex \u00e9", local_secret)
    assert verify_signature(key, expires, signature, local_secret, now=expires)
    assert not verify_signature(key, expires, signature, local_secret, now=expires + 1)


@pytest.mark.parametrize("ttl_s", [0, -5, 8 * 24 * 3600])
def test_presigned_url_rejects_a_ttl_out_of_range(store: ObjectStore, ttl_s: int) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        store.presigned_url("jobs/a/0.png", ttl_s)


def test_local_store_keeps_objects_across_a_restart(tmp_path: Path) -> None:
    first = LocalObjectStore(tmp_path / "objects", LOCAL_BASE_URL, b"secret")
    first.ensure_bucket()
    first.put(image_key(JOB, "base_64", 0), png(seed=6), "image/png")
    del first

    second = LocalObjectStore(tmp_path / "objects", LOCAL_BASE_URL, b"secret")
    second.ensure_bucket()
    assert second.get(image_key(JOB, "base_64", 0)) == png(seed=6)


def test_local_write_that_fails_midway_keeps_the_old_object(
    local_store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = image_key(JOB, "base_64", 0)
    local_store.put(key, png(seed=7), "image/png")

    def crash(fd: int) -> None:
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(StoreUnavailable):
        local_store.put(key, png(seed=8), "image/png")
    monkeypatch.undo()

    assert local_store.get(key) == png(seed=7)
    assert os.listdir(local_store.file_path(key).parent) == ["0.png"]


def test_local_delete_prefix_sweeps_orphans_of_killed_writers(local_store: LocalObjectStore) -> None:
    local_store.put("jobs/a/base_64/0.png", b"1", "image/png")
    orphan = local_store.root / "jobs" / "a" / "base_64" / ".tmp-killed"
    orphan.write_bytes(b"half an ima")

    assert local_store.delete_prefix("jobs/a/") == 1
    assert not (local_store.root / "jobs" / "a").exists()


def test_local_key_that_clashes_with_a_folder_is_a_store_error(local_store: LocalObjectStore) -> None:
    local_store.put("jobs/a/0.png", b"1", "image/png")
    with pytest.raises(StoreError, match="conflicts"):
        local_store.put("jobs/a", b"2", "image/png")
    with pytest.raises(ObjectNotFound):
        local_store.get("jobs/a")


def test_unreachable_store_raises_store_unavailable_within_seconds() -> None:
    dead = S3ObjectStore(f"127.0.0.1:{closed_port()}", S3_ACCESS_KEY, S3_SECRET_KEY, "imagen")
    operations: dict[str, Callable[[], object]] = {
        "ping": dead.ping,
        "ensure_bucket": dead.ensure_bucket,
        "put": lambda: dead.put("jobs/a/0.png", b"1", "image/png"),
        "get": lambda: dead.get("jobs/a/0.png"),
        "exists": lambda: dead.exists("jobs/a/0.png"),
        "delete_prefix": lambda: dead.delete_prefix("jobs/a/"),
    }
    for name, operation in operations.items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unreachable"):
            operation()
        assert time.monotonic() - started < 5, name


def test_store_errors_never_leak_client_exceptions(s3_url: str) -> None:
    wrong_bucket = S3ObjectStore(s3_url, S3_ACCESS_KEY, S3_SECRET_KEY, f"missing-{uuid.uuid4().hex[:20]}")
    with pytest.raises(StoreError, match="ensure_bucket"):
        wrong_bucket.put("jobs/a/0.png", b"1", "image/png")


def test_get_store_picks_s3_when_an_endpoint_is_set(s3_url: str, tmp_path: Path) -> None:
    port = urlsplit(s3_url).port
    settings = Settings(
        data_dir=tmp_path,
        s3_endpoint=s3_url,
        s3_access_key=S3_ACCESS_KEY,
        s3_secret_key=S3_SECRET_KEY,
        s3_bucket=f"factory-{uuid.uuid4().hex[:20]}",
        s3_public_endpoint=f"http://localhost:{port}",
    )
    store = get_store(settings)
    assert isinstance(store, S3ObjectStore)
    store.ensure_bucket()
    store.put("jobs/a/0.png", b"1", "image/png")
    assert store.get("jobs/a/0.png") == b"1"
    url = store.presigned_url("jobs/a/0.png", 60)
    assert url.startswith(f"http://localhost:{port}/")
    assert httpx.get(url).content == b"1"


def test_get_store_falls_back_to_a_local_folder_with_a_kept_secret(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, s3_endpoint=None, secret_key=None, public_url="http://api:8000")

    store = get_store(settings)

    assert isinstance(store, LocalObjectStore)
    assert store.root == settings.objects_dir
    secret_file = tmp_path / "secret.key"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    url = store.presigned_url("jobs/a/0.png", 60)
    assert url.startswith("http://api:8000/files/jobs/a/0.png?")
    query = parse_qs(urlsplit(url).query)
    secret = secret_file.read_text().strip().encode()
    assert verify_signature("jobs/a/0.png", int(query["expires"][0]), query["signature"][0], secret)
    restarted = get_store(settings)
    assert isinstance(restarted, LocalObjectStore)
    assert restarted.verify("jobs/a/0.png", int(query["expires"][0]), query["signature"][0])


def test_get_store_signs_with_the_configured_secret_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, s3_endpoint=None, secret_key="configured")
    store = get_store(settings)
    query = parse_qs(urlsplit(store.presigned_url("jobs/a/0.png", 60)).query)
    assert verify_signature("jobs/a/0.png", int(query["expires"][0]), query["signature"][0], b"configured")
    assert not (tmp_path / "secret.key").exists()


def test_processes_racing_to_create_the_secret_agree(tmp_path: Path) -> None:
    path = tmp_path / "data" / "secret.key"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        secrets = pool.map(read_or_create_secret, [path] * 8)
    assert len(set(secrets)) == 1
    assert len(secrets[0]) == 64
    assert sorted(os.listdir(path.parent)) == ["secret.key"]
