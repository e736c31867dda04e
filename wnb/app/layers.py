"""One layer's neurons for the app: its capture and neuron table, the sign quadrants of a gated MLP, the
contexts of "What it reads", the held-out inputs, and the model overview of every FFN layer."""
from __future__ import annotations

import pandas as pd
import torch

from wnb.app.views import LayerView
from wnb.core import cache
from wnb.errors import WnbError
from wnb.model.architectures import layer_weight
from wnb.model.lm import LM
from wnb.reading.accumulator import contexts_from_outputs
from wnb.reading.contexts import NeuronContexts
from wnb.reading.highlight import activation_html
from wnb.reading.neuron import differentiating_pairs, output_effect, tail_concentration, token_table
from wnb.scoring.layers import score_layers
from wnb.scoring.sign import sign_quadrants, up_projection_of
from wnb.scoring.tables import neuron_table, overview_table
from wnb.tracing.capture import capture

# The overview captures every FFN layer's outputs; more than this many bytes at once is split into
# several capture passes (each stops after its deepest layer) so the app stays within Binder's 2 GB.
# Batches of at most 256 tokens keep nnsight's per-batch copies of the saved outputs small beside that store.
OVERVIEW_MAX_BYTES = 192 << 20
OVERVIEW_BATCH_TOKENS = 256
CONTEXT_K = 20      # highest and lowest outputs kept per neuron for "What it reads"
CONTEXT_WIDTH = 8   # tokens of context shown on each side
PAIRS_SHOWN = 6     # differentiating token pairs shown per neuron


class Layers:
    """One layer at a time, and the overview of all of them."""

    def layer(self, name: str, progress: bool = True) -> LayerView:
        """Capture ``name`` on the calibration windows and rank its neurons (both cached on disk)."""
        name = self.check_layer(name)
        if self._layer is not None and self._layer.name == name and self._layer.skip_first == self.skip_first:
            return self._layer
        self._layer = None  # free the previous layer before capturing the next
        acts = self._cached("capture", self.key(layer=name),
                            lambda: _capture_one(self.lm, name, self.calib, progress), enabled=self.use_cache)
        seq_len = self.calib.shape[1]
        if not 0 <= self.skip_first < seq_len:
            raise WnbError(f"skip_first must be between 0 and {seq_len - 1}, the window length minus one "
                           f"(got {self.skip_first})")
        table = self._cached("neuron_table", self.key(layer=name, n_pairs=self.n_pairs, sign="zero+mean split",
                                                      skip_first=self.skip_first),
                             lambda: neuron_table(acts["outputs"], acts["inputs"], layer_weight(self.lm, name),
                                                  n_pairs=self.n_pairs, seed=self.seed, sign=True, seq_len=seq_len,
                                                  skip_first=self.skip_first), enabled=self.use_cache)
        view = LayerView(name, acts["inputs"], acts["outputs"], table, self.n_pairs, self.seed,
                         seq_len=seq_len, skip_first=self.skip_first)
        if self._dense_now():  # kept for re-selection only when it is the dense model's
            self._layer = view
        return view

    def sign_quadrants(self, name: str, progress: bool = True) -> pd.DataFrame | None:
        """For a gated MLP's gate_proj: every neuron's share of calibration tokens in each sign quadrant of
        (gate, up) (:func:`wnb.sign_quadrants`; the up_proj capture is cached like any layer's); None for
        other layers."""

        view = self.layer(name, progress)
        try:
            up = up_projection_of(self.lm, view.name)
        except WnbError:
            return None

        def compute():
            ups = self._cached("capture", self.key(layer=up),
                               lambda: _capture_one(self.lm, up, self.calib, progress), enabled=self.use_cache)
            return sign_quadrants(view.kept_outputs, view.kept(ups["outputs"]))

        return self._cached("sign_quadrants", self.key(layer=view.name, skip_first=self.skip_first), compute,
                            enabled=self.use_cache)

    def contexts(self, name: str, progress: bool = True, k: int = CONTEXT_K):
        """:class:`wnb.NeuronContexts` of every neuron of ``name`` (from its calibration capture, no second
        pass; cached on disk and kept for the last layer, so re-selecting a neuron is instant)."""

        view = self.layer(name, progress)
        key = contexts_key(self, view.name, k)
        if self._contexts is not None and self._contexts[0] == key:
            return self._contexts[1]
        state = cache.cached("contexts", key,
                             lambda: contexts_from_outputs(view.outputs, self.calib, None, view.name, k=k,
                                                           width=CONTEXT_WIDTH, skip_first=self.skip_first,
                                                           seed=self.seed).to_state(),
                             enabled=self.use_cache)
        ctx = NeuronContexts.from_state(state, self.lm.tokenizer, width=CONTEXT_WIDTH)
        self._contexts = (key, ctx)
        return ctx

    def reading(self, name: str, neuron: int, progress: bool = True) -> dict:
        """What "What it reads" shows of ``neuron``: ``contexts`` (both tails), ``band_samples``, ``tokens``,
        ``tail_concentration``, ``differentiating_pairs`` and ``output_effect`` (absent, with the reason under
        ``effect_note``, for layers whose rows are not FFN hidden neurons) and, for a gate projection,
        ``sign_quadrants``; cached."""
        view = self.layer(name, progress)
        if not 0 <= int(neuron) < view.n_neurons:
            raise WnbError(f"neuron must be between 0 and {view.n_neurons - 1} (got {neuron})")
        ctx = self.contexts(view.name, progress)
        key = self.key(layer=view.name, neuron=int(neuron), n_pairs=view.n_pairs, skip_first=view.skip_first,
                       k=ctx.k, shown=PAIRS_SHOWN)
        return self._cached("reading", key, lambda: _reading_tables(self, view, ctx, int(neuron)))

    def probe(self, name: str, neuron: int, text: str, progress: bool = True) -> str:
        """``neuron``'s output on every token of a visitor's ``text`` as escaped HTML (diverging colours on
        the scale of its calibration outputs): one pass of the model over the text."""
        ctx = self.contexts(name, progress)
        return activation_html(self.lm, text, name, neuron, scale=ctx.scale(neuron))

    def overview(self, progress: bool = True) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
        """WD of every neuron of every FFN layer (``budget.overview_tokens`` tokens) and its per-layer table,
        whose ``sinks`` column counts the neurons with first-token (attention sink) tails."""
        tokens = min(self.budget.overview_tokens, self.calib.numel())

        def compute():
            stats = self._layer_statistics(tokens, progress)
            return _overview_of(self.lm, stats)

        return self._cached("overview", self.overview_key(tokens), compute, enabled=self.use_cache)

    def overview_key(self, tokens: int) -> str:
        extra = {"skip_first": self.skip_first} if self.skip_first else {}
        return self.key(tokens=tokens, positions=True, **extra)

    def store_overview(self, stats: dict[str, dict[str, torch.Tensor]], tokens: int) -> None:
        """Keep whole-model statistics computed elsewhere (``wnb score``: ``{layer: {"wd", "pos0_tail_share"}}``)
        where :meth:`overview` finds them."""
        if list(stats) != self.ffn_layers():
            raise ValueError("the model overview holds scores of every FFN layer, in forward order")
        self._cached("overview", self.overview_key(tokens), lambda: _overview_of(self.lm, stats),
                     enabled=self.use_cache)

    def _layer_statistics(self, tokens: int, progress: bool) -> dict[str, dict[str, torch.Tensor]]:
        batch = max(1, OVERVIEW_BATCH_TOKENS // self.calib.shape[1])
        return score_layers(self.lm, self.calib, self.ffn_layers(), ("wd", "pos0_tail_share"), max_tokens=tokens,
                            max_bytes=OVERVIEW_MAX_BYTES, skip_first=self.skip_first, batch_size=batch,
                            progress=progress)

    def held_inputs(self, name: str, progress: bool = True) -> torch.Tensor:
        """The layer's inputs on the held-out windows, from the dense model (cached)."""
        name = self.check_layer(name)
        key = cache.key(model=self.model_key, held_out=self.held_out, layer=name)
        def compute():
            return capture(self.lm, [name], self.held_out, outputs=False, progress=progress)[name].inputs

        return self._cached("held_capture", key, compute, enabled=self.use_cache)


def _overview_of(lm: LM, stats: dict) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
    """The overview's value: WD per layer and the per-layer table with the first-token ``sinks`` columns."""
    scores = {name: s["wd"] for name, s in stats.items()}
    return scores, overview_table(lm, scores, pos0_shares={name: s["pos0_tail_share"] for name, s in stats.items()})


def contexts_key(session, layer: str, k: int = CONTEXT_K) -> str:
    """The cache key of a layer's contexts (``wnb score --contexts`` stores them under it for the app)."""
    return session.key(layer=layer, k=int(k), width=CONTEXT_WIDTH, skip_first=session.skip_first)


def _capture_one(lm: LM, name: str, windows: torch.Tensor, progress: bool) -> dict[str, torch.Tensor]:
    acts = capture(lm, [name], windows, progress=progress)[name]
    return {"inputs": acts.inputs, "outputs": acts.outputs}


def _reading_tables(session, view, ctx, neuron: int) -> dict:
    """What "What it reads" shows of ``neuron`` (a session's layer ``view`` and its contexts ``ctx``):
    ``contexts`` (both tails), ``band_samples``, ``tokens``, ``tail_concentration``,
    ``differentiating_pairs`` and ``output_effect`` (absent, with the reason under ``effect_note``, for
    layers whose rows are not FFN hidden neurons)."""

    high, low = ctx.top(neuron, "high"), ctx.top(neuron, "low")
    tokens = token_table(session.calib, view.outputs, session.lm.tokenizer, neuron=neuron, skip_first=view.skip_first)
    tables = {"contexts": pd.concat([high.assign(side="high"), low.assign(side="low")], ignore_index=True),
              "band_samples": ctx.samples(neuron, seed=session.seed), "tokens": tokens,
              "tail_concentration": tail_concentration(tokens, seed=session.seed),
              "differentiating_pairs": differentiating_pairs(
                  view.inputs, view.outputs, neuron, session.calib, session.lm.tokenizer, n_pairs=view.n_pairs,
                  seed=view.seed, top=PAIRS_SHOWN, skip_first=view.skip_first)}
    try:
        tables["output_effect"] = output_effect(session.lm, view.name, neuron, k=10)
    except WnbError as exc:
        tables["effect_note"] = str(exc)
    quadrants = session.sign_quadrants(view.name)
    if quadrants is not None:
        tables["sign_quadrants"] = quadrants[quadrants["neuron"] == neuron].reset_index(drop=True)
    return tables
