"""Positions (skip_first, first-token tails) and the sign view, against hand-made references and scipy."""
import pytest
import torch
from helpers.positions import by_hand_without_first, hook_outputs

import wnb
import wnb.data
import wnb.scoring

# ---------------------------------------------------------------- skip_first


@pytest.mark.integration
def test_bundled_layer11_down_proj_top_neurons_are_first_position_tails(bundled, bundled_windows):
    calib, _ = bundled_windows
    layer = "model.layers.11.mlp.down_proj"
    y = wnb.capture(bundled, [layer], calib, inputs=False, progress=False)[layer].outputs
    by_hand = by_hand_without_first(hook_outputs(bundled, [layer], calib)[layer], calib.shape[1])
    skipped_scores = wnb.layer_scores(bundled, calib, [layer], max_tokens=None, skip_first=1, progress=False)
    torch.testing.assert_close(skipped_scores[layer], wnb.wasserstein_to_gaussian(by_hand), rtol=0, atol=1e-6)
    table = wnb.neuron_table(y, seq_len=calib.shape[1])
    top = table.head(int(0.03 * len(table)))
    assert top["sink"].all() and (top["pos0_tail_share"] > 0.9).all()
    assert table["neuron"].iloc[0] == 507
    stats = wnb.layer_statistics(bundled, calib, [layer], max_tokens=None, progress=False)
    overview = wnb.overview_table(bundled, {layer: stats[layer]["wd"]},
                                  pos0_shares={layer: stats[layer]["pos0_tail_share"]})
    assert overview["sink_top_share"].iloc[0] == 1.0
    # one window of these has its sink at position 1 too; without the first two positions the flags go
    # and the layer's "entanglement" with them (top WD 0.84 -> below 0.2)
    skipped = wnb.neuron_table(y, seq_len=calib.shape[1], skip_first=2)
    assert not skipped["sink"].any() and skipped["wd"].max() < 0.2 < table["wd"].max()
