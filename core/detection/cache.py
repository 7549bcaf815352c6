"""On-disk cache of anomaly maps keyed by image content and detector settings.

Layout: <root>/<settings key>/<image content hash>.npy (float32 map at image size). The settings
key hashes the detector configuration, the weights file's content and the content of the images
the detector learnt from (PatchCore: the normal images; zero-shot: the whole set), so any change
that would change a map also changes where it is looked up. Image scores are the maps' maxima.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

#: Bumped whenever the detector's arithmetic changes, so old entries are not reused.
CACHE_VERSION = 2


def file_hash(path: Path, chunk: int = 1 << 20) -> str:
    """Content hash of a file (BLAKE2b, 128 bit, hex)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def settings_key(settings: dict[str, Any], context: Iterable[str]) -> str:
    """Hash of detector settings plus the content hashes the fitted detector depends on (order-free)."""
    payload = json.dumps({"version": CACHE_VERSION, "settings": settings, "context": sorted(context)},
                         sort_keys=True, default=str)
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=16).hexdigest()


class MapCache:
    """Maps of one detector setting, stored as .npy files named by image content hash."""

    def __init__(self, root: Path, key: str) -> None:
        self.folder = Path(root) / key

    def _path(self, content_hash: str) -> Path:
        return self.folder / f"{content_hash}.npy"

    def get(self, content_hash: str) -> np.ndarray | None:
        """The cached map, or None when absent or unreadable (a damaged entry is recomputed)."""
        path = self._path(content_hash)
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        return array if array.ndim == 2 and array.dtype == np.float32 else None

    def put(self, content_hash: str, array: np.ndarray) -> None:
        """Store a map atomically (write to a temporary file, then rename)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.save(stream, np.asarray(array, dtype=np.float32))
            os.replace(temporary, self._path(content_hash))
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
