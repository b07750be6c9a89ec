"""get_store: the ObjectStore the settings describe."""

from functools import lru_cache

from core.config import Settings, get_settings
from storage.local import LocalObjectStore
from storage.object_store import ObjectStore
from storage.s3 import S3ObjectStore
from storage.secret import signing_secret


def get_store(settings: Settings) -> ObjectStore:
    """An S3ObjectStore when ``IMAGEN_S3_ENDPOINT`` is set, else a LocalObjectStore in ``objects_dir``."""
    if settings.s3_endpoint:
        return S3ObjectStore(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
            public_endpoint=settings.s3_public_endpoint,
        )
    return LocalObjectStore(settings.objects_dir, settings.public_url, signing_secret(settings))


@lru_cache
def process_store() -> ObjectStore:
    """This process's store, from the process settings, its bucket ensured once."""
    store = get_store(get_settings())
    store.ensure_bucket()
    return store
