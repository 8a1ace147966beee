"""FiftyOne operator that evaluates a GMValuator run (criteria C1-C4, membership).

A thin form over :mod:`gmv_plugin.evaluation`: pick a run, a criterion and the
fields it needs; the result comes back as a dict (and a markdown summary).
"""


import fiftyone.operators as foo
import fiftyone.operators.types as types

from gmv_plugin import evaluation as ev  # importable: see operators/__init__.py
from gmv_plugin import panel_data as gmvpanel

from . import _common as common

_CRITERIA = {
    "C1": "C1 identical class",
    "C2": "C2 identical attributes",
    "C3": "C3 data cleansing",
    "C4": "C4 efficiency",
    "membership": "Membership (members vs held-out)",
}
_DEFAULT_KS = {"C1": "30,50,100", "C2": "5,10,15"}


def _parse_ks(ks):
    if ks is None or ks == "":
        raise ValueError("Give at least one k, e.g. '30,50,100'")
    if isinstance(ks, str):
        try:
            return [int(k) for k in ks.replace(" ", "").split(",") if k]
        except ValueError:
            raise ValueError(f"ks must be comma-separated integers; got {ks!r}")
    return [int(k) for k in ks]


def _jsonable(obj):
    """String dict keys (k values are ints) so results store as JSON/BSON."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _fmt(x):
    return "n/a" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))


def _summary(res):
    """A short markdown rendering of a result dict."""
    c = res["criterion"]
    lines = [f"**{_CRITERIA.get(c, c)}** on run `{res['key']}`", ""]
    if c == "C1":
        lines += [f"- top-{k}: {100 * v:.2f}%" for k, v in res["identical_class"].items()]
        lines.append(f"- generated samples evaluated: {res['num_generated']}")
    elif c == "C2":
        for f, r in res["identical_attributes"].items():
            lines.append(
                f"- `{f}`: " + ", ".join(f"top-{k} {100 * v:.2f}%" for k, v in r.items())
            )
    elif c == "C3":
        p = res["percentiles"]
        lines += [
            f"- {res['num_corrupted']} corrupted of {res['num_train']} training samples",
            f"- value percentiles: min {p['min']:.2f}, median {p['median']:.2f}, "
            f"max {p['max']:.2f}",
        ]
        lines += [
            f"- share in the lowest {100 * float(q):g}%: {100 * s:.1f}%"
            for q, s in res["share_in_lowest"].items()
        ]
        lines.append(f"- ROC AUC (low value detects corruption): {res['auc']:.4f}")
    elif c == "C4":
        lines += [f"- {s}: {t:.3f} s" for s, t in res["stages"].items()]
        lines.append(
            f"- total {res['total_s']:.3f} s, {_fmt(res['per_generated_ms'])} ms per "
            f"generated sample ({res['num_generated']} generated)"
        )
    elif c == "membership":
        lines += [
            f"- members: {res['num_members']} (mean value {_fmt(res['mean_members'])}); "
            f"non-members: {res['num_non_members']} (mean {_fmt(res['mean_non_members'])})",
            f"- one-sided Welch t = {_fmt(res['t'])}, p = {_fmt(res['p'])}, "
            f"AUC = {_fmt(res['auc'])}",
        ]
    return "\n".join(lines)


class EvaluateValuation(foo.Operator):
    """Evaluate a GMValuator run with one of the paper's criteria."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="evaluate_valuation",
            label="GMValuator: evaluate a valuation run",
            description=common.described("C1/C2 identical class/attributes, C3 cleansing, "
                                         "C4 efficiency, membership test"),
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=False,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        ds = ctx.dataset
        keys = gmvpanel.runs_by_recency(ds) if ds is not None else []
        if not keys:
            inputs.view(
                "none",
                types.Warning(label="No GMValuator run on this dataset: compute values first"),
            )
            return types.Property(inputs)

        run_choices = types.DropdownView()
        for k in keys:
            run_choices.add_choice(k, label=k)
        inputs.enum("run_key", run_choices.values(), required=True, label="Run",
                    default=keys[0], view=run_choices)

        crit = types.RadioGroup()
        for c, label in _CRITERIA.items():
            crit.add_choice(c, label=label)
        inputs.enum("criterion", crit.values(), required=True, label="Criterion",
                    default="C1", view=crit)
        criterion = ctx.params.get("criterion", "C1")

        labels = ev.label_fields(ds)
        groups = sorted(set(ds.distinct("tags")) | set(ev.boolean_fields(ds)))

        def dropdown(name, label, choices, required=True, description=None, default=None):
            view = types.DropdownView()
            for c in choices:
                view.add_choice(c, label=c)
            inputs.enum(name, view.values(), required=required, label=label,
                        description=description, view=view, default=default)

        if criterion in ("C1", "C2"):
            inputs.str("ks", default=_DEFAULT_KS[criterion], required=True,
                       label="k values", description="comma-separated, e.g. 30,50,100")
        if criterion == "C1":
            dropdown("label_field", "Label field", labels,
                     description="label of the generated samples",
                     default="ground_truth" if "ground_truth" in labels else None)
            dropdown("train_label_field", "Training label field", labels, required=False,
                     description="only if the training samples use another field")
        elif criterion == "C2":
            inputs.list("fields", types.String(), required=True, label="Attribute fields",
                        view=types.AutocompleteView(choices=[types.Choice(f) for f in labels]))
        elif criterion == "C3":
            dropdown("corrupted", "Corrupted samples (tag or boolean field)", groups)
        elif criterion == "membership":
            dropdown("members", "Members (tag or boolean field)", groups)
            dropdown("non_members", "Held-out non-members (tag or boolean field)", groups)
        return types.Property(inputs, view=types.View(label="Evaluate a valuation run"))

    @common.friendly_errors
    def execute(self, ctx):
        p = ctx.params
        criterion = p.get("criterion", "C1")
        key = p.get("run_key")
        kwargs = {}
        if criterion == "C1":
            kwargs = dict(label_field=p.get("label_field"), ks=_parse_ks(p.get("ks", "30,50,100")),
                          train_label_field=p.get("train_label_field") or None)
        elif criterion == "C2":
            kwargs = dict(fields=p.get("fields") or [], ks=_parse_ks(p.get("ks", "5,10,15")))
        elif criterion == "C3":
            kwargs = dict(corrupted=p.get("corrupted"))
        elif criterion == "membership":
            kwargs = dict(members=p.get("members"), non_members=p.get("non_members"))
        res = ev.evaluate(ctx.dataset, key, criterion, **kwargs)
        return {"summary": _summary(res), "result": _jsonable(res)}

    def resolve_output(self, ctx):
        if common.failed(ctx):
            return common.error_output(ctx)
        outputs = types.Object()
        outputs.str("summary", label="Summary", view=types.MarkdownView())
        outputs.obj("result", label="Result", view=types.JSONView())
        return types.Property(outputs, view=types.View(label="Valuation evaluation"))


OPERATORS = [EvaluateValuation]
