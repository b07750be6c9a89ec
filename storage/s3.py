"""S3ObjectStore: objects in an S3-compatible bucket (MinIO in compose) through the minio client."""

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import NoReturn
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError

from storage.errors import ObjectNotFound, StoreError, StoreUnavailable
from storage.keys import validate_key, validate_prefix
from storage.object_store import validate_ttl

# S3 error codes that say "try again later" even when the status is not a 5xx.
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError", "XMinioServerNotInitialized"}
)


class S3ObjectStore:
    """An ObjectStore over one bucket of an S3-compatible server.

    ``endpoint`` and ``public_endpoint`` are ``host[:port]`` or ``http(s)://host[:port]``; a scheme
    overrides ``secure``. SigV4 signs the Host header, so a presigned URL is only valid at the host
    it names: URLs are therefore signed by a second client configured for ``public_endpoint`` (the
    address clients reach, e.g. ``localhost:9000`` while the API itself talks to ``minio:9000``).
    That client never connects anywhere: with the region given, presigning is pure computation.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str = "us-east-1",
        public_endpoint: str | None = None,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 20.0,
        retries: int = 2,
    ) -> None:
        self._endpoint, self._secure = _split_endpoint(endpoint, secure)
        self._bucket = bucket
        self._region = region
        self._client = Minio(
            self._endpoint,
            access_key=access_key or None,
            secret_key=secret_key or None,
            secure=self._secure,
            region=region,
            http_client=_http_client(connect_timeout_s, read_timeout_s, retries),
        )
        if public_endpoint:
            public_host, public_secure = _split_endpoint(public_endpoint, secure)
            self._presigner = Minio(
                public_host,
                access_key=access_key or None,
                secret_key=secret_key or None,
                secure=public_secure,
                region=region,
            )
        else:
            self._presigner = self._client

    def __repr__(self) -> str:
        scheme = "https" if self._secure else "http"
        return f"S3ObjectStore({scheme}://{self._endpoint}, bucket={self._bucket!r})"

    @property
    def bucket(self) -> str:
        """The bucket this store reads and writes."""
        return self._bucket

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing; losing a creation race to another process is fine."""
        with self._translated_errors():
            if self._client.bucket_exists(self._bucket):
                return
            try:
                self._client.make_bucket(self._bucket)
            except S3Error as err:
                if err.code == "BucketAlreadyOwnedByYou":
                    return
                # Some servers answer this to the loser of a creation race; it is fine if we can use it.
                if err.code == "BucketAlreadyExists" and self._client.bucket_exists(self._bucket):
                    return
                raise

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` (S3 PUTs are atomic: readers see the old or the new object)."""
        validate_key(key)
        with self._translated_errors(key):
            self._client.put_object(self._bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def get(self, key: str) -> bytes:
        """The bytes stored under ``key``; raises ObjectNotFound."""
        validate_key(key)
        with self._translated_errors(key):
            response = self._client.get_object(self._bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        validate_key(key)
        try:
            with self._translated_errors(key):
                self._client.stat_object(self._bucket, key)
        except ObjectNotFound:
            return False
        return True

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix``; return how many there were."""
        validate_prefix(prefix)
        with self._translated_errors():
            names = [
                obj.object_name
                for obj in self._client.list_objects(self._bucket, prefix=prefix, recursive=True)
                if obj.object_name is not None
            ]
            # remove_objects is lazy: the deletions happen while its error iterator is consumed.
            failures = list(self._client.remove_objects(self._bucket, (DeleteObject(n) for n in names)))
        if failures:
            first = failures[0]
            raise StoreError(
                f"could not delete {len(failures)} of {len(names)} objects under {prefix!r}:"
                f" {first.name}: {first.code} {first.message}"
            )
        return len(names)

    def list_keys(self, prefix: str, *, modified_before: datetime, limit: int) -> list[str]:
        """Up to ``limit`` keys under ``prefix`` last written before ``modified_before``."""
        validate_prefix(prefix)
        keys: list[str] = []
        with self._translated_errors():
            for obj in self._client.list_objects(self._bucket, prefix=prefix, recursive=True):
                modified = obj.last_modified
                if obj.object_name is not None and modified is not None and modified < modified_before:
                    keys.append(obj.object_name)
                    if len(keys) >= limit:
                        break
        return keys

    def presigned_url(self, key: str, ttl_s: int) -> str:
        """A presigned GET URL for ``key``, at the public endpoint when one is configured."""
        validate_key(key)
        validate_ttl(ttl_s)
        with self._translated_errors(key):
            return self._presigner.presigned_get_object(self._bucket, key, expires=timedelta(seconds=ttl_s))

    def ping(self) -> None:
        """Return if the server answers and the bucket exists; else raise StoreUnavailable."""
        with self._translated_errors():
            found = self._client.bucket_exists(self._bucket)
        if not found:
            raise StoreUnavailable(f"bucket {self._bucket!r} does not exist at {self._endpoint}")

    @contextmanager
    def _translated_errors(self, key: str | None = None) -> Iterator[None]:
        """Turn minio and urllib3 exceptions into StoreError subclasses."""
        try:
            yield
        except S3Error as err:
            self._raise_for_s3_error(err, key)
        except (ServerError, InvalidResponseError) as err:
            status = err.status_code if isinstance(err, ServerError) else getattr(err, "_code", None)
            if status is None or status >= 500:
                raise StoreUnavailable(f"object store at {self._endpoint} failed: {err}") from err
            raise StoreError(f"object store at {self._endpoint} failed: {err}") from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise StoreUnavailable(f"object store at {self._endpoint} is unreachable: {err}") from err

    def _raise_for_s3_error(self, err: S3Error, key: str | None) -> NoReturn:
        if err.code == "NoSuchKey" and key is not None:
            raise ObjectNotFound(key) from err
        if err.code == "NoSuchBucket":
            raise StoreError(
                f"bucket {self._bucket!r} does not exist at {self._endpoint}; call ensure_bucket()"
            ) from err
        if err.code in _TRANSIENT_CODES or err.response.status >= 500:
            raise StoreUnavailable(f"object store at {self._endpoint}: {err.code}: {err.message}") from err
        raise StoreError(f"object store at {self._endpoint}: {err.code}: {err.message}") from err


def _split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """``host[:port]`` and whether to use TLS, from ``host[:port]`` or ``http(s)://host[:port]``."""
    if "://" not in endpoint:
        return endpoint.rstrip("/"), secure
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"S3 endpoint must be host[:port] or http(s)://host[:port] without a path, got {endpoint!r}")
    return parts.netloc, parts.scheme == "https"


def _http_client(connect_timeout_s: float, read_timeout_s: float, retries: int) -> urllib3.PoolManager:
    """A pool with short timeouts and few retries, so an unreachable store fails in seconds.

    minio's default waits 5 minutes per attempt and retries 5 times, which would stall a worker or
    /readyz for half an hour before anyone learns the store is down.
    """
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(
            total=retries,
            connect=retries,
            read=1,
            backoff_factor=0.2,
            backoff_max=2.0,
            status_forcelist=(500, 502, 503, 504),
        ),
    )
