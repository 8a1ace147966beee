"""Embedding training and generated images into float32 arrays on disk.

Embeddings are computed with FiftyOne's ``compute_embeddings`` chunk by chunk
and streamed into a ``.npy`` memmap, so memory is bounded by the chunk size,
never by the number of images. An ``embeddings_field`` can supply existing
embeddings or receive new ones.
"""

import logging

import numpy as np
import fiftyone.core.models as fom
import fiftyone.core.utils as fou
from PIL import Image

from gmv_plugin.images import find_unreadable, to_pil

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "vgg16-imagenet-torch"
BUILTIN_MODELS = ("pixels",)


class PixelEmbedder(fom.Model, fom.EmbeddingsMixin):
    """A weight-free encoder: resize, flatten and L2-normalize the pixels.

    Euclidean distances between these embeddings rank neighbours exactly as
    cosine similarity in pixel space does.

    Args:
        size (32): images are resized to ``size x size``
        mode ("RGB"): ``"RGB"`` or ``"L"`` (grayscale); any input channels
            are converted, so mixed collections embed consistently
    """

    def __init__(self, size=32, mode="RGB"):
        if mode not in ("RGB", "L"):
            raise ValueError("mode must be one of ('RGB', 'L'); got %r" % mode)
        self.size = int(size)
        self.mode = mode

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

    def _embed_one(self, img):
        pil = to_pil(img, self.mode).resize((self.size, self.size), Image.BILINEAR)
        vec = np.asarray(pil, dtype=np.float32).ravel() / 255.0
        norm = np.linalg.norm(vec)
        return vec / norm if norm > 0 else vec

    def embed(self, arg):
        return self._embed_one(arg)

    def embed_all(self, args):
        return np.stack([self._embed_one(a) for a in args])

    def predict(self, arg):
        return self.embed(arg)

    def predict_all(self, args):
        return self.embed_all(args)

    def get_embeddings(self):
        raise NotImplementedError("use embed() or embed_all()")


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


def embed_to_file(
    samples,
    path,
    model=None,
    embeddings_field=None,
    batch_size=64,
    chunk_size=4096,
    progress=None,
):
    """Embeds ``samples`` in order into a float32 ``.npy`` file.

    Computed embeddings are written to ``embeddings_field`` only when they
    have the dimension of the vectors already stored there.

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

    Returns:
        a tuple ``(ids, embeddings)``: the sample ids and a read-only memmap

    Raises:
        EmbeddingError: naming the samples whose images could not be embedded
    """
    ids = samples.values("id")
    has_field = embeddings_field is not None and samples.has_field(
        embeddings_field
    )
    if model is None and not has_field:
        raise ValueError(
            "Provide a model, or an embeddings_field that exists on every "
            "sample; field %r does not exist" % embeddings_field
        )

    field_dim = _field_dim(samples, embeddings_field) if has_field else None
    out = None
    failed = []
    with fou.ProgressBar(total=len(ids), progress=progress) as pb:
        for start in range(0, len(ids), chunk_size):
            chunk_ids = ids[start : start + chunk_size]
            chunk = samples.select(chunk_ids, ordered=True)
            embs = _chunk_embeddings(
                chunk, model, embeddings_field, has_field, batch_size, field_dim
            )
            for sid, emb in zip(chunk_ids, embs):
                if emb is None:
                    failed.append(sid)
            if failed:
                pb.update(len(chunk_ids))
                continue
            arr = np.asarray(np.stack(embs), dtype=np.float32).reshape(
                len(chunk_ids), -1
            )
            if out is None:
                out = np.lib.format.open_memmap(
                    path, mode="w+", dtype=np.float32,
                    shape=(len(ids), arr.shape[1]),
                )
            if arr.shape[1] != out.shape[1]:
                raise EmbeddingError(
                    "Embeddings have inconsistent dimensions: %d and %d"
                    % (out.shape[1], arr.shape[1])
                )
            out[start : start + len(chunk_ids)] = arr
            pb.update(len(chunk_ids))

    if failed:
        # A batch fails as a whole: name the images that are really broken.
        paths = samples.select(failed).values("filepath")
        broken = find_unreadable(paths, limit=5)
        raise EmbeddingError(
            "Could not embed %d of %d samples; unreadable images: %s"
            % (len(failed), len(ids), broken)
            if broken
            else "Could not embed %d of %d samples (no embedding in %r), e.g. %s"
            % (len(failed), len(ids), embeddings_field, paths[:5])
        )
    if out is None:
        raise ValueError("Cannot embed an empty collection")
    out.flush()
    del out
    return ids, np.load(path, mmap_mode="r")


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
