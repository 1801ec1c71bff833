"""The on-disk latency table: layer signature -> seconds, one file per runtime identity.

A second run on the same machine, runtime and settings reads every layer from here
and measures nothing. The file is named by a hash of the timer's identity
(onnxruntime version, provider, threads, processor, cores) and holds that identity in
full: a file whose identity differs (a hash collision, a hand edit) is ignored, so a
new runtime version or machine always measures afresh. Writes are atomic (a temporary
file renamed over the old one); an unreadable or corrupt file counts as empty and a
folder that cannot be written is skipped silently: the cache only ever saves time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

_VERSION = 1


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/spa-opt/latency``, else ``~/.cache/spa-opt/latency``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spa-opt" / "latency"


class LatencyCache:
    """Seconds per layer signature for one timer identity (None folder: memory only)."""

    def __init__(self, folder: str | os.PathLike | None, identity: str) -> None:
        self.identity = identity
        self.path = None if folder is None else (
            Path(folder) / f"{hashlib.sha1(identity.encode()).hexdigest()[:20]}.json")
        self._table: dict[str, float] = {}
        self._dirty = False
        if self.path is not None and self.path.is_file():
            with contextlib.suppress(OSError, ValueError, TypeError):
                data = json.loads(self.path.read_text())
                if data.get("version") == _VERSION and data.get("identity") == identity:
                    self._table = {str(k): float(v) for k, v in data["layers"].items()}

    def __len__(self) -> int:
        return len(self._table)

    def get(self, signature: str) -> float | None:
        """The cached seconds of a layer, or None."""
        return self._table.get(signature)

    def put(self, signature: str, seconds: float) -> None:
        """Remember a measurement (written by :meth:`save`)."""
        self._table[signature] = float(seconds)
        self._dirty = True

    def save(self) -> None:
        """Write the table atomically if it changed; a failure to write is not an error."""
        if self.path is None or not self._dirty:
            return
        data = {"version": _VERSION, "identity": self.identity, "layers": self._table}
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, staged = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            try:
                with os.fdopen(handle, "w") as out:
                    json.dump(data, out, indent=0, sort_keys=True)
                os.replace(staged, self.path)
                self._dirty = False
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(staged)
