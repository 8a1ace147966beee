"""Navigation operators: contributors of selected generated samples, what
selected training samples contributed to, and the training set by value.

Each sets the App's view to one of the :mod:`gmv_plugin.navigation` views and
returns the rows it shows (scores included) as operator output.
"""

import os

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common as c

MAX_ROWS = 200


_OTHER = {"generated": "training", "training": "generated"}
_OTHER_OP = {"generated": "show contributions", "training": "show contributors"}


def _selection_inputs(inputs, ctx, what):
    """Run choice plus a note on the selection; invalid (Execute disabled,
    the reason shown once) unless every selected sample is a ``what``
    ("generated" or "training") sample of the run. Returns the run key."""
    key = c.add_run_choice(inputs, ctx)
    if key is None:
        return None
    n = len(ctx.selected)
    msg = None
    if not n:
        msg = "Select %s samples in the grid first (tick their checkboxes)" % what
    else:
        kinds = c.gmvpanel.split_selection(ctx.dataset, key, ctx.selected)
        wrong = len(kinds[_OTHER[what]])
        other = len(kinds["other"])
        if wrong:
            msg = ("%d of the %d selected samples are %s samples: select %s samples, or use "
                   "GMValuator: %s" % (wrong, n, _OTHER[what], what, _OTHER_OP[what]))
        elif other:
            msg = ("%d of the %d selected samples are not %s samples valued by run %r"
                   % (other, n, what, key))
    if msg:
        inputs.view("selection_problem", types.Warning(label=msg))
        inputs.str("selection", view=types.HiddenView(), invalid=True, error_message=msg)
    else:
        inputs.view("selection_note", types.Notice(label="%d %s sample(s) selected" % (n, what)))
    return key


def _placement(ctx, label):
    if ctx.dataset is None or not c.gmvruns.list_runs(ctx.dataset):
        return None
    return types.Placement(
        types.Places.SAMPLES_GRID_SECONDARY_ACTIONS,
        types.Button(label=label, prompt=True),
    )


class _SelectionOperator(foo.Operator):
    """Base: an operator on the ``selection`` samples selected in the grid,
    started from a grid button; it outputs a summary and the table ``rows``
    (``columns``: ``(key, label)`` pairs)."""

    name = None
    label = None
    description = None
    selection = None
    rows = None
    columns = ()

    @property
    def config(self):
        return c.operator_config(self.name, self.label, self.description)

    def resolve_placement(self, ctx):
        return _placement(ctx, self.label)

    def resolve_input(self, ctx):
        inputs = types.Object()
        _selection_inputs(inputs, ctx, self.selection)
        return types.Property(inputs, view=types.View(label=self.label))

    def resolve_output(self, ctx):
        title = self.rows.capitalize()
        if c.failed(ctx):
            return c.error_output(ctx)
        outputs = types.Object()
        outputs.str("summary", label="Summary", view=types.MarkdownView())
        outputs.list(self.rows, types.Object(), label=title, view=c.table_view(self.columns))
        return types.Property(outputs, view=types.View(label=title))


class ShowContributors(_SelectionOperator):
    """Shows the training samples credited by the selected generated samples,
    best first, with their scores in the output."""

    name = "show_contributors"
    label = "GMValuator: show contributors"
    description = "Show the training images credited by the selected generated images"
    selection = "generated"
    rows = "contributors"
    columns = (("rank", "Rank"), ("filename", "Training sample"), ("score", "Score (credit)"),
               ("distance", "Distance"), ("id", "ID"))

    @c.friendly_errors
    def execute(self, ctx):
        key = c.run_key(ctx)
        rows = c.gmvnav.contributor_credits(ctx.dataset, key, ctx.selected)
        view = ctx.dataset.select([r["train_id"] for r in rows], ordered=True)
        paths = dict(zip(*view.values(["id", "filepath"])))
        ctx.ops.set_view(view)
        ctx.ops.clear_selected_samples()
        out = [
            {"rank": i, "filename": os.path.basename(paths.get(r["train_id"], "")),
             "score": round(r["credit"], 5), "distance": round(r["distance"], 5),
             "id": r["train_id"]}
            for i, r in enumerate(rows, start=1)
        ]
        return {
            "key": key,
            "num_generated": len(ctx.selected),
            "train_ids": [r["train_id"] for r in rows],
            "scores": [r["credit"] for r in rows],
            "contributors": out[:MAX_ROWS],
            "summary": "%d training samples credited by %d selected generated sample(s) "
            "under run `%s`, best first" % (len(rows), len(ctx.selected), key),
        }


class ShowContributions(_SelectionOperator):
    """Shows the generated samples that list the selected training samples as
    contributors, ordered by the credit those received."""

    name = "show_contributions"
    label = "GMValuator: show contributions"
    description = "Show the generated images the selected training images contributed to"
    selection = "training"
    rows = "contributions"
    columns = (("rank", "Rank"), ("filename", "Generated sample"), ("credit", "Credit given"),
               ("id", "ID"))

    @c.friendly_errors
    def execute(self, ctx):
        key = c.run_key(ctx)
        view = c.gmvnav.contributions_view(ctx.dataset, key, ctx.selected)
        expr = c.gmvnav.credit_expression(key, ctx.selected)
        ids, paths, credit = view.limit(MAX_ROWS).values(["id", "filepath", expr])
        ctx.ops.set_view(view)
        ctx.ops.clear_selected_samples()
        n = view.count()
        return {
            "key": key,
            "num_generated": n,
            "generated_ids": ids,
            "credits": credit,
            "contributions": [
                {"rank": i, "filename": os.path.basename(p), "credit": round(cr, 5), "id": sid}
                for i, (sid, p, cr) in enumerate(zip(ids, paths, credit), start=1)
            ],
            "summary": "%d generated samples list the %d selected training sample(s) "
            "among their contributors under run `%s`, most credit first"
            % (n, len(ctx.selected), key),
        }


class SortByValue(foo.Operator):
    """Shows the training samples sorted by value, optionally hiding (or
    showing only) zero-value samples."""

    @property
    def config(self):
        return c.operator_config(
            "sort_by_value", "GMValuator: sort training samples by value",
            "Most or least valuable training images first; filter zero-value ones")

    def resolve_input(self, ctx):
        inputs = types.Object()
        c.add_run_choice(inputs, ctx)
        c.add_radio(inputs, "order",
                    {"most": "Most valuable first", "least": "Least valuable first"},
                    "most", "Order")
        c.add_radio(inputs, "zero", {"keep": "Keep", "hide": "Hide", "only": "Only these"},
                    "keep", "Zero-value samples",
                    description="Training samples no generated sample credits")
        c.add_radio(inputs, "scope",
                    {"dataset": "All training samples", "view": "Within the current view"},
                    "dataset", "Scope")
        return types.Property(inputs, view=types.View(label="GMValuator: sort by value"))

    @c.friendly_errors
    def execute(self, ctx):
        key = c.run_key(ctx)
        samples = ctx.view if c.param(ctx, "scope", "dataset") == "view" else ctx.dataset
        view = c.gmvnav.ranked_training_view(
            samples, key, reverse=c.param(ctx, "order", "most") != "least",
            zero=c.param(ctx, "zero", "keep"),
        )
        ctx.ops.set_view(view)
        return {"key": key, "count": view.count()}


OPERATORS = [ShowContributors, ShowContributions, SortByValue]
