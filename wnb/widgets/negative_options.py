"""The Negative differentiation tab's study options beyond the basic ones: which minimal-pair sets, how they
are scored (the sum or the mean, each set's own by default; wnb's or the authors' first-token rule), where
the matched control draws (outside the top 10% or the bottom of the WD ranking), the twin controls,
whether the first token of every window is left out of the ranking, and the held-out text perplexity is
measured on. Every choice list is read from its
vocabulary; nothing is computed here."""
from __future__ import annotations

import ipywidgets as widgets

from wnb.data.corpora import CORPORA, SPLITS, is_wikitext
from wnb.experiments.minimal_pairs import SOURCES
from wnb.experiments.pair_scoring import SCORES
from wnb.experiments.pair_sets import FIRST_TOKEN, SET_NAMES, SET_SCORES
from wnb.scoring.controls import TWIN_CONTROLS
from wnb.scoring.selection import POOLS

TWIN_LABELS = {"variance": "variance twins", "tokens": "same-token twins", "positions": "same-position twins"}
OWN = "own"  # the score box's value for each set's own rule (pair_score=None)
OWN_SCORES = "each set's own (" + ", ".join(f"{k} {v}" for k, v in SET_SCORES.items()) + ", the others sum)"
SAME_TEXT = ""  # the held-out box's value for windows of the calibration corpus
HELD_OUT_TEXTS = [("the calibration corpus: windows disjoint from the calibration ones", SAME_TEXT)] + [
    (f"{corpus} ({split}" + (", the follow-up's" if split == "validation" else "") + "), downloaded: needs a network"
     if is_wikitext(corpus) else f"{corpus} (the whole text)", f"{corpus}:{split}")
    for corpus in CORPORA for split in (SPLITS[1:] + SPLITS[:1] if is_wikitext(corpus) else SPLITS[:1])]


class StudyOptions:
    """The widgets of the tab's second row of options, and the study's keyword arguments they give."""

    def __init__(self):
        small = lambda width: widgets.Layout(width=width)  # noqa: E731
        self.sets = widgets.SelectMultiple(options=[(f"{name}: {SET_NAMES[name]}", name) for name in SOURCES],
                                           value=("agreement",), rows=len(SOURCES), description="pair sets",
                                           layout=small("560px"))
        self.score = widgets.Dropdown(options=[(OWN_SCORES, OWN)] + [(s, s) for s in SCORES], value=OWN,
                                      description="pair score", layout=small("420px"))
        self.first_token = widgets.Dropdown(options=[(text, key) for key, text in FIRST_TOKEN.items()], value="wnb",
                                            description="first token", layout=small("560px"))
        self.pool = widgets.Dropdown(options=[(f"{key}: {text}", key) for key, text in POOLS.items()],
                                     value="outside", description="matched pool", layout=small("560px"))
        self.twins = {c: widgets.Checkbox(value=False, description=TWIN_LABELS[c], indent=False,
                                          layout=small("170px")) for c in TWIN_CONTROLS}
        self.skip_first = widgets.Checkbox(value=False, indent=False, layout=small("420px"),
                                           description="rank without the first token of every window")
        self.held_out = widgets.Dropdown(options=HELD_OUT_TEXTS, value=SAME_TEXT, description="held-out text",
                                         layout=small("560px"), style={"description_width": "90px"})
        for part, name in ((self.sets, "pair-sets"), (self.score, "pair-score"), (self.first_token, "first-token"),
                           (self.pool, "pool"), (self.skip_first, "negative-skip-first"),
                           (self.held_out, "held-out")):
            part.add_class(f"wnb-{name}")

    @property
    def box(self) -> widgets.Widget:
        return widgets.VBox([widgets.HBox([self.sets]), widgets.HBox([self.score, self.first_token]),
                             widgets.HBox([self.pool, self.skip_first]), widgets.HBox([self.held_out]),
                             widgets.HBox(list(self.twins.values()))])

    @property
    def twin_controls(self) -> tuple[str, ...]:
        return tuple(c for c, box in self.twins.items() if box.value)

    @property
    def pair_sets(self) -> tuple[str, ...]:
        return tuple(self.sets.value)

    @property
    def held_out_source(self) -> tuple[str, str] | tuple[()]:
        """What :meth:`wnb.app.session.Session.choose_held_out` takes: ``(corpus, split)``, or nothing for
        windows of the calibration corpus."""
        return tuple(self.held_out.value.split(":")) if self.held_out.value else ()

    @property
    def pair_score(self) -> str | None:
        return None if self.score.value == OWN else self.score.value

    def study_options(self) -> dict:
        """What :meth:`wnb.app.session.Session.sign_ablation` takes from these widgets."""
        return {"pool": self.pool.value, "skip_first": int(self.skip_first.value), "pair_score": self.pair_score,
                "first_token": self.first_token.value}

    def words(self) -> str:
        """The options in words, for the tab's notes under the table."""
        return (f"pair sets: {', '.join(self.pair_sets) or 'none'}; scored by "
                f"{self.pair_score or 'each set’s own rule'}, {FIRST_TOKEN[self.first_token.value]}; matched pool: "
                f"{POOLS[self.pool.value]}; ranking {'without' if self.skip_first.value else 'with'} the first token "
                f"of every window; held-out text: {self.held_out.label}")
