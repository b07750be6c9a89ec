"""Object storage: every image and embedding a job reads or writes, in S3 or in a local folder."""

from storage.errors import InvalidKey, ObjectNotFound, StoreError, StoreUnavailable
from storage.factory import get_store
from storage.keys import embeddings_key, image_key, job_prefix, upload_key, validate_key, validate_prefix
from storage.local import LocalObjectStore
from storage.object_store import MAX_PRESIGN_TTL_S, ObjectStore
from storage.s3 import S3ObjectStore
from storage.secret import read_or_create_secret, signing_secret
from storage.signature import sign, verify_signature

__all__ = [
    "MAX_PRESIGN_TTL_S",
    "InvalidKey",
    "LocalObjectStore",
    "ObjectNotFound",
    "ObjectStore",
    "S3ObjectStore",
    "StoreError",
    "StoreUnavailable",
    "embeddings_key",
    "get_store",
    "image_key",
    "job_prefix",
    "read_or_create_secret",
    "sign",
    "signing_secret",
    "upload_key",
    "validate_key",
    "validate_prefix",
    "verify_signature",
]
