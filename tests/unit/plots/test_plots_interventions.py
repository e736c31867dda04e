"""The interventions figure: one pair of bars per intervention, heights the Wasserstein row's Δ perplexity and
the random rows' mean, whiskers the Wasserstein interval and the random range; bad tables refused."""
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer

from wnb.errors import WnbError
from wnb.plots import intervention_bars


def table() -> pd.DataFrame:
    rows = [{"intervention": "none", "selection": "dense", "seed": None, "delta_perplexity": np.nan}]
    for name, w, randoms in (("negative", 2.0, (0.1, 0.3)), ("positive", -0.5, (0.0, 0.4))):
        rows.append({"intervention": name, "selection": "wasserstein", "seed": None, "delta_perplexity": w,
                     "delta_ppl_low": w - 0.2, "delta_ppl_high": w + 0.5})
        rows += [{"intervention": name, "selection": "random", "seed": s, "delta_perplexity": r,
                  "delta_ppl_low": r - 1, "delta_ppl_high": r + 1} for s, r in enumerate(randoms)]
    return pd.DataFrame(rows)


def test_bars_are_the_rows_values():
    ax = intervention_bars(table(), title="t").axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([2.0, -0.5, 0.2, 0.2])  # Wasserstein bars, then the random means
    assert [t.get_text() for t in ax.get_xticklabels()] == ["negative", "positive"]
    whiskers = [seg for c in ax.containers if isinstance(c, BarContainer)
                for seg in c.errorbar.lines[2][0].get_segments()]
    spans = sorted((round(s[0][1], 6), round(s[1][1], 6)) for s in whiskers)
    assert spans == sorted([(1.8, 2.5), (-0.7, 0.0), (0.1, 0.3), (0.0, 0.4)])


@pytest.mark.parametrize("bad", [pd.DataFrame({"selection": ["dense"]}),
                                 table()[table()["selection"] == "dense"]])
def test_bad_tables_refused(bad):
    with pytest.raises(WnbError):
        intervention_bars(bad)
