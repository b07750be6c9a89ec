"""What the object stores raise, so callers never see minio, urllib3 or OS exceptions."""


class StoreError(Exception):
    """An object store operation failed."""


class ObjectNotFound(StoreError, KeyError):
    """No object is stored under the key."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"no object under key {self.key!r}"


class StoreUnavailable(StoreError):
    """The store could not be reached or answered with a transient error; retrying may succeed."""


class InvalidKey(StoreError, ValueError):
    """The key or prefix breaks the key rules of ``storage.keys``."""
