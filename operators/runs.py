"""Run management operators: list, info, rename, delete, report.

GMValuator runs are FiftyOne runs (``dataset.list_runs()``,
``get_run_info()``, ``rename_run()``, ``delete_run()``); these operators show
them with their config and stage timings and call the library to rename or
delete them with their fields and files.
"""

import json

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common as c


def _round(x, digits=4):
    """Floats to ``digits`` significant digits, for reading."""
    if isinstance(x, float):
        return float("%.*g" % (digits, x))
    if isinstance(x, dict):
        return {k: _round(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v, digits) for v in x]
    return x


def _row(summary):
    row = {k: v for k, v in summary.items() if k != "timings"}
    if row.get("total_seconds") is not None:
        row["total_seconds"] = round(row["total_seconds"], 2)
    return _round(row)


_RUN_COLUMNS = (
    ("key", "Key"), ("created", "Created"), ("encoder", "Encoder"), ("index", "Index"),
    ("rerank", "Re-ranker"), ("quality", "Quality"), ("k", "k"),
    ("temperature", "Temperature"), ("num_train", "Training"),
    ("num_generated", "Generated"), ("total_seconds", "Total s"),
)


class ListRuns(foo.Operator):
    """Lists the dataset's GMValuator runs (most recent first) with config
    and stage timings. Not dynamic and without inputs, so the App runs it on
    the first click."""

    @property
    def config(self):
        return c.operator_config(
            "list_gmv_runs", "GMValuator: list runs",
            "The valuation runs on this dataset, with config and timings", dynamic=False)

    def execute(self, ctx):
        runs, timings = [], []
        for key in c.gmvpanel.runs_by_recency(ctx.dataset):
            s = c.gmvpanel.run_summary(ctx.dataset, key)
            runs.append(_row(s))
            timings.append(dict({"key": key}, **{k: round(v, 2) for k, v in s["timings"].items()}))
        n = len(runs)
        summary = ("%d GMValuator run(s) on %s, most recent first" % (n, c.code(ctx.dataset.name))
                   if n else "No GMValuator run on %s yet: run **GMValuator: compute values**"
                   % c.code(ctx.dataset.name))
        return {"runs": runs, "timings": timings, "summary": summary}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("summary", label="Summary", view=types.MarkdownView())
        outputs.list("runs", types.Object(), label="Runs", view=c.table_view(_RUN_COLUMNS))
        stages = [(s, s) for s in c.gmv.STAGES]
        outputs.list("timings", types.Object(), label="Stage timings (s)",
                     view=c.table_view((("key", "Key"),) + tuple(stages)))
        return types.Property(outputs, view=types.View(label="GMValuator runs"))


class GetRunInfo(foo.Operator):
    """Shows one run's config, stage timings, counts, fields and files."""

    @property
    def config(self):
        return c.operator_config(
            "get_gmv_run_info", "GMValuator: run info",
            "Config, stage timings and counts of a valuation run")

    def resolve_input(self, ctx):
        inputs = types.Object()
        c.add_run_choice(inputs, ctx)
        return types.Property(inputs, view=types.View(label="GMValuator: run info"))

    @c.friendly_errors
    def execute(self, ctx):
        key = c.run_key(ctx)
        s = c.gmvpanel.run_summary(ctx.dataset, key)
        info = ctx.dataset.get_run_info(key)
        config = info.config.serialize()
        fields = c.gmvruns.field_names(key)
        row = _row(s)
        settings = [{"name": k, "value": str(v)} for k, v in row.items()]
        for k in ("index_params", "rerank", "quality", "model"):
            if config.get(k):
                settings.append({"name": k, "value": str(_round(config[k]))})
        settings.append({"name": "fields (training)", "value": ", ".join(fields["train"])})
        settings.append({"name": "fields (generated)", "value": ", ".join(fields["generated"])})
        settings.append({"name": "files", "value": c.gmvruns.run_dir(ctx.dataset, key)})
        settings.append({"name": "FiftyOne version", "value": str(info.version)})
        timings = [{"stage": k, "seconds": round(v, 3)} for k, v in s["timings"].items()]
        return {
            "key": key,
            "settings": settings,
            "stage_timings": timings,
            "summary": row,
            "config": config,
            "timings": s["timings"],
            "fields": fields,
            "run_dir": c.gmvruns.run_dir(ctx.dataset, key),
            "version": info.version,
        }

    def resolve_output(self, ctx):
        if c.failed(ctx):
            return c.error_output(ctx)
        outputs = types.Object()
        outputs.list("settings", types.Object(), label="Run",
                     view=c.table_view((("name", "Setting"), ("value", "Value"))))
        outputs.list("stage_timings", types.Object(), label="Stage timings",
                     view=c.table_view((("stage", "Stage"), ("seconds", "Seconds"))))
        return types.Property(outputs, view=types.View(label="GMValuator run info"))


class RenameRun(foo.Operator):
    """Renames a run with its fields and files."""

    @property
    def config(self):
        return c.operator_config(
            "rename_gmv_run", "GMValuator: rename run",
            "Rename a valuation run, its fields and files")

    def resolve_input(self, ctx):
        inputs = types.Object()
        key = c.add_run_choice(inputs, ctx)
        if key is not None:
            new_key = c.param(ctx, "new_key")
            err = None
            if new_key is not None:
                err = c.key_error(ctx.dataset, new_key, overwrite=False)
            inputs.str("new_key", required=True, label="New key",
                       description="fields become {new key}_value, ...",
                       invalid=err is not None, error_message=err or "")
        return types.Property(inputs, view=types.View(label="GMValuator: rename run"))

    @c.friendly_errors
    def execute(self, ctx):
        key, new_key = c.run_key(ctx), c.param(ctx, "new_key")
        c.gmvval.check_key(ctx.dataset, new_key)
        stale = ("%s_" % key) in json.dumps(ctx.view._serialize())
        c.gmvruns.rename_run(ctx.dataset, key, new_key)
        ctx.ops.reload_dataset()
        if stale:  # the shown view filtered or sorted by the old fields: it would be empty
            ctx.ops.clear_view()
        fields = c.gmvruns.field_names(new_key)
        fields = [f for f in fields["train"] + fields["generated"] if ctx.dataset.has_field(f)]
        return {"key": new_key, "old_key": key,
                "summary": "Renamed run %s to %s; its fields are now %s.%s" % (
                    c.code(key), c.code(new_key), ", ".join(c.code(f) for f in fields),
                    " The view, which used the old fields, was reset." if stale else "")}

    def resolve_output(self, ctx):
        if c.failed(ctx):
            return c.error_output(ctx)
        outputs = types.Object()
        outputs.str("summary", label="Done", view=types.MarkdownView())
        return types.Property(outputs, view=types.View(label="GMValuator: run renamed"))


class DeleteRun(foo.Operator):
    """Deletes a run with its fields and files, after an explicit
    confirmation (``confirm=True``)."""

    @property
    def config(self):
        return c.operator_config(
            "delete_gmv_run", "GMValuator: delete run",
            "Delete a valuation run with its fields and files")

    def resolve_input(self, ctx):
        inputs = types.Object()
        key = c.add_run_choice(inputs, ctx)
        if key is not None:
            fields = self._fields(ctx, key)
            inputs.view("delete_warning", types.Warning(
                label="Run %r will be deleted with its fields and files" % key,
                description="Fields: %s. Files: %s" % (
                    c.md(", ".join(fields) or "none"), c.md(c.gmvruns.run_dir(ctx.dataset, key)))))
            confirmed = bool(c.param(ctx, "confirm", False))
            inputs.bool("confirm", default=False, required=True,
                        label="Yes, delete run %r" % key,
                        description="This cannot be undone",
                        invalid=not confirmed,
                        error_message="Tick to confirm the deletion" if not confirmed else "")
        return types.Property(inputs, view=types.View(label="GMValuator: delete run"))

    @staticmethod
    def _fields(ctx, key):
        names = c.gmvruns.field_names(key)
        return [f for f in names["train"] + names["generated"] if ctx.dataset.has_field(f)]

    @c.friendly_errors
    def execute(self, ctx):
        key = c.run_key(ctx)
        if not c.param(ctx, "confirm", False):
            raise ValueError("Deleting run %r needs confirm=True" % key)
        fields = self._fields(ctx, key)
        run_dir = c.gmvruns.run_dir(ctx.dataset, key)
        c.gmvruns.delete_run(ctx.dataset, key)
        ctx.ops.reload_dataset()
        return {"deleted": key, "fields": fields, "run_dir": run_dir,
                "summary": "Deleted run %s, its fields %s and its files in %s" % (
                    c.code(key), ", ".join(c.code(f) for f in fields) or "(none)",
                    c.code(run_dir))}

    def resolve_output(self, ctx):
        if c.failed(ctx):
            return c.error_output(ctx)
        outputs = types.Object()
        outputs.str("summary", label="Done", view=types.MarkdownView())
        return types.Property(outputs, view=types.View(label="GMValuator: run deleted"))


class ValuationReport(foo.Operator):
    """The report of a run: counts, value histogram, top and bottom samples,
    stage timings."""

    @property
    def config(self):
        return c.operator_config(
            "gmv_report", "GMValuator: report",
            "Counts, value distribution, most/least valuable samples and timings")

    def resolve_input(self, ctx):
        inputs = types.Object()
        c.add_run_choice(inputs, ctx)
        n = c.param(ctx, "n", 10)
        ok = isinstance(n, int) or isinstance(n, float) and n.is_integer() and n >= 1
        ok = ok and n >= 1
        inputs.int("n", default=10, label="Top and bottom samples to list",
                   description="an integer, at least 1", invalid=not ok,
                   error_message="" if ok else "n must be an integer, at least 1; got %r" % n)
        return types.Property(inputs, view=types.View(label="GMValuator: report"))

    @c.friendly_errors
    def execute(self, ctx):
        key = c.run_key(ctx)
        return dict(key=key, **c.report_result(ctx.dataset, key, n=int(c.param(ctx, "n", 10))))

    def resolve_output(self, ctx):
        return c.report_output(ctx)


OPERATORS = [ListRuns, GetRunInfo, RenameRun, DeleteRun, ValuationReport]
