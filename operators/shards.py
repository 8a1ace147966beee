"""Sharded valuation over delegated operations: one operator per shard
(``compute_gmv_shard``) and the reduce (``reduce_gmv_shards``), both queued
by :func:`gmv_plugin.shards.compute_values_sharded` (the ``shards`` field of
the compute_values form), plus the form field itself."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from gmv_plugin import shards as gmvshards

from . import _common as c


def add_shards(inputs, ctx):
    """The number of shards (1: one process)."""
    inputs.int("shards", min=1, default=1, label="Shards (delegated workers)",
               description="Split the generated samples into this many shards, each a separate "
               "delegated operation, then one reduce; every `fiftyone delegated launch` worker "
               "needs the same database, plugins directory and GMV_RUNS_DIR. A shard holds "
               "whole blocks of at least %d generated samples; 1 = one process" % gmvshards.ALIGN)
    n = c.param(ctx, "shards", 1)
    if isinstance(n, int) and n > 1:
        inputs.int("train_shards", min=1, default=1, label="Training shards",
                   description="Also embed the training samples in this many shards (delegated "
                   "operations whose reduce builds the index, then queues the generated shards); "
                   "1 = the training side is computed here, before the shards are queued")


def num_shards(ctx):
    n = c.param(ctx, "shards", 1)
    if not isinstance(n, int) or n < 1:
        raise ValueError("shards must be an integer >= 1; got %r" % (n,))
    return n


def compute_sharded(ctx, train, generated, kwargs):
    """Plans the shards of a new run and queues them with the reduce."""
    train_shards = c.param(ctx, "train_shards", 1)
    if not isinstance(train_shards, int) or train_shards < 1:
        raise ValueError("train_shards must be an integer >= 1; got %r" % (train_shards,))
    plan = gmvshards.compute_values_sharded(
        train, generated, shards=num_shards(ctx), train_shards=train_shards if train_shards > 1 else None,
        progress=c.progress(ctx, "GMValuator %r (planning shards)" % kwargs["key"]), **kwargs)
    return {"key": kwargs["key"], "plan_id": plan["plan_id"], "num_shards": plan["num_shards"],
            "summary": "Queued %d %sshard operations and a reduce (plan %s). Start `fiftyone "
            "delegated launch` workers to run them; *GMValuator: compute one shard* shows their "
            "progress, and the values appear when the reduce has run (reload the page)."
            % (plan["num_shards"], "training " if plan["plan_id"].startswith(gmvshards.TRAIN_PREFIX) else "",
               plan["plan_id"])}


def queued_output(ctx):
    """The output of a compute form that queued shards: what was queued and
    how to follow it (no report yet: the reduce writes the values)."""
    outputs = types.Object()
    outputs.str("key", label="Run")
    outputs.str("plan_id", label="Shard plan")
    outputs.int("num_shards", label="Shards")
    outputs.str("summary", label="Summary", view=types.MarkdownView())
    return types.Property(outputs, view=types.View(label="GMValuator: shards queued"))


def add_plan(inputs, ctx):
    """Run choice, its live plan and shard progress; returns the status or None."""
    key = c.add_run_choice(inputs, ctx)
    if key is None:
        return None
    try:
        status = gmvshards.shard_status(ctx.dataset, key)
    except Exception as e:  # e.g. this process does not see the runs directory
        inputs.view("plan_warning", types.Warning(label=str(e)))
        return None
    if status is None:
        inputs.view("plan_none", types.Warning(
            label="Run %r has no shard plan: compute values with several shards first" % key))
        return None
    inputs.str("plan_id", default=status["plan_id"], required=True, label="Shard plan")
    inputs.view("plan_status", types.Notice(label="%s side, %d shards: done %s, running %s, pending %s" % (
        "Training" if status["side"] == "train" else "Generated", status["num_shards"],
        status["done"], status["running"], status["pending"])))
    return status


class ComputeGMVShard(foo.Operator):
    """Computes one shard of a planned sharded valuation
    (:func:`gmv_plugin.shards.compute_shard`)."""

    @property
    def config(self):
        return c.operator_config(
            "compute_gmv_shard", "GMValuator: compute one shard",
            "Embed, recall, re-rank and score one shard of a sharded valuation "
            "(e.g. retry a failed one)",
            delegated=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        status = add_plan(inputs, ctx)
        if status is not None:
            todo = status["pending"] + status["running"] + status["done"]
            inputs.int("shard", required=True, min=0, max=status["num_shards"] - 1,
                       default=todo[0], label="Shard")
        return types.Property(inputs, view=types.View(label="GMValuator: compute one shard"))

    def resolve_run_name(self, ctx):
        return "GMValuator shard %s (key=%s)" % (c.param(ctx, "shard"), c.param(ctx, "run_key"))

    def execute(self, ctx):
        key = c.param(ctx, "run_key")
        shard = int(c.param(ctx, "shard"))
        try:
            record = gmvshards.compute_shard(
                ctx.dataset, key, c.param(ctx, "plan_id"), shard,
                progress=c.progress(ctx, "GMValuator %r shard %d" % (key, shard)),
            )
        except gmvshards.PlanReducedError as e:  # the reduce computed it already
            return {"shard": shard, "skipped": str(e)}
        return {"shard": shard, "rows": record["rows"], "seconds": record["wall_seconds"],
                "stage_seconds": record["seconds"], "host": record["host"], "pid": record["pid"]}


class ReduceGMVShards(foo.Operator):
    """Waits for the shards of a plan, then computes the values and commits
    the run (:func:`gmv_plugin.shards.reduce_shards`)."""

    @property
    def config(self):
        return c.operator_config(
            "reduce_gmv_shards", "GMValuator: reduce shards",
            "Combine the shards of a sharded valuation and write the values",
            delegated=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        if add_plan(inputs, ctx) is not None:
            inputs.float("wait", default=0, min=0, label="Seconds to wait for running shards")
            inputs.bool("compute_missing", default=False,
                        label="Compute here the shards no worker is computing")
        return types.Property(inputs, view=types.View(label="GMValuator: reduce shards"))

    def resolve_run_name(self, ctx):
        return "GMValuator reduce (key=%s)" % c.param(ctx, "run_key")

    def execute(self, ctx):
        key = c.param(ctx, "run_key")
        gmvshards.reduce_shards(
            ctx.dataset, key, c.param(ctx, "plan_id"), wait=float(c.param(ctx, "wait", 0)),
            compute_missing=bool(c.param(ctx, "compute_missing", False)),
            progress=c.progress(ctx, "GMValuator %r reduce" % key),
        )
        then = c.param(ctx, "then_shards")
        if then:  # a training-side reduce: the generated side's shards come next
            nxt = gmvshards.queue_generated(ctx.dataset, key, int(then),
                                            wait=float(c.param(ctx, "then_wait", 24 * 3600)))
            return {"key": key, "plan_id": nxt["plan_id"], "num_shards": nxt["num_shards"],
                    "shard_operations": nxt["shard_operations"],
                    "reduce_operation": nxt["reduce_operation"],
                    "summary": "Training embeddings stored and index built; queued %d generated-side "
                               "shards and their reduce (plan %s)" % (nxt["num_shards"], nxt["plan_id"])}
        ctx.ops.reload_dataset()
        return dict(key=key, **c.report_result(ctx.dataset, key))  # "summary": the report in markdown

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("key", label="Run")
        outputs.str("summary", label="Summary", view=types.MarkdownView())
        return types.Property(outputs, view=types.View(label="GMValuator: shards reduced"))


OPERATORS = [ComputeGMVShard, ReduceGMVShards]
