"""Fetching weights: the offline switches, the mirror, and resumable,
verified, atomic downloads.

A download goes to ``<destination>.part`` (with ``.part.json`` recording the
URL and the server's validator, so an interrupted transfer resumes with an
HTTP Range request), is checked (size, and sha256 where published), and only
then moved into place with ``os.replace``. A killed download therefore leaves
at most a ``.part`` file, which no library reads; a failed check deletes it.
Zips are unpacked into a staging folder next to their destination and moved
in file by file, each move atomic.

Mirror layout: with ``GMV_WEIGHTS_MIRROR=<base>``, ``https://<host>/<path>``
is fetched from ``<base>/<host>/<path>`` (what ``wget -x`` writes), e.g.
``<base>/download.pytorch.org/models/vgg16-397923af.pth``.
"""

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from urllib.parse import urlparse

from gmv_plugin.weights.locations import root_dir, url_filename
from gmv_plugin.weights.registry import hf_repo_folder

logger = logging.getLogger(__name__)

OFFLINE_ENV = "GMV_OFFLINE"
MIRROR_ENV = "GMV_WEIGHTS_MIRROR"
TIMEOUT_ENV = "GMV_WEIGHTS_TIMEOUT"
_TRUE = ("1", "on", "true", "yes")
_CHUNK = 1 << 20


class DownloadError(OSError):
    """A download failed; ``url`` names it."""

    def __init__(self, url, message):
        self.url = url
        super().__init__("%s: %s" % (url, message))


class ChecksumError(DownloadError):
    """A downloaded file does not match its published size or checksum."""


def downloads_disabled():
    """Why downloads are off (a sentence), or None when they are allowed.

    ``GMV_OFFLINE`` and Hugging Face's ``HF_HUB_OFFLINE`` /
    ``TRANSFORMERS_OFFLINE`` turn them off (FiftyOne 1.22 has no offline
    setting of its own).
    """
    for var in (OFFLINE_ENV, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return "Downloads are disabled (%s=%s)." % (var, os.environ[var])
    return None


def mirror_base():
    base = os.environ.get(MIRROR_ENV, "").strip()
    return base.rstrip("/") or None


def mirror_path(url):
    """``<host>/<path>`` of ``url``: where a mirror holds it."""
    parts = urlparse(url)
    return parts.netloc + parts.path


def effective_url(url):
    """``url``, or its place on the mirror when ``$GMV_WEIGHTS_MIRROR`` is set."""
    base = mirror_base()
    return "%s/%s" % (base, mirror_path(url)) if base else url


def _timeout():
    return float(os.environ.get(TIMEOUT_ENV) or 30)


class _RecordingRedirects(urllib.request.HTTPRedirectHandler):
    """Keeps the headers of every redirect hop (the Hugging Face hub puts the
    commit and sha256 on the first response, not the CDN's)."""

    def __init__(self, hops):
        self.hops = hops

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.hops.append(headers)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and "Range" in req.headers:
            new.add_unredirected_header("Range", req.headers["Range"])
        return new


def _open(url, headers=None, timeout=None, method=None):
    """Opens ``url``; returns (response, headers of earlier hops)."""
    hops = []
    opener = urllib.request.build_opener(_RecordingRedirects(hops))
    req = urllib.request.Request(url, headers=dict(headers or {}), method=method)
    req.add_header("User-Agent", "gmv-plugin-weights")
    return opener.open(req, timeout=timeout or _timeout()), hops


# --------------------------------------------------------------- probing

_PROBES = {}


def probe(url, timeout=5.0):
    """Whether ``url`` (after the mirror) answers: ``(ok, size or None,
    error)``. Successes are remembered for the process, failures for a
    minute."""
    url = effective_url(url)
    hit = _PROBES.get(url)
    if hit is not None and (hit[0] or time.monotonic() - hit[3] < 60):
        return hit[:3]
    result = _probe(url, timeout)
    _PROBES[url] = result + (time.monotonic(),)
    return result


def _probe(url, timeout):
    last = None
    for method, headers in (("HEAD", {}), ("GET", {"Range": "bytes=0-0"})):
        try:
            resp, _ = _open(url, headers, timeout=timeout, method=method)
        except urllib.error.HTTPError as e:
            last = "HTTP %d %s" % (e.code, e.reason)
            if e.code in (403, 405, 501):
                continue
            return False, None, last
        except (OSError, http.client.HTTPException) as e:
            return False, None, "%s: %s" % (type(e).__name__, e)
        with resp:
            size = _total_size(resp)
        return True, size, None
    return False, None, last


def _total_size(resp):
    rng = resp.headers.get("Content-Range")
    if rng and "/" in rng and not rng.endswith("/*"):
        return int(rng.rsplit("/", 1)[1])
    n = resp.headers.get("Content-Length")
    return int(n) if n is not None and resp.status == 200 else None


# ------------------------------------------------------------- transfers


@contextlib.contextmanager
def _locked(folder):
    """An exclusive lock on ``folder`` (POSIX ``flock``; none on Windows), so
    two processes never write the same .part file; no lock file is left."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove(*paths):
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)


def _fsync_dir(path):
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _header_sha256(headers_list):
    """The sha256 the Hugging Face hub reports (``X-Linked-Etag`` of an LFS
    file), or None."""
    for headers in headers_list:
        v = (headers.get("X-Linked-Etag") or "").strip()
        v = v[2:] if v.startswith("W/") else v
        v = v.strip('"').lower()
        if len(v) == 64 and all(c in "0123456789abcdef" for c in v):
            return v
    return None


def transfer(url, part, on_bytes=None):
    """Downloads ``url`` (already mirror-resolved) into ``part``, resuming a
    previous partial transfer of the same URL.

    Returns:
        ``(headers, sha256)``: the response headers of every hop (last one
        last) and the sha256 of the whole file, computed while writing

    Raises:
        DownloadError: the transfer failed or ended short (``part`` is kept
            for the next attempt to resume)
    """
    meta_path = part + ".json"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    meta = {}
    if have:
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            meta = {}
        if meta.get("url") != url:
            have, meta = 0, {}
    headers = {}
    if have:
        headers["Range"] = "bytes=%d-" % have
        if meta.get("validator"):
            headers["If-Range"] = meta["validator"]
    try:
        resp, hops = _open(url, headers)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # our partial file is no prefix of theirs
            _remove(part, meta_path)
            return transfer(url, part, on_bytes)
        raise DownloadError(url, "HTTP %d %s" % (e.code, e.reason)) from e
    except (OSError, http.client.HTTPException) as e:
        raise DownloadError(url, "%s: %s" % (type(e).__name__, e)) from e
    with resp:
        start = 0
        if resp.status == 206:
            rng = resp.headers.get("Content-Range", "")
            try:
                start = int(rng.split()[1].split("-")[0])
            except (IndexError, ValueError):
                start = -1
            if start != have:
                resp.close()
                _remove(part, meta_path)
                return transfer(url, part, on_bytes)
        total = _total_size(resp)
        if resp.status == 206 and total is None:
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
        validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
        with open(meta_path + ".tmp", "w") as f:
            json.dump({"url": url, "validator": validator, "total": total}, f)
        os.replace(meta_path + ".tmp", meta_path)
        written = start
        digest = hashlib.sha256()
        if start:
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    digest.update(chunk)
            if on_bytes is not None:
                on_bytes(start)
        try:
            with open(part, "ab" if start else "wb") as f:
                while True:
                    chunk = resp.read1(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                f.flush()
                os.fsync(f.fileno())
        except (OSError, http.client.HTTPException) as e:
            raise DownloadError(
                url, "interrupted after %d bytes (%s: %s); run again to resume"
                % (written, type(e).__name__, e)) from e
        if total is not None and written != total:
            raise DownloadError(
                url, "interrupted after %d of %d bytes; run again to resume" % (written, total))
        return hops + [resp.headers], digest.hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path, url, sha256=None, size=None, digest=None):
    """Checks ``path`` against a size and a sha256 (full or prefix);
    ``digest``: the file's sha256 when already known.

    Raises:
        ChecksumError: on a mismatch
    """
    actual = os.path.getsize(path)
    if size is not None and actual != size:
        raise ChecksumError(url, "size %d bytes, expected %d" % (actual, size))
    if sha256:
        digest = digest or sha256_file(path)
        if not digest.startswith(sha256.lower()):
            raise ChecksumError(
                url, "sha256 %s does not match the published %s" % (digest, sha256))


def _download_verified(source, part, on_bytes):
    """Transfers ``source`` into ``part`` and verifies it; returns the
    headers. A failed check deletes ``part``."""
    url = effective_url(source.url)
    hops, digest = transfer(url, part, on_bytes)
    sha = source.sha256 or _header_sha256(hops)
    try:
        verify(part, url, sha, source.size, digest)
        if source.kind in ("zip", "zipball"):
            _check_zip(part, url)
    except ChecksumError:
        _remove(part, part + ".json")
        raise
    return hops, digest


def _check_zip(path, url):
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except zipfile.BadZipFile as e:
        raise ChecksumError(url, "not a valid zip (%s)" % e) from e
    if bad is not None:
        raise ChecksumError(url, "zip member %s fails its CRC" % bad)


def _place(tmp, dest):
    os.replace(tmp, dest)
    _fsync_dir(os.path.dirname(dest))


def _copy_into_place(src, dest):
    """Copies ``src`` to ``dest`` atomically (hard link when possible)."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = "%s.%d.tmp" % (dest, os.getpid())
    _remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    _place(tmp, dest)


# ---------------------------------------------------------------- sources


def fetch(source, on_bytes=None, overrides=None):
    """Makes the files of ``source`` (a registry Source) present: downloads,
    verifies and moves them into their cache root.

    Raises:
        DownloadError: the download failed or did not verify
    """
    base = root_dir(source.root, overrides)
    os.makedirs(base, exist_ok=True)
    if source.kind == "file":
        return _fetch_file(source, base, on_bytes, overrides)
    if source.kind == "hf":
        return _fetch_hf(source, base, on_bytes)
    if source.kind in ("zip", "zipball"):
        return _fetch_zip(source, base, on_bytes)
    raise ValueError("Unknown source kind %r" % source.kind)


def _fetch_file(source, base, on_bytes, overrides):
    dests = [os.path.join(base, *source.path.split("/"))]
    for root, rel in source.also:
        dests.append(os.path.join(root_dir(root, overrides), *rel.split("/")))
    have = [d for d in dests if os.path.isfile(d)]
    if not have:
        dest = dests[0]
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        part = dest + ".part"
        with _locked(os.path.dirname(dest)):
            if not os.path.isfile(dest):
                _download_verified(source, part, on_bytes)
                _place(part, dest)
                _remove(part + ".json")
        have = [dest]
    for d in dests:
        if not os.path.isfile(d):
            _copy_into_place(have[0], d)
    return dests


def _fetch_hf(source, base, on_bytes):
    """A Hugging Face file, stored as ``huggingface_hub`` caches it:
    ``models--<org>--<name>/snapshots/<commit>/<file>`` plus ``refs/main``
    naming the commit (a regular file, as on systems without symlinks)."""
    folder = os.path.join(base, hf_repo_folder(source.hf_repo))
    os.makedirs(folder, exist_ok=True)
    part = os.path.join(folder, "%s.part" % source.path.replace("/", "--"))
    with _locked(folder):
        hops, digest = _download_verified(source, part, on_bytes)
        commit = None
        for headers in hops:
            commit = commit or headers.get("X-Repo-Commit")
        if not commit:  # e.g. a plain mirror: name the snapshot after the content
            commit = "gmv-" + digest[:16]
        dest = os.path.join(folder, "snapshots", commit, *source.path.split("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        _place(part, dest)
        _remove(part + ".json")
        refs = os.path.join(folder, "refs", "main")
        os.makedirs(os.path.dirname(refs), exist_ok=True)
        with open(refs + ".tmp", "w") as f:
            f.write(commit)
        _place(refs + ".tmp", refs)
    return [dest, refs]


def _safe_members(z, url):
    """The zip's file members as (member, relative parts); refuses absolute
    paths, ``..`` and links."""
    out = []
    for info in z.infolist():
        name = info.filename
        parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
        mode = info.external_attr >> 16
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise ChecksumError(url, "zip member %r would land outside its folder" % name)
        if (mode & 0o170000) == 0o120000:
            raise ChecksumError(url, "zip member %r is a link" % name)
        if info.is_dir() or not parts or parts[0] == "__MACOSX":
            continue
        out.append((info, parts))
    return out


def _fetch_zip(source, base, on_bytes):
    """A zip unpacked into ``base/source.path`` (``"zipball"``: without its
    single top folder, as torch.hub does)."""
    target = os.path.join(base, *source.path.split("/")) if source.path else base
    part = os.path.join(base, ".gmv-%s.part" % url_filename(source.url).replace("/", "_"))
    with _locked(base):
        _download_verified(source, part, on_bytes)
        staging = tempfile.mkdtemp(prefix=".gmv-staging-", dir=base)
        try:
            with zipfile.ZipFile(part) as z:
                members = _safe_members(z, source.url)
                if source.kind == "zipball":
                    members = [(i, p[1:]) for i, p in members if len(p) > 1]
                for info, parts in members:
                    out = os.path.join(staging, *parts)
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    with z.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
            placed = []
            for _, parts in members:
                dest = os.path.join(target, *parts)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                _place(os.path.join(staging, *parts), dest)
                placed.append(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _remove(part, part + ".json")
    return placed
