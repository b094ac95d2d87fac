"""Pixel data of the chosen series -> HU, decoded on all cores.

The header pass (``dicom``) never touches pixels; this module decodes only
the slices of the series being loaded:

* Uncompressed 16-bit little-endian data is read straight from the offset the
  header pass found (no second header parse, no per-slice allocation).
* Every other transfer syntax goes through pydicom's decoders (pylibjpeg,
  python-gdcm); 12-bit JPEG Extended, which pydicom's plugins refuse, goes to
  GDCM directly.
* Stored values become HU per slice: PixelPaddingValue (and range) first,
  then the Modality LUT Sequence when present, else slope and intercept.

Compressed decoders hold the GIL (threads gave nothing, measured), so long
compressed series are split over worker processes that write into one shared
array, except JPEG 2000: OpenJPEG spreads each frame over the cores itself,
and more processes gain nothing (they only cost memory).
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import current_process, shared_memory

import numpy as np
import pydicom
import pydicom.pixels
from pydicom.uid import UID, ImplicitVRLittleEndian, JPEGExtended12Bit

from ..errors import InputError
from .headers import NATIVE_LITTLE_ENDIAN, SliceHeader

Progress = Callable[[int, int], None]

PADDING_HU = -1024.0             # HU given to PixelPaddingValue voxels (air)
# Compressed slices per worker process below which one process is faster than
# starting more (a 512x512 JPEG 2000 slice takes ~25 ms; a worker starts in ~50 ms).
MIN_SLICES_PER_WORKER = 16
WORKERS = max(1, min(4, os.cpu_count() or 1))
# Transfer syntaxes whose decoder uses several cores on one frame (OpenJPEG):
# 300 slices of 512 x 512 as JPEG 2000 lossless loaded in 8.4 s in one
# process (median of five; 12.5-13.9 s of CPU) and 8.6 s in two, which
# also cost 295 MiB more peak memory (the shared block and its copy) and
# 5-10 % more CPU. The other decoders run on one core: two processes took
# RLE from 2.65 to 0.88 s, JPEG-LS from 5.19 to 3.33 s and JPEG lossless
# from 4.49 to 1.62 s on the same series.
SELF_THREADED = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})

# What a damaged, truncated or undecodable pixel payload makes a decoder raise.
_DECODE_ERRORS = (ValueError, RuntimeError, NotImplementedError, AttributeError, OSError,
                  EOFError, struct.error, KeyError, IndexError, TypeError)
_PIXEL_DATA_TAG_LE = struct.pack("<HH", 0x7FE0, 0x0010)
# Who provides a decoder, for the error that says what to install.
_PROVIDERS = {
    "1.2.840.10008.1.2.4.50": "python-gdcm (or Pillow)",
    "1.2.840.10008.1.2.4.51": "python-gdcm",
    "1.2.840.10008.1.2.4.57": "python-gdcm",
    "1.2.840.10008.1.2.4.70": "python-gdcm",
    "1.2.840.10008.1.2.4.80": "python-gdcm or pyjpegls",
    "1.2.840.10008.1.2.4.81": "python-gdcm or pyjpegls",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg or python-gdcm",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (or numpy)",
}


def _syntax_name(syntax: str) -> str:
    return f"{UID(syntax).name or 'unknown transfer syntax'} ({syntax})"


def check_decoders(slices: Sequence[SliceHeader]) -> None:
    """Refuse, before decoding anything, a transfer syntax nothing installed can decode."""
    for syntax in sorted({s.transfer_syntax for s in slices}):
        uid = UID(syntax)
        example = next(s.path for s in slices if s.transfer_syntax == syntax)
        if not uid.is_transfer_syntax:
            raise InputError(f"{example}: transfer syntax {syntax} is not a standard DICOM one: its pixel "
                             "data can not be decoded")
        if not uid.is_compressed:
            continue
        if uid == JPEGExtended12Bit and _gdcm_available():
            continue
        try:
            available = pydicom.pixels.get_decoder(uid).is_available
        except NotImplementedError:
            raise InputError(f"{example}: no decoder exists in pydicom for transfer syntax "
                             f"{_syntax_name(syntax)}") from None
        if not available:
            raise InputError(f"{example}: no decoder installed for transfer syntax "
                             f"{_syntax_name(syntax)}; install "
                             f"{_PROVIDERS.get(syntax, 'a pydicom pixel data plugin')}")


def _gdcm_available() -> bool:
    try:
        import gdcm  # noqa: F401
    except ImportError:
        return False
    return True


def is_native_16bit(s: SliceHeader) -> bool:
    """Uncompressed little-endian 16-bit greyscale: read straight from the file."""
    return (s.transfer_syntax in NATIVE_LITTLE_ENDIAN and s.pixel_offset is not None
            and s.bits_allocated == 16 and 0 < s.bits_stored <= 16
            and s.samples_per_pixel == 1 and s.n_frames == 1)


def _read_native_16bit(s: SliceHeader, buffer: np.ndarray) -> np.ndarray:
    """Read the stored values into ``buffer`` ('<i2' or '<u2', rows x columns), no parsing.

    The same result as pydicom's pixel_array (bits above BitsStored masked or
    sign-extended) without a second header parse or a per-slice allocation.
    """
    implicit = s.transfer_syntax == ImplicitVRLittleEndian
    with open(s.path, "rb") as fp:
        fp.seek(s.pixel_offset)
        head = fp.read(8 if implicit else 12)
        if implicit:
            tag, length = struct.unpack("<4sI", head) if len(head) == 8 else (b"", 0)
        else:
            tag, vr, length = struct.unpack("<4s2s2xI", head) if len(head) == 12 else (b"", b"", 0)
            if vr not in (b"OW", b"OB"):
                tag = b""
        if tag != _PIXEL_DATA_TAG_LE or length == 0xFFFFFFFF:
            raise InputError(f"{s.path}: unexpected pixel data element for "
                             f"{UID(s.transfer_syntax).name}")
        n_read = fp.readinto(memoryview(buffer).cast("B"))
    if min(length, n_read) < buffer.nbytes:
        raise InputError(f"{s.path}: cannot decode pixel data: truncated "
                         f"({min(length, n_read)} of {buffer.nbytes} bytes)")
    unused_bits = 16 - s.bits_stored
    if unused_bits and s.signed:
        np.left_shift(buffer, unused_bits, out=buffer)
        np.right_shift(buffer, unused_bits, out=buffer)   # arithmetic: sign-extends
    elif unused_bits:
        np.bitwise_and(buffer, (1 << s.bits_stored) - 1, out=buffer)
    return buffer


def _decode_with_gdcm(s: SliceHeader) -> np.ndarray:
    """All frames of one file through GDCM's own reader (12-bit JPEG Extended)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(s.path))
    if not reader.Read():
        raise ValueError("GDCM cannot read the file")
    image = reader.GetImage()
    buffer = image.GetBuffer()
    if buffer is None:
        raise ValueError("GDCM cannot decode the pixel data")
    raw = buffer.encode("utf-8", "surrogateescape")   # SWIG hands bytes over as str
    kind = "i" if s.signed else "u"
    dtype = np.dtype(f"<{kind}{max(1, s.bits_allocated // 8)}")
    return np.frombuffer(raw, dtype=dtype).reshape(-1, s.rows, s.columns)


def decode_file(s: SliceHeader) -> np.ndarray:
    """Stored values of every frame in ``s.path``: (frames, rows, columns)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if UID(s.transfer_syntax) == JPEGExtended12Bit and s.bits_stored > 8:
                return _decode_with_gdcm(s)
            ds = pydicom.dcmread(s.path)   # inflates deflated files, unlike reading by path
            if "TransferSyntaxUID" not in ds.file_meta:   # decoded as the header was read
                ds.file_meta.TransferSyntaxUID = UID(s.transfer_syntax)
            stored = pydicom.pixels.pixel_array(ds, raw=True)
    except _DECODE_ERRORS as exc:
        reason = " ".join(str(exc).split())   # decoders report on several lines; we use one
        raise InputError(f"{s.path}: cannot decode pixel data "
                         f"({_syntax_name(s.transfer_syntax)}): {reason}") from exc
    return stored.reshape(-1, *stored.shape[-2:])


def to_hu(stored: np.ndarray, s: SliceHeader, out: np.ndarray) -> None:
    """Write the HU of one frame's stored values into ``out`` (float32, rows x columns)."""
    if stored.shape != out.shape:
        raise InputError(f"{s.path}: pixel data has shape {stored.shape}, "
                         f"header says {out.shape}")
    if s.modality_lut is not None:
        first, table = s.modality_lut
        out[...] = table[np.clip(stored.astype(np.int64) - first, 0, len(table) - 1)]
    else:
        out[...] = stored
        if s.rescale_slope != 1.0:
            out *= np.float32(s.rescale_slope)
        if s.rescale_intercept != 0.0:
            out += np.float32(s.rescale_intercept)
    if s.padding is not None:
        lo, hi = s.padding
        out[(stored >= lo) & (stored <= hi)] = PADDING_HU


class _FrameCache:
    """Decoded multi-frame files, so each is decoded once, not once per frame."""

    def __init__(self) -> None:
        self.path = None
        self.frames: np.ndarray | None = None

    def frame(self, s: SliceHeader) -> np.ndarray:
        if self.path != s.path:
            self.frames, self.path = decode_file(s), s.path
        if s.frame >= len(self.frames):
            raise InputError(f"{s.path}: frame {s.frame + 1} missing from the pixel data "
                             f"({len(self.frames)} frame(s) decoded)")
        return self.frames[s.frame]


def read_slices_into(slices: Sequence[SliceHeader], hu: np.ndarray,
                     progress: Progress | None = None, start: int = 0) -> None:
    """Decode ``slices`` in order into ``hu`` (float32, one slice per entry), serially."""
    buffers: dict[bool, np.ndarray] = {}
    cache = _FrameCache()
    for k, s in enumerate(slices):
        if is_native_16bit(s):
            if s.signed not in buffers:
                buffers[s.signed] = np.empty(hu.shape[1:], dtype="<i2" if s.signed else "<u2")
            stored = _read_native_16bit(s, buffers[s.signed])
        elif s.n_frames > 1:
            stored = cache.frame(s)
        else:
            stored = decode_file(s)[0]
        to_hu(stored, s, hu[k])
        if progress is not None:
            progress(start + k + 1, start + len(slices))


def read_series_pixels(slices: Sequence[SliceHeader], shape: tuple[int, int, int], *,
                       progress: Progress | None = None, workers: int | None = None) -> np.ndarray:
    """HU of ``slices`` stacked along axis 0, decoded by up to ``workers`` processes.

    Processes are used only for compressed single-frame slices whose decoder
    runs on one core (not :data:`SELF_THREADED`), and only when each worker
    gets at least ``MIN_SLICES_PER_WORKER`` of them. A daemonic
    process (a dask worker running a batch case) may not start processes: it
    decodes in itself, the batch already keeping every core busy.
    """
    n_compressed = sum(not is_native_16bit(s) and s.n_frames == 1 and s.transfer_syntax not in SELF_THREADED
                       for s in slices)
    workers = min(WORKERS if workers is None else workers,
                  n_compressed // MIN_SLICES_PER_WORKER if workers is None else len(slices))
    if current_process().daemon:
        workers = 1
    if workers <= 1:
        hu = np.empty(shape, dtype=np.float32)
        read_slices_into(slices, hu, progress)
        return hu
    return _read_in_processes(slices, shape, workers, progress)


def _worker(slices: Sequence[SliceHeader], shm_name: str, shape: tuple[int, int, int],
            offset: int) -> None:
    shm = shared_memory.SharedMemory(name=shm_name)
    try:
        hu = np.ndarray(shape, dtype=np.float32, buffer=shm.buf)
        read_slices_into(slices, hu[offset:offset + len(slices)])
        del hu
    finally:
        shm.close()


def _read_in_processes(slices: Sequence[SliceHeader], shape: tuple[int, int, int], workers: int,
                       progress: Progress | None) -> np.ndarray:
    # Interleaved chunks keep the workers busy to the end even when slices differ in cost.
    n_chunks = workers * 4
    bounds = np.linspace(0, len(slices), n_chunks + 1).astype(int)
    shm = shared_memory.SharedMemory(create=True, size=int(np.prod(shape)) * 4)
    try:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_worker, list(slices[a:b]), shm.name, shape, int(a))
                       for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
            for future, b in zip(futures, bounds[1:]):
                future.result()   # an InputError from a worker is raised here
                if progress is not None:
                    progress(int(b), len(slices))
        return np.ndarray(shape, dtype=np.float32, buffer=shm.buf).copy()
    finally:
        shm.close()
        shm.unlink()
