"""Engines and sessions. Callers own the transaction; nothing here commits."""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from core.config import get_settings
from core.tracing import trace_engine


@lru_cache
def get_engine() -> Engine:
    """The process's pooled engine for ``IMAGEN_DATABASE_URL`` (created lazily, after any fork); its
    statements are traced when tracing is on (core/tracing.py)."""
    engine = create_engine(
        get_settings().database_url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        connect_args={"connect_timeout": 5},
    )
    trace_engine(engine)
    return engine


@lru_cache
def _session_factory() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error (for tasks and scripts)."""
    session = _session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@lru_cache
def _reading_session_factory() -> sessionmaker[Session]:
    return sessionmaker(get_engine().execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)


@contextmanager
def reading_scope() -> Iterator[Session]:
    """A session for one read: each statement runs on its own, with no BEGIN and COMMIT round trips (a single
    SELECT is consistent in itself; several are not consistent with each other here)."""
    session = _reading_session_factory()()
    try:
        yield session
    finally:
        session.close()


def new_session() -> Session:
    """A bare session; the caller commits and closes it."""
    return _session_factory()()


def ping() -> None:
    """One round trip to the database; raises if it does not answer."""
    with session_scope() as session:
        session.execute(text("SELECT 1"))
