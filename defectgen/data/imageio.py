"""The one image/mask I/O module of defectgen: every layer reads and writes pixels through here.

Why one module: colour order (OpenCV is BGR, everything else in defectgen is RGB), mask encoding (0/255 on
disk, {0,1} in memory), model normalisation ([-1,1], CHW) and atomic writes (temp file + `os.replace`, so an
interrupted run never leaves a half-written PNG that a resumed run would trust) are decided once.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from defectgen.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_PENDING: contextvars.ContextVar[SyncBatch | None] = contextvars.ContextVar("defectgen_pending_sync",
                                                                            default=None)
_FORMAT_NAMES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp", ".tif": "tiff", ".tiff": "tiff"}


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically: a temp file in the same folder, fsync, then `os.replace`.

    The same folder keeps the rename on one filesystem (atomic on POSIX and Windows); on any failure the temp
    file is removed and `path` is untouched. Parent folders are created. Inside a `deferred_sync` block the
    fsync is left to the block (one flush to disk for all its files).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    pending = _PENDING.get()
    try:
        # mkstemp creates 0600; outputs are meant to be shared like any file the user writes (umask applies).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if pending is None:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if pending is not None:
        pending.paths.append(path)
    return path


class SyncBatch:
    """Files written atomically but not yet flushed to disk (`deferred_sync`); `sync` flushes them at once."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def sync(self) -> None:
        """Make every file written so far durable, their renames included; then start a new batch.

        One `syncfs` per filesystem the files are on (Linux); where that call does not exist or fails, an
        fsync of each file and each of their folders.
        """
        by_device: dict[int, list[Path]] = {}
        for p in self.paths:
            by_device.setdefault(os.stat(p).st_dev, []).append(p)
        for paths in by_device.values():
            if not _syncfs(paths[0].parent):
                for p in [*paths, *dict.fromkeys(p.parent for p in paths)]:
                    _fsync_path(p)
        self.paths.clear()


@contextlib.contextmanager
def deferred_sync() -> Iterator[SyncBatch]:
    """Atomic writes inside the block skip their own fsync; the block flushes them together when it ends.

    For writers of many small files (a run's PNGs): one flush per batch instead of one per file. A file is
    complete and atomically named at once either way (a killed process leaves whole files); only after the
    block (or `SyncBatch.sync`) does it survive a power cut, so record it elsewhere only after that. A block
    left by an exception does not flush.
    """
    batch = SyncBatch()
    token = _PENDING.set(batch)
    try:
        yield batch
    finally:
        _PENDING.reset(token)
    batch.sync()


def _syncfs(folder: Path) -> bool:
    """`syncfs(2)` on the filesystem holding `folder`; False where the call does not exist or fails."""
    func = _libc_syncfs()
    if func is None:
        return False
    fd = os.open(folder, os.O_RDONLY)
    try:
        return func(fd) == 0
    finally:
        os.close(fd)


@functools.cache
def _libc_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8 text version of `atomic_write_bytes` (manifests, jobs.jsonl)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _decode(path: Path, flags: int) -> np.ndarray:
    # cv2.imread returns None silently for missing and corrupt files alike; read bytes ourselves so the two
    # cases get distinct messages, and so non-ASCII paths work on every platform.
    try:
        buf = np.frombuffer(path.read_bytes(), np.uint8)
    except OSError as e:
        msg = f"cannot read file ({e.strerror or e}): {path}"
        raise DataError(msg) from None
    img = cv2.imdecode(buf, flags) if buf.size else None
    if img is None:
        msg = f"not a readable image (corrupt or unsupported format): {path}"
        raise DataError(msg)
    return img


@dataclass(frozen=True)
class PixelFormat:
    """How an input image is stored, so an output can be written the same way (`read_native`, `write_image`).

    The model always sees 8-bit RGB (`to_rgb8`); outputs keep the input's channels and bit depth: grayscale stays
    grayscale, 16 bit stays 16 bit, an alpha channel is carried through unchanged. Only the file format changes:
    every output is a PNG (lossless), whatever came in (a JPEG's `source` says so).
    """

    channels: str = "rgb"  # "gray", "rgb" or "rgba"
    bits: int = 8  # 8 or 16
    source: str = "png"  # the input file's format (suffix without the dot)

    @property
    def peak(self) -> int:
        return 65535 if self.bits == 16 else 255

    @property
    def colour_channels(self) -> int:
        return 1 if self.channels == "gray" else 3

    def from_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """Float RGB in 0..255, (..., 3) -> float colour channels in this format's range, (..., C)."""
        if self.channels == "gray":  # the model saw the gray channel replicated: back to one channel (luma)
            rgb = (rgb @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        return rgb * (self.peak / 255.0)

    def to_dict(self) -> dict[str, object]:
        return {"channels": self.channels, "bits": self.bits, "source": self.source}


RGB8 = PixelFormat()


def read_native(path: str | os.PathLike[str]) -> tuple[np.ndarray, PixelFormat]:
    """Read an image as stored: uint8 or uint16, HxW gray, HxWx3 RGB or HxWx4 RGBA (RGB order), and its format.

    Other pixel types (float TIFFs) are converted to 8-bit RGB, and say so in their format.
    """
    path = Path(path)
    img = _decode(path, cv2.IMREAD_UNCHANGED)
    source = _FORMAT_NAMES.get(path.suffix.lower(), path.suffix.lower().lstrip("."))
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.dtype not in (np.uint8, np.uint16):
        return _to_uint8(img if img.ndim == 2 else img[:, :, :3][:, :, ::-1], path), PixelFormat("rgb", 8, source)
    bits = 16 if img.dtype == np.uint16 else 8
    if img.ndim == 2:
        return img, PixelFormat("gray", bits, source)
    code = cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(img, code), PixelFormat("rgba" if img.shape[2] == 4 else "rgb", bits, source)


CHANNEL_ORDERS = ("rgb", "bgr")


def native_from_array(img: np.ndarray, channel_order: str = "rgb",
                      where: str = "image") -> tuple[np.ndarray, PixelFormat]:
    """An image handed over in memory -> the `read_native` form (RGB order) and its format.

    OpenCV hands out BGR, most other libraries RGB: the caller says which (`channel_order`), and outputs are
    turned back into that order (`array_in_order`). Accepts uint8 / uint16, HxW, HxWx1, HxWx3 or HxWx4.

    Raises:
        DataError: another dtype or shape, an unknown channel order, or an image smaller than 2x2.
    """
    if channel_order not in CHANNEL_ORDERS:
        msg = f"{where}: unknown channel order {channel_order!r}; choose from {', '.join(CHANNEL_ORDERS)}"
        raise DataError(msg)
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.dtype not in (np.uint8, np.uint16) or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))):
        msg = f"{where}: expected a uint8/uint16 HxW, HxWx3 or HxWx4 array, got {img.dtype} {img.shape}"
        raise DataError(msg)
    if min(img.shape[:2]) < 2:
        msg = f"{where}: image of {img.shape[1]}x{img.shape[0]} px is too small"
        raise DataError(msg)
    bits = 16 if img.dtype == np.uint16 else 8
    if img.ndim == 2:
        return np.ascontiguousarray(img), PixelFormat("gray", bits, "array")
    channels = "rgba" if img.shape[2] == 4 else "rgb"
    return array_in_order(img, channel_order), PixelFormat(channels, bits, "array")


def array_in_order(img: np.ndarray, channel_order: str) -> np.ndarray:
    """An RGB(A) array in `channel_order` (its own inverse: BGR(A) in gives RGB(A) out); gray stays as it is."""
    if img.ndim == 2 or channel_order == "rgb":
        return np.ascontiguousarray(img)
    order = [2, 1, 0, 3][: img.shape[2]]
    return np.ascontiguousarray(img[:, :, order])


def mask_from_array(mask: np.ndarray, shape: tuple[int, int], where: str = "mask") -> np.ndarray:
    """A target mask handed over in memory (bool, {0,1} or {0,255}, HxW) -> uint8 {0,1}, size-checked.

    Raises:
        DataError: not 2-D, not binary, or not the image's size.
    """
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[:, :, 0]
    if m.ndim != 2:
        msg = f"{where}: expected an HxW mask, got shape {m.shape}"
        raise DataError(msg)
    if m.dtype != bool:
        values = np.unique(m)
        top = values.max(initial=0)
        if top not in (0, 1, 255) or not set(values.tolist()) <= {0, top}:
            msg = f"{where}: mask is not binary (expected bool, 0/1 or 0/255 values)"
            raise DataError(msg)
    if m.shape != tuple(shape[:2]):
        msg = f"{where}: mask size {m.shape[1]}x{m.shape[0]} != image size {shape[1]}x{shape[0]}"
        raise DataError(msg)
    return (m > 0).astype(np.uint8)


def to_rgb8(img: np.ndarray, path: str | os.PathLike[str] = "image") -> np.ndarray:
    """Any `read_native` array -> uint8 HxWx3 RGB, what the model and every 8-bit step see."""
    img = _to_uint8(img, Path(path))
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    return np.ascontiguousarray(img[:, :, :3])


def _to_uint8(img: np.ndarray, path: Path) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img.astype(np.uint32) * 255 // 65535).astype(np.uint8)  # 16-bit scanners: keep full range
    if img.dtype in (np.float32, np.float64):
        out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(out[:, :, None], 3, axis=2) if out.ndim == 2 else out
    msg = f"unsupported pixel type {img.dtype}: {path}"
    raise DataError(msg)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as uint8 HxWx3 RGB; grayscale becomes 3 channels, alpha is dropped, 16 bit scaled."""
    return to_rgb8(read_native(path)[0], path)


def read_mask(path: str | os.PathLike[str], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a binary mask PNG (0/255 or 0/1) as uint8 HxW in {0,1}.

    Args:
        path: Mask file. Colour masks are accepted when all channels agree.
        shape: Expected (H, W), usually the image's `shape[:2]`; a mismatch raises `DataError`.

    Raises:
        DataError: unreadable file, values other than {0,1} or {0,255}, or a size mismatch.
    """
    path = Path(path)
    m = _decode(path, cv2.IMREAD_UNCHANGED)
    if m.ndim == 3:
        if not all(np.array_equal(m[:, :, 0], m[:, :, c]) for c in range(1, min(m.shape[2], 3))):
            msg = f"mask is a colour image, expected grayscale 0/255: {path}"
            raise DataError(msg)
        m = m[:, :, 0]
    values = np.unique(m)
    top = int(values.max())
    if top not in (0, 1, 255) or not set(values.tolist()) <= {0, top}:
        shown = ", ".join(str(v) for v in values[:6].tolist()) + (" ..." if values.size > 6 else "")
        msg = f"mask is not binary (values {shown}; expected 0/255 or 0/1): {path}"
        raise DataError(msg)
    if shape is not None and m.shape != tuple(shape[:2]):
        msg = f"mask size {m.shape[1]}x{m.shape[0]} != image size {shape[1]}x{shape[0]}: {path}"
        raise DataError(msg)
    return (m > 0).astype(np.uint8)


def _encode(path: Path, arr: np.ndarray) -> bytes:
    ext = path.suffix.lower() or ".png"
    ok, buf = cv2.imencode(ext, arr)
    if not ok:
        msg = f"cannot encode image as {ext}: {path}"
        raise DataError(msg)
    return buf.tobytes()


def write_image(path: str | os.PathLike[str], img: np.ndarray) -> Path:
    """Write an image atomically; the format follows the suffix (PNG: lossless, 16 bit kept).

    Args:
        path: the file.
        img: uint8 or uint16 (PNG/TIFF), HxW gray, HxWx3 RGB or HxWx4 RGBA.
    """
    path = Path(path)
    ok_shape = img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))
    if img.dtype not in (np.uint8, np.uint16) or not ok_shape:
        msg = f"write_image wants uint8/uint16 HxW, HxWx3 RGB or HxWx4 RGBA, got {img.dtype} {img.shape}: {path}"
        raise DataError(msg)
    arr = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR if img.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    return atomic_write_bytes(path, _encode(path, arr))


def write_mask(path: str | os.PathLike[str], mask01: np.ndarray) -> Path:
    """Write a {0,1} (or bool) HxW mask atomically as a 0/255 grayscale PNG, the MVTec convention."""
    path = Path(path)
    if mask01.ndim != 2 or (mask01.dtype != bool and int(mask01.max(initial=0)) > 1):
        msg = f"write_mask wants an HxW mask in {{0,1}}, got {mask01.dtype} {mask01.shape}: {path}"
        raise DataError(msg)
    return atomic_write_bytes(path, _encode(path, (mask01 > 0).astype(np.uint8) * 255))


def to_model(rgb: np.ndarray, res: int) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 (3, res, res) in [-1, 1]; INTER_AREA because it does not alias when shrinking."""
    if rgb.shape[:2] != (res, res):
        shrink = rgb.shape[0] >= res and rgb.shape[1] >= res
        rgb = cv2.resize(rgb, (res, res), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 127.5 - 1.0


def mask_to_model(mask: np.ndarray, res: int) -> np.ndarray:
    """{0,1} HxW -> float32 (1, res, res) in {0,1}; nearest, then threshold, so the mask stays exactly binary."""
    m = (mask > 0).astype(np.uint8)
    if m.shape != (res, res):
        m = cv2.resize(m, (res, res), interpolation=cv2.INTER_NEAREST)
    return (m > 0).astype(np.float32)[None]


def from_model(chw: np.ndarray) -> np.ndarray:
    """Model output float (3, H, W) in [-1, 1] -> uint8 HxWx3 RGB, clipped and rounded."""
    x = (np.asarray(chw, dtype=np.float32) + 1.0) * 127.5
    return np.ascontiguousarray(np.clip(np.rint(x), 0, 255).astype(np.uint8).transpose(1, 2, 0))
