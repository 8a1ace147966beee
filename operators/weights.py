"""The weights operator: what is present, and downloading what is missing.

The table and the download come from :mod:`gmv_plugin.weights`
(``status()``, ``download()``); this module only builds the form.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common as c

_COLUMNS = (("model", "Model"), ("state", "State"), ("size", "Size"), ("path", "File"),
            ("url", "Source"), ("checksum", "Checksum"))


def _param_name(model):
    return "get_" + "".join(ch if ch.isalnum() else "_" for ch in model)


def _rows(statuses):
    """One table row per file."""
    rows = []
    for s in statuses:
        for f in s["files"]:
            rows.append({
                "model": s["model"],
                "state": "present" if f["present"] else "missing",
                "size": c.gmvw.checks.format_bytes(f["size"]) if f["size"] is not None else "",
                "path": f["path"],
                "url": "" if f["present"] else (f["url"] or ""),
                "checksum": f["checksum"],
            })
    return rows


def _markdown(statuses):
    lines = ["| Model | State | Missing | Download |", "| --- | --- | --- | --- |"]
    for s in statuses:
        n_missing = sum(not f["present"] for f in s["files"])
        size = s["download_bytes"]
        lines.append("| %s | %s | %d file(s) | %s |" % (
            s["model"], s["state"], n_missing,
            "" if not n_missing else (c.gmvw.checks.format_bytes(size) if size else "size unknown")))
    return "\n".join(lines)


class DownloadWeights(foo.Operator):
    """Shows each model's weights status and downloads the missing ones."""

    @property
    def config(self):
        return c.operator_config(
            "download_gmv_weights", "GMValuator: weights",
            "Which pretrained weights are on this machine; download the missing ones",
            delegated=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        statuses = c.gmvw.status()
        reason = c.gmvw.downloads_disabled()
        mirror = c.gmvw.mirror_base()
        inputs.md(_markdown(statuses), name="status_table")
        missing = [s for s in statuses if s["state"] == "missing"]
        if reason:
            inputs.view("offline", types.Warning(
                label="Downloads are disabled here", description=reason + " Install a bundle "
                "with `python -m gmv_plugin.weights install FILE` (see the README)."))
        elif not missing:
            inputs.view("complete", types.Notice(label="All weights are present"))
        else:
            if mirror:
                inputs.view("mirror", types.Notice(label="Downloads come from the mirror %s"
                                                         % mirror))
            for s in missing:
                size = s["download_bytes"]
                inputs.bool(_param_name(s["model"]), default=s["downloadable"],
                            label="Download %s (%s)" % (s["label"], c.gmvw.checks.format_bytes(size)
                                                        if size else "size unknown"),
                            read_only=not s["downloadable"],
                            description=s["reason"] or ", ".join(
                                f["url"] for f in s["files"] if not f["present"] and f["url"]))
            c.add_background_note(inputs)
        return types.Property(inputs, view=types.View(label="GMValuator: weights"))

    def execute(self, ctx):
        models = ctx.params.get("models")
        if models is None:
            models = [s["model"] for s in c.gmvw.status()
                      if s["state"] == "missing" and ctx.params.get(_param_name(s["model"]))]
        statuses = c.gmvw.download(models, progress=c.progress(ctx, "Downloading weights")) \
            if models else []
        after = c.gmvw.status()
        return {
            "downloaded": list(models),
            "files": _rows(after),
            "summary": "Downloaded %s. " % (", ".join(models) if models else "nothing")
            + "%d of %d models complete." % (sum(s["state"] != "missing" for s in after),
                                             len(after)),
            "checked": [s["model"] for s in statuses],
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("summary", label="Summary", view=types.MarkdownView())
        outputs.list("files", types.Object(), label="Files", view=c.table_view(_COLUMNS))
        return types.Property(outputs, view=types.View(label="GMValuator weights"))


OPERATORS = [DownloadWeights]
