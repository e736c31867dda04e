"""Negative differentiation: the follow-up's sign-specific ablation of the Wasserstein neurons (Kong,
Ning, Adler, Shavit, ICLR 2026; PAPER.md §8) against random and perplexity-matched controls, with
minimal-pair grammar, Δ surprisal by token class and the depth profile."""
from __future__ import annotations

import html
from typing import TYPE_CHECKING

import ipywidgets as widgets
import pandas as pd

from wnb import plots
from wnb.app.budgets import SCOPES
from wnb.app.limits import BOUNDS, bounded
from wnb.app.session import Session
from wnb.compression.clamp import SIDE_LABELS, SIDES, check_side
from wnb.errors import WnbError
from wnb.experiments.sign_statistics import study_words
from wnb.scoring.stability import stability_summary, stability_words
from wnb.widgets.links import csv_link, png_link, slug
from wnb.widgets.messages import cost_message
from wnb.widgets.negative_options import StudyOptions
from wnb.widgets.panel import CSS, SessionPanel

if TYPE_CHECKING:
    from wnb.widgets.settings import Settings

# What the tab's layers box offers: the follow-up ablates the first FFN projection of every block.
NEGATIVE_SCOPES = {"all": "the first FFN layer of every block", "block": SCOPES["block"], "layer": SCOPES["layer"]}
# Per budget: random-control seeds and agreement pairs per construction. On the bundled model every
# perplexity pass and every pair scoring costs seconds on a laptop CPU, so the small budget keeps one
# random seed and 5 pairs per construction (30 pairs) to stay near a minute; the depth profile (two
# perplexity passes per layer) has its own button.
APP_DEFAULTS = {"small": (1, 5), "medium": (3, 20), "large": (3, 50)}
STEPS = ("WD of every neuron", "study: dense, Wasserstein and controls", "Δ surprisal by token class")
HEAD = ("<p>The follow-up paper (Kong et al., <i>Negative Pre-activations Differentiate Syntax</i>, ICLR "
        "2026) zeroes only the <b>negative</b> outputs of the Wasserstein neurons of each block's first FFN "
        "projection (gate_proj / dense_h_to_4h): the top 1% by WD over all calibration tokens (optionally without "
        "the first token of every window, an attention sink). Weights are untouched; forward hooks clamp the "
        "outputs and are removed afterwards. Beside the set: how many of its neurons two disjoint halves of the "
        "calibration tokens pick alike (its stability).</p>"
        "<p>Controls: random neurons of the same count per layer (one set per seed); a <b>perplexity-matched</b> "
        "set of non-Wasserstein neurons (from outside the top 10% by WD, or the bottom of the ranking as the "
        "authors' code), its count found by bisection so that perplexity comes within 2% of the Wasserstein "
        "ablation's, its WD ranks in the table; the <b>mirror</b>: the same Wasserstein neurons with the other side "
        "clamped (positive outputs zeroed, y → min(y, 0)), so that its <i>W − this</i> columns test whether the "
        "effect is specific to the sign; and optional twins of each Wasserstein neuron (closest output "
        "variance, tail on the same tokens, tail at the same positions). Grammar: the minimal-pair sets chosen "
        "(<i>pairs each</i> per phenomenon or construction): wnb's six hand-made agreement templates, Marvin & "
        "Linzen's TSE constructions (wnb's generator and vocabulary), wnb's knowledge pairs, or BLiMP (downloaded: "
        "needs a network); TSE scored by the mean log-probability per token as the follow-up, the others by the "
        "sum, after wnb's first-token rule unless the authors' is chosen; every table says which. The study's "
        "windows are the longest the model allows within the budget. Perplexity is measured on held-out windows of "
        "the calibration corpus (disjoint from the calibration ones) or, in <i>held-out text</i>, of a text of its "
        "own: WikiText-2 validation as the follow-up (downloaded: needs a network); the Wasserstein set stays the "
        "same. The small budget starts with one random seed "
        "and 5 pairs per construction (about a minute on the bundled model); the medium budget with 3 seeds and "
        "20 pairs. The depth profile (two perplexity passes per layer, the pairs scored at each) has its own "
        "button. Results are cached.</p>")


def _span(value: float, low: float, high: float, scale: float = 1.0, digits: int = 3, sign: str = "+") -> str:
    if pd.isna(value):
        return ""
    return f"{scale * value:{sign}.{digits}f} [{scale * low:{sign}.{digits}f}, {scale * high:{sign}.{digits}f}]"


def study_view(study: pd.DataFrame) -> pd.DataFrame:
    """The study as the tab shows it: one row per ablation, each number with its interval, each comparison a
    paired difference with its verdict (the full table is the CSV download)."""
    out = pd.DataFrame({
        "selection": [s if pd.isna(seed) else f"{s} {seed}" for s, seed in zip(study["selection"], study["seed"])],
        "neurons": study["n_neurons"].astype(int),
        "WD ranks (min / median / max)": [
            "" if pd.isna(low) else f"{int(low)} / {median:g} / {int(high)}"
            for low, median, high in study[["wd_rank_min", "wd_rank_median", "wd_rank_max"]].to_numpy(float)]
        if "wd_rank_min" in study else "",
        "perplexity [95%]": [_span(*v, sign="") for v in study[["perplexity", "ppl_low", "ppl_high"]].to_numpy()]})
    columns = [("Δ perplexity", "delta_perplexity", "delta_ppl", "nll_verdict", 1.0, 3),
               ("W − this, Δ perplexity", "w_delta_perplexity", "w_delta_ppl", "w_nll_verdict", 1.0, 3)]
    if "accuracy" in study:
        out["accuracy % [95%]"] = [_span(*v, scale=100, digits=1, sign="")
                                   for v in study[["accuracy", "acc_low", "acc_high"]].to_numpy()]
        columns += [("Δ accuracy, points", "delta_accuracy", "delta_acc", "acc_verdict", 100.0, 1),
                    ("W − this, Δ accuracy", "w_delta_accuracy", "w_delta_acc", "w_acc_verdict", 100.0, 1)]
    for title, column, stem, verdict, scale, digits in columns:
        if column not in study:
            continue
        out[title] = [_span(*v, scale=scale, digits=digits)
                      for v in study[[column, f"{stem}_low", f"{stem}_high"]].to_numpy(float)]
        out[f"{title}: verdict"] = study[verdict].fillna("").to_numpy()
    for name, column in (("McNemar p vs dense", "mcnemar_p"), ("McNemar p, W vs this", "w_mcnemar_p")):
        if column in study:
            out[name] = [f"{p:.2g}" if pd.notna(p) else "" for p in study[column]]
    if "perplexity_seeds_mean" in study:
        out["perplexity over seeds (mean ± sd)"] = [
            "" if pd.isna(m) else f"{m:.3f} ± {sd:.3f}" if pd.notna(sd) else f"{m:.3f} (one seed)"
            for m, sd in zip(study["perplexity_seeds_mean"], study["perplexity_seeds_sd"])]
    return out


def negative_layers(session: Session, scope: str, layer: str) -> list[str]:
    """The layers the tab ablates: the first FFN projection of every block (``"all"``), the FFN layers of
    ``layer``'s block, or ``layer`` alone."""
    if scope == "all":
        return list(session._layer_names()["first_ffn"]) or session.ffn_layers()
    return session.scope_layers(scope, layer)


class NegativeView(SessionPanel):
    """Zero only the negative (or positive, or all) outputs of the top ``fraction`` of each layer's
    neurons by WD, and compare held-out perplexity and minimal-pair accuracy with the dense model, random
    neurons of the same count and a perplexity-matched set of non-Wasserstein neurons; Δ surprisal per
    token class and the ablation one layer at a time and cumulatively. Nothing runs until Run is pressed."""

    def __init__(self, settings: Settings, lazy: bool = True):
        self.settings = settings
        self.layer = widgets.Dropdown(options=[], description="layer", layout=widgets.Layout(width="420px"))
        self.scope = widgets.Dropdown(options=[(text, key) for key, text in NEGATIVE_SCOPES.items()], value="all",
                                      description="layers", layout=widgets.Layout(width="420px"))
        self.scope.add_class("wnb-scope")
        self.fraction = widgets.BoundedFloatText(value=0.01, min=BOUNDS["negative_fraction"][0],
                                                 max=BOUNDS["negative_fraction"][1], step=0.005, description="neurons",
                                                 layout=widgets.Layout(width="180px"))
        self.side = widgets.Dropdown(options=[(SIDE_LABELS[key], key) for key in SIDES], value="negative",
                                     description="side", layout=widgets.Layout(width="320px"))
        seeds, n_pairs = APP_DEFAULTS.get(settings.session.budget_name, (3, 20))
        self.random = widgets.Checkbox(value=True, description="random control", indent=False,
                                       layout=widgets.Layout(width="130px"))
        self.seeds = widgets.BoundedIntText(value=seeds, min=BOUNDS["control_seeds"][0], max=BOUNDS["control_seeds"][1],
                                            description="seeds",
                                            layout=widgets.Layout(width="140px"))
        self.pairs = widgets.BoundedIntText(value=n_pairs, min=BOUNDS["pairs"][0], max=BOUNDS["pairs"][1],
                                            description="pairs each",
                                            layout=widgets.Layout(width="170px"))
        self.matched = widgets.Checkbox(value=True, description="perplexity-matched control", indent=False)
        self.mirror = widgets.Checkbox(value=True, description="mirror (the other side)", indent=False,
                                       layout=widgets.Layout(width="190px"))
        self.run = widgets.Button(description="Run", icon="play", button_style="primary")
        self.run_depth = widgets.Button(description="Run depth profile", icon="play", button_style="primary",
                                        layout=widgets.Layout(width="auto"))
        self.summary = widgets.HTML()
        self.ppl_out = widgets.Output()
        self.pairs_out = widgets.Output()
        self.study_table = widgets.HTML()
        self.surprisal_out = widgets.Output()
        self.surprisal_table = widgets.HTML()
        self.depth_out = widgets.Output()
        self.depth_table = widgets.HTML()
        self.downloads = widgets.HTML()
        for part, name in ((self.layer, "layer"), (self.fraction, "fraction"), (self.side, "side"),
                           (self.mirror, "mirror"),
                           (self.summary, "summary"), (self.ppl_out, "negative-perplexity"),
                           (self.pairs_out, "negative-pairs"), (self.study_table, "negative-study"),
                           (self.surprisal_out, "negative-surprisal"), (self.depth_out, "negative-depth"),
                           (self.downloads, "downloads")):
            part.add_class(f"wnb-{name}")
        self.study: pd.DataFrame | None = None
        self.surprisal: dict | None = None
        self.depth: pd.DataFrame | None = None
        self.layers: list[str] = []
        self.options = StudyOptions()
        self.stability = widgets.HTML()
        self.differences = widgets.HTML()
        super().__init__([widgets.HTML(CSS), widgets.HTML(HEAD),
                          widgets.HBox([self.scope, self.layer]),
                          widgets.HBox([self.fraction, self.side, self.random, self.seeds, self.matched,
                                        self.mirror, self.pairs, self.run], layout=widgets.Layout(flex_flow="row wrap")),
                          self.options.box, self.summary, self.stability,
                          widgets.HTML("<h4>Perplexity and grammar</h4>"),
                          widgets.HBox([self.ppl_out, self.pairs_out], layout=widgets.Layout(flex_flow="row wrap")),
                          self.study_table, self.differences,
                          widgets.HTML("<h4>Where the excess surprisal falls: Δ NLL by token class</h4>"
                                       "<p>Token classes come from a closed English word list shipped in wnb "
                                       "(determiners, prepositions, pronouns, auxiliaries, conjunctions), not a "
                                       "part-of-speech tagger; word pieces count as content.</p>"),
                          self.surprisal_out, self.surprisal_table,
                          widgets.HTML("<h4>Depth profile: the ablation one layer at a time and over layers 0..l</h4>"),
                          self.run_depth, self.depth_out, self.depth_table, self.downloads], head=4)
        self.buttons = [self.run, self.run_depth]
        self.add_class("wnb-negative")
        self.layer.observe(lambda change: None if self._syncing else self._describe_scope(), names="value")
        self.scope.observe(lambda change: self._describe_scope(), names="value")
        self.side.observe(lambda change: self._describe_side(), names="value")
        self.job_button(self.run, "sign ablation", lambda job: self.compute(job))
        self.job_button(self.run_depth, "depth profile", lambda job: self.compute_depth(job))
        self.follow(settings, lazy)

    # -- life cycle

    def start_view(self) -> None:
        """Fill the layer list (cheap, cached); the study itself runs only when Run is pressed."""
        with self.busy(f"loading {self.session.model_name}…"):
            layers = self.session.ffn_layers()
            default = self.session.default_layer()
        with self._quiet():
            self.layer.options = layers
            self.layer.value = default
        self._describe_scope()
        self.info("press Run to ablate the chosen neurons and measure perplexity, grammar and surprisal")

    def clear(self) -> None:
        self.study = self.surprisal = self.depth = None
        self.pngs, self.figs = {}, {}
        for out in (self.ppl_out, self.pairs_out, self.surprisal_out, self.depth_out):
            out.outputs = ()
        for part in (self.study_table, self.surprisal_table, self.depth_table, self.downloads, self.summary,
                     self.stability, self.differences):
            part.value = ""
        self.info("")

    def _describe_scope(self) -> None:
        self.layer.disabled = self.scope.value == "all"

    def _describe_side(self) -> None:
        """Clamping both sides zeroes every output: there is no other side to mirror."""
        self.mirror.disabled = self.side.value == "both"

    @property
    def controls(self) -> tuple[str, ...]:
        boxes = (("random", self.random), ("matched", self.matched), ("mirror", self.mirror))
        basic = tuple(c for c, box in boxes if box.value and not (c == "mirror" and self.side.value == "both"))
        return basic + self.options.twin_controls

    def selected_layers(self) -> list[str]:
        if not self.layer.value and self.scope.value != "all":
            raise WnbError("no layer selected: pick one from the layer list")
        return negative_layers(self.session, self.scope.value, self.layer.value or self.session.default_layer())

    # -- the work

    def _arguments(self) -> tuple[list[str], float, str]:
        fraction = bounded("negative_fraction", self.fraction.value)
        check_side(self.side.value)
        return self.selected_layers(), fraction, self.side.value

    def compute(self, job=None) -> None:
        """WD, the study with its controls and minimal pairs, and Δ surprisal by token class."""
        session = self.session
        layers, fraction, side = self._arguments()
        controls = self.controls
        seeds, n_pairs = bounded("control_seeds", self.seeds.value), bounded("pairs", self.pairs.value)
        pairs = session.sign_pairs(self.options.pair_sets, n_pairs)
        options = self.options.study_options()
        session.choose_held_out(*self.options.held_out_source)
        cost = session.negative_cost(layers, seeds, len(pairs or []), controls)
        if not self.confirmed(f"study {layers} {fraction} {side} {controls} {seeds} {n_pairs} {options} "
                              f"{self.options.pair_sets} {self.options.held_out_source}", cost,
                              cost_message(cost, "this study", "Run")):
            return
        self.clear()
        self.layers = layers

        def step(i: int) -> None:
            if job is not None:
                job.begin(i, len(STEPS), STEPS[i])

        step(0)
        with self.busy(f"WD of every neuron of {len(layers)} layer(s) (cached afterwards)…"):
            stability = session.sign_stability(layers, fraction, skip_first=options["skip_first"], progress=self.bars)
        self.stability.value = html.escape(stability_words(stability_summary(stability), fraction))
        step(1)
        with self.busy(f"ablating the {side} side of the top {fraction:.1%} of {len(layers)} layer(s) and "
                       f"{len(controls)} control(s), measuring perplexity"
                       f"{' and minimal pairs' if pairs else ''}…"):
            self.study = session.sign_ablation(layers, fraction, side, controls, seeds, pairs,
                                               progress=self.bars, **options)
        self._draw_study(pairs is not None)
        self.differences.value = ("<b>What differs from the follow-up's setting</b><ul>"
                                  + "".join(f"<li>{html.escape(d)}</li>" for d in session.sign_setting(self.study))
                                  + "</ul>")
        step(2)
        matched = self.study[self.study["selection"] == "matched"]
        with self.busy("per-token NLL, dense vs ablated, by token class…"):
            self.surprisal = session.sign_surprisal(layers, fraction, side,
                                                    matched=int(matched["per_layer"].iloc[0]) if len(matched) else None,
                                                    matched_seed=int(matched["seed"].iloc[0]) if len(matched) else None,
                                                    progress=self.bars, pool=options["pool"],
                                                    skip_first=options["skip_first"])
        self._draw_surprisal()
        self._links()
        self.info(f"done: {side} side of the top {fraction:.1%} of {len(layers)} layer(s) by WD, "
                  f"{session.sign_windows()[1].numel():,} held-out tokens; the depth profile runs with its own "
                  "button")

    def compute_depth(self, job=None) -> None:
        """The Wasserstein ablation one layer at a time and over layers 0..l."""
        session = self.session
        layers, fraction, side = self._arguments()
        pairs = session.sign_pairs(self.options.pair_sets, bounded("pairs", self.pairs.value))
        options = self.options.study_options()
        session.choose_held_out(*self.options.held_out_source)
        cost = session.negative_cost(layers, pairs=len(pairs or []), depth=True)
        if not self.confirmed(f"depth {layers} {fraction} {side} {options} {self.options.pair_sets} "
                              f"{self.options.held_out_source}", cost,
                              cost_message(cost, "this depth profile", "Run depth profile")):
            return
        self.layers = layers
        if job is not None:
            job.begin(0, 2, STEPS[0])
        with self.busy(f"WD of every neuron of {len(layers)} layer(s) (cached afterwards)…"):
            session.sign_scores(layers, progress=self.bars, skip_first=options["skip_first"])
        if job is not None:
            job.begin(1, 2, f"depth profile: {2 * len(layers) + 1} perplexity passes")
        with self.busy(f"depth profile: {len(layers)} layer(s) one at a time and cumulatively "
                       f"({2 * len(layers) + 1} perplexity passes)…"):
            self.depth = session.sign_depth(layers, fraction, side, pairs, progress=self.bars,
                                            skip_first=options["skip_first"], pair_score=options["pair_score"],
                                            first_token=options["first_token"])
        self._draw_depth()
        self._links()
        self.info(f"depth profile done: {len(layers)} layer(s), {side} side, top {fraction:.1%}")

    # -- drawing

    def _scope_words(self) -> str:
        if self.scope.value == "all":
            return f"first FFN layer of all {len(self.layers)} blocks"
        return self.layers[0] if len(self.layers) == 1 else f"{len(self.layers)} FFN layers of block {self.layers[0].split('.')[-3]}"

    def _draw_study(self, with_pairs: bool) -> None:
        study = self.study
        what = f"{self.side.value} side, top {self.fraction.value:.1%} of the {self._scope_words()}"
        self.draw_figure("perplexity", self.ppl_out, plots.sign_ablation_bars(study, title=what))
        if with_pairs and any(c.startswith("accuracy_") for c in study.columns):
            self.draw_figure("minimal_pairs", self.pairs_out,
                             plots.minimal_pair_bars(study, title=f"minimal pairs: {', '.join(self.options.pair_sets)}"))
        else:
            self.pairs_out.outputs = ()
        parts = [html.escape(part) for part in study_words(study).split("; ")]  # paired, with intervals
        matched = study[study["selection"] == "matched"]
        if len(matched):
            parts.append(f"matched control: {html.escape(str(matched.iloc[0]['note']))}")
        if not with_pairs:
            parts.append("no minimal pairs: the model has no tokenizer")
        self.summary.value = "<br>".join(parts)
        scoring = (f" Pairs scored by {study['pair_score'].iloc[0]}, {study['scoring_rule'].iloc[0]}."
                   if "scoring_rule" in study else "")
        legend = ("<small>Δ: this row − dense; W − this: the Wasserstein ablation − this control (paired over the "
                  "same windows and pairs, 95% intervals); WD ranks: where the row's neurons rank by WD in their "
                  f"layers (1 = highest).{html.escape(scoring)} {html.escape(self.options.words())}; every column is "
                  "in the study CSV below.</small>")
        self.study_table.value = study_view(study).to_html(index=False, border=0, na_rep="", escape=True) + legend

    def _draw_surprisal(self) -> None:
        table = self.surprisal["by_class"]
        self.draw_figure("surprisal", self.surprisal_out,
                         plots.surprisal_bars(table, title=f"Δ NLL by token class, {self.side.value} side"))
        top = self.surprisal["top"]
        cols = ["token", "token_class", "count", "dense_nll", "ablated_nll", "delta_nll"]
        self.surprisal_table.value = ("<b>Tokens whose NLL rises most (Wasserstein ablation)</b>" +
                                      top[cols].head(10).to_html(index=False, float_format=lambda v: f"{v:.3f}",
                                                                 border=0))

    def _draw_depth(self) -> None:
        self.draw_figure("depth", self.depth_out,
                         plots.depth_profile(self.depth, title=f"{self.side.value} side, top {self.fraction.value:.1%}"
                                                               " per layer"))
        single = self.depth[self.depth["mode"] == "layer"]
        cumulative = self.depth[self.depth["mode"] == "cumulative"]
        self.depth_table.value = (f"sum of the single-layer Δ perplexity {single['delta_perplexity'].sum():.3f}; "
                                  f"all {len(single)} layer(s) at once {cumulative['delta_perplexity'].iloc[-1]:.3f}"
                                  if len(cumulative) else "")

    # -- downloads

    def file_stem(self) -> str:
        controls = "-".join(self.controls) or "nocontrols"
        return (f"sign_ablation_{slug(self.scope.value)}_{slug(self.layer.value) if self.scope.value != 'all' else 'first_ffn'}_"
                f"{self.fraction.value:g}_{self.side.value}_{controls}_{self.settings_tag()}")

    def _links(self) -> None:
        stem = self.file_stem()
        links = []
        if self.study is not None:
            links.append(csv_link(self.study, f"study_{stem}.csv"))
        if self.surprisal is not None:
            links.append(csv_link(self.surprisal["by_class"], f"surprisal_by_class_{stem}.csv"))
            links.append(csv_link(self.surprisal["top"], f"top_tokens_{stem}.csv"))
        if self.depth is not None:
            links.append(csv_link(self.depth, f"depth_{stem}.csv"))
        links += [png_link(png, f"{kind}_{stem}.png") for kind, png in self.pngs.items()]
        self.downloads.value = " · ".join(links)
