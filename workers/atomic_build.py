"""A local preset's folder built whole or not at all: staged beside its place, marked complete, renamed in."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

# Written last into a finished build; what it holds says which build it is (a version, a digest).
BUILD_MARKER = "BUILD_OK"


def build_atomically(target: Path, marker: str, fill: Callable[[Path], str | None], *, force: bool) -> bool:
    """Build `target` with `fill`, marked `marker`; False if another process put the same build there first.

    `fill` writes the build into the empty folder it is given. It returns None, or the marker to record
    instead of `marker` when what it built turned out other than planned (inputs that changed meanwhile).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place, so a crash never leaves a half-built folder
    # that looks complete, and two concurrent builders do not write into the same files.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        marker = fill(staging) or marker
        (staging / BUILD_MARKER).write_text(marker + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        # Another process finished the same build between our check and our rename: theirs will do.
        if not force and read_marker(target) == marker:
            return False
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return True


def read_marker(target: Path) -> str | None:
    """What the marker of the build in `target` says, or None if there is no finished build there."""
    path = target / BUILD_MARKER
    return path.read_text().strip() if path.is_file() else None
