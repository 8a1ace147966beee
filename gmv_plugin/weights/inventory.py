"""What is present, what is missing and what a download would fetch, per
model; no network access, so forms can call it on every change."""

import os

from gmv_plugin.weights import fetching as dl
from gmv_plugin.weights import registry as reg
from gmv_plugin.weights.checks import (
    check_model,
    format_bytes,
    missing_files,
    needed_sources,
)


def model_status(name):
    """The status of one model.

    Returns:
        a dict: ``model``, ``label``, ``state`` (``"present"``,
        ``"missing"`` or ``"untraced"``), ``files`` (one dict per file:
        ``path``, ``present``, ``size`` in bytes, ``url``, ``checksum``),
        ``download_bytes`` (known size of what is missing, or None),
        ``downloadable`` (whether the missing files can be downloaded here:
        every one has a source and downloads are not disabled), ``reason``
        (why not, or None)
    """
    model = reg.get_model(name)
    rows = []
    found, missing = missing_files(model)
    for spec in model.files:
        path = spec.find()
        src = spec.source
        rows.append({
            "path": path or " or ".join(spec.candidates()),
            "present": bool(path),
            "size": os.path.getsize(path) if path else (src.expected_size if src else None),
            "url": dl.effective_url(src.url) if src else None,
            "checksum": src.checksum if src else "ships with the package",
        })
    sources = needed_sources(missing)
    sizes = [s.expected_size for s in sources]
    reason = None
    if missing:
        reason = dl.downloads_disabled()
        if reason is None and any(s.source is None for s in missing):
            reason = "A missing file ships with its Python package; reinstall the package."
    state = "untraced" if not model.traced else ("missing" if missing else "present")
    return {
        "model": model.name,
        "label": model.label,
        "state": state,
        "files": rows,
        "download_bytes": None if None in sizes else sum(sizes),
        "downloadable": bool(missing) and reason is None,
        "reason": reason,
        "note": model.note,
    }


def status(models=None):
    """:func:`model_status` of each of ``models`` (default
    :data:`registry.KNOWN_MODELS`)."""
    names = reg.KNOWN_MODELS if models is None else models
    if isinstance(names, str):
        names = [names]
    return [model_status(n) for n in names]


def format_status(rows):
    """A plain-text table of :func:`status` rows, one line per file."""
    lines = ["%-22s %-8s %-10s %s" % ("model", "state", "size", "file")]
    for r in rows:
        if not r["files"]:
            lines.append("%-22s %-8s %-10s (%s)" % (r["model"], r["state"], "", r["note"]))
        for f in r["files"]:
            state = "present" if f["present"] else "missing"
            lines.append("%-22s %-8s %-10s %s" % (r["model"], state, format_bytes(f["size"])
                                                   if f["size"] is not None else "?", f["path"]))
            if not f["present"] and f["url"]:
                lines.append("%-22s %-8s %-10s   from %s (checksum: %s)"
                             % ("", "", "", f["url"], f["checksum"]))
    reason = dl.downloads_disabled()
    lines.append("")
    lines.append("downloads: %s" % (reason or "allowed"))
    if dl.mirror_base():
        lines.append("mirror: %s (layout <mirror>/<host>/<path>)" % dl.mirror_base())
    return "\n".join(lines)


def download(models=None, progress=None):
    """Downloads the missing files of ``models`` (default
    :data:`registry.KNOWN_MODELS`), each checked first; returns their
    :func:`status` afterwards.

    Raises:
        MissingWeightsError: a model cannot be downloaded (offline,
            unreachable, failed verification); models before it are kept
    """
    names = reg.KNOWN_MODELS if models is None else models
    if isinstance(names, str):
        names = [names]
    for name in names:
        reg.get_model(name)  # unknown names fail before any download
    for name in names:
        check_model(name, download=True, progress=progress)
    return status(names)
