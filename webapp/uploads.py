"""Uploaded data sets: a ZIP unpacked safely into a new folder under workspace/uploads.

Unsafe entries (absolute paths, '..', links, encrypted, suspicious compression) are refused by
name and never written; an upload that cannot be used leaves no folder behind.
"""

from __future__ import annotations

import shutil
import stat
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from storage import Store

#: Largest uploaded ZIP and largest unpacked content accepted, in bytes.
MAX_ZIP_BYTES = 1024 * 1024 * 1024
MAX_UNPACKED_BYTES = 4 * MAX_ZIP_BYTES
#: Highest compression ratio of one ZIP entry before it is taken for a ZIP bomb.
MAX_COMPRESSION_RATIO = 200


@dataclass
class ZipExtraction:
    """Result of unpacking an uploaded ZIP: the data set root and every entry refused, by name."""

    folder: Path  # where the entries were written
    root: Path  # the data set root inside it (a single top folder is stepped into)
    extracted: int
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (entry name, reason)


class UploadError(ValueError):
    """An upload that cannot be used at all (not a ZIP, too large, nothing usable inside)."""


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why an entry may not be written, or None when it is safe."""
    name = info.filename
    if "\x00" in name:
        return "file name holds a NUL character"
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return "absolute path (would be written outside the upload folder)"
    if any(part == ".." for part in PurePosixPath(posix).parts):
        return "path escapes the upload folder ('..')"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link (not extracted)"
    if info.flag_bits & 0x1:
        return "encrypted entry (password-protected ZIPs are not supported)"
    if info.compress_size and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO and info.file_size > 10_000_000:
        return f"suspicious compression ratio ({info.file_size // max(info.compress_size, 1)}:1)"
    return None


def _skipped(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return any(p == "__MACOSX" or p.startswith("._") or p == ".DS_Store" for p in parts)


def extract_zip(source: IO[bytes] | Path | str, destination: Path | str, *,
                max_unpacked: int = MAX_UNPACKED_BYTES) -> ZipExtraction:
    """Unpack an uploaded ZIP into a new folder, refusing unsafe entries (zip-slip) by name.

    Absolute paths, '..' components, links and encrypted entries are reported, never written;
    every written path is checked to stay inside the destination. Raises UploadError when the
    file is not a ZIP or would unpack to more than max_unpacked bytes.
    """
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=False)
    try:
        return _extract(source, destination.resolve(), max_unpacked)
    except BaseException:
        discard_upload(destination)  # a refused upload leaves no (empty) folder behind
        raise


def discard_upload(folder: Path | str) -> None:
    """Remove an upload folder that will not become a project (refused ZIP, unusable data set)."""
    shutil.rmtree(folder, ignore_errors=True)


def _extract(source: IO[bytes] | Path | str, base: Path, max_unpacked: int) -> ZipExtraction:
    result = ZipExtraction(folder=base, root=base, extracted=0)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as error:
        raise UploadError(f"not a readable ZIP file ({error})") from error
    with archive:
        infos = archive.infolist()
        total = sum(i.file_size for i in infos if not i.is_dir())
        if total > max_unpacked:
            raise UploadError(f"the ZIP unpacks to {total / 1e9:.1f} GB, more than the "
                              f"{max_unpacked / 1e9:.1f} GB allowed")
        for info in infos:
            if info.is_dir() or _skipped(info.filename):
                continue
            problem = _entry_problem(info)
            target = (base / info.filename.replace("\\", "/")).resolve()
            if problem is None and base not in target.parents:
                problem = "path escapes the upload folder"
            if problem:
                result.rejected.append((info.filename, problem))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 20)
            except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as error:
                target.unlink(missing_ok=True)
                result.rejected.append((info.filename, f"could not be read ({error})"))
                continue
            result.extracted += 1
    if result.extracted == 0:
        raise UploadError("the ZIP holds no usable file" + (
            f" ({len(result.rejected)} refused: {result.rejected[0][0]}: {result.rejected[0][1]})"
            if result.rejected else ""))
    children = [p for p in base.iterdir() if not p.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir():
        result.root = children[0]
    return result


def new_upload_folder(store: Store) -> Path:
    """A fresh folder under workspace/uploads for one uploaded data set."""
    return Path(store.workspace) / "uploads" / uuid.uuid4().hex[:12]
