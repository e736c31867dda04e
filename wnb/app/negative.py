"""The follow-up's experiment for the app and the command: the study's windows (the longest the model
allows within the budget), the statistics the Wasserstein set is picked on and the controls are matched
on, the sign-ablation study with its controls and minimal pairs, the set's stability, the held-out passes
shared by their neurons, the depth profile and Δ surprisal; every result cached."""
from __future__ import annotations

import pandas as pd
import torch

from wnb.app.budgets import study_sizes
from wnb.app.layers import READ_BATCH
from wnb.core import cache
from wnb.data.corpora import CORPORA, held_out_source
from wnb.data.windows import calibration_and_held_out, context_length
from wnb.errors import WnbError
from wnb.experiments.pair_sets import first_token_prefix, pair_sets
from wnb.experiments.sign_ablation import (
    ablated_nll,
    selection_table,
    sign_ablation_study,
    study_selections,
)
from wnb.experiments.sign_controls import study_fields, study_statistics
from wnb.experiments.sign_depth import sign_ablation_depth
from wnb.experiments.sign_setting import setting_differences
from wnb.experiments.surprisal import (
    surprisal_by_class,
    token_surprisal,
    top_surprisal_tokens,
)
from wnb.reading.readout import Readout
from wnb.scoring.layers import default_budget
from wnb.scoring.selection import (
    DEFAULT_CONTROLS,
    matched_candidates,
    select_matched,
    select_wasserstein,
)
from wnb.scoring.sketch import SKETCH_VERSION
from wnb.scoring.stability import set_stability


class Negative:
    """The sign-ablation study, cached."""

    def choose_held_out(self, corpus: str | None = None, split: str | None = None) -> None:
        """Where the study's held-out windows come from: a text of its own (``corpus`` in ``split``, e.g.
        ``"wikitext2", "validation"``, the follow-up's; checked by :func:`wnb.data.corpora.held_out_source`; the
        app offers only the named corpora), or, with neither, windows of the session's corpus disjoint from the
        calibration ones (the default). The calibration windows, and so the Wasserstein set, stay the same."""
        if (corpus or split) and self.given_windows:
            raise WnbError("this session's windows were given (the command cuts its held-out windows itself: "
                           "--eval-corpus / --eval-split)")
        source = held_out_source(self.corpus, corpus or None, split or None)
        if source is not None and self.restricted and source[0] not in CORPORA:
            raise WnbError(f"the app's held-out texts are the named corpora ({', '.join(CORPORA)}); it opens no file "
                           "on the server")
        if source != self.sign_held_out:
            self.sign_held_out, self._sign_windows = source, None

    def sign_held_out_text(self) -> str:
        """The study's held-out text in words: ``"wikitext2 (validation)"``, or the session's own."""
        return self.held_out_text if self.sign_held_out is None else "{} ({})".format(*self.sign_held_out)

    def sign_windows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The study's calibration and held-out windows: the session's own where they were given (the
        command cuts them for the study) or already as long as :func:`wnb.app.budgets.study_sizes` allows,
        else windows of that length cut from the session's corpus with the budget's tokens; the held-out ones
        from the text :meth:`choose_held_out` chose, as many (cached)."""
        if self.given_windows:
            return self.calib, self.held_out
        b = self.budget
        sizes = study_sizes(b, context_length(self.lm))
        if sizes == (b.seq_len, b.n_calib, b.n_eval) and self.sign_held_out is None:
            return self.calib, self.held_out
        if self._sign_windows is None:
            text = self.corpus_text()
            eval_text = self.corpus_text(*self.sign_held_out) if self.sign_held_out is not None else None
            key = cache.key(model=self.model_key, text=cache.text_digest(text), seq_len=sizes[0], n_calib=sizes[1],
                            n_eval=sizes[2], seed=self.seed,
                            **({"eval_text": cache.text_digest(eval_text)} if eval_text is not None else {}))
            self._sign_windows = cache.cached("windows", key, lambda: calibration_and_held_out(
                self.lm, text, *sizes, self.seed, eval_text), enabled=self.use_cache)
        return self._sign_windows

    def sign_statistics(self, layers, fields=("wd",), tokens: int | None = None, skip_first: int = 0,
                        progress: bool = True) -> dict[str, dict[str, torch.Tensor]]:
        """``{layer: {field: tensor}}`` over the first ``tokens`` of the study's calibration windows (default:
        all of them, as the follow-up ranks its Wasserstein neurons; streaming where exact scores do not fit),
        the first ``skip_first`` positions of every window left out (:func:`wnb.experiments.sign_controls.
        study_statistics`); each field cached on its own, the missing ones taken from the session's whole
        reading where it is stored and covers them (:meth:`read_fields`), the rest computed in one pass."""
        layers = [self.check_layer(n) for n in layers]
        calib, _ = self.sign_windows()
        tokens = min(int(tokens or calib.numel()), calib.numel())
        keys = {f: self.key(layers=layers, tokens=tokens, skip_first=int(skip_first), field=f, study_calib=calib,
                            sketch=SKETCH_VERSION)
                for f in fields}
        if -(-tokens // calib.shape[1]) < 2:  # one window: no halves to compare
            fields = [f for f in fields if f != "wd_halves"]
        missing = [f for f in fields if not (self.use_cache and cache.entry_path("sign_field", keys[f]).exists())]
        computed: dict = self.read_fields(layers, missing, calib, tokens, skip_first)
        missing = [f for f in missing if f not in computed.get(layers[0], {})]

        def compute(field: str) -> dict:  # every missing field in one pass, inside the first one's dense-only guard
            if field not in computed.get(layers[0], {}):
                stats = study_statistics(self.lm, calib, layers, missing, skip_first=skip_first, max_tokens=tokens,
                                         max_bytes=default_budget(), progress=progress, batch_size=READ_BATCH)
                for name in layers:
                    computed.setdefault(name, {}).update(stats[name])
            return {name: computed[name][field] for name in layers}

        out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in layers}
        for field in fields:
            values = self._cached("sign_field", keys[field], lambda f=field: compute(f), enabled=self.use_cache)
            for name in layers:
                out[name][field] = values[name]
        return out

    def read_fields(self, layers, fields, calib, tokens: int, skip_first: int) -> dict:
        """``{layer: {field: tensor}}`` of the ``fields`` the session's stored whole reading has (WD, mean,
        variance), when it read exactly these windows and tokens with no position skipped; else ``{}``."""
        from_reading = [f for f in fields if f in ("wd", "mean", "variance")]
        covered = (from_reading and calib is self.calib and tokens == calib.numel() and not skip_first
                   and not self.skip_first and set(layers) <= set(self.ffn_layers()) and self.use_cache)
        state = cache.lookup("reading", self.whole_reading_key()) if covered else None
        if state is None:
            return {}
        stats = Readout.from_state(state).stats
        return {name: {f: stats[name][f] for f in from_reading} for name in layers}

    def sign_scores(self, layers, tokens: int | None = None, progress: bool = True, skip_first: int = 0) -> dict:
        """WD of every neuron of ``layers`` (:meth:`sign_statistics`' ``wd``), ``{layer: [n_neurons]}``."""
        stats = self.sign_statistics(layers, ("wd",), tokens, skip_first, progress)
        return {name: s["wd"] for name, s in stats.items()}

    def sign_stability(self, layers, fraction: float = 0.01, tokens: int | None = None, skip_first: int = 0,
                       progress: bool = True) -> pd.DataFrame:
        """Per layer, how many of the top ``fraction`` picked on one half of the calibration windows the other
        half picks too (:func:`wnb.scoring.stability.set_stability`)."""
        stats = self.sign_statistics(layers, study_fields(), tokens, skip_first, progress)
        return set_stability({n: s["wd_halves"] for n, s in stats.items() if "wd_halves" in s}, fraction)

    def ablated_nll(self, lm, held_out, selection, side: str = "negative", batch_size: int = 8,
                    progress: bool = True) -> torch.Tensor:
        """:func:`wnb.experiments.sign_ablation.ablated_nll`, cached by the neurons themselves, so the study, its
        surprisal and the depth profile share their held-out passes (e.g. the dense one)."""

        neurons = {name: torch.as_tensor(idx).tolist() for name, idx in selection.items()}
        key = cache.key(model=self.model_key, held_out=held_out, neurons=neurons,
                        side=side if neurons else None)
        return self._cached("ablated_nll", key,
                            lambda: ablated_nll(lm, held_out, selection, side, batch_size=batch_size,
                                                progress=progress),
                            enabled=self.use_cache)

    def sign_pairs(self, names=("agreement",), n: int | None = 10) -> list[dict] | None:
        """Minimal pairs of one or several sets (:func:`wnb.experiments.pair_sets.pair_sets` with the session's
        seed), or None when ``names`` is None or empty or the model has no tokenizer."""

        if not names or self.lm.tokenizer is None:
            return None
        return pair_sets(names, n=n, seed=self.seed)

    def pair_prefix(self, first_token: str = "wnb") -> str | None:
        """The scoring prefix of a first-token rule (:data:`wnb.experiments.pair_sets.FIRST_TOKEN`)."""
        return first_token_prefix(self.lm.tokenizer, first_token) if self.lm.tokenizer is not None else None

    def sign_ablation(self, layers, fraction: float = 0.01, side: str = "negative", controls=DEFAULT_CONTROLS,
                      n_seeds: int = 3, pairs=None, tokens: int | None = None, tolerance: float = 0.02,
                      progress: bool = True, pool: str = "outside", skip_first: int = 0, pair_score: str | None = None,
                      first_token: str = "wnb") -> pd.DataFrame:
        """:func:`wnb.sign_ablation_study` on the study's windows (:meth:`sign_windows`), random controls with
        seeds ``seed .. seed + n_seeds - 1``, statistics from :meth:`sign_statistics`; cached (keyed by the
        pairs themselves)."""

        calib, held_out = self.sign_windows()
        stats = self.sign_statistics(layers, study_fields(controls, side), tokens, skip_first, progress)
        seeds = [self.seed + i for i in range(int(n_seeds))]
        key = self.key(layers=list(stats), tokens=tokens, fraction=float(fraction), side=side, controls=list(controls),
                       seeds=seeds, pairs=pairs, held_out=held_out, study_calib=calib, tolerance=float(tolerance),
                       pool=pool, skip_first=int(skip_first), pair_score=pair_score, first_token=first_token,
                       columns="paired differences, verdicts, spread over seeds, stability, WD ranks, scoring rule")
        return self._cached("sign_ablation", key, lambda: sign_ablation_study(
            self.lm, calib, held_out, fraction=fraction, side=side, controls=tuple(controls), seeds=seeds, pairs=pairs,
            scores={n: s["wd"] for n, s in stats.items()}, statistics=stats, tolerance=tolerance, progress=progress,
            nll_fn=self.ablated_nll, pool=pool, skip_first=skip_first, pair_score=pair_score,
            prefix=self.pair_prefix(first_token)), enabled=self.use_cache)

    def sign_neurons(self, study: pd.DataFrame, layers, side: str = "negative", tokens: int | None = None,
                     skip_first: int = 0) -> pd.DataFrame:
        """One row per neuron each row of ``study`` ablated, with its WD and its rank by WD in its layer
        (:func:`wnb.selection_table` of :func:`wnb.study_selections`)."""
        controls = [c for c in dict.fromkeys(study["selection"]) if c not in ("dense", "wasserstein")]
        stats = self.sign_statistics(layers, study_fields(controls, side), tokens, skip_first, progress=False)
        scores = {n: s["wd"] for n, s in stats.items()}
        chosen = study_selections(study, scores, statistics=stats, windows=self.sign_windows()[0])
        return selection_table(chosen, scores)

    def sign_setting(self, study: pd.DataFrame, tokens: int | None = None) -> list[str]:
        """How the run of ``study`` differs from the follow-up's setting, in words
        (:func:`wnb.experiments.sign_setting.setting_differences`)."""
        calib, held_out = self.sign_windows()
        return setting_differences(study, {
            "model": self.model_name, "corpus": self.corpus, "seq_len": calib.shape[1],
            "calib_tokens": min(int(tokens or calib.numel()), calib.numel()), "held_out_windows": len(held_out),
            "held_out_text": self.sign_held_out_text()})

    def sign_depth(self, layers, fraction: float = 0.01, side: str = "negative", pairs=None,
                   tokens: int | None = None, progress: bool = True, skip_first: int = 0,
                   pair_score: str | None = None, first_token: str = "wnb") -> pd.DataFrame:
        """:func:`wnb.sign_ablation_depth` (one layer at a time and cumulative, with the pairs per layer and
        phenomenon) on the study's held-out windows; cached."""

        _, held_out = self.sign_windows()
        scores = self.sign_scores(layers, tokens, progress, skip_first)
        key = self.key(layers=list(scores), tokens=tokens, fraction=float(fraction), side=side, pairs=pairs,
                       held_out=held_out, skip_first=int(skip_first), pair_score=pair_score, first_token=first_token,
                       columns="paired delta interval, accuracy per phenomenon with McNemar")
        return self._cached("sign_depth", key, lambda: sign_ablation_depth(
            self.lm, None, held_out, fraction=fraction, side=side, pairs=pairs, scores=scores, progress=progress,
            nll_fn=self.ablated_nll, pair_score=pair_score, prefix=self.pair_prefix(first_token)),
            enabled=self.use_cache)

    def sign_surprisal(self, layers, fraction: float = 0.01, side: str = "negative", matched: int | None = None,
                       matched_seed: int | None = None, tokens: int | None = None, top: int = 20,
                       progress: bool = True, pool: str = "outside", skip_first: int = 0) -> dict:
        """Per-token Δ NLL (:func:`wnb.token_surprisal`) of the Wasserstein ablation and, with ``matched``
        (the matched control's per-layer count from the study, drawn from ``pool``), of the matched control,
        aggregated: ``by_class`` and ``by_group`` (:func:`wnb.surprisal_by_class`, one block per
        ``selection``) and ``top`` (:func:`wnb.top_surprisal_tokens` of the Wasserstein ablation); cached."""

        _, held_out = self.sign_windows()
        scores = self.sign_scores(layers, tokens, progress, skip_first)
        matched_seed = self.seed if matched_seed is None else int(matched_seed)

        def compute():
            selections = {"wasserstein": select_wasserstein(scores, fraction)}
            if matched is not None:
                candidates = matched_candidates(scores, seed=matched_seed, pool=pool)
                selections["matched"] = select_matched(candidates, int(matched))
            dense = self.ablated_nll(self.lm, held_out, {}, side, progress=progress)
            out = {"by_class": [], "by_group": [], "top": None}
            for name, neurons in selections.items():
                ablated = self.ablated_nll(self.lm, held_out, neurons, side, progress=progress)
                table = token_surprisal(self.lm, held_out, neurons, side=side, dense_nll=dense,
                                        ablated_nll=ablated, progress=progress)
                for by, part in (("token_class", "by_class"), ("group", "by_group")):
                    out[part].append(surprisal_by_class(table, by=by).assign(selection=name))
                if name == "wasserstein":
                    out["top"] = top_surprisal_tokens(table, n=top, min_count=2)
            out["by_class"] = pd.concat(out["by_class"], ignore_index=True)
            out["by_group"] = pd.concat(out["by_group"], ignore_index=True)
            return out

        key = self.key(layers=list(scores), tokens=tokens, fraction=float(fraction), side=side, matched=matched,
                       matched_seed=matched_seed, top=top, held_out=held_out, pool=pool, skip_first=int(skip_first))
        return self._cached("sign_surprisal", key, compute, enabled=self.use_cache)
