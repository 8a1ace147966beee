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


def gather_rows(arr, rows, dtype=np.float32):
    """``arr[rows]`` read with ``preadv`` into the result (runs of adjacent
    rows in one call). Not through a mapping: touching scattered rows of a
    memmap maps their neighbours too (the kernel's fault-around), which put
    the whole 4 GB file in RSS at 10^6 x 1024."""
    rows = np.asarray(rows, dtype=np.int64)
    src = file_source(arr)
    if src is None:
        return np.ascontiguousarray(arr[rows], dtype=dtype)
    path, offset, shape, fdtype = src
    order = None
    if len(rows) > 1 and (np.diff(rows) < 0).any():
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
    out = np.empty((len(rows),) + shape[1:], dtype=fdtype)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * fdtype.itemsize
    buf = memoryview(out.reshape(-1).view(np.uint8))
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks]).astype(np.int64)
    ends = np.concatenate([breaks, [len(rows)]]).astype(np.int64)
    fd = os.open(path, os.O_RDONLY)
    try:
        for s, e in zip(starts.tolist(), ends.tolist()):
            lo, hi = s * row_bytes, e * row_bytes
            pos = offset + int(rows[s]) * row_bytes
            while lo < hi:
                got = os.preadv(fd, [buf[lo:hi]], pos)
                if got <= 0:
                    raise OSError("Unexpected end of %s" % path)
                lo += got
                pos += got
    finally:
        os.close(fd)
    if order is not None:
        back = np.empty_like(out)
        back[order] = out
        out = back
    return out.astype(dtype, copy=False)


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
