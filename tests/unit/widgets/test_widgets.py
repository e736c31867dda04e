"""Drive the widget callbacks like a user (slider values, clicks, typed names) on a tiny model.

References are independent of wnb: layer outputs come from plain PyTorch forward hooks and WD from
scipy's wasserstein_distance against 10^6 exact normal quantiles.
"""
import base64
import io
import re

import ipywidgets
import numpy as np
import pandas as pd
import pytest
import torch
from helpers.widgets import (  # noqa: F401 (fixtures)
    LAYER,
    NORMAL_QUANTILES,
    app,
    hooked_outputs,
    isolated_widget_cache,
    make_session,
    table_rows,
    windows,
)
from scipy import stats

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


def reference_wd(column):
    z = (column - column.mean()) / column.std()
    return stats.wasserstein_distance(z, NORMAL_QUANTILES)


def png_of(out):
    return base64.b64decode(out.outputs[0]["data"]["image/png"]) if out.outputs else None






def test_start_lists_every_neuron_ranked_by_wd(app, tiny_llama, windows):
    view = app.neurons
    assert view.layer.value == LAYER
    choices = dict(view.layer.options)  # label -> name, every linear layer grouped by kind
    assert choices[f"FFN · {LAYER}"] == LAYER and "FFN · model.layers.2.mlp.down_proj" in choices
    assert "attention · model.layers.0.self_attn.q_proj" in choices and "other · lm_head" in choices
    kinds = [label.split(" · ")[0] for label in choices]
    assert kinds == sorted(kinds, key=["FFN", "attention", "other"].index)
    y = hooked_outputs(tiny_llama, LAYER, windows[0])
    rows = table_rows(view)
    assert len(rows) == y.shape[1] == view.rank.max
    assert [r[0] for r in rows] == list(range(1, y.shape[1] + 1))
    assert sorted(int(r[1]) for r in rows) == list(range(y.shape[1]))
    for rank, neuron, wd in rows:
        assert wd == pytest.approx(reference_wd(y[:, int(neuron)]), abs=2e-3)  # 4 decimals shown
    shown = np.array([r[2] for r in rows])
    assert (np.diff(shown) <= 1e-4).all()  # highest WD first
    # the first view is the rank-1 neuron, with all three figures drawn
    assert view.rank.value == 1 and view.neuron.value == int(rows[0][1])
    assert all(png_of(out) for out in (view.hist_out, view.pairs_out, view.scatter_out))


def test_the_sign_columns_split_the_wd_at_the_raw_zero(app, tiny_llama, windows):
    """The pick list's last two columns: share of outputs below zero, and share of the WD integral over
    those negative outputs (∫ |F − Φ| below z₀ = −mean/std on a fine grid, over reference_wd)."""
    view = app.neurons
    assert view.head.value.endswith(" y&lt;0 WD y&lt;0</div>")
    y = hooked_outputs(tiny_llama, LAYER, windows[0])
    t = np.linspace(-12, 12, 200_001)
    for label, _ in view.table.options[:5]:
        parts = label.replace("⚓", "").split()
        neuron, negative, share = int(parts[1]), *(float(v.rstrip("%")) for v in parts[-2:])
        column = y[:, neuron]
        z = np.sort((column - column.mean()) / column.std())
        gap = np.abs(np.searchsorted(z, t, side="right") / len(z) - stats.norm.cdf(t))
        below = np.trapezoid(np.where(t <= -column.mean() / column.std(), gap, 0), t)
        assert negative == pytest.approx(100 * (column < 0).mean(), abs=0.51)
        assert share == pytest.approx(100 * below / reference_wd(column), abs=1.0)


def test_selecting_a_neuron_redraws_its_histogram(app, tiny_llama, windows, monkeypatch):
    view = app.neurons
    drawn = []
    real = ww.plots.output_histogram
    monkeypatch.setattr(ww.plots, "output_histogram", lambda series, **kw: drawn.append(series) or real(series, **kw))
    y = hooked_outputs(tiny_llama, LAYER, windows[0])
    before = png_of(view.hist_out)

    view.rank.value = 5  # the slider
    neuron = int(table_rows(view)[4][1])
    assert view.neuron.value == neuron and view.table.value == 5
    (series,) = drawn[-1].values()
    np.testing.assert_allclose(series.double().numpy(), y[:, neuron], rtol=1e-5, atol=1e-6)
    after = png_of(view.hist_out)
    assert after != before
    assert f"neuron {neuron}</b> · rank 5" in view.summary.value

    view.neuron.value = int(table_rows(view)[9][1])  # the neuron box
    assert view.rank.value == 10 and view.table.value == 10
    view.table.value = 2  # a click in the table
    assert view.rank.value == 2 and view.neuron.value == int(table_rows(view)[1][1])
    assert png_of(view.hist_out) not in (before, after)
    assert view.last_error is None


def test_changing_the_layer_and_any_linear_layer(app, tiny_llama):
    view = app.neurons
    first = png_of(view.hist_out)
    view.layer.value = "model.layers.2.mlp.down_proj"
    assert view.last_error is None
    assert len(view.table.options) == 32 == view.rank.max  # down_proj has hidden_size outputs
    assert png_of(view.hist_out) != first
    view.other.value = "model.layers.0.self_attn.q_proj"  # typed by name: selected in the dropdown
    assert view.layer.value == "model.layers.0.self_attn.q_proj"
    assert view.view.name == "model.layers.0.self_attn.q_proj"


def test_errors_appear_as_one_readable_line(app):
    view = app.neurons
    view.other.value = "model.layers.0.mlp.gate_prj"
    assert "is not a linear layer" in view.last_error and "model.layers.0.mlp.gate_proj" in view.last_error
    assert "wnb-error" in view.status.value and "Traceback" not in view.status.value
    assert "wnb.linear_layers" not in view.last_error and "layer list" in view.last_error  # page words, not Python
    assert view.view.name == LAYER  # the previous layer stays on screen
    view.rank.value = 3  # and still works
    assert view.last_error is None and view.neuron.value == int(table_rows(view)[2][1])


def test_unexpected_errors_do_not_raise(app, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(ww.plots, "pair_scatter", broken)
    app.neurons.rank.value = 4
    assert app.neurons.last_error == "RuntimeError: boom"


def test_strict_mode_shows_the_message_then_raises(app, monkeypatch):
    monkeypatch.setenv("WNB_STRICT", "1")
    with pytest.raises(wnb.WnbError, match="is not a linear layer"):
        app.neurons.other.value = "model.layers.9.mlp.gate_proj"
    assert "is not a linear layer" in app.neurons.last_error


def test_second_visit_comes_from_the_disk_cache(tiny_llama, windows, monkeypatch):
    first = ww.App(session=make_session(tiny_llama, windows))
    first.start()
    expected = table_rows(first.neurons)

    def no_capture(*args, **kwargs):
        raise AssertionError("captured again although the result is cached")

    monkeypatch.setattr(wnb.app.layers, "capture", no_capture)
    monkeypatch.setattr(wnb.app.layers, "neuron_table", no_capture)
    again = ww.App(session=make_session(tiny_llama, windows))
    again.start()
    assert again.neurons.last_error is None
    assert table_rows(again.neurons) == expected
    # a different seed changes the pairs behind MD: that is a new key, so it is computed again
    other = ww.App(session=make_session(tiny_llama, windows, seed=1))
    other.start()
    assert "captured again" in other.neurons.last_error


def test_downloads_hold_the_table_and_the_figures(app):
    view = app.neurons
    links = dict(re.findall(r'download="([^"]+)" href="data:[^;]+;base64,([^"]+)"', view.downloads.value))
    csv_name = f"neurons_{LAYER}_small_seed0.csv"  # the budget and seed are in every name
    table = pd.read_csv(io.StringIO(base64.b64decode(links[csv_name]).decode()))
    pd.testing.assert_frame_equal(table, view.view.table.reset_index(drop=True), check_dtype=False, rtol=1e-9)
    hist_name = f"histogram_{LAYER}_neuron{view.neuron.value}_small_seed0.png"
    assert base64.b64decode(links[hist_name]) == png_of(view.hist_out)
    view.print_button.click()  # print quality: the same figures at 300 dpi, three times the pixels
    printed = dict(re.findall(r'download="([^"]+)" href="data:[^;]+;base64,([^"]+)"', view.print_links.value))
    big = base64.b64decode(printed[hist_name.replace(".png", "_300dpi.png")])
    from PIL import Image as PILImage
    small_size = PILImage.open(io.BytesIO(png_of(view.hist_out))).size
    assert PILImage.open(io.BytesIO(big)).size == (3 * small_size[0], 3 * small_size[1])


def test_the_median_neuron_is_compared_with_the_most_entangled(app, monkeypatch):
    view = app.neurons
    panels = []
    real = ww.plots.pair_scatter
    monkeypatch.setattr(ww.plots, "pair_scatter", lambda dx, dy, p, **kw: panels.append(list(p)) or real(dx, dy, p, **kw))
    median = view.view.ordinary_neuron()
    view.neuron.value = median
    assert panels[-1][1] == f"most entangled neuron {view.view.neuron_at(1)} (rank 1)"
    view.show(1)
    assert panels[-1][1] == f"ordinary neuron {median} (median WD)"


def test_a_rank_outside_the_pick_list_clears_its_highlight(app):
    view = app.neurons
    view.show(2)
    assert view.table.value == 2
    with view._quiet():
        view.table.options = view.table.options[:3]
    view.show(5)
    assert view.table.value is None and view.rank.value == 5


def test_run_button_and_overview(app):
    app.neurons.run.click()
    assert app.neurons.last_error is None and app.neurons.rank.value == 1
    ov = app.overview
    assert ov.open_button.disabled
    ov.run.click()
    assert ov.last_error is None, ov.last_error
    assert list(ov.frame["layer"]) == app.settings.session.ffn_layers()
    assert png_of(ov.plot_out)
    heat = png_of(ov.plot_out)
    ov.style.value = "violin"
    assert png_of(ov.plot_out) != heat
    assert "overview_violin" in ov.downloads.value
    ov.pick.value = "model.layers.2.mlp.up_proj"
    ov.open_button.click()
    assert app.tabs.selected_index == 0
    assert app.neurons.view.name == "model.layers.2.mlp.up_proj" and app.neurons.last_error is None
    cells = [c for c in ov.map_box.children[1].children if isinstance(c, ipywidgets.Button)]
    assert len(cells) == len(ov.frame)  # one cell per layer of the layer map
    cell = next(c for c in cells if c.tooltip.startswith("model.layers.0.mlp.down_proj\n"))
    app.tabs.selected_index = 1
    cell.click()  # a click on the map opens that layer
    assert app.tabs.selected_index == 0 and app.neurons.view.name == "model.layers.0.mlp.down_proj"


def test_the_overview_counts_first_token_neurons_per_layer(app, tiny_llama, windows):
    """``sinks`` per layer against an independent count: neurons whose outputs beyond 2.5 sigma sit at
    position 0 of the windows at least half of the time (plain hooks, numpy)."""
    ov = app.overview
    ov.run.click()
    assert ov.last_error is None, ov.last_error
    calib = windows[0]
    for name, sinks in zip(ov.frame["layer"], ov.frame["sinks"]):
        y = hooked_outputs(tiny_llama, name, calib)
        z = (y - y.mean(0)) / y.std(0)
        tail = np.abs(z) > 2.5
        first = (np.arange(len(y)) % calib.shape[1]) == 0
        with np.errstate(invalid="ignore"):
            share = tail[first].sum(0) / tail.sum(0)
        assert sinks == int((share >= 0.5).sum()), name
    assert ov.frame["sinks"].sum() > 0  # the random model has some; the check above is not vacuous
    assert "first-token (attention sink) neurons" in ov.status.value


PATHS = ["/etc/passwd", "/etc/shadow", "/no/such/file.txt", "~/.bashrc", "../../etc/hosts", "notebooks/../wnb", "wnb/cache.py/x",
         "C:\\Windows\\win.ini", "file:///etc/passwd", "./models", "/root"]


@pytest.fixture
def nothing_opened(monkeypatch):
    """Record every file opened or read (open, os.open, Path.open/read_text/read_bytes/stat) that is one of
    the typed PATHS; a refusal must leave the list empty."""
    import builtins
    import os
    from pathlib import Path

    typed = {os.path.abspath(os.path.expanduser(p)) for p in PATHS} | set(PATHS)
    opened = []

    def watch(what, real):
        def wrapper(*args, **kwargs):
            target = args[0] if args else None
            if isinstance(target, (str, bytes, os.PathLike)):
                text = os.fsdecode(target)
                if text in typed or os.path.abspath(text) in typed:
                    opened.append((what, text))
            return real(*args, **kwargs)
        return wrapper

    for owner, name in ((builtins, "open"), (os, "open"), (os, "stat"), (Path, "open"), (Path, "read_text"),
                        (Path, "read_bytes"), (Path, "stat")):
        monkeypatch.setattr(owner, name, watch(name, getattr(owner, name)))
    return opened


@pytest.mark.parametrize("field", ["model", "corpus"])
def test_the_app_opens_no_typed_path(field, nothing_opened):
    messages = set()
    for path in PATHS:
        with pytest.raises(wnb.WnbError) as refused:
            Session(**{field: path}, budget="small", restricted=True)
        messages.add(str(refused.value).replace(repr(path[:60]), "<input>"))
    assert len(messages) == 1, messages  # the same words whether or not the path exists
    (message,) = messages
    assert "opens no file" in message or "offers by name" in message
    assert nothing_opened == []


def test_settings_show_the_refusal_and_keep_the_session(app, nothing_opened):
    old = app.settings.session
    app.settings.model.value = "/etc/passwd"
    app.settings.apply.click()
    assert "offers by name" in app.settings.last_error and "/etc/passwd" in app.settings.last_error
    assert app.settings.session is old and not app.settings.apply.disabled
    with pytest.raises(Exception):  # the corpus is a choice, not a text box
        app.settings.corpus.value = "/etc/passwd"
    assert nothing_opened == []


def test_offered_model_folders_and_hub_ids(tmp_path, monkeypatch):
    from wnb.app import sources

    (tmp_path / "mine" / "tiny").mkdir(parents=True)
    (tmp_path / "mine" / "tiny" / "config.json").write_text("{}")
    (tmp_path / "mine" / "notamodel").mkdir()
    monkeypatch.setenv("WNB_MODEL_DIRS", str(tmp_path / "mine"))
    assert sources.app_model("tiny") == ("tiny", str(tmp_path / "mine" / "tiny"))
    assert sources.app_model("EleutherAI/pythia-160m") == ("EleutherAI/pythia-160m", None)
    assert sources.app_model("") == (None, None)
    assert sources.app_model("notamodel") == ("notamodel", None)  # a bare hub id (like gpt2), never a folder here
    for bad in (str(tmp_path / "mine" / "tiny"), "a/b/c", "../tiny", ".hidden/x", "a/../b"):
        with pytest.raises(wnb.WnbError, match="offers by name"):
            sources.app_model(bad)
    assert "tiny" in ww.Settings(budget="small").model.options


def test_an_uploaded_corpus_is_checked_for_text(tiny_llama):
    from wnb.app import sources

    text = "The cat sat on the mat. " * 20
    assert sources.app_corpus(sources.UPLOAD, text.encode()) == text
    with pytest.raises(wnb.WnbError, match="not text"):
        sources.app_corpus(sources.UPLOAD, b"\x7fELF\x00\x01binary")
    with pytest.raises(wnb.WnbError, match="not UTF-8 text"):
        sources.app_corpus(sources.UPLOAD, bytes(range(128, 256)) * 100)
    with pytest.raises(wnb.WnbError, match=f"at most {sources.MAX_UPLOAD_BYTES >> 20} MiB"):
        sources.app_corpus(sources.UPLOAD, b"a" * (sources.MAX_UPLOAD_BYTES + 1))
    with pytest.raises(wnb.WnbError, match="upload first"):
        sources.app_corpus(sources.UPLOAD, None)


def test_a_binary_corpus_file_is_refused_by_the_api(tmp_path):
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 400)
    with pytest.raises(wnb.WnbError, match="not text"):
        wnb.load_corpus(str(binary))


def test_long_text_is_tokenized_in_pieces_cut_at_line_breaks():
    from wnb.data.windows import _pieces

    text = ("word " * 50 + "\n") * 400
    pieces = _pieces(text, 1000)
    assert "".join(pieces) == text and max(map(len, pieces)) <= 1000
    assert all(p.endswith(("\n", " ")) for p in pieces[:-1])


def test_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv("WNB_BUDGET", "small")
    assert wnb.app.budgets.budget_from_env() == "small"
    assert ww.Settings().budget.value == "small"
    monkeypatch.setenv("WNB_BUDGET", "huge")
    with pytest.raises(wnb.WnbError, match="small, medium, large"):
        wnb.app.budgets.budget_from_env()


# ---------------------------------------------------------------- sparsity and Sparse Expansion views

def hooked_inputs(lm, name, windows):
    seen = []
    handle = lm.model.get_submodule(name).register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    try:
        with torch.no_grad():
            lm.model(windows)
    finally:
        handle.remove()
    return seen[0].reshape(-1, seen[0].shape[-1]).double()


def reference_perplexity(lm, windows):
    with torch.no_grad():
        logits = lm.model(windows).logits.double()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    return float(torch.exp(nll))


def test_sparsity_view_errors_match_plain_magnitude_pruning(app, tiny_llama, windows):
    app.tabs.selected_index = 2
    view = app.sparsity
    assert view.last_error is None, view.last_error
    assert view.result.method == "sparsegpt" and view.result.sparsity == "50%" and png_of(view.hist_out)
    first = png_of(view.hist_out)
    view.method.value = "magnitude"
    assert view.last_error is None and png_of(view.hist_out) != first
    # independent reference: zero the half of the weights with the smallest |W|, on held-out inputs
    w = tiny_llama.model.get_submodule(LAYER).weight.detach().double()
    kept = w.abs() > w.abs().flatten().kthvalue(w.numel() // 2).values
    x = hooked_inputs(tiny_llama, LAYER, windows[1])
    rmse = ((x @ (w * kept).T - x @ w.T) ** 2).mean(0).sqrt().numpy()
    errors = view.result.errors.sort_values("neuron")
    np.testing.assert_allclose(errors["rmse"].to_numpy(), rmse, rtol=1e-4, atol=1e-6)
    # the table is ranked like the neuron view and the summary follows the slider
    assert list(view.result.errors["rank"]) == list(range(1, 65))
    view.rank.value = 3
    assert f"neuron {view.view.neuron_at(3)}</b> · WD rank 3" in view.summary.value
    view.pattern.value = "2:4"
    assert view.sparsity.disabled and view.result.sparsity == "2:4"


def test_sparsity_view_quantizes_the_kept_weights(app, tiny_llama, windows):
    """weights = 4-bit: magnitude pruning, then the kept weights rounded to their row's min-max grid of
    16 levels (fitted on the dense row, as GPTQ's quantizer), written out here with numpy."""
    app.tabs.selected_index = 2
    view = app.sparsity
    view.method.value = "magnitude"
    view.bits.value = 4
    assert view.last_error is None, view.last_error
    assert view.result.sparsity == "50% + 4-bit"
    # 4 bits x half the weights + 1 mask bit + (16 + 4) bits of scale and zero per row of d_in columns
    d_in = tiny_llama.model.get_submodule(LAYER).in_features
    assert f"{4 * 0.5 + 1 + 20 / d_in:.2f} bits per weight" in view.summary.value
    w = tiny_llama.model.get_submodule(LAYER).weight.detach().double().numpy()
    kept = np.abs(w) > np.sort(np.abs(w).ravel())[w.size // 2 - 1]
    lo, hi = np.minimum(w.min(1, keepdims=True), 0), np.maximum(w.max(1, keepdims=True), 0)
    scale = (hi - lo) / 15
    zero = np.round(-lo / scale)
    q = scale * (np.clip(np.round(w / scale) + zero, 0, 15) - zero) * kept
    x = hooked_inputs(tiny_llama, LAYER, windows[1]).numpy()
    rmse = np.sqrt(((x @ q.T - x @ w.T) ** 2).mean(0))
    errors = view.result.errors.sort_values("neuron")
    np.testing.assert_allclose(errors["rmse"].to_numpy(), rmse, rtol=1e-3, atol=1e-5)
    assert f"errors_{LAYER}_neuron{view.neuron}_magnitude_50pct_4-bit_small_seed0.csv" in view.downloads.value


def test_sparsity_sweep_and_ablation(app, tiny_llama, windows):
    app.tabs.selected_index = 2
    view = app.sparsity
    view.scope.value = "layer"
    view.sparsities.value = "0.5, 2:4"
    view.run_sweep.click()
    assert view.last_error is None, view.last_error
    table = view.sweep_result
    assert list(table["method"]) == ["dense"] + ["magnitude"] * 2 + ["wanda"] * 2 + ["sparsegpt"] * 2
    assert table["perplexity"].iloc[0] == pytest.approx(reference_perplexity(tiny_llama, windows[1]), rel=1e-5)
    assert png_of(view.sweep_out)
    assert f"sparsity_sweep_{LAYER}_layer_0.5_2of4_small_seed0.csv" in view.downloads.value  # settings in the name
    assert f"{LAYER} only pruned" in view.status.value  # the scope the numbers are for
    view.fraction.value = 0.1
    view.run_ablation.click()
    assert view.last_error is None, view.last_error
    assert list(view.ablation_result["criterion"]) == ["dense", "wd", "random", "mean", "variance", "weight_norm"]
    assert png_of(view.ablation_out)
    view.sparsities.value = "0.5, 1.5"
    view.run_sweep.click()
    assert "sparsity must be in [0, 1)" in view.last_error


def test_expansion_view(app, tiny_llama, windows):
    app.tabs.selected_index = 3
    view = app.expansion
    assert view.last_error is None, view.last_error
    assert len(view.ri) == 64 and view.shares["share"].sum() == pytest.approx(1.0)
    assert len(view.shares) == 16 and all(png_of(o) for o in (view.compare_out, view.experts_out, view.ri_out,
                                                              view.change_out))
    assert sorted(view.change["neuron"]) == sorted(view.view.wasserstein_neurons())
    row = view.ri.set_index("neuron").loc[view.view.neuron_at(1)]
    assert f"RI {row['rmse_sparsegpt'] / row['rmse_expansion']:.2f}" in view.summary.value
    experts = png_of(view.experts_out)
    view.rank.value = 2
    assert png_of(view.experts_out) != experts
    view.k.value = 2
    assert view.last_error is None and len(view.shares) == 2
    study, contexts = view.result, view.expert_tables["expert_contexts"]
    routed = study.expansion.router.predict(study.held_inputs[torch.as_tensor(contexts["token_index"].to_numpy())])
    assert torch.equal(routed, torch.as_tensor(contexts["expert"].to_numpy()))  # the router itself agrees
    tails = int(view.expert_tables["tail_routing"]["tail_tokens"].sum())
    assert "Does the router separate" in view.expert_reading.value
    assert ("random groups of the same sizes" in view.expert_reading.value) == (tails > 0)
    view.scope.value = "layer"
    view.run_ppl.click()
    assert view.last_error is None, view.last_error
    assert list(view.ppl["method"]) == ["dense", "sparsegpt", "expansion"]
    assert view.ppl["perplexity"].iloc[0] == pytest.approx(reference_perplexity(tiny_llama, windows[1]), rel=1e-5)
    assert f"expansion_perplexity_layer_{LAYER}_k2_50pct_small_seed0.csv" in view.downloads.value


def test_expansion_second_visit_from_disk(tiny_llama, windows, monkeypatch):
    first = ww.App(session=make_session(tiny_llama, windows))
    first.tabs.selected_index = 3
    assert first.expansion.last_error is None
    expected = first.expansion.ri

    def no_study(*args, **kwargs):
        raise AssertionError("built the experts again although they are cached")

    monkeypatch.setattr(wnb.experiments.layer_study, "study_layer", no_study)
    again = ww.App(session=make_session(tiny_llama, windows))
    again.tabs.selected_index = 3
    assert again.expansion.last_error is None, again.expansion.last_error
    pd.testing.assert_frame_equal(again.expansion.ri, expected)
    again.expansion.rank.value = 4  # the rebuilt study still routes tokens to experts
    assert again.expansion.last_error is None




def test_cancel_stops_a_threaded_sweep_and_leaves_the_model_dense(tiny_llama, windows, tmp_path):
    import time as clock

    from wnb.core import cache, jobs

    app = ww.App(session=make_session(tiny_llama, windows), threaded=True)
    view = app.sparsity
    view.start()
    dense = {n: p.detach().clone() for n, p in tiny_llama.model.named_parameters()}
    slow = [tiny_llama.model.get_submodule(b).register_forward_pre_hook(lambda *_: clock.sleep(0.02))
            for b in wnb.decoder_blocks(tiny_llama)]  # a sweep that takes long enough to be cancelled
    try:
        view.scope.value = "all"
        view.sparsities.value = "0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 2:4, 4:8"
        view.run_sweep.click()
        assert view.run_sweep.description == "Cancel" and view.job is not None
        deadline = clock.monotonic() + 30
        while view.job is not None and view.job.index < 2 and clock.monotonic() < deadline:
            clock.sleep(0.05)
        assert view.job is not None, "the sweep ended before it could be cancelled"
        assert "run 3 of 31" in view.job_text.value and "elapsed" in view.job_text.value
        pressed = clock.monotonic()
        view.run_sweep.click()  # the same button, now Cancel
        view.wait(timeout=30)
        assert clock.monotonic() - pressed < 5  # stops at the next block
    finally:
        for hook in slow:
            hook.remove()
    assert view.job is None and jobs.active() is None
    assert "cancelled" in view.status.value and view.run_sweep.description == "Run sweep"
    for name, p in tiny_llama.model.named_parameters():
        assert torch.equal(p, dense[name]), name  # bit-exact dense weights
    sweeps = cache.cache_dir() / "sweep"
    assert not sweeps.exists() or not any(sweeps.iterdir())  # no partial cache entry
    view.sparsities.value = "0.5"
    view.run_sweep.click()  # the view works again afterwards
    view.wait(timeout=60)
    assert view.last_error is None and list(view.sweep_result["sparsity"]) == ["0%"] * 1 + ["50%"] * 3


def test_a_very_large_layer_waits_for_confirmation(app, monkeypatch):
    monkeypatch.setattr(wnb.app.costs, "LARGE_LAYER_OUTPUTS", 10_000)  # the tiny lm_head (128 × 128) is very large
    view = app.neurons
    captured = []
    real = wnb.app.layers._capture_one
    monkeypatch.setattr(wnb.app.layers, "_capture_one", lambda *a: captured.append(a[1]) or real(*a))
    view.other.value = "lm_head"
    assert captured == [] and "Press Analyze layer again" in view.status.value and "128 neurons" in view.status.value
    view.run.click()  # the second press goes ahead
    assert captured == ["lm_head"] and view.view.name == "lm_head"
    view.load("model.layers.2.mlp.down_proj")  # small layers never ask
    assert view.view.name == "model.layers.2.mlp.down_proj"


def test_a_long_whole_model_job_waits_for_confirmation(app, monkeypatch):
    monkeypatch.setattr(wnb.app.costs, "LARGE_JOB_SECONDS", 0.0)  # every job on the tiny model is "long"
    runs = []
    real = wnb.experiments.sweeps.sweep
    monkeypatch.setattr(wnb.experiments.sweeps, "sweep", lambda *a, **k: runs.append(k["sparsities"]) or real(*a, **k))
    app.tabs.selected_index = 2
    view = app.sparsity
    view.scope.value = "all"
    view.sparsities.value = "0.5"
    view.run_sweep.click()
    assert runs == [] and view.sweep_result is None
    assert "Press Run sweep again" in view.status.value and "4 runs changing 9 layer(s)" in view.status.value
    view.sparsities.value = "0.3"  # other settings: asks again
    view.run_sweep.click()
    assert runs == [] and "Press Run sweep again" in view.status.value
    view.run_sweep.click()  # the second press of the same sweep goes ahead
    assert runs == [("30%",)] and view.last_error is None, view.last_error
    view.run_sweep.click()  # cached now: no question
    assert runs == [("30%",)] and view.last_error is None
    app.tabs.selected_index = 3
    view = app.expansion
    view.scope.value = "all"
    view.run_ppl.click()
    assert view.ppl is None and "Press Measure perplexity again" in view.status.value


def test_job_estimates_count_the_linear_weights_passed(tiny_llama):
    from wnb.app import estimates

    linear = {n: m.weight.numel() for n, m in tiny_llama.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert estimates.forward_flops(tiny_llama, 10) == 2 * 10 * sum(linear.values())
    first = {n: v for n, v in linear.items() if ".layers.0." in n}
    assert estimates.forward_flops(tiny_llama, 10, depth=1) == 2 * 10 * sum(first.values())
    d_out, d_in = tiny_llama.model.get_submodule(LAYER).weight.shape
    gram, solve = 2 * 7 * d_in**2, d_in**3 + 2 * d_in**2 * d_out
    assert estimates.prune_flops(tiny_llama, [LAYER], 7) == 2 * 7 * d_in + gram + solve
    assert estimates.prune_flops(tiny_llama, [LAYER], 7, n_experts=4) == 2 * 7 * d_in + gram + 4 * solve
    assert estimates.prune_flops(tiny_llama, [LAYER], 7, method="wanda") == 2 * 7 * d_in
    assert estimates.held_bytes(tiny_llama, [LAYER], 4) == 4 * d_out * d_in * (1 + 4) + 4 * d_in**2
    assert estimates.held_bytes(tiny_llama, [LAYER], 4, max_expert_bytes=100) == 4 * d_out * d_in + 4 * d_in**2 + 100


def test_the_reading_section_shows_both_tails_tokens_and_a_probe(app, tiny_llama, windows, monkeypatch):


    view = app.neurons
    view.reading_box.selected_index = 0  # open "What it reads"
    assert view.last_error is None, view.last_error
    neuron = view.neuron.value
    outputs = hooked_outputs(tiny_llama, LAYER, windows[0])[:, neuron]
    order = np.argsort(-outputs, kind="stable")  # an independent ranking of the same capture
    ctx = view.session.contexts(LAYER)
    high = ctx.top(neuron, "high")
    assert list(high["value"].head(5)) == pytest.approx(list(outputs[order[:5]]), rel=1e-5)
    assert "Highest outputs" in view.reading.tails.value and "Lowest outputs" in view.reading.tails.value
    assert view.reading.tails.value.count("background-color") >= 2 * min(10, len(high))  # highlighted tokens
    tokens = view.reading.tables["tokens"]
    assert tokens["count"].sum() == windows[0].numel()
    assert "contexts_" in view.reading.downloads.value and "tokens_" in view.reading.downloads.value
    gate = torch.as_tensor(hooked_outputs(tiny_llama, LAYER, windows[0]))[:, neuron]  # quadrants by hand
    up = torch.as_tensor(hooked_outputs(tiny_llama, LAYER.replace("gate_proj", "up_proj"), windows[0]))[:, neuron]
    quadrants = view.reading.tables["sign_quadrants"].iloc[0]
    assert quadrants["gate_neg_up_pos"] == pytest.approx(float(((gate < 0) & (up >= 0)).double().mean()))
    assert quadrants["gate_pos_up_pos"] == pytest.approx(float(((gate >= 0) & (up >= 0)).double().mean()))
    assert "Sign quadrants" in view.reading.effect.value
    view.show(2)  # the section follows the neuron
    assert view.reading.neuron == view.neuron.value != neuron




def test_dropping_the_first_token_reranks_the_layer(app, tiny_llama, windows):
    view = app.neurons
    view.skip_first.value = True
    assert view.last_error is None and view.view.skip_first == 1
    d = view.view.n_neurons
    full = hooked_outputs(tiny_llama, LAYER, windows[0]).reshape(windows[0].shape[0], -1, d)
    kept = full[:, 1:].reshape(-1, d)  # position 0 of every window dropped by hand
    neuron = view.neuron.value
    assert view.view.table.iloc[0]["wd"] == pytest.approx(reference_wd(kept[:, neuron]), abs=2e-3)
    ranked = sorted(range(d), key=lambda i: -reference_wd(kept[:, i]))
    assert neuron == ranked[0]
    assert "_skip1_" in view.downloads.value
