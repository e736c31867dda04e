"""One layer's neurons for the app: its capture and neuron table, the sign quadrants of a gated MLP, the
contexts of "What it reads", the held-out inputs, and the model overview of every FFN layer.

The overview and the contexts come from reading passes (:mod:`wnb.reading.reader`, one forward for every
layer at once): the session's whole reading (:meth:`Layers.whole_reading`: every FFN layer over every
calibration token, with the contexts of every neuron) serves both once it is stored, whoever made it (the app
or ``wnb score --contexts 20``); before that the overview reads the budget's ``overview_tokens`` without
contexts."""
from __future__ import annotations

import pandas as pd
import torch

from wnb.app.views import LayerView
from wnb.core import cache
from wnb.core.memory import available_memory
from wnb.errors import WnbError
from wnb.model.architectures import layer_weight
from wnb.model.lm import LM
from wnb.reading.contexts import NeuronContexts
from wnb.reading.highlight import activation_html
from wnb.reading.neuron import (
    differentiating_pairs,
    output_effect,
    tail_concentration,
    token_table,
)
from wnb.reading.reader import (
    cached_reading,
    contexts_key,
    contexts_of_outputs,
    plan_read,
    reading_key,
)
from wnb.reading.readout import Readout
from wnb.scoring.layers import score_layers
from wnb.scoring.sign import sign_quadrants, up_projection_of
from wnb.scoring.sketch import SKETCH_VERSION
from wnb.scoring.tables import neuron_table, overview_table
from wnb.tracing.capture import capture

# How the app reads (``wnb score --contexts 20`` reads the same way by default, so the app finds its result):
READ_BATCH = 8        # windows per forward pass
READ_BINS = 256       # bins per neuron of the streaming sketch (wnb.scoring.sketch)
READ_SHARE = 0.6      # share of the memory available now that a reading pass may hold beside the model
CONTEXT_K = 20        # highest and lowest outputs kept per neuron for "What it reads"
CONTEXT_SAMPLES = 8   # examples kept per band of each neuron's distribution
CONTEXT_WIDTH = 8     # tokens of context shown on each side
PAIRS_SHOWN = 6       # differentiating token pairs shown per neuron


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
        """:class:`wnb.NeuronContexts` of every neuron of ``name``: stored by a reading pass (no pass when the
        session's whole reading or ``wnb score --contexts`` stored it); else, when the session holds the
        layer's capture (:meth:`layer`), the same from its outputs fed as the pass would feed them (no pass);
        else read now by :meth:`whole_reading` (every FFN layer at once; ``name`` alone when that does not fit
        the memory, or ``name`` is not an FFN layer). Cached, and kept for the last layer, so re-selecting a
        neuron is instant."""
        name = self.check_layer(name)
        key = contexts_key(self.model_key, self.calib, name, k=k, **self.read_settings())
        if self._contexts is not None and self._contexts[0] == key:
            return self._contexts[1]
        state = cache.lookup("contexts", key) if self.use_cache else None
        if state is None:
            state = self._read_contexts(name, k, progress)
        ctx = NeuronContexts.from_state(state, self.lm.tokenizer, width=CONTEXT_WIDTH)
        self._contexts = (key, ctx)
        return ctx

    def read_settings(self) -> dict:
        """The settings of the app's reading passes besides the layers, contexts and WD method."""
        return dict(n_samples=CONTEXT_SAMPLES, seed=self.seed, skip_first=self.skip_first, n_bins=READ_BINS,
                    batch_size=READ_BATCH)

    def whole_reading(self, progress: bool = True, callback=None, k: int = CONTEXT_K) -> Readout:
        """Every FFN layer over every calibration token in one pass (:func:`wnb.reading.reader.cached_reading`):
        WD, sign and position statistics and the contexts (``k`` per side) of every neuron; cached (the
        statistics once, each layer's contexts where :meth:`contexts` finds them)."""
        return cached_reading(self.lm, self.calib, self.ffn_layers(), contexts=k, wd="auto",
                              max_bytes=int(READ_SHARE * available_memory()), progress=progress, callback=callback,
                              enabled=self.use_cache, **self.read_settings())

    def _read_contexts(self, name: str, k: int, progress: bool) -> dict:
        held = self._layer
        if held is not None and held.name == name and held.skip_first == self.skip_first:
            state = contexts_of_outputs(held.outputs, self.calib, name, k=k, **self._plan_settings(), seed=self.seed)
            return self._cached("contexts", contexts_key(self.model_key, self.calib, name, k=k, **self.read_settings()),
                                lambda: state, enabled=self.use_cache)
        layers = self.ffn_layers()
        if name in layers and self._whole_fits(k):
            return self.whole_reading(progress, k=k).contexts_state(name)
        reading = cached_reading(self.lm, self.calib, [name], contexts=k, wd="streaming", progress=progress,
                                 enabled=self.use_cache, **self.read_settings())
        return reading.contexts_state(name)

    def _whole_fits(self, k: int) -> bool:
        """Whether :meth:`whole_reading` fits the memory (streaming, the least it can hold)."""
        try:
            plan_read(self.lm, self.calib, self.ffn_layers(), contexts=k, wd="streaming",
                      max_bytes=int(READ_SHARE * available_memory()), **self._plan_settings())
        except WnbError:
            return False
        return True

    def _plan_settings(self) -> dict:
        return {k: v for k, v in self.read_settings().items() if k != "seed"}

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
        """WD of every neuron of every FFN layer and its per-layer table, whose ``sinks`` column counts the
        neurons with first-token (attention sink) tails: from the session's whole reading (every calibration
        token) when it is stored, else from a reading pass over ``budget.overview_tokens`` tokens; cached."""
        full = self.calib.numel()
        if self.use_cache:
            found = cache.lookup("overview", self.overview_key(full))
            state = cache.lookup("reading", self.whole_reading_key()) if found is None else None
            if state is not None:
                stats = Readout.from_state(state).layer_statistics()
                found = self._cached("overview", self.overview_key(full), lambda: _overview_of(self.lm, stats))
            if found is not None:
                return found
        tokens = min(self.budget.overview_tokens, full)

        def compute():
            stats = self._layer_statistics(tokens, progress)
            return _overview_of(self.lm, stats)

        return self._cached("overview", self.overview_key(tokens), compute, enabled=self.use_cache)

    def whole_reading_key(self, k: int = CONTEXT_K) -> str:
        """The cache key of :meth:`whole_reading`'s statistics (known without loading the model)."""
        return reading_key(self.model_key, self.calib, self.ffn_layers(), contexts=k, wd="auto",
                           **self.read_settings())

    def overview_key(self, tokens: int) -> str:
        extra = {"skip_first": self.skip_first} if self.skip_first else {}
        return self.key(tokens=tokens, positions=True, sketch=SKETCH_VERSION, **extra)

    def store_overview(self, stats: dict[str, dict[str, torch.Tensor]], tokens: int) -> None:
        """Keep whole-model statistics computed elsewhere (``wnb score``: ``{layer: {"wd", "pos0_tail_share"}}``)
        where :meth:`overview` finds them."""
        if list(stats) != self.ffn_layers():
            raise ValueError("the model overview holds scores of every FFN layer, in forward order")
        self._cached("overview", self.overview_key(tokens), lambda: _overview_of(self.lm, stats),
                     enabled=self.use_cache)

    def _layer_statistics(self, tokens: int, progress: bool) -> dict[str, dict[str, torch.Tensor]]:
        return score_layers(self.lm, self.calib, self.ffn_layers(), ("wd", "pos0_tail_share"), wd="auto",
                            max_tokens=tokens, max_bytes=int(READ_SHARE * available_memory()),
                            skip_first=self.skip_first, batch_size=READ_BATCH, n_bins=READ_BINS, progress=progress)

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
