"""Embedding training and generated images into float32 arrays on disk.

Embeddings stream into a ``.npy`` file chunk by chunk, so memory is bounded
by the chunk size, never by the number of images. An ``embeddings_field`` is
read with raw batched database reads and numpy decoding (FiftyOne stores a
``VectorField`` as zlib-compressed ``np.save`` bytes); the built-in pixel
embedder decodes image files in parallel worker processes; other models use
FiftyOne's ``compute_embeddings``. An ``embeddings_field`` can also receive
new embeddings.
"""

import contextlib
import io
import itertools
import logging
import os
import threading
import zlib
from collections import deque

import numpy as np
import fiftyone.core.models as fom
import fiftyone.core.utils as fou
from PIL import Image

from gmv_plugin import bulk as gmvbulk
from gmv_plugin import copies as gmvc
from gmv_plugin.arrays import NpyWriter, iter_rows
from gmv_plugin.images import find_unreadable, read_gray_png, resize_gray, to_pil

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "vgg16-imagenet-torch"
BUILTIN_MODELS = ("pixels",)


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


class PixelEmbedder(fom.Model, fom.EmbeddingsMixin):
    """A weight-free encoder: resize, flatten and L2-normalize the pixels.

    Euclidean distances between these embeddings rank neighbours exactly as
    cosine similarity in pixel space does.

    Dimension: ``size**2`` (1,024 at the default size) when every image of the
    run is grayscale, else ``3 * size**2`` (3,072). A grayscale image's
    one-channel embedding ``v`` and its RGB embedding ``repeat(v, 3) / sqrt(3)``
    are isometric (R = G = B), so one channel loses nothing and costs a third.

    Args:
        size (32): images are resized to ``size x size``
        mode ("auto"): ``"auto"`` (one channel when every image is grayscale),
            ``"RGB"`` or ``"L"`` (grayscale); in ``RGB``/``L`` any input
            channels are converted, so mixed collections embed consistently
    """

    def __init__(self, size=32, mode="auto"):
        if mode not in PIXEL_MODES:
            raise ValueError("mode must be one of %s; got %r" % (PIXEL_MODES, mode))
        self.size = int(size)
        self.mode = mode
        # "auto" resolves on the first collection embedded; later ones follow it
        self.resolved = None if mode == "auto" else mode

    @property
    def media_type(self):
        return "image"

    @property
    def has_embeddings(self):
        return True

    @property
    def ragged_batches(self):
        return False

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self):
        return False

    @preprocess.setter
    def preprocess(self, value):
        pass

    def config(self):
        return {"name": "pixels", "size": self.size, "mode": self.mode}

    def dim(self, mode):
        return self.size**2 * (1 if mode == "L" else 3)

    def _embed_one(self, img, mode=None):
        mode = mode or self.resolved or "RGB"
        pil = to_pil(img, mode).resize((self.size, self.size), Image.BILINEAR)
        return _normalized(np.asarray(pil, dtype=np.float32).ravel() / 255.0)

    def embed(self, arg):
        return self.embed_all([arg])[0]

    def embed_all(self, args):
        if self.resolved is not None:
            return np.stack([self._embed_one(a) for a in args])
        gray = [_is_gray_array(a) for a in args]
        vecs = [self._embed_one(a, "L" if g else "RGB") for a, g in zip(args, gray)]
        return _stack_modes(vecs, gray)

    def predict(self, arg):
        return self.embed(arg)

    def predict_all(self, args):
        return self.embed_all(args)

    def get_embeddings(self):
        raise NotImplementedError("use embed() or embed_all()")


PIXEL_MODES = ("auto", "RGB", "L")


def _normalized(vec):
    norm = np.linalg.norm(vec)
    return vec / norm if norm > 0 else vec


def _is_gray_array(img):
    img = np.asarray(img)
    return img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 2))


def gray_to_rgb(emb):
    """The RGB pixel embeddings of grayscale images from their one-channel
    ones (exact: R = G = B, renormalized)."""
    emb = np.asarray(emb, dtype=np.float32)
    return np.repeat(emb, 3, axis=-1) / np.float32(np.sqrt(3.0))


def _stack_modes(vecs, gray):
    if all(gray):
        return np.stack(vecs)
    return np.stack([gray_to_rgb(v) if g else v for v, g in zip(vecs, gray)])


def _decode_chunk(args):
    """Worker: pixel embeddings of ``paths``; ``(array, is_rgb, failed,
    truth)``: with ``truth`` (``{"stats": bool}``) the truth columns'
    features of the same decoded images (:func:`gmv_plugin.cleansing.image_features`).

    Plain 8-bit grayscale PNGs are decoded with OpenCV and resized together
    (:func:`gmv_plugin.images.resize_gray`, bit for bit PIL's bilinear
    resize); other files go through PIL one by one."""
    paths, size, mode = args[:3]
    truth = args[3] if len(args) > 3 else None
    n = len(paths)
    vecs = np.zeros((n, size * size), np.float32)
    colour = {}  # position -> RGB embedding
    failed, grays, plain = [], [None] * n, {}
    for i, path in enumerate(paths):
        arr = None
        if mode != "RGB":
            try:
                arr = read_gray_png(path)
            except OSError:
                arr = None  # PIL below reports what is wrong
        if arr is not None:
            plain.setdefault(arr.shape, []).append(i)
            grays[i] = arr
            continue
        try:
            with Image.open(path) as img:
                if truth is not None:
                    grays[i] = gmvc.gray_array(img)
                m = mode if mode != "auto" else ("L" if img.mode in GRAY_MODES else "RGB")
                if img.mode != m:
                    img = img.convert(m)
                img = img.resize((size, size), Image.BILINEAR)
                vec = _normalized(np.asarray(img, dtype=np.float32).ravel() / 255.0)
                if m == "L":
                    vecs[i] = vec
                else:
                    colour[i] = vec
        except Exception:  # noqa: BLE001 - reported by path in the caller
            failed.append(i)
            grays[i] = np.zeros((1, 1), np.uint8)
    for shape, rows in plain.items():
        stack = np.stack([grays[i] for i in rows])
        small = _resized(stack, size, size).reshape(len(rows), -1).astype(np.float32) / 255.0
        norms = np.sqrt(np.array([v.dot(v) for v in small], np.float32))  # np.linalg.norm's operations
        vecs[rows] = np.where(norms[:, None] > 0, small / np.where(norms > 0, norms, 1)[:, None], small)
        gh, gw = gmvc.gray_size(shape[0], shape[1])
        if (gh, gw) != shape:
            for i, g in zip(rows, _resized(stack, gw, gh)):
                grays[i] = g
    if colour:
        arr = np.stack([colour[i] if i in colour else gray_to_rgb(vecs[i]) for i in range(n)])
    else:
        arr = vecs
    feats = None
    if truth is not None and not failed:
        from gmv_plugin import cleansing as gmvcl

        feats = gmvcl.image_features(grays, stats=truth["stats"])
    return arr, bool(colour), failed, feats


def _resized(stack, width, height):
    """:func:`gmv_plugin.images.resize_gray`, or PIL image by image where it
    does not reproduce PIL for these sizes."""
    out = resize_gray(stack, width, height)
    if out is None:
        out = np.stack([np.asarray(Image.fromarray(a).resize((width, height), Image.BILINEAR)) for a in stack])
    return out


def resolve_model(model):
    """Returns a FiftyOne model for ``model``: ``"pixels"``, a zoo model
    name, or a :class:`fiftyone.core.models.Model` instance.

    Zoo models are checked for weights first; missing ones are downloaded
    when allowed (see :mod:`gmv_plugin.weights`), else
    :class:`~gmv_plugin.weights.MissingWeightsError` is raised.
    """
    if isinstance(model, fom.Model):
        if not isinstance(model, fom.EmbeddingsMixin) or not model.has_embeddings:
            raise ValueError("Model %r does not expose embeddings" % model)
        return model
    if model == "pixels":
        return PixelEmbedder()
    if isinstance(model, str):
        import fiftyone.zoo as foz

        from gmv_plugin.weights import check_zoo_model

        if model not in foz.list_zoo_models():
            raise ValueError(
                "Unknown model %r; use one of %s, a FiftyOne zoo model name "
                "(see fiftyone.zoo.list_zoo_models()), or a fiftyone Model "
                "instance" % (model, BUILTIN_MODELS)
            )
        check_zoo_model(model, download=True)
        return foz.load_zoo_model(model)
    raise ValueError(
        "model must be 'pixels', a zoo model name or a fiftyone Model; "
        "got %r" % (model,)
    )


def model_config(model):
    """A JSON-serializable description of a model, for run configs."""
    if model is None:
        return {"name": None}
    if model == "pixels":
        return PixelEmbedder().config()
    if isinstance(model, str):
        return {"name": model}
    if isinstance(model, PixelEmbedder):
        return model.config()
    return {"name": type(model).__name__}


class EmbeddingError(ValueError):
    """Some samples could not be embedded."""


def decode_workers():
    """Processes decoding images: ``GMV_DECODE_WORKERS`` if set, else the
    CPUs this process may use (at most 8)."""
    env = os.environ.get("GMV_DECODE_WORKERS")
    if env:
        return max(1, int(env))
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:
        return max(1, min(8, os.cpu_count() or 1))


def read_ids_paths(samples):
    """``(ids, filepaths)`` of ``samples`` in order, in one database pass."""
    ids, paths = [], []
    with gmvbulk.paused_gc():
        for doc in samples._aggregate(pipeline=[{"$project": {"_id": 1, "filepath": 1}}]):
            ids.append(str(doc["_id"]))
            paths.append(doc.get("filepath"))
    return ids, paths


def _decode_vector(value, header):
    """One stored embedding as a float array; ``header`` caches the ``.npy``
    header of FiftyOne's VectorField bytes (zlib-compressed ``np.save``)."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        raw = zlib.decompress(value)
        if header.get("raw_len") != len(raw) or raw[: header.get("hlen", 0)] != header.get("bytes"):
            with io.BytesIO(raw) as f:
                arr = np.load(f, allow_pickle=False)
            hlen = len(raw) - arr.nbytes
            header.update(raw_len=len(raw), hlen=hlen, bytes=raw[:hlen],
                          dtype=arr.dtype, shape=arr.shape)
            return arr
        return np.frombuffer(raw, dtype=header["dtype"], offset=header["hlen"]).reshape(header["shape"])
    return np.asarray(value)


def _decode_vectors(values, header):
    """The stored embeddings of one chunk: one array when they are all
    VectorField bytes of the same ``.npy`` header (decompressed, joined and
    viewed at once), else a list (missing values are None)."""
    if not values or not all(type(v) is bytes for v in values):
        return [_decode_vector(v, header) for v in values]
    first = _decode_vector(values[0], header)
    raws = [zlib.decompress(v) for v in values]
    size, hlen, head = header["raw_len"], header["hlen"], header["bytes"]
    if not all(len(r) == size and r[:hlen] == head for r in raws):
        return [first] + [_decode_vector(v, header) for v in values[1:]]
    rows = np.frombuffer(b"".join(raws), dtype=np.uint8).reshape(len(raws), size)[:, hlen:]
    return np.ascontiguousarray(rows).view(header["dtype"]).reshape((len(raws),) + tuple(header["shape"]))


def iter_field_embeddings(samples, field, chunk_size=4096):
    """Yields ``(ids, vectors)`` chunks of an embeddings field in the order of
    ``samples``, read with raw batched database reads and decoded with numpy
    (no documents, no per-vector header parsing): ``vectors`` is an array
    when the chunk's values are all stored alike, else a list where missing
    values are None."""
    db_field = samples._handle_db_field(field) if hasattr(samples, "_handle_db_field") else field
    cursor = samples._aggregate(pipeline=[{"$project": {"_id": 1, db_field: 1}}])
    header = {}
    ids, vals = [], []
    with gmvbulk.paused_gc():
        for doc in cursor:
            ids.append(str(doc["_id"]))
            vals.append(doc.get(db_field))
            if len(ids) == chunk_size:
                yield ids, _decode_vectors(vals, header)
                ids, vals = [], []
        if ids:
            yield ids, _decode_vectors(vals, header)


def _stack(vecs):
    """A chunk of :func:`iter_field_embeddings` as a 2-d float32 array, or
    None when some value is missing."""
    if not isinstance(vecs, np.ndarray):
        if any(v is None for v in vecs):
            return None
        vecs = np.stack(vecs)
    return np.asarray(vecs, dtype=np.float32).reshape(len(vecs), -1)


def read_field_embeddings(samples, field, chunk_size=4096):
    """``(ids, array)`` of an embeddings field (float32), raw-read in chunks.

    Raises:
        EmbeddingError: if some samples have no value
    """
    ids, out, missing = [], [], 0
    for chunk_ids, vecs in iter_field_embeddings(samples, field, chunk_size):
        ids.extend(chunk_ids)
        arr = _stack(vecs)
        if arr is None:
            missing += sum(v is None for v in vecs)
        elif not missing:
            out.append(arr)
    if missing:
        raise EmbeddingError("%d of %d samples have no %r" % (missing, len(ids), field))
    return ids, (np.concatenate(out) if out else np.zeros((0, 0), np.float32))


def embed_paths(paths, path, embedder, workers=None, chunk_size=1024, progress=None, truth=None):
    """Pixel-embeds image files into a float32 ``.npy`` file, decoding in
    ``workers`` processes (default :func:`decode_workers`), with memory
    bounded by the chunks in flight.

    With ``embedder.mode == "auto"`` images embed as one channel until a
    colour image appears; then the rows written so far are converted with
    :func:`gray_to_rgb` and the file continues in RGB. The embedder remembers
    the resolved mode for later collections.

    With ``truth`` (a dict ``{"stats": bool}``), the workers also compute
    the truth columns' features of the images they decode, and
    ``truth["features"]`` receives them
    (:func:`gmv_plugin.cleansing.image_features`, in order) when every image
    was decoded.

    Returns:
        a tuple ``(mode, failed)``: ``"L"`` or ``"RGB"`` and the positions of
        the images that could not be decoded
    """
    n = len(paths)
    mode = embedder.resolved or "auto"
    size = embedder.size
    chunk_size, tasks = _decode_tasks(paths, size, mode, truth, chunk_size)
    feats = None
    workers = decode_workers() if workers is None else workers
    failed = []
    rgb = mode == "RGB"
    ahead = _take_prefetched(tasks, workers)
    results = itertools.chain(_prefetched_results(ahead, tasks),
                              map_chunks(_decode_chunk, tasks[len(ahead):], workers))
    writer = NpyWriter(path, n)
    try:
        with fou.ProgressBar(total=n, progress=progress) as pb:
            for i, (arr, chunk_rgb, bad, chunk_feats) in enumerate(results):
                if i >= len(tasks) - 2 * workers and not (rgb or chunk_rgb):
                    _submit_prefetch(workers)  # every task of this collection is handed out
                start = i * chunk_size
                failed.extend(start + j for j in bad)
                if chunk_feats is not None:
                    if feats is None:
                        feats = {k: np.empty((n,) + v.shape[1:], v.dtype) for k, v in chunk_feats.items()}
                    for k, v in chunk_feats.items():
                        feats[k][start : start + len(v)] = v
                if chunk_rgb and not rgb:
                    writer = _upgrade_to_rgb(writer, path, n, start)
                    rgb = True
                if rgb and arr.shape[1] == size * size:
                    arr = gray_to_rgb(arr)
                writer.write(start, arr)
                pb.update(len(arr))
        if n == 0:
            raise ValueError("Cannot embed an empty collection")
        writer.close()
    except BaseException:
        writer.abort()
        raise
    if truth is not None and not failed and feats is not None:
        truth["features"] = feats
    resolved = "RGB" if rgb else "L"
    if embedder.resolved is None:
        embedder.resolved = resolved
    return resolved, failed


def _decode_tasks(paths, size, mode, truth, chunk_size):
    """``(chunk_size, tasks)`` of :func:`_decode_chunk` for :func:`embed_paths`."""
    extra = () if truth is None else ({"stats": bool(truth.get("stats", True))},)
    if truth is not None:
        chunk_size = min(chunk_size, 512)  # the features cost more: finer tasks balance the workers
    return chunk_size, [(list(paths[s : s + chunk_size]), size, mode) + extra
                        for s in range(0, len(paths), chunk_size)]


def prefetch_paths(paths, embedder, truth=None, chunk_size=1024):
    """Inside :func:`decode_pool`: the first chunks of a later
    :func:`embed_paths` of ``paths`` (same ``embedder`` and ``truth``) are
    decoded as soon as the current :func:`embed_paths` has handed out its
    last chunk, so the workers do not idle while the caller stores that
    collection. At most ``2 * workers`` chunks are held; they are used only
    while every image so far is grayscale (else they are dropped)."""
    if getattr(_HELD, "pool", None) is None or _HELD.pid != os.getpid():
        return
    _, tasks = _decode_tasks(paths, embedder.size, "auto", truth, chunk_size)
    _HELD.queued = tasks[: 2 * _HELD.workers]


def _submit_prefetch(workers):
    tasks = getattr(_HELD, "queued", None)
    if tasks and _HELD.pool is not None and _HELD.workers == workers and _HELD.pid == os.getpid():
        _HELD.queued = None
        _HELD.prefetched = (tasks, [_HELD.pool.apply_async(_decode_chunk, (t,)) for t in tasks])


def _take_prefetched(tasks, workers):
    """The prefetched results of the first of ``tasks``, when they were
    decoded the way ``tasks`` ask (a chunk decoded in "auto" mode equals
    one decoded as "L" unless it holds a colour image: see
    :func:`_prefetched_results`)."""
    def same(done):
        return len(done) <= len(tasks) and all(t[2] in ("auto", "L") and d[:2] == t[:2] and d[3:] == t[3:]
                                               for d, t in zip(done, tasks))

    if getattr(_HELD, "queued", None) and same(_HELD.queued):
        _HELD.queued = None  # meant for this call, not handed out yet: it decodes them itself
    got = getattr(_HELD, "prefetched", None)
    if not got:
        return []
    _HELD.prefetched = None
    if not same(got[0]):
        _HELD.stale = True  # other images: the pool has useless work queued
        return []
    return got[1]


def _prefetched_results(ahead, tasks):
    for res, task in zip(ahead, tasks):
        out = res.get()
        yield _decode_chunk(task) if out[1] and task[2] == "L" else out


_HELD = threading.local()  # the pool of decode_pool(), per thread
SLOT_BYTES = 16 << 20  # shared memory per task in flight for its result's array
_SLOTS = {}  # token -> shared mapping, made before the workers fork so they inherit it
_TOKENS = itertools.count()


@contextlib.contextmanager
def decode_pool(enabled=True, workers=None):
    """Keeps one forked pool of decode workers for every :func:`map_chunks`
    call of this thread inside the block (e.g. a run's training and
    generated images), instead of one pool per call."""
    workers = decode_workers() if workers is None else workers
    if not enabled or workers <= 1 or getattr(_HELD, "pool", None) is not None:
        yield
        return
    with _pool(workers) as (pool, token):
        _HELD.pool, _HELD.token, _HELD.workers, _HELD.pid = pool, token, workers, os.getpid()
        _HELD.queued = _HELD.prefetched = None
        _HELD.stale = False
        try:
            yield
        finally:
            _HELD.pool = None
            if _HELD.prefetched is not None or _HELD.stale:
                pool.terminate()  # prefetched chunks nobody took: stop them
            _HELD.queued = _HELD.prefetched = None


@contextlib.contextmanager
def _pool(workers):
    """A forked pool and the token of its shared result slots (one per task
    in flight: :func:`_map_in` keeps ``2 * workers``)."""
    import mmap
    import multiprocessing as mp

    token = next(_TOKENS)
    _SLOTS[token] = mmap.mmap(-1, 2 * workers * SLOT_BYTES)  # anonymous, shared: pages appear when written
    try:
        pool = mp.get_context("fork").Pool(workers)
        try:
            yield pool, token
        except BaseException:
            pool.terminate()
            pool.join()
            raise
        # done: idle workers exit on their own; reaping them need not hold up the caller
        pool.close()
        threading.Thread(target=pool.join, daemon=True).start()
    finally:
        _SLOTS.pop(token).close()


def map_chunks(fn, tasks, workers=None):
    """``fn(task)`` for each task, in order; a forked pool of ``workers``
    processes (default :func:`decode_workers`; the tasks only touch PIL,
    OpenCV and numpy) keeps at most ``2 * workers`` tasks in flight. Inside
    :func:`decode_pool` its pool is used. A result's leading array comes
    back through shared memory, not pickled through a pipe (a worker then
    never waits for the parent to read it)."""
    workers = decode_workers() if workers is None else workers
    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            yield fn(t)
        return
    if getattr(_HELD, "pool", None) is not None and _HELD.workers == workers and _HELD.pid == os.getpid():
        yield from _map_in(_HELD.pool, _HELD.token, fn, tasks, workers)
        return
    with _pool(workers) as (pool, token):
        yield from _map_in(pool, token, fn, tasks, workers)


def _map_in(pool, token, fn, tasks, workers):
    slots = 2 * workers
    pending = deque()
    for i, t in enumerate(tasks):
        if len(pending) == slots:
            yield _unslot(pending.popleft().get(), token)  # its slot is free again
        pending.append(pool.apply_async(_slotted, (fn, t, token, i % slots)))
    while pending:
        yield _unslot(pending.popleft().get(), token)


def _slotted(fn, task, token, slot):
    """Worker: ``fn(task)``, its leading array (if any) written to shared slot ``slot``."""
    res = fn(task)
    buf = _SLOTS.get(token)
    if buf is None or not isinstance(res, tuple) or not res or not isinstance(res[0], np.ndarray) \
            or res[0].nbytes > SLOT_BYTES or res[0].dtype.hasobject:
        return res, None
    arr = res[0]
    np.ndarray(arr.shape, arr.dtype, buffer=buf, offset=slot * SLOT_BYTES)[...] = arr
    return (None,) + res[1:], (arr.shape, arr.dtype.str, slot)


def _unslot(out, token):
    res, where = out
    if where is None:
        return res
    shape, dtype, slot = where
    arr = np.ndarray(shape, dtype, buffer=_SLOTS[token], offset=slot * SLOT_BYTES).copy()
    return (arr,) + res[1:]


def _upgrade_to_rgb(writer, path, n, rows):
    """Rewrites the first ``rows`` one-channel rows of ``writer``'s file as RGB
    into a new writer (a colour image appeared after ``rows`` gray ones)."""
    new = NpyWriter(path + ".rgb", n)
    if rows:
        writer._f.flush()
        old = np.memmap(writer.tmp, dtype=np.float32, mode="r", offset=writer._data,
                        shape=(rows, writer.d))
        for s in range(0, rows, 8192):
            new.write(s, gray_to_rgb(np.array(old[s : s + 8192])))
        del old
    writer.abort()
    new.path = path
    return new


def embed_pixel_sets(path_lists, out_paths, embedder=None, workers=None, progress=None):
    """Pixel-embeds several collections of one run (e.g. training and
    generated images) consistently: one channel only when every image of
    every collection is grayscale; collections embedded as one channel before
    a colour one appeared are converted with :func:`gray_to_rgb`.

    Returns:
        ``(mode, failed)``: the run's mode and, per collection, the positions
        of undecodable images
    """
    embedder = embedder or PixelEmbedder()
    modes, failed = [], []
    for paths, out in zip(path_lists, out_paths):
        each = PixelEmbedder(size=embedder.size, mode=embedder.resolved or "auto")
        mode, bad = embed_paths(paths, out, each, workers=workers, progress=progress)
        modes.append(mode)
        failed.append(bad)
    if "RGB" in modes:
        for mode, out in zip(modes, out_paths):
            if mode == "L":
                src = np.load(out, mmap_mode="r")
                with NpyWriter(out, len(src)) as w:
                    for s, rows in iter_rows(src, 8192):
                        w.write(s, gray_to_rgb(rows))
                del src
    embedder.resolved = "RGB" if "RGB" in modes else "L"
    return embedder.resolved, failed


def embed_to_file(
    samples,
    path,
    model=None,
    embeddings_field=None,
    batch_size=64,
    chunk_size=4096,
    progress=None,
    ids=None,
    paths=None,
    truth=None,
):
    """Embeds ``samples`` in order into a float32 ``.npy`` file.

    Memory is bounded by ``chunk_size``, never by the number of samples: the
    file is written with plain writes, embeddings fields are read raw in
    batches, and the built-in pixel embedder decodes files in parallel
    workers (:func:`embed_paths`); other models go through FiftyOne's
    ``compute_embeddings``. Computed embeddings are written to
    ``embeddings_field`` only when they have the dimension of the vectors
    already stored there.

    Args:
        samples: a sample collection
        path: the ``.npy`` file to write
        model (None): a model from :func:`resolve_model`; may be None when
            every sample already has ``embeddings_field``
        embeddings_field (None): a field with existing embeddings, or where
            to store new ones
        batch_size (64): the model's batch size
        chunk_size (4096): samples handled per round trip to the database
        progress (None): like FiftyOne's ``progress`` arguments
        ids (None), paths (None): the samples' ids and filepaths, in order,
            when the caller has read them already
        truth (None): a dict ``{"stats": bool}``; when the pixel embedder
            decodes the images, ``truth["features"]`` receives their truth
            columns' features (see :func:`embed_paths`)

    Returns:
        a tuple ``(ids, embeddings)``: the sample ids and a read-only memmap

    Raises:
        EmbeddingError: naming the samples whose images could not be embedded
    """
    has_field = embeddings_field is not None and samples.has_field(embeddings_field)
    if model is None and not has_field:
        raise ValueError(
            "Provide a model, or an embeddings_field that exists on every "
            "sample; field %r does not exist" % embeddings_field
        )
    if has_field:
        done = _field_to_file(samples, path, embeddings_field, chunk_size, ids, progress)
        if done is not None:
            return done, np.load(path, mmap_mode="r")
        if model is None:
            raise EmbeddingError(
                "Some samples have no embedding in %r and no model was given"
                % embeddings_field
            )
    if ids is None or (paths is None and isinstance(model, PixelEmbedder)):
        ids, paths = read_ids_paths(samples)
    if isinstance(model, PixelEmbedder) and not has_field:
        _, failed = embed_paths(paths, path, model, progress=progress, truth=truth)
        if failed:
            os.remove(path)
            _raise_failed([ids[i] for i in failed], [paths[i] for i in failed], len(ids), None)
        if embeddings_field is not None:
            _store_field(samples, embeddings_field, ids, np.load(path, mmap_mode="r"), chunk_size)
        return list(ids), np.load(path, mmap_mode="r")
    return _compute_to_file(samples, path, model, embeddings_field, has_field, batch_size,
                            chunk_size, ids, progress)


def _field_to_file(samples, path, field, chunk_size, ids, progress):
    """Copies ``field`` into ``path``; the ids, or None if a value is missing."""
    out_ids = []
    n = len(ids) if ids is not None else samples.count()
    try:
        with NpyWriter(path, n) as writer, fou.ProgressBar(total=n, progress=progress) as pb:
            for chunk_ids, vecs in iter_field_embeddings(samples, field, chunk_size):
                arr = _stack(vecs)
                if arr is None:
                    raise _Missing()
                start = len(out_ids)
                writer.write(start, arr)
                out_ids.extend(chunk_ids)
                pb.update(len(chunk_ids))
            if len(out_ids) != n:
                raise ValueError("Cannot embed an empty collection" if not out_ids else
                                 "The collection changed while reading %r" % field)
    except _Missing:
        return None
    if ids is not None and list(ids) != out_ids:
        raise ValueError("ids= does not match the order of the samples")
    return out_ids


class _Missing(Exception):
    pass


def _store_field(samples, field, ids, emb, chunk_size):
    """Stores embeddings in ``field`` with one bulk write per chunk."""
    for s in range(0, len(ids), chunk_size):
        rows = np.asarray(emb[s : s + chunk_size])
        samples.set_values(field, dict(zip(ids[s : s + chunk_size], list(rows))), key_field="id",
                           progress=False)


def _raise_failed(failed_ids, failed_paths, total, field):
    broken = find_unreadable(failed_paths, limit=5)
    raise EmbeddingError(
        "Could not embed %d of %d samples; unreadable images: %s"
        % (len(failed_ids), total, broken)
        if broken
        else "Could not embed %d of %d samples (no embedding in %r), e.g. %s"
        % (len(failed_ids), total, field, failed_paths[:5])
    )


def _compute_to_file(samples, path, model, embeddings_field, has_field, batch_size,
                     chunk_size, ids, progress):
    field_dim = _field_dim(samples, embeddings_field) if has_field else None
    failed = []
    writer = NpyWriter(path, len(ids))
    try:
        with fou.ProgressBar(total=len(ids), progress=progress) as pb:
            for start in range(0, len(ids), chunk_size):
                chunk_ids = ids[start : start + chunk_size]
                chunk = samples.select(chunk_ids, ordered=True)
                embs = _chunk_embeddings(chunk, model, embeddings_field, has_field, batch_size,
                                         field_dim)
                failed.extend(sid for sid, emb in zip(chunk_ids, embs) if emb is None)
                if not failed:
                    writer.write(start, np.stack(embs).reshape(len(chunk_ids), -1))
                pb.update(len(chunk_ids))
        if failed:
            paths = samples.select(failed).values("filepath")
            _raise_failed(failed, paths, len(ids), embeddings_field)
        if not ids:
            raise ValueError("Cannot embed an empty collection")
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return list(ids), np.load(path, mmap_mode="r")


def _field_dim(samples, field):
    """The dimension of the vectors already in ``field`` on the dataset."""
    dataset = samples._root_dataset
    found = dataset.exists(field).limit(1).values(field)
    return int(np.asarray(found[0]).size) if found else None


def _chunk_embeddings(chunk, model, field, has_field, batch_size, field_dim=None):
    """Embeddings of ``chunk``, in order: read from ``field`` where present,
    else computed in memory with ``model`` and stored in ``field`` with one
    bulk write (``compute_embeddings(embeddings_field=...)`` saves sample by
    sample, about 100 times slower)."""
    embs = list(chunk.values(field)) if has_field else [None] * len(chunk)
    missing = [i for i, emb in enumerate(embs) if emb is None]
    if not missing or model is None:
        return embs
    ids = chunk.values("id")
    todo = chunk.select([ids[i] for i in missing], ordered=True)
    computed = todo.compute_embeddings(
        model, batch_size=batch_size, skip_failures=True, progress=False
    )
    for i, emb in zip(missing, computed):
        embs[i] = emb
    if field is not None:
        new = {ids[i]: embs[i] for i in missing if embs[i] is not None}
        dims = {int(np.asarray(e).size) for e in new.values()}
        if field_dim is not None and dims - {field_dim}:
            raise EmbeddingError(
                "The model's embeddings have dimension %s but field %r holds %d-d vectors; "
                "nothing was written to it. Use another embeddings_field"
                % (sorted(dims), field, field_dim)
            )
        if new:
            chunk.set_values(field, new, key_field="id")
    return embs
