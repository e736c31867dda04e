"""Device and dtype paths: the bundled model in bf16/fp16 on CUDA (skipped where there is no CUDA
device) and in bf16 on the CPU (always), with every statistic in float32/float64."""
import pytest
import torch

import wnb
import wnb.cli
import wnb.model.architectures
import wnb.model.loading
from wnb import cli
from wnb.cli.setup import OFFLOAD_ACTIVATIONS, check_fits
from wnb.errors import WnbError

NO_CUDA = "needs a CUDA device (none on this machine); run on a GPU machine"
GATE, UP = "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"
SETTINGS = [pytest.param(("cpu", "bfloat16"), marks=pytest.mark.integration, id="cpu-bf16"),
            pytest.param(("cuda", "bfloat16"), marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA),
                         id="cuda-bf16"),
            pytest.param(("cuda", "float16"), marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA),
                         id="cuda-fp16")]


@pytest.fixture(scope="module", params=SETTINGS)
def lm(request):
    device, dtype = request.param
    return wnb.load_model(device=device, dtype=dtype)


@pytest.fixture(scope="module")
def windows(lm):
    return wnb.token_windows(lm, wnb.load_corpus(), seq_len=64, n_calib=4, n_eval=2, seed=0)


def hooked_outputs(lm, name, ids):
    """Reference capture: a plain forward hook, the layer's own output in the model's dtype."""
    kept = []
    handle = lm.model.get_submodule(name).register_forward_hook(lambda m, a, out: kept.append(out))
    try:
        with torch.no_grad():
            lm.model(ids.to(lm.device))
    finally:
        handle.remove()
    return kept[0].reshape(-1, kept[0].shape[-1])


def test_weights_on_the_device_in_the_dtype(lm):
    dtypes = {p.dtype for p in lm.model.parameters()}
    devices = {p.device.type for p in lm.model.parameters()}
    assert dtypes == {lm.dtype} and lm.dtype in (torch.bfloat16, torch.float16)
    assert devices == {lm.device.type}


def test_capture_is_float32_on_the_cpu_and_exact(lm, windows):
    calib, _ = windows
    acts = wnb.capture(lm, [GATE], calib, batch_size=4, progress=False)[GATE]
    assert acts.outputs.dtype == acts.inputs.dtype == torch.float32
    assert acts.outputs.device.type == "cpu"
    reference = hooked_outputs(lm, GATE, calib)
    assert torch.equal(acts.outputs, reference.float().cpu())  # the model's own numbers, widened exactly


def test_scores_in_float64_and_streaming_on_the_device(lm, windows):
    calib, _ = windows
    y = hooked_outputs(lm, GATE, calib)  # bf16/fp16 on the model's device
    exact = wnb.wasserstein_to_gaussian(y.float().cpu())
    assert exact.dtype == torch.float64 and torch.isfinite(exact).all()
    seq_len = calib.shape[1]
    sketch = wnb.NeuronSketch(y.shape[1], seq_len)
    for part in y.view(-1, seq_len, y.shape[1]).split(4):
        sketch.update(part)
    assert sketch.counts.device.type == lm.device.type
    result = sketch.results()
    assert (result["wd"] - exact).abs().max() < 1e-3
    y64 = y.double().cpu()
    assert ((result["mean"] - y64.mean(0)).abs() <= 1e-6 * y64.std(0)).all()


def test_pruned_restores_the_dense_weights_bit_for_bit(lm, windows):
    calib, held_out = windows
    before = {n: lm.model.get_submodule(n).weight.detach().clone() for n in (GATE, UP)}
    dense = wnb.perplexity(lm, held_out, progress=False)
    with wnb.pruned(lm, "sparsegpt", 0.5, calib=calib, layers=[GATE, UP], progress=False) as report:
        weight = lm.model.get_submodule(GATE).weight
        assert weight.dtype == lm.dtype and weight.device.type == lm.device.type
        ppl = wnb.perplexity(lm, held_out, progress=False)
    assert all(r.zeros >= 0.5 for r in report.values())
    assert torch.isfinite(torch.tensor([dense, ppl])).all() and 0.9 * dense < ppl < 3 * dense
    for name, weight in before.items():
        assert torch.equal(lm.model.get_submodule(name).weight, weight)


def test_sparsegpt_on_the_device_matches_float32_on_the_cpu(lm, windows):
    calib, _ = windows
    x = wnb.capture(lm, [GATE], calib, outputs=False, progress=False)[GATE].inputs
    weight = wnb.layer_weight(lm, GATE).detach()
    here = wnb.prune_weight(weight, x, "sparsegpt", 0.5)
    cpu = wnb.prune_weight(weight.float().cpu(), x, "sparsegpt", 0.5)
    assert here.dtype == torch.float32 and here.device.type == lm.device.type
    agree = ((here.cpu() == 0) == (cpu == 0)).double().mean()
    assert agree > 0.99
    torch.testing.assert_close(here.cpu(), cpu, rtol=1e-2, atol=1e-3)


def test_expanded_runs_and_restores(lm, windows):
    calib, held_out = windows
    dense_module = lm.model.get_submodule(GATE)
    with wnb.expanded(lm, n_experts=2, sparsity=0.5, calib=calib, layers=[GATE], progress=False):
        ppl = wnb.perplexity(lm, held_out, progress=False)
    assert torch.isfinite(torch.tensor(ppl))
    assert lm.model.get_submodule(GATE) is dense_module


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_command_on_cuda_bf16(tmp_path):
    out = tmp_path / "gpu"
    assert cli.main(["score", "--device", "cuda", "--dtype", "bfloat16", "--seq-len", "64", "--windows", "4",
                     "--eval-windows", "1", "--layers", GATE, "--detail", "none", "-q", "-o", str(out)]) == 0
    info = __import__("json").loads((out / "manifest.json").read_text())
    assert info["status"] == "complete" and info["model"]["dtype"] == "bfloat16"
    assert info["model"]["device"].startswith("cuda")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason=NO_CUDA))])
def test_memory_check_refuses_what_cannot_fit(device):
    with pytest.raises(WnbError, match="GiB"):
        check_fits(1 << 60, torch.device(device), "this run")
    check_fits(1 << 20, torch.device(device), "this run")


@pytest.mark.integration
def test_model_size_is_estimated_before_loading():
    loaded = wnb.load_model(device="cpu")
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    assert wnb.model.loading.estimate_model_bytes() == pytest.approx(weights, rel=1e-3)
    assert wnb.model.loading.estimate_model_bytes(dtype="bfloat16") == pytest.approx(weights / 2, rel=1e-3)
    blocks = [sum(p.numel() * p.element_size() for p in loaded.model.get_submodule(b).parameters())
              for b in wnb.decoder_blocks(loaded)]
    assert wnb.model.loading.estimate_block_bytes() == blocks


# ---------------------------------------------------------------- offload: blocks in CPU memory, one at a time here

def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _block_placement(lm):
    """(devices of the tensors outside the blocks, number of blocks with a tensor on the GPU, all pinned?)"""
    blocks = [lm.model.get_submodule(b) for b in wnb.decoder_blocks(lm)]
    inside = {id(t) for b in blocks for t in (*b.parameters(), *b.buffers())}
    outside = {t.device for t in (*lm.model.parameters(), *lm.model.buffers()) if id(t) not in inside}
    on_gpu = sum(any(t.is_cuda for t in (*b.parameters(), *b.buffers())) for b in blocks)
    pinned = all(p.is_pinned() for b in blocks for p in b.parameters())
    return outside, on_gpu, pinned


@pytest.fixture(scope="module")
def offloaded():
    if not torch.cuda.is_available():
        pytest.skip(NO_CUDA)
    return wnb.load_model(device="cuda", dtype="float32", offload=True)


@pytest.fixture(scope="module")
def on_gpu():
    if not torch.cuda.is_available():
        pytest.skip(NO_CUDA)
    return wnb.load_model(device="cuda", dtype="float32")


@pytest.fixture(scope="module")
def offload_windows(on_gpu):
    return wnb.token_windows(on_gpu, wnb.load_corpus(), seq_len=64, n_calib=8, n_eval=4, seed=0)


def test_offloaded_blocks_stay_in_pinned_cpu_memory_between_calls(offloaded, offload_windows):
    calib, held_out = offload_windows
    assert offloaded.offload == offloaded.device and offloaded.device.type == "cuda"
    outside, blocks_on_gpu, pinned = _block_placement(offloaded)
    assert outside == {offloaded.device} and blocks_on_gpu == 0 and pinned
    wnb.perplexity(offloaded, held_out, batch_size=2, progress=False)
    wnb.capture(offloaded, [GATE], calib, progress=False)  # nnsight stops the model inside block 1
    outside, blocks_on_gpu, pinned = _block_placement(offloaded)
    assert outside == {offloaded.device} and blocks_on_gpu == 0 and pinned


def test_offloaded_perplexity_equals_the_model_on_the_gpu(offloaded, on_gpu, offload_windows):
    _, held_out = offload_windows
    want = wnb.perplexity(on_gpu, held_out, batch_size=2, progress=False)
    assert wnb.perplexity(offloaded, held_out, batch_size=2, progress=False) == pytest.approx(want, rel=1e-5)


def test_edits_to_a_resident_block_survive_its_move_back(offloaded):
    block = offloaded.model.get_submodule(wnb.decoder_blocks(offloaded)[1])
    weight = offloaded.model.get_submodule(GATE).weight
    dense = weight.detach().clone()
    with wnb.resident(offloaded, block):
        assert weight.is_cuda
        wnb.model.architectures.set_layer_weight(offloaded, GATE, torch.zeros_like(dense, device="cuda"))
    assert offloaded.model.get_submodule(GATE).weight is weight and not weight.is_cuda and weight.is_pinned()
    assert not weight.any()
    with torch.no_grad():
        weight.copy_(dense)


def test_block_at_a_time_pruning_gives_the_same_weights(offloaded, on_gpu, offload_windows):
    """The issue's test: whole-model SparseGPT with the blocks offloaded equals the all-in-memory run
    (``wnb.walk`` keeps each block resident while it is pruned)."""
    calib, _ = offload_windows
    layers = wnb.ffn_layers(on_gpu)
    with wnb.pruned(on_gpu, "sparsegpt", 0.5, calib, progress=False):
        want = {n: wnb.layer_weight(on_gpu, n).detach().cpu() for n in layers}
    with wnb.pruned(offloaded, "sparsegpt", 0.5, calib, progress=False):
        got = {n: wnb.layer_weight(offloaded, n).detach().cpu() for n in layers}
        assert _block_placement(offloaded)[1] == 0
    for name in layers:
        same_mask = ((got[name] == 0) == (want[name] == 0)).double().mean()
        assert same_mask > 0.999, name
        assert (got[name] - want[name]).norm() <= 1e-3 * want[name].norm(), name


def test_offloaded_peak_memory_is_below_the_weights(offloaded, offload_windows):
    _, held_out = offload_windows
    weights = _bytes(offloaded.model.parameters())
    blocks = _bytes(p for b in wnb.decoder_blocks(offloaded) for p in offloaded.model.get_submodule(b).parameters())
    assert blocks > weights / 2  # the blocks dominate, as in any large model
    torch.cuda.synchronize()
    others = torch.cuda.memory_allocated() - _bytes(t for t in offloaded.model.parameters() if t.is_cuda)
    torch.cuda.reset_peak_memory_stats()
    wnb.perplexity(offloaded, held_out, batch_size=1, progress=False)
    peak = torch.cuda.max_memory_allocated() - others  # this model's weights on the GPU and its activations
    assert peak < weights


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_command_with_offload_records_it(tmp_path):
    out = tmp_path / "offload"
    assert cli.main(["score", "--device", "cuda", "--offload", "--seq-len", "64", "--windows", "2",
                     "--eval-windows", "1", "--layers", GATE, "--detail", "none", "-q", "-o", str(out)]) == 0
    info = __import__("json").loads((out / "manifest.json").read_text())
    assert info["status"] == "complete" and info["model"]["offload"] is True
    estimate = info["memory_estimate_bytes"]
    assert estimate["gpu_with_offload"] - OFFLOAD_ACTIVATIONS < estimate["model_weights"]
