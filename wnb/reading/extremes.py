"""Per neuron, fed batch by batch: the ``k`` highest and lowest outputs with their token indices
(:class:`RunningExtremes`, ties to the lower index, so the result is that of a full sort whatever the
batches) and seeded uniform samples of every band of the standardized distribution
(:class:`BandSamples`, keyed by a bijective hash of the token index)."""
from __future__ import annotations

import math

import numpy as np
import torch

from wnb.core.tensors import to_numpy

BANDS = ((-math.inf, -3.0), (-3.0, -2.0), (-2.0, -1.0), (-1.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, math.inf))
BAND_LABELS = ("below -3σ", "-3σ to -2σ", "-2σ to -1σ", "-1σ to 1σ", "1σ to 2σ", "2σ to 3σ", "above 3σ")
EDGES = (-3.0, -2.0, -1.0, 1.0, 2.0, 3.0)
RARE = 3.0          # |z| beyond which every token is looked at for the band samples
_PREFIX_ROWS = 64    # at least this many lowest-key tokens of each batch are looked at for every band,
_PREFIX_SHARE = 32   # and at least 1/32 of them
_KEY_BITS = 44
_NO_KEY = 1 << 62


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
        values = to_numpy(y.view(-1).take(lin))
        lin = to_numpy(lin)
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
        self.edges = np.array(EDGES)
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
            keys = np.where(to_numpy(keep), keys, _NO_KEY)
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
        values = to_numpy(y.index_select(0, torch.from_numpy(prefix).to(y.device)))
        group = np.searchsorted(self.edges, (values - mean) / safe, side="left") * self.d + np.arange(self.d)
        r, c = np.nonzero(keys[prefix][:, None] < limit[group])
        return group[r, c], keys[prefix[r]], prefix[r], values[r, c]

    def _rare(self, y, prefix, keys, mean, safe, limit, rare):
        """The elements beyond ±3 std outside the prefix rows that can enter their band."""
        rows, cols, values = rare["rows"], rare["cols"], rare["values"]
        z = (values - mean[cols]) / safe[cols]
        in_prefix = np.zeros(y.shape[0], dtype=bool)
        in_prefix[prefix] = True
        pick = (np.abs(z) > RARE) & ~in_prefix[rows]
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
