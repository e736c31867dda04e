"""Reading every neuron of a layer in one pass with memory per neuron: the accumulator and its builders.

``ctx = wnb.neuron_contexts(lm, layer, windows)`` runs the capture once (nnsight, batch by batch, no
outputs kept) and feeds each batch to a :class:`ContextAccumulator`, which holds per neuron:

- the ``k`` highest and the ``k`` lowest outputs with their flat token index (window-major:
  ``window · seq_len + position``), merged batch by batch; ties go to the lower flat index, so the result
  is that of a full sort by (value, index) whatever the batch sizes;
- running sums for the mean and the (population) standard deviation, float64 across batches, per
  position bin of the window (positions 0, 1, 2, 3, then 4–7, 8–15, … doubling), which give the
  outputs by position and the overall moments;
- ``n_samples`` seeded examples per band of the standardized distribution (:data:`BANDS`). Each token has
  a pseudo-random key (a fixed bijective hash of its flat index and ``seed``, independent of the
  batches); a band keeps the ``n_samples`` members with the smallest keys among those looked at, a
  uniform sample of the band. Members beyond ±3σ are looked at on every token; those within ±3σ (common)
  on the lowest-key 1/32 of each batch's tokens (at least 64), which keeps the sample uniform.
  Bands are assigned with the mean and std of the batches seen so far (the first batch: its own), so
  the examples depend a little on the batch size; :meth:`NeuronContexts.samples` re-assigns every kept
  example with the final mean and std, so one near a band edge can come from the neighbouring band's draw.

Its state is ``O((k + 7·n_samples) · d_out)`` whatever the number of tokens; the only per-token part of a
:class:`NeuronContexts` is the token windows themselves (4 bytes a token), kept to decode contexts. The
passes over each batch run on its device (one comparison and one ``nonzero`` select a few per cent of
the elements); the merges of what they select run in numpy on the CPU, a few batches at a time.
"""
from __future__ import annotations

import math

import torch

from wnb.core.checks import check_int
from wnb.core.tensors import to_numpy
from wnb.data.positions import check_skip, position_bins
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.architectures import check_layers, layer_weight
from wnb.reading.contexts import STATE_FORMAT, NeuronContexts
from wnb.reading.extremes import RARE, BandSamples, RunningExtremes
from wnb.tracing.capture import capture


class ContextAccumulator:
    """Everything :class:`NeuronContexts` needs, fed one batch of a layer's outputs at a time.

    ``update(outputs, start)`` takes ``[b, d]`` outputs (any device and dtype) of the flat tokens
    ``start … start + b − 1`` of windows of ``seq_len`` tokens (window-major); positions below
    ``skip_first`` are left out of every statistic. :meth:`finish` gives the result. The passes over a
    batch run on its device; what they select (a few per cent of the elements) is merged on the CPU.
    The top and bottom ``k`` do not depend on how the tokens are split into batches; the band samples
    do (bands are set with the moments of the batches before).
    """

    def __init__(self, n_neurons: int, seq_len: int, k: int = 20, n_samples: int = 8, skip_first: int = 0,
                 seed: int = 0):

        self.d = check_int(n_neurons, "n_neurons")
        self.seq_len, self.skip_first = check_skip(seq_len, skip_first)
        self.k = check_int(k, "k")
        self.n_samples = check_int(n_samples, "n_samples")
        self.seed = check_int(seed, "seed", minimum=0)
        self.edges = position_bins(self.seq_len, self.skip_first)
        self.n_tokens = 0
        self._started = False
        self.extremes = RunningExtremes(self.d, self.k)
        self.bands = BandSamples(self.d, self.n_samples, self.seed)

    def _start(self, y: torch.Tensor, keep) -> None:
        dev = y.device
        first = y if keep is None else y[keep]
        self.center = first.double().mean(0)
        self._center32 = self.center.float()
        n_bins = len(self.edges) - 1
        self.bin_count = torch.zeros(n_bins + 1, dtype=torch.long, device=dev)
        self.bin_s1 = torch.zeros(n_bins + 1, self.d, dtype=torch.float64, device=dev)
        self.bin_s2 = torch.zeros_like(self.bin_s1)
        # bin of each position; dropped positions go to the extra last bin, never read
        pos = torch.arange(self.seq_len)
        bins = torch.searchsorted(torch.tensor(self.edges), pos, right=True) - 1
        self._bin_of = torch.where(pos >= self.skip_first, bins, torch.full_like(bins, n_bins)).to(dev)
        self._started = True

    @torch.no_grad()
    def update(self, outputs: torch.Tensor, start: int) -> "ContextAccumulator":
        """Add the outputs ``[b, d]`` of flat tokens ``start … start + b − 1``; returns self."""
        if outputs.dim() != 2 or outputs.shape[1] != self.d:
            raise WnbError(f"outputs must be [tokens, {self.d}] (got shape {tuple(outputs.shape)})")
        y = outputs.detach().float().contiguous()
        if y.shape[0] == 0:
            return self
        pos = torch.arange(start, start + y.shape[0], device=y.device) % self.seq_len
        keep = None if self.skip_first == 0 else pos >= self.skip_first
        if keep is not None and not keep.any():
            return self
        if not self._started:
            self._start(y, keep)
        counts, s1, s2, d2 = self._bin_sums(y, pos)
        if self.n_tokens == 0:  # the first batch's bands use its own moments
            mean, std = self._moments(s1, s2, counts)
        else:
            mean, std = self._moments(self.bin_s1, self.bin_s2, self.bin_count)
        self.bin_s1 += s1
        self.bin_s2 += s2
        self.bin_count += counts
        rare, candidates = self._beyond(y, d2, start, keep, mean, std)
        del d2
        self.extremes.update(y, start, keep, candidates)
        self.bands.update(y, start, keep, to_numpy(mean), to_numpy(std), rare)
        self.n_tokens += int(counts[:-1].sum())
        return self

    def _bin_sums(self, y, pos):
        """Per position bin: token count, and float64 sums of ``d = y − center`` and ``d²`` (one matmul each
        with the bins' indicator matrix, float32 within the batch); also returns ``d²``."""
        bins = self._bin_of[pos]
        onehot = torch.zeros(self.bin_count.numel(), y.shape[0], device=y.device)
        onehot[bins, torch.arange(y.shape[0], device=y.device)] = 1.0
        if self.skip_first:
            onehot[-1] = 0
        d = y - self._center32
        s1 = (onehot @ d).double()
        d2 = d.mul_(d)
        s2 = (onehot @ d2).double()
        if not (torch.isfinite(s1).all() and torch.isfinite(s2).all()):
            raise WnbError("the outputs contain NaN or infinite values; check the model's dtype (float16 overflows?)")
        return torch.bincount(bins, minlength=self.bin_count.numel()), s1, s2, d2

    def _beyond(self, y, d2, start, keep, mean, std):
        """One pass over ``d² = (y − center)²`` finds a superset of the elements beyond ±3 std (for the band
        samples) and, once ``k`` are held and the batch comes after them, beyond the held k-th values (for
        the extremes); both are then picked exactly from it on the CPU. Returns ``(rare, candidates or None)``."""
        ext = self.extremes
        thr_hi, thr_lo = ext.thresholds("high"), ext.thresholds("low")
        use = thr_hi is not None and start > ext.max_index
        bound = RARE * std - (mean - self.center).abs()  # |y − mean| > 3 std implies |y − center| > this
        scale = self.center.abs() + mean.abs() + RARE * std
        if use:
            hi, lo = (torch.from_numpy(t).to(y.device, torch.float64) for t in (thr_hi, thr_lo))
            bound = torch.minimum(bound, torch.minimum(hi - self.center, self.center - lo))
            scale = scale + hi.abs() + lo.abs()
        bound = bound - 1e-6 * scale  # margin for float32 rounding of d and d²
        # no bound (threshold on the centre's wrong side): every element is a candidate, even d = 0
        mask = d2 > torch.where(bound > 0, bound * bound * (1 - 1e-6), -1.0).float()
        if keep is not None:
            mask &= keep[:, None]
        lin = mask.view(-1).nonzero().squeeze(1)
        del mask
        values = to_numpy(y.view(-1).take(lin))
        lin = to_numpy(lin)
        rows, cols = lin // self.d, lin % self.d
        rare = {"rows": rows, "cols": cols, "values": values}
        if not use:
            return rare, None
        out = {}
        for side, pick in (("high", values > thr_hi[cols]), ("low", values < thr_lo[cols])):
            out[side] = (rows[pick], cols[pick], values[pick])
        return rare, out

    def _moments(self, s1, s2, counts) -> tuple[torch.Tensor, torch.Tensor]:
        n = counts[:-1].sum().double()
        shift = s1[:-1].sum(0) / n
        return self.center + shift, (s2[:-1].sum(0) / n - shift * shift).clamp_min(0).sqrt()

    def finish(self, windows, tokenizer=None, layer: str = "", width: int = 8) -> "NeuronContexts":
        """The :class:`NeuronContexts` of everything fed so far (``windows [n, seq_len]``: their token ids;
        ``tokenizer`` or an ``LM`` decodes them; ``width`` tokens of context each side)."""
        if self.n_tokens < 2:
            raise WnbError(f"at least 2 tokens are needed for contexts with z-scores (got {self.n_tokens})")
        mean, std = self._moments(self.bin_s1, self.bin_s2, self.bin_count)
        counts = self.bin_count[:-1].double()
        shift = self.bin_s1[:-1] / counts.clamp_min(1)[:, None]
        bin_var = (self.bin_s2[:-1] / counts.clamp_min(1)[:, None] - shift * shift).clamp_min(0)
        ext = self.extremes.flush()
        sample_values, sample_index = self.bands.flush().state()
        state = {"format": STATE_FORMAT, "layer": layer, "k": self.k, "n_samples": self.n_samples,
                 "seq_len": self.seq_len, "skip_first": self.skip_first, "seed": self.seed, "n_tokens": self.n_tokens,
                 "windows": torch.as_tensor(windows).to(torch.int32).cpu(),
                 "mean": mean.cpu(), "std": std.cpu(),
                 "high_values": torch.from_numpy(ext.values["high"].copy()),
                 "high_index": torch.from_numpy(ext.index["high"].copy()),
                 "low_values": torch.from_numpy(ext.values["low"].copy()),
                 "low_index": torch.from_numpy(ext.index["low"].copy()),
                 "sample_values": sample_values.cpu(), "sample_index": sample_index.cpu(),
                 "bin_edges": torch.tensor(self.edges), "bin_count": self.bin_count[:-1].cpu(),
                 "bin_mean": (self.center + shift).cpu(), "bin_std": bin_var.sqrt().cpu()}
        return NeuronContexts.from_state(state, tokenizer, width)


def contexts_from_outputs(outputs: torch.Tensor, windows, tokenizer=None, layer: str = "", k: int = 20,
                          width: int = 8, skip_first: int = 0, n_samples: int = 8, seed: int = 0,
                          batch_tokens: int = 4096) -> NeuronContexts:
    """:class:`NeuronContexts` of an already captured layer: ``outputs [N, d]`` of ``windows [n, seq_len]``
    flattened window-major (``N <= n · seq_len``: the first ``N`` tokens), fed ``batch_tokens`` rows at a time."""

    windows = check_windows(windows)
    if outputs.dim() != 2 or not 0 < outputs.shape[0] <= windows.numel():
        raise WnbError(f"outputs must be [N, d_out] with 0 < N <= {windows.numel()} tokens of the windows "
                       f"(got shape {tuple(outputs.shape)})")
    batch_tokens = check_int(batch_tokens, "batch_tokens")
    acc = ContextAccumulator(outputs.shape[1], windows.shape[1], k, n_samples, skip_first, seed)
    for start in range(0, outputs.shape[0], batch_tokens):
        acc.update(outputs[start:start + batch_tokens], start)
    return acc.finish(windows[: math.ceil(outputs.shape[0] / windows.shape[1])], tokenizer, layer, width)


def neuron_contexts(lm, layer: str, windows, k: int = 20, width: int = 8, progress: bool = True,
                    skip_first: int = 0, batch_size: int = 8, max_tokens: int | None = None, n_samples: int = 8,
                    seed: int = 0) -> NeuronContexts:
    """The contexts of every neuron of ``layer`` over ``windows`` in one capture pass (see the module docstring).

    Keeps per neuron the ``k`` highest and lowest outputs, ``n_samples`` seeded examples per band, the
    mean and std and the outputs by position; memory ``O((k + 7·n_samples) · d_out)`` whatever the number
    of tokens. ``skip_first`` leaves the first positions of every window out (positions in the result
    stay those of the windows); ``width`` is the tokens of context shown each side; ``max_tokens`` caps
    the tokens (the first windows); ``batch_size`` is windows per batch.
    """

    if not isinstance(layer, str):
        raise WnbError(f"layer must be one layer name, e.g. from wnb.ffn_layers(lm) (got {layer!r})")
    (layer,) = check_layers(lm, [layer])
    windows = check_windows(windows, lm)
    check_int(width, "width", minimum=0)
    acc = ContextAccumulator(layer_weight(lm, layer).shape[0], windows.shape[1], k, n_samples, skip_first, seed)
    seen = [0]

    def feed(batch):
        y = batch[layer].outputs
        acc.update(y, seen[0])
        seen[0] += y.shape[0]

    capture(lm, [layer], windows, max_tokens=max_tokens, batch_size=batch_size, inputs=False, progress=progress,
            on_batch=feed)
    used = windows[: math.ceil(seen[0] / windows.shape[1])]
    return acc.finish(used, lm.tokenizer, layer, width)
