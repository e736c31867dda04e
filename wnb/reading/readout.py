"""What one reading pass (:func:`wnb.read_model`) found, layer by layer, as plain tensors.

A :class:`Readout` holds per layer float64 tensors (``stats``: one value per neuron, or per position bin and
neuron), the contexts of every neuron when they were read (:class:`wnb.NeuronContexts` states, or a function
that loads one layer's state from the cache), the token windows read, and ``meta`` (the plan: layers, tokens,
method, memory; seconds taken). What the command, the app's overview, "What it reads" and the sign study's
ranking need comes from its methods; ``to_state()`` / ``Readout.from_state()`` turn its statistics into and
back from tensors, strings and numbers, which :func:`wnb.core.cache.cached` stores as one safetensors file
(:func:`wnb.reading.reader.cached_reading` stores each layer's contexts under the key the app reads).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from wnb.data.positions import SINK_SHARE, sink_flags
from wnb.errors import WnbError
from wnb.model.architectures import block_of
from wnb.reading.contexts import NeuronContexts
from wnb.scoring.tables import overview_table

FORMAT = "wnb-readout-1"
PER_NEURON = ("wd", "mean", "variance", "skewness", "kurtosis", "frac_negative", "wd_lower", "wd_upper",
              "wd_below_zero", "wd_above_zero", "pos0_tail_share")
"""Statistics held per neuron (``[d]`` float64). ``wd_lower``/``wd_upper``: the WD integral over standardized
outputs below/above the mean; ``wd_below_zero``/``wd_above_zero``: below/above raw zero (``z = −mean/std``)."""
PER_POSITION = ("bin_edges", "bin_count", "bin_mean", "bin_std")
"""Outputs by position bin of the window (:func:`wnb.data.positions.position_bins`): edges, tokens, mean and std."""


class Readout:
    """The result of :func:`wnb.read_model` (see the module docstring)."""

    def __init__(self, meta: dict, stats: dict[str, dict[str, torch.Tensor]], contexts=None,
                 windows: torch.Tensor | None = None):
        """``contexts``: ``{layer: NeuronContexts state}``, or a function ``layer -> state or None`` (e.g. a
        cache lookup), or None when no contexts were read."""
        self.meta = dict(meta)
        self.stats = stats
        self.contexts_of = contexts
        self.windows = windows
        self.layers = list(stats)

    def __repr__(self) -> str:
        return (f"Readout({len(self.layers)} layer(s), {self.n_tokens:,} tokens, wd={self.meta.get('wd')!r}, "
                f"contexts={self.meta.get('contexts', 0)})")

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    def _layer(self, layer: str) -> dict[str, torch.Tensor]:
        if layer not in self.stats:
            raise WnbError(f"{layer!r} was not read; read layers: {', '.join(self.layers[:5])}"
                           f"{' …' if len(self.layers) > 5 else ''}")
        return self.stats[layer]

    # -- whole model

    def scores(self) -> dict[str, torch.Tensor]:
        """WD per neuron of every layer: what :func:`wnb.layer_scores` and the sign study rank by."""
        return {name: s["wd"] for name, s in self.stats.items()}

    def layer_statistics(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{layer: {"wd", "pos0_tail_share"}}``, as :func:`wnb.layer_statistics` returns (the app's overview)."""
        return {name: {"wd": s["wd"], "pos0_tail_share": s["pos0_tail_share"]} for name, s in self.stats.items()}

    def neuron_stats(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{layer: {"wd", "mean", "variance", "pos0_tail_share"}}`` (what ``wnb score`` writes per neuron)."""
        keys = ("wd", "mean", "variance", "pos0_tail_share")
        return {name: {k: s[k] for k in keys} for name, s in self.stats.items()}

    def overview(self, lm, fraction: float = 0.03, top: int = 5) -> pd.DataFrame:
        """One row per layer: :func:`wnb.overview_table` with the first-position ``sinks`` columns."""
        shares = {name: s["pos0_tail_share"] for name, s in self.stats.items()}
        return overview_table(lm, self.scores(), fraction, top, pos0_shares=shares)

    def neurons(self, lm=None) -> pd.DataFrame:
        """Every neuron of every layer: ``layer`` (and ``block``, ``kind`` given ``lm``), then :meth:`table`'s
        columns, in layer order and by WD within a layer."""
        frames = []
        for name in self.layers:
            frame = self.table(name)
            frame.insert(0, "layer", name)
            if lm is not None:
                frame.insert(1, "block", block_of(lm, name))
                frame.insert(2, "kind", name.rsplit(".", 1)[-1])
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    # -- one layer

    def table(self, layer: str, weight: torch.Tensor | None = None, sink_share: float | None = None) -> pd.DataFrame:
        """One row per neuron of ``layer``, most entangled first: ``rank, neuron`` and :data:`PER_NEURON`, plus
        ``lower_share`` (``wd_lower / wd``), ``zero_lower_share`` (``wd_below_zero / wd``) and ``sink``
        (``pos0_tail_share >= sink_share``, default :data:`wnb.data.positions.SINK_SHARE`); ``weight_norm`` given the
        layer's ``weight [d, d_in]``. The columns of :func:`wnb.neuron_table` (``sign=True``) keep their names."""
        s = self._layer(layer)
        table = pd.DataFrame({"neuron": np.arange(s["wd"].numel())})
        for name in PER_NEURON:
            table[name] = s[name].numpy()
        table["lower_share"] = (s["wd_lower"] / s["wd"]).numpy()
        table["zero_lower_share"] = (s["wd_below_zero"] / s["wd"]).numpy()
        table["sink"] = sink_flags(s["pos0_tail_share"], SINK_SHARE if sink_share is None else sink_share).numpy()
        if weight is not None:
            table["weight_norm"] = torch.linalg.vector_norm(weight.detach().double().cpu(), dim=1).numpy()
        table = table.sort_values("wd", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
        table.insert(0, "rank", np.arange(1, len(table) + 1))
        return table

    def positions(self, layer: str, neuron: int) -> pd.DataFrame:
        """``neuron``'s outputs by position bin: ``first, last, count, mean, std`` (as
        :meth:`wnb.NeuronContexts.positions`, without contexts)."""
        s = self._layer(layer)
        edges = s["bin_edges"].long().tolist()
        neuron = int(neuron)
        if not 0 <= neuron < s["wd"].numel():
            raise WnbError(f"neuron must be between 0 and {s['wd'].numel() - 1} for {layer} (got {neuron})")
        frame = pd.DataFrame({"first": edges[:-1], "last": [e - 1 for e in edges[1:]],
                              "count": s["bin_count"].long().numpy(), "mean": s["bin_mean"][:, neuron].numpy(),
                              "std": s["bin_std"][:, neuron].numpy()})
        return frame[frame["count"] > 0].reset_index(drop=True)

    def contexts(self, layer: str, tokenizer=None, width: int = 8):
        """:class:`wnb.NeuronContexts` of ``layer`` (read with ``contexts=k``); ``tokenizer`` or an ``LM`` decodes."""
        return NeuronContexts.from_state(self.contexts_state(layer), tokenizer, width)

    def contexts_state(self, layer: str) -> dict:
        """The :class:`wnb.NeuronContexts` state of ``layer`` (what ``Session.contexts`` reads per layer)."""
        self._layer(layer)
        if not self.meta.get("contexts"):
            raise WnbError("this reading kept no contexts; read with contexts=k (e.g. 20)")
        found = self.contexts_of(layer) if callable(self.contexts_of) else (self.contexts_of or {}).get(layer)
        if found is None:
            raise WnbError(f"the contexts of {layer} are no longer stored (the cache dropped them); read again")
        return found

    # -- state

    def to_state(self) -> dict:
        """The statistics, meta and windows as tensors, strings, numbers, lists and dicts only (for
        :func:`wnb.core.cache.cached`); the contexts are stored layer by layer (:meth:`contexts_state`)."""
        return {"format": FORMAT, "meta": self.meta, "stats": self.stats,
                "windows": self.windows if self.windows is not None else torch.zeros(0, 0, dtype=torch.int32)}

    @classmethod
    def from_state(cls, state: dict, contexts=None) -> "Readout":
        """Rebuild from :meth:`to_state`'s dict (e.g. read back from the cache); refuses anything else.
        ``contexts``: as for the constructor."""
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise WnbError(f"not a Readout state (expected format {FORMAT!r})")
        stats = state.get("stats")
        if not isinstance(stats, dict) or not all(isinstance(s, dict) for s in stats.values()):
            raise WnbError("Readout state: 'stats' must map layer names to dicts of tensors")
        for name, s in stats.items():
            missing = [k for k in PER_NEURON + PER_POSITION if not isinstance(s.get(k), torch.Tensor)]
            if missing:
                raise WnbError(f"Readout state: {name} lacks the tensors {missing}")
        windows = state.get("windows")
        return cls(dict(state.get("meta") or {}), stats, contexts,
                   windows if isinstance(windows, torch.Tensor) and windows.numel() else None)
