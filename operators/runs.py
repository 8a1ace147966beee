"""Run management operators: list, info, rename, delete, report.

GMValuator runs are FiftyOne runs (``dataset.list_runs()``,
``get_run_info()``, ``rename_run()``, ``delete_run()``); these operators show
them with their config and stage timings and call the library to rename or
delete them with their fields and files.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common as c


def _run_summary(dataset, key):
    """One row per run: config essentials, counts and timings."""
    info = dataset.get_run_info(key)
    cfg = info.config
    row = {
        "key": key,
        "created": info.timestamp.isoformat(sep=" ", timespec="seconds") if info.timestamp else None,
        "encoder": (cfg.model or {}).get("name") or cfg.embeddings_field,
        "index": cfg.index,
        "rerank": cfg.rerank.get("name"),
        "quality": cfg.quality.get("name"),
        "k": cfg.k,
        "temperature": cfg.temperature,
    }
    try:
        res = c.gmvruns.load_results(dataset, key)
    except Exception:  # registered but never computed (e.g. failed first stage)
        res = None
    timings = {k: float(v) for k, v in (getattr(res, "timings", None) or {}).items()}
    row.update(
        num_train=getattr(res, "num_train", None),
        num_generated=getattr(res, "num_generated", None),
        total_seconds=round(sum(timings.values()), 3) if timings else None,
    )
    return row, timings, cfg, info


class ListRuns(foo.Operator):
    """Lists the dataset's GMValuator runs with config and stage timings."""

    @property
    def config(self):
        return c.operator_config(
            "list_gmv_runs", "GMValuator: list runs",
            "The valuation runs on this dataset, with config and timings")

    def execute(self, ctx):
        runs, timings = [], {}
        for key in c.gmvruns.list_runs(ctx.dataset):
            row, t, _, _ = _run_summary(ctx.dataset, key)
            runs.append(row)
            timings[key] = t
        return {"runs": runs, "timings": timings,
                "summary": "%d GMValuator run(s) on `%s`" % (len(runs), ctx.dataset.name)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("summary", label="Summary", view=types.MarkdownView())
        table = c.table_view((
            ("key", "Key"), ("created", "Created"), ("encoder", "Encoder"), ("index", "Index"),
            ("rerank", "Re-ranker"), ("quality", "Quality"), ("k", "k"),
            ("temperature", "Temperature"), ("num_train", "Training"),
            ("num_generated", "Generated"), ("total_seconds", "Total s"),
        ))
        outputs.list("runs", types.Object(), label="Runs", view=table)
        outputs.obj("timings", label="Stage timings (s) per run", view=types.JSONView())
        return types.Property(outputs, view=types.View(label="GMValuator runs"))


class GetRunInfo(foo.Operator):
    """Shows one run's full config, stage timings and counts."""

    @property
    def config(self):
        return c.operator_config(
            "get_gmv_run_info", "GMValuator: run info",
            "Config, stage timings and counts of a valuation run")

    def resolve_input(self, ctx):
        inputs = types.Object()
        c.add_run_choice(inputs, ctx)
        return types.Property(inputs, view=types.View(label="GMValuator: run info"))

    def execute(self, ctx):
        key = c.run_key(ctx)
        row, timings, cfg, info = _run_summary(ctx.dataset, key)
        config = cfg.serialize()
        fields = c.gmvruns.field_names(key)
        return {
            "key": key,
            "summary": row,
            "config": config,
            "timings": timings,
            "fields": fields,
            "run_dir": c.gmvruns.run_dir(ctx.dataset, key),
            "version": info.version,
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.obj("summary", label="Run", view=types.JSONView())
        outputs.obj("timings", label="Stage timings (s)", view=types.JSONView())
        outputs.obj("config", label="Config", view=types.JSONView())
        outputs.obj("fields", label="Fields", view=types.JSONView())
        outputs.str("run_dir", label="Files")
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
            inputs.str("new_key", required=True, label="New key", invalid=err is not None,
                       error_message=err or "")
        return types.Property(inputs, view=types.View(label="GMValuator: rename run"))

    def execute(self, ctx):
        key, new_key = c.run_key(ctx), c.param(ctx, "new_key")
        err = c.key_error(ctx.dataset, new_key, overwrite=False)
        if err:
            raise ValueError(err)
        c.gmvruns.rename_run(ctx.dataset, key, new_key)
        ctx.ops.reload_dataset()
        return {"key": new_key, "old_key": key}


class DeleteRun(foo.Operator):
    """Deletes a run with its fields and files."""

    @property
    def config(self):
        return c.operator_config(
            "delete_gmv_run", "GMValuator: delete run",
            "Delete a valuation run with its fields and files")

    def resolve_input(self, ctx):
        inputs = types.Object()
        key = c.add_run_choice(inputs, ctx)
        if key is not None:
            names = c.gmvruns.field_names(key)
            fields = [f for f in names["train"] + names["generated"] if ctx.dataset.has_field(f)]
            inputs.view("delete_warning", types.Warning(
                label="Run %r will be deleted with its fields and files" % key,
                description="Fields: %s. Files: %s" % (
                    ", ".join(fields) or "none", c.gmvruns.run_dir(ctx.dataset, key))))
        return types.Property(inputs, view=types.View(label="GMValuator: delete run"))

    def execute(self, ctx):
        key = c.run_key(ctx)
        c.gmvruns.delete_run(ctx.dataset, key)
        ctx.ops.reload_dataset()
        return {"deleted": key}


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
        inputs.int("n", min=1, default=10, label="Top and bottom samples to list")
        return types.Property(inputs, view=types.View(label="GMValuator: report"))

    def execute(self, ctx):
        key = c.run_key(ctx)
        return dict(key=key, **c.report_result(ctx.dataset, key, n=int(c.param(ctx, "n", 10))))

    def resolve_output(self, ctx):
        return c.report_output()


OPERATORS = [ListRuns, GetRunInfo, RenameRun, DeleteRun, ValuationReport]
