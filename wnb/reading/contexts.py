"""What a layer's neurons read, once fed through a pass (:mod:`wnb.reading.reader`): :class:`NeuronContexts`
gives each neuron's highest and lowest outputs with their contexts, seeded examples of every band of its
standardized distribution, its outputs by position, and a token table; it is stored as plain tensors and
numbers (its state) in wnb's cache."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from wnb.core.checks import check_int
from wnb.data.positions import SINK_SHARE, sink_flags
from wnb.data.tokens import decode_contexts, tokenizer_of
from wnb.errors import WnbError
from wnb.reading.extremes import BAND_LABELS, BANDS, EDGES

STATE_FORMAT = "wnb-contexts-1"
"""The format tag of a :class:`NeuronContexts` state (checked by :meth:`NeuronContexts.from_state`)."""

_TENSORS = {"windows": 2, "mean": 1, "std": 1, "high_values": 2, "high_index": 2, "low_values": 2, "low_index": 2,
            "sample_values": 3, "sample_index": 3, "bin_edges": 1, "bin_count": 1, "bin_mean": 2, "bin_std": 2}
_META = {"layer": str, "k": int, "n_samples": int, "seq_len": int, "skip_first": int, "seed": int, "n_tokens": int}


class NeuronContexts:
    """The contexts of every neuron of one layer (:func:`wnb.neuron_contexts`, :meth:`wnb.Readout.contexts`).

    ``top(neuron, side)`` gives the ``k`` highest or lowest outputs with their decoded contexts,
    ``samples(neuron, seed)`` seeded examples of every band, ``positions(neuron)`` the outputs by position,
    ``table()`` one row per neuron (moments, extremes, first-position share). ``to_state()`` /
    ``from_state(state, tokenizer)`` turn it into plain tensors, ints and strings (safetensors-cacheable).
    """

    def __init__(self, state: dict, tokenizer=None, width: int = 8):
        self.state = state
        self.tokenizer = tokenizer_of(tokenizer)
        self.width = check_int(width, "width", minimum=0)
        for name in _META:
            setattr(self, name, state[name])
        self.windows = state["windows"]
        self.mean, self.std = state["mean"], state["std"]

    # -- state

    def to_state(self) -> dict:
        """Plain tensors, ints and strings (no objects): store with safetensors + JSON metadata."""
        return dict(self.state)

    @classmethod
    def from_state(cls, state: dict, tokenizer=None, width: int = 8) -> "NeuronContexts":
        """Rebuild from :meth:`to_state`'s dict; ``tokenizer`` (or an ``LM``) decodes the contexts."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise WnbError(f"not a NeuronContexts state (expected format {STATE_FORMAT!r})")
        for name, dims in _TENSORS.items():
            if not isinstance(state.get(name), torch.Tensor) or state[name].dim() != dims:
                raise WnbError(f"NeuronContexts state: {name!r} must be a {dims}-D tensor")
        for name, kind in _META.items():
            if not isinstance(state.get(name), kind):
                raise WnbError(f"NeuronContexts state: {name!r} must be a {kind.__name__}")
        d, k = state["mean"].numel(), state["k"]
        if state["high_index"].shape != (k, d) or state["sample_index"].shape != (len(BANDS), state["n_samples"], d):
            raise WnbError("NeuronContexts state: the tensors' shapes do not match k, n_samples and the neurons")
        if state["windows"].shape[1] != state["seq_len"]:
            raise WnbError("NeuronContexts state: the windows do not have seq_len tokens")
        return cls(dict(state), tokenizer, width)

    def nbytes(self, windows: bool = False) -> int:
        """Bytes of the per-neuron state (and of the token windows when ``windows``)."""
        return sum(t.numel() * t.element_size() for name, t in self.state.items()
                   if isinstance(t, torch.Tensor) and (windows or name != "windows"))

    @property
    def n_neurons(self) -> int:
        return self.mean.numel()

    # -- per neuron

    def _neuron(self, neuron) -> int:
        neuron = check_int(neuron, "neuron", minimum=0)
        if neuron >= self.n_neurons:
            raise WnbError(f"neuron must be between 0 and {self.n_neurons - 1} for {self.layer or 'this layer'} "
                           f"(got {neuron})")
        return neuron

    def scale(self, neuron: int) -> float:
        """The largest ``|output|`` of ``neuron`` seen: one colour scale for its contexts and text probes
        (:func:`wnb.contexts_html`, :func:`wnb.activation_html`)."""
        neuron = self._neuron(neuron)
        return max(abs(float(self.state["high_values"][0, neuron])), abs(float(self.state["low_values"][0, neuron])))

    def z(self, values, neuron: int) -> np.ndarray:
        """Standardized outputs of ``neuron`` (NaN when it is constant)."""
        std = float(self.std[neuron])
        values = np.asarray(values, dtype=np.float64)
        return (values - float(self.mean[neuron])) / std if std > 0 else np.full(values.shape, np.nan)

    def _frame(self, index, values, neuron, width) -> pd.DataFrame:
        width = self.width if width is None else width
        frame = decode_contexts(self.tokenizer, self.windows, index, width)
        frame.insert(2, "value", np.asarray(values, dtype=np.float64))
        frame.insert(3, "z", self.z(values, neuron))
        return frame

    def top(self, neuron: int, side: str = "high", k: int | None = None, width: int | None = None) -> pd.DataFrame:
        """The ``k`` (default: all held) highest (``side="high"``) or lowest (``"low"``) outputs of ``neuron``:
        ``rank, window, position, value, z, token, left, right`` (and ``token_id``), most extreme first."""
        neuron = self._neuron(neuron)
        if side not in ("high", "low"):
            raise WnbError(f"side must be 'high' or 'low' (got {side!r})")
        index = self.state[f"{side}_index"][:, neuron]
        n = int((index >= 0).sum()) if k is None else min(check_int(k, "k"), int((index >= 0).sum()))
        frame = self._frame(index[:n], self.state[f"{side}_values"][:n, neuron].double(), neuron, width)
        frame.insert(0, "rank", np.arange(1, n + 1))
        return frame[["rank", "window", "position", "value", "z", "token", "left", "right", "token_id"]]

    def samples(self, neuron: int, seed: int = 0, per_band: int = 3, width: int | None = None) -> pd.DataFrame:
        """Up to ``per_band`` seeded examples of each band of ``neuron``'s standardized outputs (:data:`BANDS`):
        ``band, label, window, position, value, z, token, left, right, token_id``, by band then z.
        The examples are drawn (with ``seed``) from the ``n_samples`` kept per band."""
        neuron = self._neuron(neuron)
        per_band = check_int(per_band, "per_band")
        seed = check_int(seed, "seed", minimum=0)
        index = self.state["sample_index"][:, :, neuron].flatten()
        values = self.state["sample_values"][:, :, neuron].flatten().double()
        valid = index >= 0
        index, values = index[valid], values[valid]
        order = torch.argsort(index)
        index, values = index[order], values[order]
        z = torch.from_numpy(self.z(values.numpy(), neuron))
        band = torch.bucketize(z, torch.tensor(EDGES, dtype=torch.float64))
        band[torch.isnan(z)] = BANDS.index((-1.0, 1.0))  # a constant neuron: all bulk
        gen = torch.Generator().manual_seed(seed)
        chosen = []
        for b in range(len(BANDS)):
            members = torch.nonzero(band == b).flatten()
            chosen.append(members[torch.randperm(members.numel(), generator=gen)[:per_band]])
        chosen = torch.cat(chosen)
        frame = self._frame(index[chosen], values[chosen], neuron, width)
        frame.insert(0, "band", band[chosen].numpy())
        frame.insert(1, "label", [BAND_LABELS[b] for b in band[chosen].tolist()])
        frame = frame.sort_values(["band", "z"], kind="stable").reset_index(drop=True)
        return frame[["band", "label", "window", "position", "value", "z", "token", "left", "right", "token_id"]]

    def positions(self, neuron: int) -> pd.DataFrame:
        """``neuron``'s outputs by position bin of the window: ``first, last`` (positions, inclusive),
        ``count, mean, std`` and the same standardized (``mean_z, std_z``)."""
        neuron = self._neuron(neuron)
        edges = self.state["bin_edges"].tolist()
        mean, std = self.state["bin_mean"][:, neuron].numpy(), self.state["bin_std"][:, neuron].numpy()
        scale = float(self.std[neuron])
        frame = pd.DataFrame({"first": edges[:-1], "last": [e - 1 for e in edges[1:]],
                              "count": self.state["bin_count"].numpy(), "mean": mean, "std": std,
                              "mean_z": (mean - float(self.mean[neuron])) / scale if scale > 0 else np.nan,
                              "std_z": std / scale if scale > 0 else np.nan})
        return frame[frame["count"] > 0].reset_index(drop=True)

    # -- whole layer

    def first_position_share(self) -> torch.Tensor:
        """Per neuron (``[d]`` float64), the share of its ``k`` most extreme outputs (largest ``|z|``, from the
        held highest and lowest) at the first position kept (position ``skip_first``: by default the first
        token of every window, the usual attention sink). NaN for constant neurons."""
        values = torch.cat([self.state["high_values"], self.state["low_values"]]).double()
        index = torch.cat([self.state["high_index"], self.state["low_index"]])
        k = self.state["k"]
        dup = (self.state["low_index"][:, None] == self.state["high_index"][None]).any(1)  # held on both sides
        dup = torch.cat([torch.zeros_like(dup), dup]) | (index < 0)
        dist = ((values - self.mean) / torch.where(self.std > 0, self.std, torch.ones_like(self.std))).abs()
        dist[dup] = -1
        order = torch.argsort(index, dim=0)
        order = order.gather(0, torch.argsort(dist.gather(0, order), dim=0, descending=True, stable=True))
        top = order[:k]
        n = (dist.gather(0, top) >= 0).sum(0).clamp_min(1)
        at_first = (index.gather(0, top) % self.seq_len == self.skip_first) & (dist.gather(0, top) >= 0)
        share = at_first.sum(0).double() / n
        share[~(self.std > 0)] = float("nan")
        return share

    def table(self, sink_share: float | None = None) -> pd.DataFrame:
        """One row per neuron: ``neuron, mean, std, min, max, first_share`` (:meth:`first_position_share`)
        and ``sink`` (``first_share >= sink_share``, default :data:`wnb.data.positions.SINK_SHARE`)."""

        share = self.first_position_share()
        return pd.DataFrame({"neuron": np.arange(self.n_neurons), "mean": self.mean.numpy(), "std": self.std.numpy(),
                             "min": self.state["low_values"][0].double().numpy(),
                             "max": self.state["high_values"][0].double().numpy(),
                             "first_share": share.numpy(),
                             "sink": sink_flags(share, SINK_SHARE if sink_share is None else sink_share).numpy()})

    def __repr__(self) -> str:
        return (f"NeuronContexts({self.layer!r}, neurons={self.n_neurons}, tokens={self.n_tokens}, k={self.k}, "
                f"skip_first={self.skip_first})")


# ---------------------------------------------------------------- entry points


