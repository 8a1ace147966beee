"""The GMValuator panel: a curator's workspace in the App's grid.

Choose a run (the latest by default) and see its summary and stage timings,
the distribution of the non-zero values (click a bar or box-select bars: the
grid shows exactly those training samples), the most and least valuable
training samples (least among the non-zero values; the zero-value ones are a
button), and for the samples selected in the grid: the contributors of
generated samples in rank order with credit and distance, or what training
samples contributed to. Buttons start the next steps. All data comes from
:mod:`gmv_plugin.panel_data`.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _common as c

PLUGIN = "@gmvaluator/gmv"
N_ROWS = 10
REVIEW_FRACTION = 0.1


def _fmt(x, digits=4):
    return "n/a" if x is None else "%.*g" % (digits, x)


def _table(columns, on_click=None, action=None):
    t = types.TableView(on_click_row=on_click)
    for key, label in columns:
        t.add_column(key, label=label)
    if action is not None:
        t.add_row_action("open", action, label="Open", icon="open_in_new", tooltip="Open sample")
    return t


_SAMPLE_COLS = (("rank", "#"), ("filename", "Training sample"), ("value", "Value"),
                ("hits", "Credited by"))
_CONTRIB_COLS = (("rank", "Rank"), ("filename", "Training sample"), ("credit", "Credit"),
                 ("distance", "Distance"))
_CONTRIBUTION_COLS = (("rank", "#"), ("filename", "Generated sample"), ("credit", "Credit given"))


class GMValuatorPanel(foo.Panel):
    """The GMValuator workspace (see the module docstring)."""

    @property
    def config(self):
        return foo.PanelConfig(
            name="gmv_panel",
            label="GMValuator",
            surfaces="grid",
            icon="insights",
            allow_multiple=False,
            help_markdown="Values of the training samples of a GMValuator run: click a bar "
            "to see those samples, select generated samples to see their contributors.",
        )

    # ---------------------------------------------------------- lifecycle

    def on_load(self, ctx):
        self._load(ctx, ctx.panel.state.run_key)

    def on_change_dataset(self, ctx):
        self._load(ctx, None)

    def on_change_selected(self, ctx):
        key = ctx.panel.state.run_key
        if key in c.gmvruns.list_runs(ctx.dataset):
            self._selection(ctx, key)

    def on_change_run(self, ctx):
        self._load(ctx, ctx.params.get("value"))

    def refresh(self, ctx):
        """Reloads the run list and the dataset (fields of runs finished in the
        background appear in the sidebar)."""
        ctx.ops.reload_dataset()
        self._load(ctx, ctx.panel.state.run_key)

    # ---------------------------------------------------------- data

    def _load(self, ctx, key):
        """Loads run ``key`` (default: the most recent) into state and data."""
        keys = c.gmvpanel.runs_by_recency(ctx.dataset)
        if key not in keys:
            key = keys[0] if keys else None
        state = ctx.panel.state
        state.run_keys = keys
        state.run_key = key
        state.grid_note = None
        scheduled = self._scheduled(ctx)
        state.num_scheduled = len(scheduled)
        ctx.panel.data.scheduled = scheduled
        if key is None:
            return
        s = c.gmvpanel.run_summary(ctx.dataset, key)
        hist = c.gmvpanel.value_histogram(ctx.dataset, key)
        ext = c.gmvpanel.extremes(ctx.dataset, key, n=N_ROWS)
        state.edges = hist["edges"]
        state.zero_count = hist["zero_count"]
        state.summary_md = self._summary_md(s, hist)
        state.top_ids = [r["id"] for r in ext["top"]]
        state.least_ids = [r["id"] for r in ext["least"]]
        ctx.panel.data.hist = [self._trace(hist, key)]
        ctx.panel.data.top = self._sample_rows(ext["top"])
        ctx.panel.data.least = self._sample_rows(ext["least"])
        ctx.panel.data.timings = [
            {"stage": k, "seconds": round(v, 3)} for k, v in s["timings"].items()
        ]
        self._selection(ctx, key)

    @staticmethod
    def _scheduled(ctx):
        """This dataset's scheduled (delegated) GMValuator runs, newest first."""
        from fiftyone.operators.delegated import DelegatedOperationService

        try:
            ops = DelegatedOperationService().list_operations(dataset_name=ctx.dataset.name)
        except Exception:  # no delegated-operation store: nothing to show
            return []
        ops = [o for o in ops if str(o.operator).startswith(PLUGIN + "/")]
        ops.sort(key=lambda o: str(o.queued_at or ""), reverse=True)
        return [
            {"id": str(o.id), "operation": o.label or str(o.operator).rsplit("/", 1)[-1],
             "state": str(o.run_state),
             "queued": o.queued_at.isoformat(sep=" ", timespec="seconds") if o.queued_at else ""}
            for o in ops[:5]
        ]

    @staticmethod
    def _summary_md(s, hist):
        lines = [
            "**%s** training samples valued from **%s** generated samples: **%d** have a "
            "non-zero value, **%d** have value 0%s." % (
                s["num_train"], s["num_generated"], hist["nonzero_count"], hist["zero_count"],
                ", %d have none" % hist["unvalued"] if hist["unvalued"] else ""),
            "",
            "Encoder %s, index %s, re-ranker %s, quality %s, k = %s, temperature %s; "
            "created %s; total %s s." % (
                c.code(s["encoder"]), c.code(s["index"]), c.code(s["rerank"]), c.code(s["quality"]),
                s["k"], _fmt(s["temperature_used"]) if s["temperature"] == "auto" and
                s["temperature_used"] else s["temperature"], s["created"],
                _fmt(s["total_seconds"], 3)),
        ]
        return "\n".join(lines)

    @staticmethod
    def _trace(hist, key):
        edges, counts = hist["edges"], hist["counts"]
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
        return {
            "type": "bar",
            "x": centres,
            "y": counts,
            "width": widths,
            "ids": [str(i) for i in range(len(counts))],
            "customdata": [[a, b] for a, b in zip(edges[:-1], edges[1:])],
            "hovertemplate": "%{customdata[0]:.4g} to %{customdata[1]:.4g}: "
            "%{y} samples<extra></extra>",
            "marker": {"color": "#ff6d04"},
            "name": "%s_value" % key,
        }

    @staticmethod
    def _sample_rows(rows):
        return [
            {"rank": i, "filename": r["filename"], "value": _fmt(r["value"], 5), "hits": r["hits"]}
            for i, r in enumerate(rows, start=1)
        ]

    def _selection(self, ctx, key):
        """The contributors / contributions of the App's selected samples."""
        state = ctx.panel.state
        kinds = c.gmvpanel.split_selection(ctx.dataset, key, ctx.selected)
        state.sel_generated = kinds["generated"]
        state.sel_training = kinds["training"]
        state.sel_other = len(kinds["other"])
        state.contrib_ids = []
        state.contribution_ids = []
        if kinds["generated"]:
            rows = c.gmvpanel.contributor_rows(ctx.dataset, key, kinds["generated"])
            state.contrib_ids = [r["id"] for r in rows]
            ctx.panel.data.contributors = [
                {"rank": r["rank"], "filename": r["filename"], "credit": "%.6g" % r["credit"],
                 "distance": "%.6g" % r["distance"]} for r in rows
            ]
        if kinds["training"]:
            rows = c.gmvpanel.contribution_rows(ctx.dataset, key, kinds["training"])
            state.contribution_ids = [r["id"] for r in rows]
            ctx.panel.data.contributions = [
                {"rank": r["rank"], "filename": r["filename"], "credit": "%.6g" % r["credit"]}
                for r in rows
            ]

    # ---------------------------------------------------------- events

    def _show(self, ctx, view, note):
        ctx.ops.set_view(view)
        ctx.panel.state.grid_note = note

    def on_hist_click(self, ctx):
        idx = ctx.params.get("idx")
        if idx is None and ctx.params.get("id") is not None:
            idx = int(ctx.params["id"])
        if idx is not None:
            self._show_bins(ctx, [int(idx)])

    def on_hist_select(self, ctx):
        bins = [d.get("idx") for d in ctx.params.get("data") or [] if d.get("idx") is not None]
        if bins:  # every click also sends an empty selection: ignore it
            self._show_bins(ctx, bins)

    def _show_bins(self, ctx, bins):
        key, edges = ctx.panel.state.run_key, ctx.panel.state.edges
        view = c.gmvpanel.bins_view(ctx.dataset, key, edges, bins)
        lo, hi = edges[min(bins)], edges[max(bins) + 1]
        self._show(ctx, view, "Grid: the %d training samples with %s_value from %s to %s "
                   "(%d bar%s), most valuable first" % (
                       view.count(), key, _fmt(lo), _fmt(hi), len(set(bins)),
                       "s" if len(set(bins)) > 1 else ""))

    def show_zero(self, ctx):
        key = ctx.panel.state.run_key
        view = c.gmvpanel.zero_view(ctx.dataset, key)
        self._show(ctx, view, "Grid: the %d training samples with value 0" % view.count())

    def show_top(self, ctx):
        key = ctx.panel.state.run_key
        self._show(ctx, c.gmvnav.ranked_training_view(ctx.dataset, key),
                   "Grid: training samples, most valuable first")

    def show_least(self, ctx):
        key = ctx.panel.state.run_key
        self._show(ctx, c.gmvnav.ranked_training_view(ctx.dataset, key, reverse=False,
                                                      zero="hide"),
                   "Grid: training samples with a non-zero value, least valuable first")

    def show_contributors(self, ctx):
        ids = ctx.panel.state.contrib_ids or []
        if ids:
            self._show(ctx, ctx.dataset.select(ids, ordered=True),
                       "Grid: the %d contributors of the selected generated sample(s), "
                       "in rank order" % len(ids))

    def show_contributions(self, ctx):
        ids = ctx.panel.state.contribution_ids or []
        if ids:
            self._show(ctx, ctx.dataset.select(ids, ordered=True),
                       "Grid: the %d generated samples crediting the selected training "
                       "sample(s), most credit first" % len(ids))

    def reset_view(self, ctx):
        ctx.ops.clear_view()
        ctx.panel.state.grid_note = None

    def _open(self, ctx, ids_name):
        ids = ctx.panel.state.get(ids_name) or []
        row = ctx.params.get("row")
        if row is not None and 0 <= int(row) < len(ids):
            ctx.ops.open_sample(id=ids[int(row)])

    def open_top(self, ctx):
        self._open(ctx, "top_ids")

    def open_least(self, ctx):
        self._open(ctx, "least_ids")

    def open_contributor(self, ctx):
        self._open(ctx, "contrib_ids")

    def open_contribution(self, ctx):
        self._open(ctx, "contribution_ids")

    def tag_for_review(self, ctx):
        """Tags the lowest-valued 10% of the training samples (zeros first)
        ``{key}_review`` and shows them."""
        key = ctx.panel.state.run_key
        value = "%s_value" % key
        train = c.gmvruns.train_view(ctx.dataset, c.gmvruns.get_run_config(ctx.dataset, key))
        n = max(1, int(round(REVIEW_FRACTION * len(train))))
        view = train.exists(value).sort_by(value).limit(n)
        tag = "%s_review" % key
        view.tag_samples(tag)
        ctx.ops.reload_dataset()
        self._show(ctx, ctx.dataset.match_tags(tag).sort_by(value),
                   "Grid: the %d lowest-valued training samples, tagged %s for review"
                   % (n, tag))

    # ---------------------------------------------------------- layout

    def render(self, ctx):
        panel = types.Object()
        state = ctx.panel.state
        key = state.run_key
        if key is None:
            panel.md("**GMValuator**: no valuation run on this dataset yet.", name="intro")
            steps = panel.h_stack("steps", gap=1)
            steps.btn("compute", label="Compute values", icon="play_arrow", variant="contained",
                      on_click=PLUGIN + "/compute_values", prompt=True)
            steps.btn("refresh", label="Refresh", icon="refresh", on_click=self.refresh)
            self._render_scheduled(panel, state)
            return types.Property(panel)

        choices = types.DropdownView()
        for k in state.run_keys or [key]:
            choices.add_choice(k, label=k)
        head = panel.h_stack("head", gap=2, align_y="center")
        head.enum("run_key", choices.values(), default=key, label="Run", view=choices,
                  on_change=self.on_change_run)
        head.btn("refresh", label="Refresh", icon="refresh", on_click=self.refresh)

        panel.md(state.summary_md or "", name="summary")

        panel.plot(
            "hist",
            layout={
                "title": {"text": "Non-zero values: click a bar or drag across bars "
                          "to show those training samples", "font": {"size": 13}},
                "margin": {"t": 40, "l": 50, "r": 10, "b": 40},
                "xaxis": {"title": {"text": "%s_value" % key}},
                "yaxis": {"title": {"text": "training samples"}},
                "bargap": 0.05,
                "dragmode": "select",
                "selectdirection": "h",
                "showlegend": False,
            },
            config={"displayModeBar": False},
            on_click=self.on_hist_click,
            on_selected=self.on_hist_select,
            height=280,
        )
        grid = panel.h_stack("grid_btns", gap=1)
        if state.zero_count:
            grid.btn("zero", label="Value 0 (%d)" % state.zero_count, icon="filter_alt",
                     on_click=self.show_zero)
        grid.btn("most", label="Most valuable", icon="arrow_downward", on_click=self.show_top)
        grid.btn("least", label="Least valuable", icon="arrow_upward", on_click=self.show_least)
        grid.btn("reset", label="Reset view", icon="restart_alt", on_click=self.reset_view)
        if state.grid_note:
            panel.md(state.grid_note, name="grid_note")

        self._render_selection(panel, state)

        panel.list("top", types.Object(), label="Most valuable training samples",
                   view=_table(_SAMPLE_COLS, self.open_top, self.open_top))
        panel.list("least", types.Object(),
                   label="Least valuable among the non-zero values "
                   "(%d more have value 0)" % (state.zero_count or 0),
                   view=_table(_SAMPLE_COLS, self.open_least, self.open_least))

        panel.md("**Next steps**", name="next_title")
        steps = panel.h_stack("steps", gap=1)
        steps.btn("compute", label="Compute values", icon="play_arrow",
                  on_click=PLUGIN + "/compute_values", prompt=True)
        steps.btn("update", label="Value new generated samples", icon="add",
                  on_click=PLUGIN + "/update_values", prompt=True)
        steps.btn("evaluate", label="Evaluate", icon="fact_check",
                  on_click=PLUGIN + "/evaluate_valuation", prompt=True)
        steps.btn("review", label="Tag lowest 10% for review", icon="label",
                  on_click=self.tag_for_review)
        panel.list("timings", types.Object(), label="Stage timings (s)",
                   view=_table((("stage", "Stage"), ("seconds", "Seconds"))))
        self._render_scheduled(panel, state)
        return types.Property(panel)

    @staticmethod
    def _render_scheduled(panel, state):
        if state.num_scheduled:
            panel.list("scheduled", types.Object(),
                       label="Scheduled runs (executed by `fiftyone delegated launch`; "
                       "press Refresh when one has completed)",
                       view=_table((("state", "State"), ("id", "Id"), ("operation", "Operation"),
                                    ("queued", "Queued"))))

    def _render_selection(self, panel, state):
        gen, train = state.sel_generated or [], state.sel_training or []
        if not gen and not train:
            panel.md("*Select generated samples in the grid to see their contributors, or "
                     "training samples to see what they contributed to.*", name="sel_help")
        if gen:
            panel.list("contributors", types.Object(),
                       label="Contributors of the %d selected generated sample(s), in rank "
                       "order (click a row to open it)" % len(gen),
                       view=_table(_CONTRIB_COLS, self.open_contributor, self.open_contributor))
            panel.btn("show_contributors", label="Show these contributors in the grid",
                      icon="grid_view", on_click=self.show_contributors)
        if train:
            panel.list("contributions", types.Object(),
                       label="Generated samples the %d selected training sample(s) contributed "
                       "to, by credit" % len(train),
                       view=_table(_CONTRIBUTION_COLS, self.open_contribution,
                                   self.open_contribution))
            panel.btn("show_contributions", label="Show them in the grid", icon="grid_view",
                      on_click=self.show_contributions)
        if state.sel_other:
            panel.md("*%d selected sample(s) are not part of this run.*" % state.sel_other,
                     name="sel_other")


OPERATORS = [GMValuatorPanel]
