"""Bundles for air-gapped machines: one tar of the weights files with a
manifest, made where there is internet and installed where there is none.

A bundle is an uncompressed tar whose members are ``<root>/<relative path>``
(``root`` a cache root of :data:`locations.ROOTS`, e.g.
``torch_hub/checkpoints/vgg16-397923af.pth``) plus ``gmv-weights-manifest.json``
listing each file's root, path, size and sha256. :func:`install` refuses
archives with members outside the cache roots (absolute paths, ``..``),
links or anything but regular files, or members the manifest does not list;
it verifies every file before writing anything, then stages all files next
to their destinations and moves them in only when all are staged.
"""

import datetime
import hashlib
import io
import json
import os
import posixpath
import shutil
import tarfile

from gmv_plugin.weights import registry as reg
from gmv_plugin.weights.locations import WRITABLE_ROOTS, root_dir

MANIFEST = "gmv-weights-manifest.json"
FORMAT = 1
_CHUNK = 1 << 20
_SKIP_SUFFIXES = (".part", ".lock", ".part.json", ".tmp")


class BundleError(ValueError):
    """A bundle cannot be made or installed; nothing was installed."""


def _walk(root, rel, base):
    """Files under ``base/rel`` (a file or a folder) as relative paths."""
    path = os.path.join(base, *rel.split("/"))
    if os.path.isfile(path):
        return [rel]
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".gmv-"))
        for name in sorted(filenames):
            if name.endswith(_SKIP_SUFFIXES) or name.startswith(".gmv-"):
                continue
            full = os.path.join(dirpath, name)
            out.append(os.path.relpath(full, base).replace(os.sep, "/"))
    return out


def bundle_files(models=None):
    """The files a bundle of ``models`` holds, as ``(root, relative path,
    absolute path, copies)``; ``copies`` are further ``(root, relative
    path)`` places of the same download (e.g. the zoo file's copy in the
    torch hub cache), stored once and installed at each place.

    Raises:
        BundleError: if a model's files are incomplete on this machine
    """
    out, missing, copies = [], [], {}
    for model in reg.resolve_models(models):
        entries, shared = [], []
        for spec in model.files:
            if spec.root == "lpips":
                continue  # ships with the package
            src = spec.source
            if src is not None and src.kind == "file" and src.also:
                if src in shared:
                    continue
                shared.append(src)
                places = [(src.root, src.path)] + list(src.also)
                present = [(r, p) for r, p in places
                           if os.path.isfile(os.path.join(root_dir(r), *p.split("/")))]
                if not present:
                    missing.append("%s (%s)" % (model.name, " or ".join(spec.candidates())))
                    continue
                entries.append(present[0])
                copies.setdefault(present[0], []).extend(p for p in places if p != present[0])
                continue
            hit = spec.find()
            if hit is None:
                missing.append("%s (%s)" % (model.name, " or ".join(spec.candidates())))
                continue
            base = root_dir(spec.root)
            if spec.hf_repo:
                folder = os.path.join(base, reg.hf_repo_folder(spec.hf_repo))
                rel = os.path.relpath(hit, base).replace(os.sep, "/")
                entries.append((spec.root, rel))
                if os.path.isfile(os.path.join(folder, "refs", "main")):
                    entries.append((spec.root, reg.hf_repo_folder(spec.hf_repo) + "/refs/main"))
            elif model.bundle is None:
                entries.append((spec.root, os.path.relpath(hit, base).replace(os.sep, "/")))
        for root, rel in model.bundle or ():
            base = root_dir(root)
            entries.extend((root, r) for r in _walk(root, rel, base))
        for root, rel in entries:
            item = (root, rel, os.path.join(root_dir(root), *rel.split("/")))
            if item not in out:
                out.append(item)
    members = {(root, rel) for root, rel, _ in out}
    claimed = set(members)
    result = []
    for root, rel, path in out:
        extra = []
        for place in copies.get((root, rel), []):
            if place not in claimed:
                claimed.add(place)
                extra.append(place)
        result.append((root, rel, path, extra))
    if missing:
        raise BundleError(
            "Cannot bundle: files are missing here: %s. Run `python -m "
            "gmv_plugin.weights download --models ...` first, or bundle fewer "
            "models with --models." % "; ".join(missing))
    return result


def _copy_hashing(src, dst, size=None):
    h = hashlib.sha256()
    n = 0
    while True:
        chunk = src.read(_CHUNK)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
        if dst is not None:
            dst.write(chunk)
    return h.hexdigest(), n


class _HashingReader:
    def __init__(self, f):
        self.f = f
        self.h = hashlib.sha256()

    def read(self, n=-1):
        data = self.f.read(n)
        self.h.update(data)
        return data


def bundle(to, models=None):
    """Writes a bundle of ``models`` (default
    :data:`registry.KNOWN_MODELS`; each must be complete here) to ``to``,
    atomically (``to.part``, then renamed).

    Returns:
        the manifest dict
    """
    files = bundle_files(models)
    to = os.path.abspath(os.path.expanduser(str(to)))
    part = to + ".part"
    entries = []
    try:
        with tarfile.open(part, "w", format=tarfile.PAX_FORMAT) as tar:
            for root, rel, path, extra in files:
                info = tarfile.TarInfo("%s/%s" % (root, rel))
                info.size = os.path.getsize(path)
                info.mtime = int(os.path.getmtime(path))
                info.mode = 0o644
                with open(path, "rb") as f:
                    reader = _HashingReader(f)
                    tar.addfile(info, reader)
                entries.append({"root": root, "path": rel, "size": info.size,
                                "sha256": reader.h.hexdigest(),
                                "copies": [{"root": r, "path": p} for r, p in extra]})
            manifest = {
                "format": FORMAT,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "models": [m.name for m in reg.resolve_models(models)],
                "files": entries,
            }
            data = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        os.replace(part, to)
    except BaseException:
        if os.path.exists(part):
            os.remove(part)
        raise
    return manifest


def _safe_rel(rel):
    """Whether ``rel`` is a plain relative POSIX path inside its root."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return False
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        return False
    parts = rel.split("/")
    return all(p not in ("", ".", "..") for p in parts) and posixpath.normpath(rel) == rel


def read_manifest(tar):
    """The validated manifest of an open bundle, and its members by name.

    Raises:
        BundleError: on anything unsafe or inconsistent
    """
    members = {}
    for m in tar.getmembers():
        if m.name in members:
            raise BundleError("Bundle member %r appears twice" % m.name)
        if not m.isreg():
            kind = "link" if (m.issym() or m.islnk()) else "non-file"
            raise BundleError("Bundle member %r is a %s; refused" % (m.name, kind))
        members[m.name] = m
    if MANIFEST not in members:
        raise BundleError("Not a GMValuator weights bundle: no %s" % MANIFEST)
    if members[MANIFEST].size > 16 << 20:
        raise BundleError("The bundle's manifest is implausibly large")
    try:
        manifest = json.load(tar.extractfile(members.pop(MANIFEST)))
    except ValueError as e:
        raise BundleError("The bundle's manifest is not valid JSON: %s" % e) from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError("Unsupported bundle format %r" % (manifest.get("format")
                                                           if isinstance(manifest, dict) else None))
    files = manifest.get("files")
    if not isinstance(files, list):
        raise BundleError("The bundle's manifest lists no files")
    listed, places = set(), set()
    for e in files:
        if not isinstance(e, dict) or not isinstance(e.get("copies", []), list):
            raise BundleError("Bad manifest entry %r" % (e,))
        for place in [e] + e.get("copies", []):
            root, rel = place.get("root"), place.get("path")
            if root not in WRITABLE_ROOTS:
                raise BundleError("Manifest entry %r: unknown cache root %r (allowed: %s)"
                                  % (rel, root, ", ".join(WRITABLE_ROOTS)))
            if not _safe_rel(rel):
                raise BundleError("Manifest entry %r would land outside the %s cache; refused"
                                  % (rel, root))
            if (root, rel) in places:
                raise BundleError("Manifest installs %s/%s twice" % (root, rel))
            places.add((root, rel))
        root, rel = e["root"], e["path"]
        sha = e.get("sha256")
        if not (isinstance(sha, str) and len(sha) == 64):
            raise BundleError("Manifest entry %r has no sha256" % rel)
        name = "%s/%s" % (root, rel)
        if name in listed:
            raise BundleError("Manifest lists %r twice" % name)
        listed.add(name)
        m = members.get(name)
        if m is None:
            raise BundleError("Manifest entry %r has no member in the bundle" % name)
        if m.size != e.get("size"):
            raise BundleError("Member %r has %d bytes, the manifest says %r"
                              % (name, m.size, e.get("size")))
    extra = sorted(set(members) - listed)
    if extra:
        raise BundleError("Bundle members not in the manifest (refused): %s" % ", ".join(extra))
    return manifest, members


def _target(entry):
    base = root_dir(entry["root"])
    target = os.path.normpath(os.path.join(base, *entry["path"].split("/")))
    if os.path.commonpath([base, target]) != base or target == base:
        raise BundleError("%r would land outside %s; refused" % (entry["path"], base))
    return target


def install(path):
    """Installs a bundle made by :func:`bundle` into this machine's caches.

    All or nothing: the archive is validated (:func:`read_manifest`) and
    every file checked against its sha256 before anything is written; then
    all files are staged next to their destinations, and only when every one
    is staged (and re-verified) are they moved into place.

    Returns:
        the installed paths

    Raises:
        BundleError: the bundle is unsafe, inconsistent or corrupt (nothing
            was written)
    """
    with tarfile.open(os.path.abspath(os.path.expanduser(str(path))), "r:*") as tar:
        manifest, members = read_manifest(tar)
        entries = manifest["files"]
        targets = [_target(e) for e in entries]
        copy_targets = [[_target(c) for c in e.get("copies", [])] for e in entries]
        for e in entries:  # pass 1: verify, writing nothing
            digest, _ = _copy_hashing(tar.extractfile(members["%s/%s" % (e["root"], e["path"])]),
                                      None)
            if digest != e["sha256"]:
                raise BundleError("%s/%s: sha256 %s does not match the manifest's %s; "
                                  "nothing installed" % (e["root"], e["path"], digest,
                                                        e["sha256"]))
        staged, made_dirs = [], []  # staged: (tmp, target)
        try:  # pass 2: stage everything
            for e, target, extra in zip(entries, targets, copy_targets):
                _makedirs(os.path.dirname(target), made_dirs)
                tmp = target + ".gmv-install.part"
                staged.append((tmp, target))
                with open(tmp, "wb") as out:
                    digest, _ = _copy_hashing(
                        tar.extractfile(members["%s/%s" % (e["root"], e["path"])]), out)
                    out.flush()
                    os.fsync(out.fileno())
                if digest != e["sha256"]:
                    raise BundleError("%s changed while installing; nothing installed" % target)
                for copy in extra:
                    _makedirs(os.path.dirname(copy), made_dirs)
                    staged.append((copy + ".gmv-install.part", copy))
                    shutil.copyfile(tmp, copy + ".gmv-install.part")
        except BaseException:
            for tmp, _ in staged:
                if os.path.exists(tmp):
                    os.remove(tmp)
            for d in reversed(made_dirs):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
            raise
    for tmp, target in staged:  # pass 3: move in
        os.replace(tmp, target)
    return [target for _, target in staged]


def _makedirs(path, made):
    """``os.makedirs`` recording each folder it creates."""
    if os.path.isdir(path):
        return
    _makedirs(os.path.dirname(path), made)
    os.mkdir(path)
    made.append(path)
