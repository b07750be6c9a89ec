"""Fixtures for the object store tests: a real S3 HTTP server (moto) in its own process."""

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from storage import LocalObjectStore, ObjectStore, S3ObjectStore

S3_ACCESS_KEY = "test-access-key"
S3_SECRET_KEY = "test-secret-key"
LOCAL_SECRET = b"local-test-secret-0123456789abcdef"
LOCAL_BASE_URL = "http://testserver"


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_s3_server(timeout_s: float = 30.0) -> tuple[str, "subprocess.Popen[bytes]"]:
    """Start moto's S3 server on a free loopback port; return its URL and process once it answers."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"moto S3 server exited with {process.returncode}; run `{sys.executable} -m moto.server`"
            )
        try:
            httpx.get(url, timeout=1.0)
            return url, process
        except httpx.TransportError:
            time.sleep(0.1)
    _stop_process(process)
    raise RuntimeError(f"moto S3 server did not answer at {url} within {timeout_s} s")


def _stop_process(process: "subprocess.Popen[bytes]") -> None:
    """Terminate ``process``, killing it if it lingers."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def s3_url() -> Iterator[str]:
    """The base URL of a moto S3 server shared by the session."""
    url, process = start_s3_server()
    try:
        yield url
    finally:
        _stop_process(process)


@pytest.fixture
def s3_store(s3_url: str) -> S3ObjectStore:
    """An S3ObjectStore on a fresh bucket of its own (moto keeps buckets for the whole session)."""
    store = S3ObjectStore(s3_url.removeprefix("http://"), S3_ACCESS_KEY, S3_SECRET_KEY, f"test-{uuid.uuid4().hex[:20]}")
    store.ensure_bucket()
    return store


@pytest.fixture
def local_secret() -> bytes:
    """The secret the ``local_store`` fixture signs URLs with."""
    return LOCAL_SECRET


@pytest.fixture
def local_store(tmp_path: Path, local_secret: bytes) -> LocalObjectStore:
    """A LocalObjectStore in a fresh folder."""
    store = LocalObjectStore(tmp_path / "objects", LOCAL_BASE_URL, local_secret)
    store.ensure_bucket()
    return store


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each ObjectStore implementation in turn, ready to use."""
    chosen: ObjectStore = request.getfixturevalue(f"{request.param}_store")
    return chosen
