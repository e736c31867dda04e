"""Sparse Expansion on synthetic data and tiny random models: k-means, PCA router, experts, routed layers."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import wnb
import wnb.compression
import wnb.experiments
from wnb.compression.expansion import (
    RoutedLayer,
    build_experts,
    expand_layer,
    expanded,
    shared_input_groups,
)
from wnb.compression.kmeans import kmeans
from wnb.compression.prune import prune_weight
from wnb.compression.router import Router
from wnb.errors import WnbError


def blobs(n_per=60, centers=4, dim=5, spread=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    middle = torch.randn(centers, dim, generator=gen) * 20
    truth = torch.arange(centers).repeat_interleave(n_per)
    x = middle[truth] + spread * torch.randn(len(truth), dim, generator=gen)
    perm = torch.randperm(len(truth), generator=gen)
    return x[perm], truth[perm]


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two labelings are the same partition (up to renaming) iff their label pairs form a bijection."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def layer_data(d_in=32, d_out=24, n=400, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(d_out, d_in, generator=gen)
    bias = torch.randn(d_out, generator=gen)
    # inputs from a few well-separated modes, so clusters differ
    x, _ = blobs(n_per=n // 4, centers=4, dim=d_in, spread=1.0, seed=seed + 1)
    return weight, bias, x / 10


# ---------------------------------------------------------------- k-means

def test_kmeans_recovers_well_separated_blobs():
    x, truth = blobs()
    result = kmeans(x, 4, seed=0)
    assert same_partition(result.labels, truth)
    # centroids are the blob means
    for c in range(4):
        torch.testing.assert_close(result.centroids[c], x[result.labels == c].mean(0), rtol=0, atol=1e-4)


def test_kmeans_same_seed_same_clusters_and_labels_are_nearest_centroids():
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(5))  # no cluster structure: seed matters
    a, b = kmeans(x, 8, seed=3), kmeans(x, 8, seed=3)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    brute = torch.cdist(x.double(), a.centroids.double()).argmin(1)
    assert torch.equal(brute, a.labels)
    inertia = ((x.double() - a.centroids.double()[a.labels]) ** 2).sum().item()
    assert a.inertia == pytest.approx(inertia, rel=1e-4)


def test_kmeans_restarts_keep_the_best_inertia():
    x = torch.randn(400, 2, generator=torch.Generator().manual_seed(2))
    single = [kmeans(x, 6, n_init=1, seed=s).inertia for s in range(6)]
    best = kmeans(x, 6, n_init=6, seed=0).inertia
    assert best <= min(single[:1]) + 1e-6
    assert best <= max(single)


def test_greedy_seeding_puts_one_centroid_in_each_blob_more_often():
    from wnb.compression.kmeans import _kmeans_pp, greedy_trials

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [40.0, 0.0], [0.0, 40.0], [40.0, 40.0], [20.0, 80.0], [80.0, 20.0]])
    sizes = [400, 300, 200, 100, 50, 25]  # uneven blobs: plain D² draws often miss the small ones
    x = torch.cat([c + torch.randn(n, 2, generator=g) for c, n in zip(centres, sizes)])

    def covers(trials, seed):
        seeds = _kmeans_pp(x, 6, torch.Generator().manual_seed(seed), trials)
        return len(set(torch.cdist(seeds, centres).argmin(1).tolist())) == 6

    plain = sum(covers(1, s) for s in range(60))
    greedy = sum(covers(greedy_trials(6), s) for s in range(60))
    assert greedy > plain and greedy >= 50, (plain, greedy)


def test_kmeans_refills_an_empty_cluster():
    x, truth = blobs(centers=3)
    init = torch.stack([x[truth == 0][0], x[truth == 1][0], torch.full((5,), 1e4)])  # third centroid far away
    result = kmeans(x, 3, init=init)
    assert torch.bincount(result.labels, minlength=3).min() > 0
    assert same_partition(result.labels, truth)


def test_kmeans_with_fewer_distinct_points_than_clusters():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat(10, 1)
    result = kmeans(x, 4, seed=0)
    assert result.labels.shape == (20,) and result.inertia == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- router

@pytest.mark.parametrize("pca_factor", [8, 2])  # randomized subspace iteration; full eigh
def test_router_pca_matches_numpy_svd_and_routes_to_nearest_centroid(pca_factor):
    dim = 64 // pca_factor
    gen = torch.Generator().manual_seed(9)
    rotation = torch.linalg.qr(torch.randn(64, 64, generator=gen)).Q
    scales = 0.8 ** torch.arange(64.0)  # well separated variances: principal directions are well defined
    x = (torch.randn(800, 64, generator=gen) * scales) @ rotation.T + 3.0
    router = Router.fit(x, n_clusters=5, pca_factor=pca_factor, seed=0)
    assert router.components.shape == (64, dim) and router.centroids.shape == (5, dim)
    xc = x.double().numpy() - x.double().numpy().mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    ours = router.components.double().numpy()
    for j in range(dim):  # same directions up to sign
        assert abs(abs(ours[:, j] @ vt[j]) - 1) < 1e-3
    z = (x.double() - x.double().mean(0)) @ torch.from_numpy(vt[:dim].T)
    z = z * torch.sign((z * router.project(x).double()).sum(0))  # align signs
    torch.testing.assert_close(router.project(x).double(), z, rtol=0, atol=1e-3)
    fresh = torch.randn(300, 64, generator=torch.Generator().manual_seed(4)) * x.std() + x.mean(0)
    dist = torch.cdist(router.project(fresh).double(), router.centroids.double())
    top2 = dist.topk(2, largest=False).values
    clear = (top2[:, 1] - top2[:, 0]) > 1e-4  # ignore float ties
    assert clear.float().mean() > 0.95
    assert torch.equal(router.predict(fresh)[clear], dist.argmin(1)[clear])


def test_router_without_pca_clusters_raw_inputs():
    x, truth = blobs(dim=6)
    router = Router.fit(x, n_clusters=4, pca_factor=None, seed=1)
    assert router.components is None
    torch.testing.assert_close(router.project(x), x)
    assert same_partition(router.predict(x), truth)


def test_router_predict_flattens_leading_dims_and_is_seeded():
    _, _, x = layer_data()
    a = Router.fit(x, 4, pca_factor=4, seed=7)
    b = Router.fit(x, 4, pca_factor=4, seed=7)
    assert torch.equal(a.centroids, b.centroids)
    batch = x[:30].reshape(3, 10, -1)
    assert torch.equal(a.predict(batch), a.predict(x[:30]))


# ---------------------------------------------------------------- experts and routed layer

def test_one_expert_is_plain_sparsegpt_exactly():
    weight, bias, x = layer_data()
    for sparsity in (0.5, "2:4", 0.9):
        layer = expand_layer(weight, x, bias, n_experts=1, sparsity=sparsity, pca_factor=4)
        assert torch.equal(layer.experts[0], prune_weight(weight, x, "sparsegpt", sparsity))
        held = torch.randn(50, 32)
        torch.testing.assert_close(layer(held), F.linear(held, prune_weight(weight, x, "sparsegpt", sparsity), bias))


def test_each_expert_uses_only_its_clusters_hessian():
    weight, _, x = layer_data()
    router = Router.fit(x, 4, pca_factor=4, seed=0)
    labels = router.predict(x)
    experts = build_experts(weight, x, labels, 4, sparsity=0.7)
    for c in range(4):
        members = x[labels == c]
        assert experts.tokens[c] == members.shape[0]
        assert torch.equal(experts.weights[c], prune_weight(weight, members, "sparsegpt", 0.7))
        assert (experts.weights[c] == 0).float().mean().item() == pytest.approx(0.7, abs=0.01)
    assert not torch.equal(experts.weights[0], experts.weights[1])


def test_small_clusters_report_raised_damping():
    weight, _, x = layer_data()
    labels = torch.zeros(x.shape[0], dtype=torch.long)
    labels[:3] = 1  # three tokens in 32 dimensions: a singular Hessian
    experts = build_experts(weight, x, labels, 2, sparsity=0.5, percdamp=0.0)
    assert experts.tokens == [x.shape[0] - 3, 3]
    assert experts.damping[1] > 0.0


def test_routed_layer_equals_per_token_expert_matmul_in_token_order():
    weight, bias, x = layer_data()
    layer = expand_layer(weight, x, bias, n_experts=4, sparsity=0.5, pca_factor=4)
    tokens = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:60]].reshape(3, 20, -1)
    out = layer(tokens)
    assert out.shape == (3, 20, 24)
    labels = layer.router.predict(tokens.reshape(-1, 32))
    assert len(set(labels.tolist())) > 1
    flat = tokens.reshape(-1, 32)
    for t in range(flat.shape[0]):
        ref = layer.experts[labels[t]] @ flat[t] + bias
        torch.testing.assert_close(out.reshape(-1, 24)[t], ref, rtol=1e-5, atol=1e-5)


def test_routed_layer_keeps_bias_none_and_dtype():
    weight, _, x = layer_data()
    layer = expand_layer(weight.double(), x.double(), None, n_experts=3, pca_factor=4)
    assert layer.bias is None and layer.experts.dtype == torch.float64
    assert layer(x[:5].double()).dtype == torch.float64


def test_shared_input_groups_groups_identical_inputs():
    a, b = torch.randn(10, 4), torch.randn(10, 4)
    assert shared_input_groups({"g": a, "u": a.clone(), "d": b}) == [["g", "u"], ["d"]]


# ---------------------------------------------------------------- whole model

def _snapshot(lm):
    return {n: m for n, m in lm.model.named_modules()}, {k: v.clone() for k, v in lm.model.state_dict().items()}


def _assert_restored(lm, snap, windows, logits):
    modules, state = snap
    now = dict(lm.model.named_modules())
    assert now.keys() == modules.keys() and all(now[n] is modules[n] for n in modules)
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    with torch.no_grad():
        assert torch.equal(lm.model(windows).logits, logits)


def test_expanded_swaps_routed_layers_in_and_restores_bit_for_bit(tiny, tiny_windows):
    snap = _snapshot(tiny)
    with torch.no_grad():
        dense = tiny.model(tiny_windows).logits
    layers = wnb.ffn_layers(tiny)
    with expanded(tiny, n_experts=4, sparsity=0.5, calib=tiny_windows, pca_factor=4, progress=False) as exp:
        assert set(exp.layers) == set(layers)
        for name in layers:
            assert isinstance(tiny.model.get_submodule(name), RoutedLayer)
        routers = {name: tiny.model.get_submodule(name).router for name in layers}
        with torch.no_grad():
            out = tiny.model(tiny_windows).logits
        assert not torch.equal(out, dense)
        report = exp.report()
        assert len(report) == 4 * len(layers)
        assert report.groupby("layer")["tokens"].sum().eq(tiny_windows.numel()).all()
    _assert_restored(tiny, snap, tiny_windows, dense)
    blocks = {}
    for name, router in routers.items():
        blocks.setdefault(name.rsplit(".", 2)[0], []).append((name.rsplit(".", 1)[1], router))
    for members in blocks.values():
        kinds = dict(members)
        if "gate_proj" in kinds:  # Llama: gate and up share one router, down has its own
            assert kinds["gate_proj"] is kinds["up_proj"] and kinds["down_proj"] is not kinds["gate_proj"]
        else:  # GPT-NeoX, GPT-2: one router per layer
            assert len({id(r) for _, r in members}) == len(members)


def test_expanded_restores_after_an_error_in_the_block(tiny_llama, tiny_windows):
    snap = _snapshot(tiny_llama)
    with torch.no_grad():
        dense = tiny_llama.model(tiny_windows).logits
    with pytest.raises(RuntimeError, match="boom"):
        with expanded(tiny_llama, n_experts=2, calib=tiny_windows, pca_factor=4, progress=False):
            raise RuntimeError("boom")
    _assert_restored(tiny_llama, snap, tiny_windows, dense)


def test_expanded_restores_after_an_interrupt_while_building(tiny_llama, tiny_windows, monkeypatch):
    import wnb.compression.expansion as expand

    snap = _snapshot(tiny_llama)
    with torch.no_grad():
        dense = tiny_llama.model(tiny_windows).logits
    calls = []
    real = expand.build_experts

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # after block 0 is expanded
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(expand, "build_experts", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with expanded(tiny_llama, n_experts=2, calib=tiny_windows, pca_factor=4, progress=False):
            pass
    assert len(calls) == 4
    _assert_restored(tiny_llama, snap, tiny_windows, dense)


def _expanded_router_and_inputs(lm, windows, name, **kwargs):
    """Expand every FFN layer (3 experts, seed 2); return the centroids of ``name``'s router and the
    inputs ``name`` receives in the expanded model (plain forward pre-hook)."""
    seen = []
    with expanded(lm, n_experts=3, calib=windows, pca_factor=4, seed=2, progress=False, **kwargs) as exp:
        layer = lm.model.get_submodule(name)
        hook = layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
        with torch.no_grad():
            lm.model(windows)
        hook.remove()
        return exp.layers[name].router.centroids, seen[0].clone()


def test_expanded_routers_are_fitted_on_the_inputs_of_the_expanded_earlier_blocks(tiny_neox, tiny_windows):
    name = "gpt_neox.layers.2.mlp.dense_h_to_4h"
    centroids, seen = _expanded_router_and_inputs(tiny_neox, tiny_windows, name)
    refit = Router.fit(seen, 3, pca_factor=4, seed=2)
    torch.testing.assert_close(refit.centroids, centroids, rtol=1e-4, atol=1e-4)
    # the dense model's inputs to the same layer are different (blocks 0 and 1 were expanded)
    dense = wnb.capture(tiny_neox, [name], tiny_windows, outputs=False, progress=False)[name].inputs
    assert not torch.allclose(dense, seen, atol=1e-3)


@pytest.mark.parametrize("true_sequential", [True, False])
def test_down_proj_router_sees_the_expanded_gate_and_up_only_when_true_sequential(tiny_llama, tiny_windows,
                                                                                   true_sequential):
    """Block 0's down_proj: true-sequential fits its router on what the expanded gate and up projections
    produce (its inputs in the expanded model); block order fits it on the dense model's inputs."""
    name = "model.layers.0.mlp.down_proj"
    dense = wnb.capture(tiny_llama, [name], tiny_windows, outputs=False, progress=False)[name].inputs
    centroids, seen = _expanded_router_and_inputs(tiny_llama, tiny_windows, name, true_sequential=true_sequential)
    assert not torch.allclose(dense, seen, atol=1e-3)
    refit = Router.fit(seen if true_sequential else dense, 3, pca_factor=4, seed=2)
    torch.testing.assert_close(refit.centroids, centroids, rtol=1e-4, atol=1e-4)


def test_expanded_layers_subset_and_n_m(tiny_gpt2, tiny_windows):
    name = "transformer.h.1.mlp.c_fc"
    with expanded(tiny_gpt2, n_experts=2, sparsity="2:4", calib=tiny_windows, layers=[name], pca_factor=4,
                  progress=False) as exp:
        assert list(exp.layers) == [name]
        experts = exp.layers[name].experts
        groups = experts.reshape(2, experts.shape[1], -1, 4)
        assert ((groups == 0).sum(-1) >= 2).all()
        assert isinstance(tiny_gpt2.model.get_submodule("transformer.h.1.mlp.c_proj"), torch.nn.Module)
        assert not isinstance(tiny_gpt2.model.get_submodule("transformer.h.1.mlp.c_proj"), RoutedLayer)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_experts": 97}, "more than the 96 calibration tokens"),
    ({"n_experts": 0}, "positive integer"),
    ({"pca_factor": 1}, "PCA dimensions"),
    ({"pca_factor": 64}, "PCA dimensions"),
    ({"pca_factor": -2}, "pca_factor"),
    ({"sparsity": 1.5}, "sparsity"),
    ({"sparsity": "4:2"}, "N:M"),
    ({"sparsity": "2:5"}, "multiple of 5"),
    ({"calib": None}, "calibration windows"),
    ({"layers": ["model.layers.0.mlp.gate"]}, "closest valid names"),
    ({"max_bytes": 1000}, "GiB"),
])
def test_bad_input_is_refused_before_work(tiny_llama, tiny_windows, monkeypatch, kwargs, message):
    import wnb.compression.expansion as expand

    def no_work(*a, **k):
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr(expand.Router, "fit", no_work)
    args = dict(n_experts=2, sparsity=0.5, calib=tiny_windows, pca_factor=4, progress=False) | kwargs
    with pytest.raises(WnbError, match=message):
        with expanded(tiny_llama, **args):
            pass


def test_expand_layer_refuses_more_experts_than_tokens():
    weight, bias, x = layer_data(n=40)
    with pytest.raises(WnbError, match="calibration tokens"):
        expand_layer(weight, x[:3], bias, n_experts=4, pca_factor=4)


def test_one_expert_whole_model_is_sequential_sparsegpt(tiny_llama, tiny_windows):
    with torch.no_grad():
        with wnb.pruned(tiny_llama, "sparsegpt", 0.6, tiny_windows, progress=False):
            ref = tiny_llama.model(tiny_windows).logits
        with expanded(tiny_llama, n_experts=1, sparsity=0.6, calib=tiny_windows, pca_factor=4, progress=False):
            out = tiny_llama.model(tiny_windows).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- analyses

def synthetic_study(n_experts=4, sparsity=0.6, seed=0):
    from wnb.experiments.layer_study import LayerStudy

    weight, bias, x = layer_data(n=800, seed=seed)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    calib, held = x[perm[:600]], x[perm[600:]]
    routed = expand_layer(weight, calib, bias, n_experts=n_experts, sparsity=sparsity, pca_factor=4, seed=seed)
    return LayerStudy("synthetic", weight, bias, calib, held, prune_weight(weight, calib, "sparsegpt", sparsity),
                      routed, sparsity)


def per_token_expert_outputs(study, x):
    labels = torch.cdist(study.expansion.router.project(x).double(),
                         study.expansion.router.centroids.double()).argmin(1)
    return torch.stack([study.expansion.experts[c] @ x[t] + study.bias for t, c in enumerate(labels.tolist())]), labels


def test_relative_improvement_matches_reference_errors():
    study = synthetic_study()
    table = wnb.relative_improvement(study)
    x = study.held_inputs.double()
    dense = (x @ study.weight.double().T + study.bias.double()).numpy()
    sgpt = (x @ study.sparsegpt.double().T + study.bias.double()).numpy()
    expn, _ = per_token_expert_outputs(study, study.held_inputs)
    rmse_s = np.sqrt(((sgpt - dense) ** 2).mean(0))
    rmse_e = np.sqrt(((expn.double().numpy() - dense) ** 2).mean(0))
    np.testing.assert_allclose(table["rmse_sparsegpt"], rmse_s, rtol=1e-4)
    np.testing.assert_allclose(table["rmse_expansion"], rmse_e, rtol=1e-4)
    np.testing.assert_allclose(table["ri"], rmse_s / rmse_e, rtol=1e-4)
    calib_out = (study.calib_inputs.double() @ study.weight.double().T + study.bias.double()).numpy()
    np.testing.assert_allclose(table["mean"], calib_out.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table["variance"], calib_out.var(0), rtol=1e-4)
    assert table["ri"].median() > 1  # experts fitted per mode beat one SparseGPT weight on these inputs


def test_one_expert_has_no_relative_improvement():
    table = wnb.relative_improvement(synthetic_study(n_experts=1))
    np.testing.assert_allclose(table["ri"], 1.0, rtol=1e-4)


def test_ri_regression_matches_numpy_and_pandas():
    from scipy.stats import rankdata

    gen = np.random.default_rng(0)
    table = pd.DataFrame({"wd": gen.random(200), "mean": gen.normal(size=200), "variance": gen.random(200)})
    table["ri"] = 1 + 2 * table["wd"] + 0.1 * gen.normal(size=200)
    table.loc[3, "ri"] = np.nan
    result = wnb.ri_regression(table).set_index("predictor")
    clean = table.dropna()
    for name in ("wd", "mean", "variance"):
        slope, intercept = np.polyfit(clean[name], clean["ri"], 1)
        r = np.corrcoef(clean[name], clean["ri"])[0, 1]
        rho = np.corrcoef(rankdata(clean[name]), rankdata(clean["ri"]))[0, 1]
        assert result.loc[name, "slope"] == pytest.approx(slope)
        assert result.loc[name, "intercept"] == pytest.approx(intercept)
        assert result.loc[name, "r2"] == pytest.approx(r ** 2)
        assert result.loc[name, "spearman"] == pytest.approx(rho)
        assert result.loc[name, "neurons"] == 199
    assert result["r2"].idxmax() == "wd"
    with pytest.raises(WnbError, match="no column"):
        wnb.ri_regression(table, predictors=("md",))


def test_token_shares_and_expert_outputs_follow_the_routing():
    study = synthetic_study()
    ref, labels = per_token_expert_outputs(study, study.held_inputs)
    shares = wnb.token_shares(study)
    np.testing.assert_array_equal(shares["tokens"], np.bincount(labels.numpy(), minlength=4))
    assert shares["share"].sum() == pytest.approx(1.0)
    assert shares["calib_tokens"].sum() == study.calib_inputs.shape[0]
    rows = wnb.expert_outputs(study, neuron=5)
    np.testing.assert_array_equal(rows["expert"], labels.numpy())
    np.testing.assert_allclose(rows["expansion"], ref[:, 5].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rows["dense"], (study.held_inputs @ study.weight[5] + study.bias[5]).numpy(),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(WnbError, match="neuron"):
        wnb.expert_outputs(study, neuron=24)


def test_entanglement_change_weights_experts_by_token_share():
    study = synthetic_study()
    table = wnb.entanglement_change(study, neurons=[0, 7], n_pairs=500)
    x = study.held_inputs
    y, labels = per_token_expert_outputs(study, x)
    dense = x @ study.weight.T + study.bias
    for row in table.itertuples():
        before = wnb.wasserstein_to_gaussian(dense[:, [row.neuron]])[0].item()
        parts = [(float((labels == c).float().mean()), wnb.wasserstein_to_gaussian(y[labels == c][:, [row.neuron]])[0].item())
                 for c in range(4) if (labels == c).sum() >= 2]
        after = sum(s * w for s, w in parts) / sum(s for s, _ in parts)
        assert row.wd_before == pytest.approx(before, rel=1e-6)
        assert row.wd_after == pytest.approx(after, rel=1e-4)
        assert np.isfinite(row.md_before) and np.isfinite(row.md_after)


def test_clustering_disentangles_a_bimodal_neuron():
    """A neuron whose output is a mixture of two well-separated modes is far from Gaussian; split by a
    router that finds the modes, each expert sees one near-Gaussian mode."""
    from wnb.experiments.layer_study import LayerStudy

    gen = torch.Generator().manual_seed(0)
    modes = torch.tensor([[4.0, 0, 0, 0], [-4.0, 0, 0, 0]])
    x = modes[torch.randint(2, (2000,), generator=gen)] + torch.randn(2000, 4, generator=gen)
    weight = torch.tensor([[1.0, 0.3, 0.0, 0.0]])
    router = Router.fit(x[:1000], 2, pca_factor=None, seed=0)
    routed = expand_layer(weight, x[:1000], None, router=router, sparsity=0.0)
    study = LayerStudy("bimodal", weight, None, x[:1000], x[1000:], weight.clone(), routed, 0.0)
    table = wnb.entanglement_change(study, n_pairs=400)
    assert table.loc[0, "wd_before"] > 0.2
    assert table.loc[0, "wd_after"] < 0.5 * table.loc[0, "wd_before"]
    assert table.loc[0, "md_after"] < table.loc[0, "md_before"]
    # the control: random groups of the experts' sizes are each still bimodal
    assert table.loc[0, "wd_after_random"] > 0.8 * table.loc[0, "wd_before"]


def test_random_partition_keeps_the_group_sizes_and_its_wd_is_recomputable():
    from wnb.experiments.layer_study import random_partition

    study = synthetic_study()
    labels = study.labels("held_out")
    shuffled = random_partition(labels, seed=3)
    assert torch.equal(torch.bincount(shuffled, minlength=4), torch.bincount(labels, minlength=4))
    assert not torch.equal(shuffled, labels) and torch.equal(shuffled, random_partition(labels, seed=3))
    table = wnb.entanglement_change(study, neurons=[0, 7], n_pairs=200, seed=3, md=False)
    y, _ = per_token_expert_outputs(study, study.held_inputs)
    for row in table.itertuples():
        parts = [(float((shuffled == c).float().mean()),
                  wnb.wasserstein_to_gaussian(y[shuffled == c][:, [row.neuron]])[0].item())
                 for c in range(4) if (shuffled == c).sum() >= 2]
        assert row.wd_after_random == pytest.approx(sum(s * w for s, w in parts) / sum(s for s, _ in parts), rel=1e-4)


def test_study_layer_on_a_tiny_model(tiny_gpt2, tiny_windows):
    name = "transformer.h.0.mlp.c_fc"
    study = wnb.study_layer(tiny_gpt2, name, tiny_windows[:4], tiny_windows[4:], n_experts=3, sparsity=0.5,
                            pca_factor=4, progress=False)
    hooks = []
    module = tiny_gpt2.model.get_submodule(name)
    handle = module.register_forward_hook(lambda m, a, o: hooks.append((a[0].reshape(-1, 32), o.reshape(-1, 128))))
    with torch.no_grad():
        tiny_gpt2.model(tiny_windows[4:])
    handle.remove()
    x, y = hooks[0]
    torch.testing.assert_close(study.held_inputs, x)
    torch.testing.assert_close(study.outputs("dense"), y, rtol=1e-5, atol=1e-5)  # Conv1D orientation handled
    assert study.expansion.n_experts == 3 and sum(study.expansion.tokens) == 4 * 16
    with pytest.raises(WnbError, match="calibration tokens"):
        wnb.study_layer(tiny_gpt2, name, tiny_windows[:1], tiny_windows[4:], n_experts=17, pca_factor=4)


def test_expansion_sweep_rows_and_layer_error(tiny_llama, tiny_windows):
    calib, held = tiny_windows[:4], tiny_windows[4:]
    name = "model.layers.1.mlp.down_proj"
    table = wnb.expansion_sweep(tiny_llama, calib, held, n_experts=(1, 2), sparsities=(0.5, "2:4"),
                                error_layer=name, pca_factor=4, progress=False)
    assert list(table["method"]) == ["dense", "sparsegpt", "expansion", "sparsegpt", "expansion"]
    assert list(table["n_experts"]) == [0, 1, 2, 1, 2]
    assert list(table["sparsity"]) == ["0%", "50%", "50%", "2:4", "2:4"]
    assert table.loc[0, "perplexity"] == pytest.approx(wnb.perplexity(tiny_llama, held, progress=False))
    with wnb.pruned(tiny_llama, "sparsegpt", 0.5, calib, progress=False):
        assert table.loc[1, "perplexity"] == pytest.approx(wnb.perplexity(tiny_llama, held, progress=False), rel=1e-4)
    dense_w = tiny_llama.model.get_submodule(name).weight.detach().double()
    seen = []
    with expanded(tiny_llama, 2, "2:4", calib, pca_factor=4, progress=False):
        layer = tiny_llama.model.get_submodule(name)
        handle = layer.register_forward_hook(lambda m, a, o: seen.append((a[0].double(), o.double())))
        with torch.no_grad():
            tiny_llama.model(held)
        handle.remove()
    x, y = seen[0]
    ref = x @ dense_w.T
    assert table.loc[4, "layer_error"] == pytest.approx(((y - ref).norm() / ref.norm()).item(), rel=1e-4)
    assert (table["perplexity"] > 0).all()


def test_shared_router_routes_a_tensor_once_but_sees_in_place_changes():
    _, _, x = layer_data()
    router = Router.fit(x, 4, pca_factor=4, seed=0)
    batch = x[:50].clone()
    first = router.predict(batch)
    assert router.predict(batch) is first  # gate and up: the same tensor is routed once
    batch.mul_(-1)  # an in-place change must be seen
    brute = torch.cdist(router.project(batch).double(), router.centroids.double()).argmin(1)
    assert torch.equal(router.predict(batch), brute)
    with torch.inference_mode():  # inference tensors have no version counter: no caching, same answer
        frozen = x[:50].clone()
        assert torch.equal(router.predict(frozen), router.predict(frozen))
        assert torch.equal(router.predict(frozen), first)
