"""The whole GMValuator pipeline as one operator (``compute_values``), and
incremental valuation of new generated samples (``update_values``)."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common as c
from . import shards


class ComputeValues(foo.Operator):
    """Values the training samples from the generated samples: a form over
    :func:`gmv_plugin.compute_values`; its output is the run's report."""

    @property
    def config(self):
        return c.operator_config(
            "compute_values",
            "GMValuator: compute values",
            "Value every training image from the generated images "
            "(embed, recall, re-rank, quality, values)",
            delegated=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        c.add_new_run(inputs, ctx)
        c.add_background_note(inputs)
        shards.add_shards(inputs, ctx)
        return types.Property(inputs, view=types.View(label="GMValuator: compute values"))

    def resolve_run_name(self, ctx):
        return "GMValuator compute_values (key=%s)" % c.param(ctx, "key")

    @c.friendly_errors
    def execute(self, ctx):
        train, generated, kwargs = c.new_run_args(ctx)
        key = kwargs["key"]
        if shards.num_shards(ctx) > 1:
            return shards.compute_sharded(ctx, train, generated, kwargs)
        c.gmv.compute_values(
            train, generated, progress=c.progress(ctx, "GMValuator %r" % key), **kwargs
        )
        c.show_run_fields(ctx, key)
        return dict(key=key, **c.report_result(ctx.dataset, key))

    def resolve_output(self, ctx):
        if not c.failed(ctx) and shards.num_shards(ctx) > 1:
            return shards.queued_output(ctx)
        return c.report_output(ctx)


class UpdateValues(foo.Operator):
    """Values newly added generated samples under an existing run, reusing
    its training embeddings and index: a form over
    :func:`gmv_plugin.update_values`; its output is the run's report."""

    @property
    def config(self):
        return c.operator_config(
            "update_values",
            "GMValuator: value new generated samples",
            "Add generated samples to a run: only the new ones are embedded "
            "and scored; training values are updated",
            delegated=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        key = c.add_run_choice(inputs, ctx)
        if key is not None:
            n = c.add_sample_set(inputs, ctx, "generated", "Generated samples to add", "generated")
            if n is not None:
                view = c.resolve_samples(ctx, "generated", "generated")
                new = view.exists("%s_contributors" % key, False).count()
                inputs.view("new_count", types.Notice(
                    label="%d new generated samples to value (%d already valued by %r)"
                    % (new, n - new, key)))
            c.add_background_note(inputs)
        return types.Property(inputs, view=types.View(label="GMValuator: value new generated samples"))

    def resolve_run_name(self, ctx):
        return "GMValuator update_values (key=%s)" % c.param(ctx, "run_key")

    @c.friendly_errors
    def execute(self, ctx):
        key = c.run_key(ctx)
        generated = c.resolve_samples(ctx, "generated", "generated")
        before = c.gmv.load_results(ctx.dataset, key).num_generated
        results = c.gmv.update_values(
            ctx.dataset, key, generated, progress=c.progress(ctx, "GMValuator %r" % key)
        )
        c.show_run_fields(ctx, key)
        return dict(key=key, num_added=results.num_generated - before,
                    **c.report_result(ctx.dataset, key))

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("num_added", label="Generated samples added")
        return c.report_output(ctx, outputs)


OPERATORS = [ComputeValues, UpdateValues] + shards.OPERATORS
