"""One operator per pipeline stage, over the library's stage functions.

The embeddings operator can create a run (same form as ``compute_values``,
then :func:`gmv_plugin.init_valuation`) or recompute an existing run's
embeddings; the later stages pick an existing run and the options of their
stage (defaults: the run's current config), which they pass to the stage
function as config updates.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common as c


def _number(name, cast):
    """The config update of numeric form field ``name``."""
    return lambda ctx: {name: cast(c.param(ctx, name))}


def _k_errors(ctx, n_train, defaults):
    """Live errors of the k field: its own, or the run's recall_k bound."""
    errors = c.live_errors(ctx, n_train, defaults)
    if "recall_k" in errors and "k" not in errors:
        errors["k"] = errors["recall_k"]
    return errors


class _StageOperator(foo.Operator):
    """Base class: ``name``, ``label``, ``stage_fn`` (a library stage
    function name), the stage's form and ``updates``."""

    name = None
    label = None
    description = None
    stage_fn = None
    #: ``(form parameter, function of ctx giving config updates)`` pairs; an
    #: update applies only when the form gives its parameter
    updates = ()

    @property
    def config(self):
        return c.operator_config(self.name, self.label, self.description, delegated=True)

    def stage_inputs(self, inputs, ctx, defaults, n_train):
        """Adds the stage's options."""

    def stage_kwargs(self, ctx, n_train):
        """The stage's config updates (see ``updates``)."""
        kwargs = {}
        for name, update in self.updates:
            if c.param(ctx, name) is not None:
                kwargs.update(update(ctx))
        return kwargs

    def resolve_input(self, ctx):
        inputs = types.Object()
        key = c.add_run_choice(inputs, ctx)
        if key is not None:
            n_train = self._n_train(ctx, key)
            self.stage_inputs(inputs, ctx, c.config_defaults(ctx.dataset, key), n_train)
            c.add_background_note(inputs)
        return types.Property(inputs, view=types.View(label=self.label))

    def resolve_run_name(self, ctx):
        return "GMValuator %s (key=%s)" % (self.name, c.param(ctx, "run_key"))

    def _n_train(self, ctx, key):
        cfg = c.gmvruns.get_run_config(ctx.dataset, key)
        return len(c.gmvruns.train_view(ctx.dataset, cfg))

    @c.friendly_errors
    def execute(self, ctx):
        key = c.run_key(ctx)
        return self.run_stage(ctx, key, **self.stage_kwargs(ctx, self._n_train(ctx, key)))

    def run_stage(self, ctx, key, **kwargs):
        """Runs the stage on run ``key`` with config updates ``kwargs``."""
        results = getattr(c.gmv, self.stage_fn)(
            ctx.dataset, key=key, progress=c.progress(ctx, "%s %r" % (self.label, key)), **kwargs
        )
        return self.result(ctx, key, results)

    def result(self, ctx, key, results):
        return {
            "key": key,
            "timings": {k: float(v) for k, v in results.timings.items()},
            "summary": "Stage done on run `%s` in %.2f s; next: %s"
            % (key, results.timings.get(self.stage, 0.0), self.next_step),
        }

    stage = None
    next_step = ""

    def resolve_output(self, ctx):
        if c.failed(ctx):
            return c.error_output(ctx)
        outputs = types.Object()
        outputs.str("summary", label="Summary", view=types.MarkdownView())
        outputs.obj("timings", label="Stage timings (s)", view=types.JSONView())
        return types.Property(outputs, view=types.View(label=self.label))


class ComputeGMVEmbeddings(_StageOperator):
    """Creates a run (or picks one) and embeds its training and generated
    samples."""

    name = "compute_gmv_embeddings"
    label = "GMValuator: 1. compute embeddings"
    description = "Create a valuation run and embed its images (first stage)"
    stage_fn = "compute_embeddings"
    stage = "embed"
    next_step = "build the index"
    updates = (("encoder", c.encoder_kwargs),)

    def resolve_input(self, ctx):
        inputs = types.Object()
        has_runs = bool(c.gmvruns.list_runs(ctx.dataset))
        c.add_radio(inputs, "mode", {"new": "New run", "existing": "Existing run"},
                    "existing" if has_runs else "new", "Run")
        if c.param(ctx, "mode", "existing" if has_runs else "new") == "existing":
            key = c.add_run_choice(inputs, ctx)
            if key is not None:
                c.add_encoder(inputs, ctx, c.config_defaults(ctx.dataset, key))
        else:
            c.add_new_run(inputs, ctx)
        c.add_background_note(inputs)
        return types.Property(inputs, view=types.View(label=self.label))

    def resolve_run_name(self, ctx):
        key = c.param(ctx, "key" if c.param(ctx, "mode") == "new" else "run_key")
        return "GMValuator %s (key=%s)" % (self.name, key)

    @c.friendly_errors
    def execute(self, ctx):
        mode = c.param(ctx, "mode")
        if mode is None:
            mode = "existing" if c.param(ctx, "run_key") else "new"
        if mode == "existing":
            return super().execute(ctx)
        train, generated, kwargs = c.new_run_args(ctx)
        c.gmv.init_valuation(train, generated, **kwargs)
        return self.run_stage(ctx, kwargs["key"])


class BuildGMVIndex(_StageOperator):
    """Builds the recall index over a run's training embeddings."""

    name = "build_gmv_index"
    label = "GMValuator: 2. build recall index"
    description = "Build the FAISS index (flat, PQ, IVF-PQ) over training embeddings"
    stage_fn = "build_index"
    stage = "index"
    next_step = "recall contributors"
    updates = (("index", c.index_kwargs),)

    def stage_inputs(self, inputs, ctx, defaults, n_train):
        c.add_index(inputs, ctx, n_train, defaults)


class RecallContributors(_StageOperator):
    """Recalls ``recall_k`` candidate contributors per generated sample."""

    name = "recall_contributors"
    label = "GMValuator: 3. recall candidates"
    description = "Retrieve candidate training images for each generated image"
    stage_fn = "recall_contributors"
    stage = "recall"
    next_step = "re-rank"
    updates = (("recall_k", _number("recall_k", c._int)),)

    def stage_inputs(self, inputs, ctx, defaults, n_train):
        c.add_recall_k(inputs, ctx, n_train, defaults, c.live_errors(ctx, n_train, defaults))


class RerankContributors(_StageOperator):
    """Re-ranks the candidates with a finer distance and keeps the top k."""

    name = "rerank_contributors"
    label = "GMValuator: 4. re-rank contributors"
    description = "Re-rank candidates (L2, LPIPS, DreamSim) and keep the top k"
    stage_fn = "rerank_contributors"
    stage = "rerank"
    next_step = "score quality"
    updates = (("rerank", c.rerank_kwargs), ("k", _number("k", c._int)))

    def stage_inputs(self, inputs, ctx, defaults, n_train):
        c.add_rerank(inputs, ctx, defaults)
        c.add_k(inputs, ctx, n_train, defaults, _k_errors(ctx, n_train, defaults))


class ScoreQuality(_StageOperator):
    """Scores the quality q_j of the generated samples."""

    name = "score_quality"
    label = "GMValuator: 5. score quality"
    description = "Quality of each generated image (realism, MANIQA, pyiqa)"
    stage_fn = "score_quality"
    stage = "quality"
    next_step = "assign values"
    updates = (("quality", c.quality_kwargs),)

    def stage_inputs(self, inputs, ctx, defaults, n_train):
        c.add_quality(inputs, ctx, defaults)


class AssignValues(_StageOperator):
    """Computes the values (Eq. 3/4) and writes the run's fields; its output
    is the run's report."""

    name = "assign_values"
    label = "GMValuator: 6. assign values"
    description = "Compute Eq. 3/4 and write the value and contributor fields"
    stage_fn = "assign_values"
    stage = "values"
    updates = (("temperature", c.temperature_kwargs), ("auto_temperature", c.temperature_kwargs))

    def stage_inputs(self, inputs, ctx, defaults, n_train):
        c.add_temperature(inputs, ctx, defaults, c.live_errors(ctx, n_train, defaults))

    def result(self, ctx, key, results):
        c.show_run_fields(ctx, key)
        return dict(key=key, **c.report_result(ctx.dataset, key))

    def resolve_output(self, ctx):
        return c.report_output(ctx, title=self.label)


OPERATORS = [
    ComputeGMVEmbeddings,
    BuildGMVIndex,
    RecallContributors,
    RerankContributors,
    ScoreQuality,
    AssignValues,
]
