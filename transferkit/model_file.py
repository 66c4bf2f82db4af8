"""The bytes of a transferkit model file: written atomically, read without trusting them.

This module owns the container that :mod:`transferkit.persistence` fills: a zip archive of
stored (uncompressed) members, ``manifest.json``, ``manifest.sha256`` and, for a fitted
estimator, ``weights.npz``. It knows nothing of estimators; it guarantees that

* a file is written to a temporary file beside its destination, flushed to disk and moved
  over the destination, and that temporaries which a killed process left behind for the same
  destination are removed by the next save (:func:`write_archive`);
* every malformed file, whatever byte of it is wrong, raises :class:`ModelFileError`, not
  whichever exception the zip or NumPy parser happens to raise (:class:`ModelArchive`);
* no read is larger than what its caller expects: member sizes, compression and the
  ``.npy`` header of every weight (shape, dtype, byte order) are checked against the
  expected ones before any data is read (:meth:`ModelArchive.read`, :func:`read_weights`),
  so a crafted header cannot make loading allocate or decompress gigabytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import struct
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .advice import advised

__all__ = [
    "MANIFEST",
    "MANIFEST_DIGEST",
    "STALE_TEMPORARY_SECONDS",
    "WEIGHTS",
    "ModelArchive",
    "ModelFileError",
    "digest_line",
    "read_declared_weights",
    "read_sealed_member",
    "read_weights",
    "write_archive",
]

MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"
"""The SHA-256 of ``manifest.json``, as ``sha256sum`` prints it. A separate member, so that
editing the manifest with a zip tool, which recomputes the member's CRC, leaves it stale."""
WEIGHTS = "weights.npz"

STALE_TEMPORARY_SECONDS = 3600
"""Age (since last modification) beyond which a save removes a temporary file that an earlier
save of the same destination left behind. A save in progress keeps writing to its temporary
and renames it within seconds, so an hour-old one belongs to a process that died."""

# A manifest is a few kilobytes; the cap stops a crafted one from being read into memory
# before its digest has been compared.
MAX_MANIFEST_BYTES = 16 * 2**20
_MAX_DIGEST_BYTES = 256
# np.save writes headers of a few hundred bytes; NumPy's own reader refuses above 10000.
_MAX_NPY_HEADER = 10000
# Bytes of zip and .npy structure per array of an .npz, beyond its data: local header and
# central directory entry with zip64 fields, and the .npy header. Generous, and still
# nothing next to a crafted size.
_NPZ_OVERHEAD_PER_ARRAY = 1024
# Fixed timestamps make two saves of the same estimator byte-identical.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_UTF8_NAMES = 0x800  # the only zip flag transferkit's writer may set
# zipfile's version for members over 4 GiB (zip64); anything above needs features (such
# as other compressions or encryption) that save never uses.
_MAX_EXTRACT_VERSION = 45
# mkstemp's names: PREFIX + 8 characters of this alphabet + SUFFIX.
_TEMPORARY = r"\.{name}\.[a-z0-9_]{{8}}\.tmp"


class ModelFileError(ValueError):
    """A file cannot be loaded: not a transferkit file, truncated, damaged or edited."""


def sha256(data: bytes) -> str:
    """Hexadecimal SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def digest_line(manifest: bytes) -> bytes:
    """Content of ``manifest.sha256``: ``sha256sum manifest.json`` output, so that
    ``unzip file.tkz && sha256sum -c manifest.sha256`` checks it too."""
    return f"{sha256(manifest)}  {MANIFEST}\n".encode("ascii")


# ---------------------------------------------------------------------- writing
def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED  # weights barely compress; storing is fast
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    return info


def write_archive(path: Path, members: Sequence[tuple[str, bytes]]) -> None:
    """Zip ``members`` into a temporary file beside ``path``, sync it, move it into place.

    Temporaries of the same destination older than :data:`STALE_TEMPORARY_SECONDS`, left by
    a process killed while saving, are removed first.
    """
    directory = path.parent if str(path.parent) else Path(".")
    remove_stale_temporaries(path)
    # Same folder as the destination: os.replace is only atomic within one file system.
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            with zipfile.ZipFile(handle, "w") as archive:
                for member, data in members:
                    archive.writestr(_zip_info(member), data)
            handle.flush()
            # On disk before the rename: otherwise a power cut could leave the new name
            # pointing at an empty file.
            os.fsync(handle.fileno())
        # mkstemp creates the file readable by its owner only; keep the mode a file saved
        # in place would have had.
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _sync_directory(directory)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries of saves of ``path`` that were not modified for an hour.

    Only names :func:`write_archive` makes for this very destination match (``.NAME.`` and
    mkstemp's eight characters, then ``.tmp``), and only regular files, never links.

    Returns
    -------
    removed : list of pathlib.Path
    """
    directory = path.parent if str(path.parent) else Path(".")
    pattern = re.compile(_TEMPORARY.format(name=re.escape(path.name)))
    removed = []
    try:
        candidates = [entry for entry in os.scandir(directory)
                      if pattern.fullmatch(entry.name)]
    except OSError:  # an unreadable folder: the save itself will report what is wrong
        return removed
    now = time.time()
    for entry in candidates:
        try:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime > STALE_TEMPORARY_SECONDS:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone already (another save cleaned it), or not ours to remove
            continue
    return removed


def _sync_directory(directory: Path) -> None:
    # Makes the rename itself durable. Not possible on every platform (Windows cannot
    # open a directory); the file is complete either way.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- reading
class ModelArchive:
    """A model file opened for reading, its zip structure checked.

    It must hold a ``manifest.json`` (a zip archive without one, such as NumPy's ``.npz``,
    is another kind of file, not a damaged model file). Every member must be stored (not
    compressed), unencrypted, listed once, and described alike by its local header and the
    central directory, as :func:`write_archive` writes them. Any damage to the structure,
    and any failure of the zip parser, raises :class:`ModelFileError`.

    Parameters
    ----------
    path : pathlib.Path
        The file. A missing or unreadable path raises the ``OSError`` of opening it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = repr(str(path))
        self._handle = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            self._zip = zipfile.ZipFile(self._handle)
        except Exception as exc:  # the zip parser's failures are many; each means the same
            self._handle.close()
            raise advised(
                ModelFileError,
                "{where} is not a transferkit model file, or it is truncated ({error}). "
                "{model_file_formats}",
                where=self.where, error=f"{type(exc).__name__}: {exc}",
            ) from exc
        try:
            self.names = self._zip.namelist()
            # Before the checks of its members, which would call another zip file damaged.
            if MANIFEST not in self.names:
                raise advised(
                    ModelFileError,
                    "{where} is a zip file without {manifest!r}: not a file written by "
                    "{model_writer} ({other_zip_files}).",
                    where=self.where, manifest=MANIFEST,
                )
            if len(self.names) != len(set(self.names)):
                raise ModelFileError(
                    f"{self.where} holds the same member twice; the file was edited."
                )
            for info in self._zip.infolist():
                self._check_entry(info)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> ModelArchive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        if hasattr(self, "_zip"):
            self._zip.close()
        self._handle.close()

    def _damaged(self, member: str, problem: str) -> ModelFileError:
        return advised(
            ModelFileError,
            "{where}: member {member!r} {problem}; {model_writer} never writes it so, so the "
            "file was damaged or altered after it was saved. Restore it from a copy or save "
            "the estimator again.",
            where=self.where, member=member, problem=problem,
        )

    def _check_entry(self, info: zipfile.ZipInfo) -> None:
        name = info.filename
        if info.compress_type != zipfile.ZIP_STORED:
            raise self._damaged(name, f"is compressed (zip method {info.compress_type})")
        if info.flag_bits & ~_UTF8_NAMES:
            raise self._damaged(name, f"has zip flags {info.flag_bits:#06x} (encryption or "
                                      f"a trailing data descriptor)")
        if info.extract_version > _MAX_EXTRACT_VERSION:
            raise self._damaged(name, f"needs zip version {info.extract_version / 10}")
        if info.file_size != info.compress_size:
            raise self._damaged(name, f"is stored in {info.compress_size} bytes but claims "
                                      f"{info.file_size}")
        # zipfile reads only the name and lengths of a local header and trusts the central
        # directory for the rest; a writer puts the same values in both, so a difference is
        # damage, and a file read one way by one tool and another way by another is refused.
        size = os.fstat(self._handle.fileno()).st_size
        if not 0 <= info.header_offset <= size - zipfile.sizeFileHeader - info.compress_size:
            raise self._damaged(name, f"lies at offset {info.header_offset}, outside the "
                                      f"{size} bytes of the file")
        self._handle.seek(info.header_offset)
        header = self._handle.read(zipfile.sizeFileHeader)
        if len(header) != zipfile.sizeFileHeader:
            raise self._damaged(name, "has its local header cut off")
        fields = struct.unpack(zipfile.structFileHeader, header)
        # (magic, version, system, flags, method, time, date, crc, sizes, name, extra)
        if fields[0] != zipfile.stringFileHeader:
            raise self._damaged(name, "has no local header where the directory points")
        dos_time, dos_date = _dos_date_time(info.date_time)
        local = (fields[1], fields[3], fields[4], fields[5], fields[6], fields[7])
        central = (info.extract_version, info.flag_bits, info.compress_type, dos_time,
                   dos_date, info.CRC)
        sizes_match = fields[8:10] == (info.compress_size, info.file_size) or (
            fields[8:10] == (0xFFFFFFFF, 0xFFFFFFFF))  # zip64: the sizes are in the extra
        if local != central or not sizes_match:
            raise self._damaged(name, "has a local header that disagrees with the zip "
                                      "directory")

    def read(self, member: str, size: int | None = None, *, limit: int | None = None) -> bytes:
        """The bytes of ``member``, CRC-checked.

        Parameters
        ----------
        member : str
            A member name; it must be in the archive.
        size : int, default=None
            The exact size expected; any other is refused before reading.
        limit : int, default=None
            The largest size accepted, when the exact size is not known.

        Returns
        -------
        bytes
        """
        info = self._zip.getinfo(member)
        if size is not None and info.file_size != size:
            raise ModelFileError(
                f"{self.where}: member {member!r} holds {info.file_size} bytes, its manifest "
                f"says {size}; the file was edited or damaged."
            )
        if limit is not None and info.file_size > limit:
            raise ModelFileError(
                f"{self.where}: member {member!r} claims {info.file_size} bytes, more than the "
                f"{limit} expected; the file was edited or not written by transferkit."
            )
        try:
            # zipfile checks each member's CRC-32 while reading it.
            return self._zip.read(member)
        except Exception as exc:  # as in __init__: any parser failure is a damaged file
            raise ModelFileError(
                f"{self.where}: member {member!r} is damaged ({type(exc).__name__}: {exc}); "
                f"the file was corrupted after it was written. Restore it from a copy or save "
                f"the estimator again."
            ) from exc


def _dos_date_time(date_time: tuple) -> tuple[int, int]:
    year, month, day, hour, minute, second = date_time
    return ((hour << 11) | (minute << 5) | (second // 2),
            ((year - 1980) << 9) | (month << 5) | day)


def read_sealed_member(archive: ModelArchive, member: str, entry: Any) -> bytes:
    """The bytes of ``member``, checked against its manifest entry's size and SHA-256.

    Done before anything is built from the file, so that damage to the weights is found
    at once. The read is bounded by the file itself: members are stored, not compressed,
    and :class:`ModelArchive` checked that each one's size is what it occupies on disk.

    Parameters
    ----------
    archive : ModelArchive
        The open file.
    member : str
        The member's name.
    entry : object
        Its entry in the manifest's ``members``: ``{"size": int, "sha256": str}``.

    Returns
    -------
    bytes
    """
    if not (isinstance(entry, dict) and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)):
        raise ModelFileError(f"{archive.where}: the manifest entry of {member!r} is malformed.")
    data = archive.read(member, entry["size"])
    if sha256(data) != entry["sha256"]:
        raise ModelFileError(
            f"{archive.where}: {member!r} does not match the SHA-256 digest recorded when the "
            f"file was saved; it was modified or damaged since. Restore it from a copy or save "
            f"the estimator again."
        )
    return data


def read_declared_weights(
    where: str,
    data: bytes,
    declared: Any,
    needed: Sequence[tuple[str, tuple[int, ...], np.dtype]],
    network: str,
    provenance: str = "",
) -> list[np.ndarray]:
    """Check the weights a manifest declares against those a network needs, then parse them.

    Parameters
    ----------
    where : str
        The file, for messages.
    data : bytes
        The content of ``weights.npz``, as :func:`read_sealed_member` returned it.
    declared : object
        The manifest's ``weights``: a list of ``{"shape": [...], "dtype": "<f4"}``.
    needed : sequence of (name, shape, dtype)
        The network's weights, in ``get_weights()`` order.
    network : str
        What the network is, for messages ("the FineTunedClassifier its parameters
        describe").
    provenance : str, default=""
        Versions that wrote and read the file, appended to a mismatch's message.

    Returns
    -------
    list of ndarray
        One array per weight, as ``needed`` says.
    """
    if not isinstance(declared, list) or not all(
            isinstance(item, dict) and isinstance(item.get("shape"), list)
            and isinstance(item.get("dtype"), str) for item in declared):
        raise ModelFileError(f"{where}: the manifest does not describe the weights.")
    if len(declared) != len(needed):
        raise ModelFileError(
            f"{where} holds {len(declared)} weight arrays, but {network} has {len(needed)}: "
            f"the weights are those of another network. {provenance}"
        )
    for i, (item, (name, shape, dtype)) in enumerate(zip(declared, needed, strict=True)):
        if item["shape"] != list(shape) or item["dtype"] != dtype.str:
            raise ModelFileError(
                f"{where}: weight {i} ({name}) has shape {tuple(item['shape'])} and dtype "
                f"{item['dtype']} in the file, but {network} needs shape {shape} and dtype "
                f"{dtype.str}: the weights are those of another network. {provenance}"
            )
    shapes = [(shape, dtype) for _, shape, dtype in needed]
    data_bytes = sum(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                     for shape, dtype in shapes)
    bound = data_bytes + _NPZ_OVERHEAD_PER_ARRAY * (len(shapes) + 1)
    if len(data) > bound:
        raise ModelFileError(
            f"{where}: {WEIGHTS} takes {len(data)} bytes, but the weights it declares take "
            f"at most {bound}; the file was edited."
        )
    return read_weights(data, shapes, where)


def read_weights(data: bytes, expected: Sequence[tuple[tuple[int, ...], np.dtype]],
                 where: str) -> list[np.ndarray]:
    """The arrays ``w00000``, ``w00001``, ... of the ``.npz`` ``data``, as ``expected``.

    Each array's ``.npy`` header (shape, dtype and byte order, memory order, header size)
    and its zip entry (stored, size) must match ``expected`` before its data is read; no
    pickle is ever read.

    Parameters
    ----------
    data : bytes
        The content of ``weights.npz``.
    expected : sequence of (shape, dtype)
        What each array must be, in order.
    where : str
        The file, for messages.

    Returns
    -------
    list of ndarray
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except Exception as exc:
        raise ModelFileError(f"{where}: {WEIGHTS} is not an .npz archive ({exc}).") from exc
    with archive:
        names = [f"w{i:05d}.npy" for i in range(len(expected))]
        if archive.namelist() != names:
            found = archive.namelist()
            raise ModelFileError(
                f"{where}: {WEIGHTS} holds {len(found)} arrays ({_listing(found)}), the "
                f"network needs {len(expected)} named w00000.npy ... in order."
            )
        return [_read_npy(archive, name, shape, np.dtype(dtype), where)
                for name, (shape, dtype) in zip(names, expected, strict=True)]


def _listing(items: Sequence[str], keep: int = 3) -> str:
    """The first few of ``items``, for a message."""
    shown = ", ".join(items[:keep])
    return shown + (f", ... ({len(items) - keep} more)" if len(items) > keep else "")


def _read_npy(archive: zipfile.ZipFile, name: str, shape: tuple[int, ...], dtype: np.dtype,
              where: str) -> np.ndarray:
    info = archive.getinfo(name)
    label = f"{where}: {WEIGHTS} array {name[:-4]!r}"
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & ~_UTF8_NAMES \
            or info.file_size != info.compress_size:
        # np.savez stores its arrays: a compressed one (a possible zip bomb) is not ours.
        raise ModelFileError(f"{label} is compressed or encrypted; np.savez, which "
                             f"transferkit.save uses, stores its arrays as they are.")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    try:
        with archive.open(info) as member:
            prefix = member.read(8)
            if len(prefix) != 8 or prefix[:6] != b"\x93NUMPY" or prefix[6] not in (1, 2):
                raise ValueError("no .npy header")
            length_bytes = member.read(2 if prefix[6] == 1 else 4)
            header_length = int.from_bytes(length_bytes, "little")
            if header_length > _MAX_NPY_HEADER:
                raise ValueError(f"a header of {header_length} bytes")
            reader = (np.lib.format.read_array_header_1_0 if prefix[6] == 1
                      else np.lib.format.read_array_header_2_0)
            header = member.read(header_length)
            found_shape, fortran, found_dtype = reader(io.BytesIO(length_bytes + header))
            if (tuple(found_shape), bool(fortran), found_dtype) != (tuple(shape), False, dtype):
                raise ModelFileError(
                    f"{label} is declared as shape {tuple(found_shape)}, dtype "
                    f"{found_dtype.str}{', Fortran order' if fortran else ''}; the network "
                    f"needs shape {tuple(shape)}, dtype {dtype.str}. Nothing was read."
                )
            if info.file_size != len(prefix) + len(length_bytes) + header_length + nbytes:
                raise ValueError(f"{info.file_size} bytes for {nbytes} bytes of data")
            values = member.read(nbytes)
            if len(values) != nbytes or member.read(1):
                raise ValueError("data of another length than its header declares")
    except ModelFileError:
        raise
    except Exception as exc:  # whatever NumPy's or zipfile's parser raised: a bad array
        raise ModelFileError(f"{label} cannot be read as a plain array ({exc}).") from exc
    return np.frombuffer(values, dtype=dtype).reshape(shape).copy()
