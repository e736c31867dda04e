"""The contexts behind every neuron of a layer, from one capture pass with memory per neuron.

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

import numpy as np
import pandas as pd
import torch

from wnb.core.checks import check_int
from wnb.errors import WnbError

BANDS = ((-math.inf, -3.0), (-3.0, -2.0), (-2.0, -1.0), (-1.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, math.inf))
"""Bands of the standardized output ``z``, each ``(low, high]``: below −3σ, −3…−2σ, …, the bulk −1…1σ, …, above 3σ."""
BAND_LABELS = ("below -3σ", "-3σ to -2σ", "-2σ to -1σ", "-1σ to 1σ", "1σ to 2σ", "2σ to 3σ", "above 3σ")
_EDGES = (-3.0, -2.0, -1.0, 1.0, 2.0, 3.0)
_RARE = 3.0          # |z| beyond which every token is looked at for the band samples
_PREFIX_ROWS = 64    # at least this many lowest-key tokens of each batch are looked at for every band,
_PREFIX_SHARE = 32   # and at least 1/32 of them
_KEY_BITS = 44
_NO_KEY = 1 << 62
STATE_FORMAT = "wnb-contexts-1"


# ---------------------------------------------------------------- helpers

def token_keys(flat, seed: int):
    """A pseudo-random key in ``[0, 2^44)`` per flat token index: a bijection (xor-shift and odd multiply
    steps modulo 2^44), so distinct tokens never tie, the same for every batching and device. Takes and
    returns a numpy array or a torch tensor."""
    as_torch = isinstance(flat, torch.Tensor)
    x = flat.detach().cpu().numpy() if as_torch else np.asarray(flat)
    mask = np.int64((1 << _KEY_BITS) - 1)
    x = (x.astype(np.int64) + np.int64((int(seed) * 0x9E3779B97F4A7C15) % (1 << _KEY_BITS))) & mask
    for shift, mult in ((23, 0x6F4A7), (21, 0x4C957), (22, 0x7A3F1)):  # mult < 2^19: no int64 overflow
        x = x ^ (x >> shift)
        x = (x * np.int64(mult)) & mask
    x = x ^ (x >> 20)
    return torch.from_numpy(x).to(flat.device) if as_torch else x


def _ordered(values: np.ndarray) -> np.ndarray:
    """float32 → int64 with the same order (IEEE bits, negative magnitudes flipped)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _rank_in_group(group: np.ndarray, n_groups: int) -> np.ndarray:
    """Position of each element within its run of equal ``group`` values (``group`` sorted ascending)."""
    counts = np.bincount(group, minlength=n_groups)
    starts = np.cumsum(counts) - counts
    return np.arange(group.size) - starts[group]


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def position_bins(seq_len: int, skip_first: int = 0) -> list[int]:
    """Edges of the position bins over the kept positions: ``skip_first + (0, 1, 2, 3, 4, 8, 16, …)`` up to
    ``seq_len`` (last edge exclusive)."""
    edges, step = [0, 1, 2, 3, 4], 8
    while step < seq_len - skip_first:
        edges.append(step)
        step *= 2
    edges = [e for e in edges if e < seq_len - skip_first] + [seq_len - skip_first]
    return [skip_first + e for e in edges]


def _tokenizer_of(tokenizer):
    return getattr(tokenizer, "tokenizer", tokenizer) if not hasattr(tokenizer, "decode") else tokenizer


def decode(tokenizer, ids) -> str:
    """Text of token ids: ``tokenizer.decode`` (no clean-up of spaces), or ``[id]`` per token without one."""
    ids = [int(i) for i in ids]
    tokenizer = _tokenizer_of(tokenizer)
    if tokenizer is None:
        return "".join(f"[{i}]" for i in ids)
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False) if ids else ""


def decode_contexts(tokenizer, windows: torch.Tensor, flat, width: int = 8) -> pd.DataFrame:
    """``window, position, token_id, token, left, right`` for flat token indices of ``windows [n, seq_len]``:
    ``token`` is the decoded token, ``left`` / ``right`` the decoded ``width`` tokens before / after it in its
    window (fewer at the window's edges)."""
    width = check_int(width, "width", minimum=0)
    seq_len = windows.shape[1]
    flat = torch.as_tensor(flat).long().flatten().tolist()
    rows = []
    for f in flat:
        w, p = divmod(f, seq_len)
        ids = windows[w].tolist()
        rows.append({"window": w, "position": p, "token_id": ids[p], "token": decode(tokenizer, ids[p:p + 1]),
                     "left": decode(tokenizer, ids[max(0, p - width):p]),
                     "right": decode(tokenizer, ids[p + 1:p + 1 + width])})
    return pd.DataFrame(rows, columns=["window", "position", "token_id", "token", "left", "right"])


# ---------------------------------------------------------------- running extremes

_PAD = {"high": -np.inf, "low": np.inf}


class RunningExtremes:
    """The ``k`` highest and ``k`` lowest values of every column, with their flat indices, merged batch by batch.

    Order is by value, ties by the lower index, exactly as one full sort of all values would give. Once
    ``k`` values are held, only the elements beyond the current k-th value of their column are merged:
    one sort by (column, value, index) of them and of the held values of their columns. The state is
    numpy on the CPU (small); the comparisons over a batch run where the batch is.
    """

    def __init__(self, n_neurons: int, k: int):
        self.k, self.d = int(k), int(n_neurons)
        self.values = {side: np.full((self.k, self.d), _PAD[side], dtype=np.float32) for side in _PAD}
        self.index = {side: np.full((self.k, self.d), -1, dtype=np.int64) for side in _PAD}
        self.n_seen = 0
        self.max_index = -1
        self._pending = {side: [] for side in _PAD}  # candidates not merged yet, in index order
        self._pending_n = {side: 0 for side in _PAD}

    def thresholds(self, side: str) -> np.ndarray | None:
        """The k-th value per column held at the last merge: an element must pass it to enter (the true k-th
        value can only be further out, so this bounds the candidates); None until k are held."""
        return self.values[side][-1] if self.n_seen >= self.k else None

    def flush(self) -> "RunningExtremes":
        """Merge the candidates kept back (merges wait until they are about as many as the held values)."""
        for side in _PAD:
            if self._pending[side]:
                values, index, cols = (np.concatenate(t) for t in zip(*self._pending[side]))
                self._pending[side], self._pending_n[side] = [], 0
                self._merge(side, values, index, cols, after=True)
        return self

    def update(self, y: torch.Tensor, start: int, keep: torch.Tensor | None = None,
               candidates: dict | None = None) -> None:
        """Add ``y [b, d]`` (float32, contiguous), whose rows are the flat indices ``start … start + b − 1``;
        rows with ``keep`` False are ignored. ``candidates`` may give, per side, numpy ``(rows, cols, values)``
        in row-major order holding every kept element beyond :meth:`thresholds` (valid when ``start`` is
        above every held index)."""
        n_kept = y.shape[0] if keep is None else int(keep.sum())
        if n_kept == 0:
            return
        after = start > self.max_index
        steady = after and self.n_seen >= self.k  # k held, new indices above them: merging can wait
        if not steady:
            self.flush()
        for side in _PAD:
            if candidates is not None and side in candidates:
                rows, cols, values = candidates[side]
            else:
                rows, cols, values = self._candidates(y, keep, n_kept, side, after)
            if steady:
                self._pending[side].append((values, start + rows, cols))
                self._pending_n[side] += cols.size
                if self._pending_n[side] >= self.k * self.d:
                    self.flush()
            else:
                self._merge(side, values, start + rows, cols, after)
        self.n_seen += n_kept
        self.max_index = max(self.max_index, start + y.shape[0] - 1)

    def _candidates(self, y, keep, n_kept, side, after):
        thr = self.thresholds(side)
        high = side == "high"
        if thr is None:  # fewer than k held: the batch's own k-th value bounds what can enter
            kept = y if keep is None else y[keep]
            thr = kept.topk(min(self.k, n_kept), dim=0, largest=high).values[-1]
            after = False  # elements equal to the batch's k-th value may enter
        else:
            thr = torch.from_numpy(thr).to(y.device)
        if after:
            mask = y > thr if high else y < thr
        else:
            mask = y >= thr if high else y <= thr
        if keep is not None:
            mask &= keep[:, None]
        lin = mask.view(-1).nonzero().squeeze(1)
        values = _numpy(y.view(-1).take(lin))
        lin = _numpy(lin)
        return lin // self.d, lin % self.d, values

    def _merge(self, side, values, index, cols, after: bool) -> None:
        """Merge candidates into the held values of their columns: one stable sort by (column, value), after a
        stable sort by index unless the candidates all come after the held ones in index order."""
        if cols.size == 0:
            return
        held_v, held_i = self.values[side], self.index[side]
        touched = np.zeros(self.d, dtype=bool)
        touched[cols] = True
        tc = np.flatnonzero(touched)
        hv, hi = held_v[:, tc].T.ravel(), held_i[:, tc].T.ravel()  # column by column, in rank order
        valid = hi >= 0
        all_c = np.concatenate([np.repeat(tc, self.k)[valid], cols])
        all_v = np.concatenate([hv[valid], values.astype(np.float32)])
        all_i = np.concatenate([hi[valid], index])
        order = np.arange(all_i.size) if after else np.argsort(all_i, kind="stable")
        key = _ordered(all_v[order])
        key = -key if side == "high" else key
        # stable: equal values keep their order, i.e. the lower index first
        order = order[np.argsort(all_c[order] * (1 << 33) + key + (1 << 32), kind="stable")]
        cols_sorted = all_c[order]
        rank = _rank_in_group(cols_sorted, self.d)
        take = rank < self.k
        held_v[:, tc] = _PAD[side]
        held_i[:, tc] = -1
        held_v[rank[take], cols_sorted[take]] = all_v[order][take]
        held_i[rank[take], cols_sorted[take]] = all_i[order][take]


# ---------------------------------------------------------------- band samples

class BandSamples:
    """``n_samples`` members per band and column with the smallest token keys (a seeded uniform sample).

    State ``[bands · d, n_samples]`` numpy arrays (group = band · d + column), keys ascending in a group.
    """

    def __init__(self, n_neurons: int, n_samples: int, seed: int):
        self.d, self.r, self.seed = int(n_neurons), int(n_samples), int(seed)
        self.groups = len(BANDS) * self.d
        self.key = np.full((self.groups, self.r), _NO_KEY, dtype=np.int64)
        self.index = np.full((self.groups, self.r), -1, dtype=np.int64)
        self.values = np.zeros((self.groups, self.r), dtype=np.float32)
        self.edges = np.array(_EDGES)
        self._pending, self._pending_n = [], 0  # candidates not merged yet

    def flush(self) -> "BandSamples":
        """Merge the candidates kept back (merges wait until they are about as many as the held samples)."""
        if self._pending:
            group, key, index, values = (np.concatenate(t) for t in zip(*self._pending))
            self._pending, self._pending_n = [], 0
            self._merge(group, key, index, values)
        return self

    def update(self, y, start: int, keep, mean: np.ndarray, std: np.ndarray, rare: dict) -> None:
        """Add a batch ``y [b, d]`` of flat tokens ``start …``: ``mean`` and ``std`` ``[d]`` set the bands;
        ``rare`` holds numpy ``rows``, ``cols`` and ``values`` of every kept element beyond ±3 std (or more)."""
        keys = token_keys(np.arange(start, start + y.shape[0]), self.seed)
        if keep is not None:
            keys = np.where(_numpy(keep), keys, _NO_KEY)
        n_kept = y.shape[0] if keep is None else int(keep.sum())
        n_prefix = min(max(_PREFIX_ROWS, -(-n_kept // _PREFIX_SHARE)), n_kept)
        prefix = np.sort(np.argpartition(keys, n_prefix - 1)[:n_prefix]) if n_prefix < keys.size else np.arange(keys.size)
        safe = np.where(std > 0, std, 1.0)
        limit = self.key[:, -1]  # a key must be below its group's n-th held key to enter
        parts = [self._prefix(y, prefix, keys, mean, safe, limit), self._rare(y, prefix, keys, mean, safe, limit, rare)]
        group, key, rows, values = (np.concatenate(t) for t in zip(*parts))
        # the limits used were those of the last merge: looser than the true ones, so nothing is missed
        self._pending.append((group, key, start + rows, values))
        self._pending_n += group.size
        if self._pending_n >= self.key.size // 2:
            self.flush()

    def _prefix(self, y, prefix, keys, mean, safe, limit):
        """Every element of the lowest-key rows that can enter its band."""
        values = _numpy(y.index_select(0, torch.from_numpy(prefix).to(y.device)))
        group = np.searchsorted(self.edges, (values - mean) / safe, side="left") * self.d + np.arange(self.d)
        r, c = np.nonzero(keys[prefix][:, None] < limit[group])
        return group[r, c], keys[prefix[r]], prefix[r], values[r, c]

    def _rare(self, y, prefix, keys, mean, safe, limit, rare):
        """The elements beyond ±3 std outside the prefix rows that can enter their band."""
        rows, cols, values = rare["rows"], rare["cols"], rare["values"]
        z = (values - mean[cols]) / safe[cols]
        in_prefix = np.zeros(y.shape[0], dtype=bool)
        in_prefix[prefix] = True
        pick = (np.abs(z) > _RARE) & ~in_prefix[rows]
        rows, cols, z, values = rows[pick], cols[pick], z[pick], values[pick]
        group = np.searchsorted(self.edges, z, side="left") * self.d + cols
        key = keys[rows]
        ok = key < limit[group]
        return group[ok], key[ok], rows[ok], values[ok]

    def _merge(self, group, key, index, values) -> None:
        """Keep, per touched group, the ``n_samples`` smallest keys of held and new entries (keys are unique)."""
        if group.size == 0:
            return
        touched = np.zeros(self.groups, dtype=bool)
        touched[group] = True
        tg = np.flatnonzero(touched)
        hk, hi, hv = self.key[tg].ravel(), self.index[tg].ravel(), self.values[tg].ravel()
        valid = hi >= 0
        all_g = np.concatenate([np.repeat(tg, self.r)[valid], group])
        all_k = np.concatenate([hk[valid], key])
        all_i = np.concatenate([hi[valid], index])
        all_v = np.concatenate([hv[valid], values.astype(np.float32)])
        if self.groups < (1 << (62 - _KEY_BITS)):
            order = np.argsort(all_g * (1 << _KEY_BITS) + all_k)  # unique composite: no ties
        else:
            order = np.argsort(all_k)
            order = order[np.argsort(all_g[order], kind="stable")]
        g = all_g[order]
        rank = _rank_in_group(g, self.groups)
        take = rank < self.r
        self.key[tg], self.index[tg], self.values[tg] = _NO_KEY, -1, 0.0
        g, slot = g[take], rank[take]
        self.key[g, slot] = all_k[order][take]
        self.index[g, slot] = all_i[order][take]
        self.values[g, slot] = all_v[order][take]

    def state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, index)``, each ``[bands, n_samples, d]``."""
        shape = (len(BANDS), self.d, self.r)
        return (torch.from_numpy(np.ascontiguousarray(self.values.reshape(shape).transpose(0, 2, 1))),
                torch.from_numpy(np.ascontiguousarray(self.index.reshape(shape).transpose(0, 2, 1))))


# ---------------------------------------------------------------- the accumulator

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
        from wnb.data.positions import check_skip

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
        self.bands.update(y, start, keep, _numpy(mean), _numpy(std), rare)
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
        bound = _RARE * std - (mean - self.center).abs()  # |y − mean| > 3 std implies |y − center| > this
        scale = self.center.abs() + mean.abs() + _RARE * std
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
        values = _numpy(y.view(-1).take(lin))
        lin = _numpy(lin)
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


# ---------------------------------------------------------------- the result

_TENSORS = {"windows": 2, "mean": 1, "std": 1, "high_values": 2, "high_index": 2, "low_values": 2, "low_index": 2,
            "sample_values": 3, "sample_index": 3, "bin_edges": 1, "bin_count": 1, "bin_mean": 2, "bin_std": 2}
_META = {"layer": str, "k": int, "n_samples": int, "seq_len": int, "skip_first": int, "seed": int, "n_tokens": int}


class NeuronContexts:
    """The contexts of every neuron of one layer (see :func:`neuron_contexts`).

    ``top(neuron, side)`` gives the ``k`` highest or lowest outputs with their decoded contexts,
    ``samples(neuron, seed)`` seeded examples of every band, ``positions(neuron)`` the outputs by position,
    ``table()`` one row per neuron (moments, extremes, first-position share). ``to_state()`` /
    ``from_state(state, tokenizer)`` turn it into plain tensors, ints and strings (safetensors-cacheable).
    """

    def __init__(self, state: dict, tokenizer=None, width: int = 8):
        self.state = state
        self.tokenizer = _tokenizer_of(tokenizer)
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
        band = torch.bucketize(z, torch.tensor(_EDGES, dtype=torch.float64))
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
        from wnb.data.positions import SINK_SHARE, sink_flags

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

def contexts_from_outputs(outputs: torch.Tensor, windows, tokenizer=None, layer: str = "", k: int = 20,
                          width: int = 8, skip_first: int = 0, n_samples: int = 8, seed: int = 0,
                          batch_tokens: int = 4096) -> NeuronContexts:
    """:class:`NeuronContexts` of an already captured layer: ``outputs [N, d]`` of ``windows [n, seq_len]``
    flattened window-major (``N <= n · seq_len``: the first ``N`` tokens), fed ``batch_tokens`` rows at a time."""
    from wnb.data.windows import check_windows

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
    from wnb.tracing.capture import capture
    from wnb.data.windows import check_windows
    from wnb.model.architectures import check_layers, layer_weight

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
