"""What the app shows of one layer: its captured samples with the neuron table (:class:`LayerView`), and the
layer pruned alone with its per-neuron errors (:class:`PruneView`)."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from wnb.data.positions import drop_positions
from wnb.errors import WnbError
from wnb.scoring.mapping import pair_distances
from wnb.scoring.wasserstein import top_neurons


@dataclass
class LayerView:
    """One layer's captured samples and its neuron table (ranked by WD, rank 1 = most entangled)."""

    name: str
    inputs: torch.Tensor
    outputs: torch.Tensor
    table: pd.DataFrame
    n_pairs: int
    seed: int
    fraction: float = 0.03
    seq_len: int | None = None
    skip_first: int = 0  # positions of every window left out of the statistics (the attention sink)

    @property
    def n_neurons(self) -> int:
        return self.outputs.shape[1]

    def kept(self, t: torch.Tensor) -> torch.Tensor:
        """Rows of a capture of this layer without the first ``skip_first`` positions of every window."""
        if not self.skip_first:
            return t
        return drop_positions(t, self.seq_len, self.skip_first)

    @property
    def kept_outputs(self) -> torch.Tensor:
        """The outputs the statistics are computed on (all unless ``skip_first``)."""
        return self.kept(self.outputs)

    @property
    def ranked(self) -> int:
        """Neurons with a rank that means something (constant neurons have NaN WD and come last)."""
        return int(self.table["wd"].notna().sum())

    def neuron_at(self, rank: int) -> int:
        if not 1 <= rank <= len(self.table):
            raise WnbError(f"rank must be between 1 and {len(self.table)} (got {rank})")
        return int(self.table["neuron"].iloc[rank - 1])

    def rank_of(self, neuron: int) -> int:
        if not 0 <= neuron < self.n_neurons:
            raise WnbError(f"neuron must be between 0 and {self.n_neurons - 1} (got {neuron})")
        return int(self.table.index[self.table["neuron"] == neuron][0]) + 1

    def row(self, neuron: int) -> pd.Series:
        return self.table.iloc[self.rank_of(neuron) - 1]

    def wasserstein_neurons(self) -> list[int]:
        """The top ``fraction`` of the layer by WD (paper: 3%), most entangled first."""
        wd = torch.as_tensor(self.table.sort_values("neuron")["wd"].to_numpy(copy=True))
        return top_neurons(wd, self.fraction).tolist()

    def ordinary_neuron(self) -> int:
        """The neuron of median WD rank: the paper's "ordinary" neuron to compare against."""
        return self.neuron_at(max(1, (self.ranked + 1) // 2))

    def pairs(self, neurons: list[int]):
        """``(dx [P], dy [P, len(neurons)])`` of :func:`wnb.pair_distances` for these neurons."""
        return pair_distances(self.kept(self.inputs), self.kept(self.outputs)[:, neurons], n_pairs=self.n_pairs,
                              seed=self.seed)


@dataclass
class PruneView:
    """One layer pruned alone (from its dense calibration inputs): per-neuron errors on held-out tokens."""

    layer: str
    method: str
    sparsity: str
    dense: torch.Tensor    # [held-out tokens, d_out] dense outputs
    pruned: torch.Tensor   # [held-out tokens, d_out] outputs with the pruned weight
    errors: pd.DataFrame   # neuron, rmse, rel_rmse, shift (wnb.neuron_errors) with wd, mean, variance, rank
