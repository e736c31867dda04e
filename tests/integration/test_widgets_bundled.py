"""Drive the widget callbacks like a user (slider values, clicks, typed names) on a tiny model.

References are independent of wnb: layer outputs come from plain PyTorch forward hooks and WD from
scipy's wasserstein_distance against 10^6 exact normal quantiles.
"""

import pytest
from helpers.widgets import USER_CACHE, app, isolated_widget_cache, table_rows, windows  # noqa: F401 (fixtures)

import wnb
import wnb.app
import wnb.app.budgets
import wnb.app.costs
import wnb.app.layers
import wnb.app.session
import wnb.data
import wnb.experiments
import wnb.experiments.sweeps
import wnb.model
import wnb.tracing
import wnb.tracing.nll
import wnb.widgets as ww
from wnb.app.session import Session


@pytest.mark.integration
def test_warm_visit_does_not_load_the_model(bundled, tmp_path, monkeypatch):
    from wnb.model.bundled import BUNDLED

    converted = USER_CACHE / "models" / f"{BUNDLED}-float32"  # made by the `bundled` fixture
    monkeypatch.setenv("WNB_CACHE", str(tmp_path / "warm"))
    (tmp_path / "warm" / "models").mkdir(parents=True)
    (tmp_path / "warm" / "models" / converted.name).symlink_to(converted)
    cold = ww.App(session=Session(budget="small"))
    cold.start()
    assert cold.neurons.last_error is None and cold.settings.session._lm is not None
    warm = ww.App(session=Session(budget="small"))
    warm.start()
    assert warm.neurons.last_error is None
    assert warm.settings.session._lm is None  # everything came from the disk cache
    assert table_rows(warm.neurons) == table_rows(cold.neurons) and len(table_rows(warm.neurons)) == 200
    warm.neurons.rank.value = 7
    assert warm.neurons.last_error is None and warm.settings.session._lm is None
    warm.neurons.other.value = "model.layers.1.mlp.gate_prj"  # a typo still gets wnb's suggestions
    assert "model.layers.1.mlp.gate_proj" in warm.neurons.last_error


@pytest.mark.integration
def test_the_text_probe_escapes_what_it_shows(bundled, monkeypatch):
    calib, held_out = wnb.token_windows(bundled, wnb.load_corpus(), seq_len=32, n_calib=4, n_eval=1, seed=0)
    app = ww.App(session=Session(lm=bundled, calib=calib, held_out=held_out, budget="small"))
    app.start()
    view = app.neurons
    view.reading_box.selected_index = 0
    assert view.last_error is None, view.last_error
    assert "<script" not in view.reading.tails.value
    view.reading.probe_text.value = "<script>alert(1)</script> & the cat sat on the mat"
    view.reading.probe_button.click()
    assert view.last_error is None, view.last_error
    probe = view.reading.probe_out.value
    assert "<script" not in probe and "&lt;" in probe and "&gt;" in probe  # shown as text, never as markup
    assert "&amp;" in probe and probe.count("title=") >= 8  # every token carries its value
    view.reading.probe_text.value = ""
    view.reading.probe_button.click()
    assert "empty" in view.last_error
