"""The follow-up's experiment for the app: WD of the chosen layers, the sign-ablation study with its controls
and minimal pairs, the held-out passes shared by their neurons, the depth profile and Δ surprisal."""
from __future__ import annotations

import pandas as pd
import torch

from wnb.app.layers import READ_BATCH, READ_BINS
from wnb.core import cache
from wnb.experiments.minimal_pairs import minimal_pairs
from wnb.experiments.sign_ablation import (
    ablated_nll,
    sign_ablation_depth,
    sign_ablation_study,
)
from wnb.experiments.surprisal import (
    surprisal_by_class,
    token_surprisal,
    top_surprisal_tokens,
)
from wnb.reading.readout import Readout
from wnb.scoring.layers import score_layers
from wnb.scoring.selection import matched_candidates, select_matched, select_wasserstein


class Negative:
    """The sign-ablation study, cached."""

    def sign_scores(self, layers, tokens: int | None = None, progress: bool = True) -> dict:
        """WD of every neuron of ``layers`` over the first ``tokens`` calibration tokens (default: all of
        them, as the follow-up ranks its Wasserstein neurons; streaming where exact scores do not fit),
        ``{layer: [n_neurons]}``: from the session's whole reading when it is stored and covers them (every
        calibration token of FFN layers, no position skipped), else from the one many-layer scorer
        (:func:`wnb.scoring.layers.score_layers`); cached."""
        layers = [self.check_layer(n) for n in layers]
        tokens = min(int(tokens or self.calib.numel()), self.calib.numel())

        def compute():
            covered = tokens == self.calib.numel() and not self.skip_first and set(layers) <= set(self.ffn_layers())
            state = cache.lookup("reading", self.whole_reading_key()) if covered and self.use_cache else None
            if state is not None:
                return {name: Readout.from_state(state).stats[name]["wd"] for name in layers}
            stats = score_layers(self.lm, self.calib, layers, ("wd",), wd="auto", max_tokens=tokens,
                                 batch_size=READ_BATCH, n_bins=READ_BINS, progress=progress)
            return {name: s["wd"] for name, s in stats.items()}

        return self._cached("sign_scores", self.key(layers=layers, tokens=tokens), compute, enabled=self.use_cache)

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

    def sign_pairs(self, name: str | None = "agreement", n: int | None = 10) -> list[dict] | None:
        """Minimal pairs for the sign-ablation study (:func:`wnb.experiments.minimal_pairs` with the session's seed),
        or None when ``name`` is None or the model has no tokenizer."""

        if name is None or self.lm.tokenizer is None:
            return None
        return minimal_pairs(name, n=n, seed=self.seed)

    def sign_ablation(self, layers, fraction: float = 0.01, side: str = "negative", controls=("random", "matched"),
                      n_seeds: int = 3, pairs=None, tokens: int | None = None, tolerance: float = 0.02,
                      progress: bool = True) -> pd.DataFrame:
        """:func:`wnb.sign_ablation_study` on the held-out windows, random controls with seeds
        ``seed .. seed + n_seeds - 1``, WD from :meth:`sign_scores`; cached (keyed by the pairs themselves)."""

        scores = self.sign_scores(layers, tokens, progress)
        seeds = [self.seed + i for i in range(int(n_seeds))]
        key = self.key(layers=list(scores), tokens=tokens, fraction=float(fraction), side=side,
                       controls=list(controls), seeds=seeds, pairs=pairs, held_out=self.held_out,
                       tolerance=float(tolerance), columns="paired differences, verdicts, spread over seeds")
        return (self._cached(
            "sign_ablation", key,
            lambda: (sign_ablation_study(self.lm, None, self.held_out, fraction=fraction, side=side,
                                                    controls=tuple(controls), seeds=seeds, pairs=pairs, scores=scores,
                                                    tolerance=tolerance, progress=progress,
                                                    nll_fn=self.ablated_nll)),
            enabled=self.use_cache))

    def sign_depth(self, layers, fraction: float = 0.01, side: str = "negative", pairs=None,
                   tokens: int | None = None, progress: bool = True) -> pd.DataFrame:
        """:func:`wnb.sign_ablation_depth` (one layer at a time and cumulative) on the held-out windows; cached."""

        scores = self.sign_scores(layers, tokens, progress)
        key = self.key(layers=list(scores), tokens=tokens, fraction=float(fraction), side=side, pairs=pairs,
                       held_out=self.held_out, columns="paired delta interval")
        return (self._cached(
            "sign_depth", key,
            lambda: (sign_ablation_depth(self.lm, None, self.held_out, fraction=fraction, side=side,
                                                    pairs=pairs, scores=scores, progress=progress,
                                                    nll_fn=self.ablated_nll)),
            enabled=self.use_cache))

    def sign_surprisal(self, layers, fraction: float = 0.01, side: str = "negative", matched: int | None = None,
                       matched_seed: int | None = None, tokens: int | None = None, top: int = 20,
                       progress: bool = True) -> dict:
        """Per-token Δ NLL (:func:`wnb.token_surprisal`) of the Wasserstein ablation and, with ``matched``
        (the matched control's per-layer count from the study), of the matched control, aggregated:
        ``by_class`` and ``by_group`` (:func:`wnb.surprisal_by_class`, one block per ``selection``) and
        ``top`` (:func:`wnb.top_surprisal_tokens` of the Wasserstein ablation); cached."""

        scores = self.sign_scores(layers, tokens, progress)
        matched_seed = self.seed if matched_seed is None else int(matched_seed)

        def compute():
            selections = {"wasserstein": select_wasserstein(scores, fraction)}
            if matched is not None:
                selections["matched"] = select_matched(matched_candidates(scores, seed=matched_seed), int(matched))
            dense = self.ablated_nll(self.lm, self.held_out, {}, side, progress=progress)
            out = {"by_class": [], "by_group": [], "top": None}
            for name, neurons in selections.items():
                ablated = self.ablated_nll(self.lm, self.held_out, neurons, side, progress=progress)
                table = token_surprisal(self.lm, self.held_out, neurons, side=side, dense_nll=dense,
                                        ablated_nll=ablated, progress=progress)
                for by, part in (("token_class", "by_class"), ("group", "by_group")):
                    out[part].append(surprisal_by_class(table, by=by).assign(selection=name))
                if name == "wasserstein":
                    out["top"] = top_surprisal_tokens(table, n=top, min_count=2)
            out["by_class"] = pd.concat(out["by_class"], ignore_index=True)
            out["by_group"] = pd.concat(out["by_group"], ignore_index=True)
            return out

        key = self.key(layers=list(scores), tokens=tokens, fraction=float(fraction), side=side, matched=matched,
                       matched_seed=matched_seed, top=top, held_out=self.held_out)
        return self._cached("sign_surprisal", key, compute, enabled=self.use_cache)
