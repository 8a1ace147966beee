"""The whole GMValuator pipeline as one operator (``compute_values``)."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common as c


class ComputeValues(foo.Operator):
    """Values the training samples from the generated samples: a form over
    :func:`gmv_plugin.compute_values`; its output is the run's report."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="compute_values",
            label="GMValuator: compute values",
            description="Value every training image from the generated images "
            "(embed, recall, re-rank, quality, values)",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        n_train = c.add_sample_set(inputs, ctx, "train", "Training samples", "train")
        c.add_sample_set(inputs, ctx, "generated", "Generated samples", "generated")
        c.add_new_key(inputs, ctx)
        c.add_full_config(inputs, ctx, n_train)
        c.add_delegate(inputs, default=True)
        return types.Property(inputs, view=types.View(label="GMValuator: compute values"))

    def resolve_delegation(self, ctx):
        return c.resolve_delegation(ctx)

    def resolve_run_name(self, ctx):
        return "GMValuator compute_values (key=%s)" % c.param(ctx, "key", "gmv")

    def execute(self, ctx):
        train = c.resolve_samples(ctx, "train", "train")
        generated = c.resolve_samples(ctx, "generated", "generated")
        key = c.param(ctx, "key", "gmv")
        c.gmv.compute_values(
            train,
            generated,
            key=key,
            overwrite=bool(c.param(ctx, "overwrite", False)),
            progress=c.progress(ctx, "GMValuator %r" % key),
            **c.full_kwargs(ctx, len(train)),
        )
        ctx.ops.reload_dataset()
        return dict(key=key, **c.report_result(ctx.dataset, key))

    def resolve_output(self, ctx):
        outputs = types.Object()
        c.report_outputs(outputs)
        return types.Property(outputs, view=types.View(label="GMValuator run report"))


OPERATORS = [ComputeValues]
