"""Bounded-memory access to ``.npy`` embedding files.

A memmap that is sliced or fancy-indexed keeps every page it touched
resident (and counted in the process's RSS) until it is closed, so a pass over
a 4 GB embeddings file costs 4 GB of RSS. These helpers read file-backed
arrays with plain file reads, or through short-lived mappings of one block,
so memory is bounded by the batch whatever the number of rows.
"""

import os

import numpy as np


def file_source(arr):
    """``(path, offset, shape, dtype)`` when ``arr`` is the whole array of a
    ``.npy`` file opened with ``np.load(..., mmap_mode=...)``, else None."""
    if not isinstance(arr, np.memmap) or not getattr(arr, "filename", None):
        return None
    path = arr.filename
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
            offset = f.tell()
    except (OSError, ValueError):
        return None
    if fortran or tuple(shape) != arr.shape or dtype != arr.dtype or not arr.flags.c_contiguous:
        return None
    # Slices of a memmap keep its filename: accept only the whole array.
    if arr.__array_interface__["data"][0] != _array_start(arr, offset):
        return None
    return path, offset, tuple(shape), dtype


def _array_start(arr, offset):
    import mmap

    mm = getattr(arr, "_mmap", None)
    if mm is None:
        return None
    base = np.frombuffer(mm, dtype=np.uint8).__array_interface__["data"][0]
    return base + offset % mmap.ALLOCATIONGRANULARITY


def read_rows(arr, start, stop, dtype=np.float32):
    """Rows ``start:stop`` of ``arr`` as a new C-contiguous array."""
    src = file_source(arr)
    if src is None:
        return np.ascontiguousarray(arr[start:stop], dtype=dtype)
    path, offset, shape, fdtype = src
    stop = min(stop, shape[0])
    row = int(np.prod(shape[1:], dtype=np.int64))
    count = max(0, stop - start) * row
    with open(path, "rb") as f:
        f.seek(offset + start * row * fdtype.itemsize)
        out = np.fromfile(f, dtype=fdtype, count=count)
    return np.ascontiguousarray(out.reshape((stop - start,) + shape[1:]), dtype=dtype)


def iter_rows(arr, batch_size):
    """Yields ``(start, rows)`` over ``arr`` in batches of ``batch_size``."""
    for start in range(0, len(arr), batch_size):
        yield start, read_rows(arr, start, start + batch_size)


def gather_rows(arr, rows, block=32_768, dtype=np.float32):
    """``arr[rows]`` for sorted ``rows``, through one short-lived mapping per
    block of rows, so only the pages of one block are resident at a time."""
    rows = np.asarray(rows, dtype=np.int64)
    src = file_source(arr)
    if src is None:
        return np.ascontiguousarray(arr[rows], dtype=dtype)
    path, offset, shape, fdtype = src
    out = np.empty((len(rows),) + shape[1:], dtype=dtype)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * fdtype.itemsize
    for s in range(0, len(rows), block):
        part = rows[s : s + block]
        lo, hi = int(part.min()), int(part.max()) + 1
        mm = np.memmap(path, dtype=fdtype, mode="r", offset=offset + lo * row_bytes,
                       shape=(hi - lo,) + shape[1:])
        out[s : s + len(part)] = mm[part - lo]
        del mm
    return out


class NpyWriter(object):
    """Writes a ``(n, d)`` ``.npy`` file chunk by chunk with plain writes (no
    mapping, so RSS stays at one chunk); ``d`` is taken from the first chunk.
    The file appears at ``path`` only when :meth:`close` succeeds."""

    def __init__(self, path, n, dtype=np.float32):
        self.path = path
        self.n = int(n)
        self.dtype = np.dtype(dtype)
        self.tmp = "%s.%d.tmp" % (path, os.getpid())
        self._f = None
        self.d = None
        self.written = 0

    def write(self, start, chunk):
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        if chunk.ndim != 2:
            chunk = chunk.reshape(len(chunk), -1)
        if self._f is None:
            self.d = chunk.shape[1]
            self._f = open(self.tmp, "wb")
            header = {"descr": np.lib.format.dtype_to_descr(self.dtype),
                      "fortran_order": False, "shape": (self.n, self.d)}
            np.lib.format.write_array_header_1_0(self._f, header)
            self._data = self._f.tell()
        elif chunk.shape[1] != self.d:
            raise ValueError("Embeddings have inconsistent dimensions: %d and %d"
                             % (self.d, chunk.shape[1]))
        if start != self.written:
            self._f.seek(self._data + start * self.d * self.dtype.itemsize)
        self._f.write(chunk.tobytes())
        self.written = start + len(chunk)

    def close(self):
        if self._f is None:
            raise ValueError("Cannot write an empty array")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.path)

    def abort(self):
        if self._f is not None:
            self._f.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *args):
        if exc_type is not None:
            self.abort()
        else:
            self.close()
