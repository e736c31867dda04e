"""Offloading (wnb.model.offload) on the CPU: the refusals, the memory estimate of a block, and the hooks'
schedule. On a CPU the moves themselves are no-ops, so the tests watch ``_fetch`` / ``_evict`` (the two
functions every move goes through) and check at each block call which blocks would be on the compute
device. The moves' effect on real tensors (CUDA and pinned memory) is tested in tests/gpu/test_gpu.py."""
import copy

import pytest
import torch
from transformers import (
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

import wnb
import wnb.model
import wnb.model.architectures
import wnb.model.lm
import wnb.model.loading
from wnb import cli
from wnb.errors import WnbError
from wnb.model import offload
from wnb.model.architectures import decoder_blocks, module
from wnb.model.loading import estimate_block_bytes

VOCAB = 128
CONFIGS = {
    "llama": lambda: LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
    "neox": lambda: GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                  num_attention_heads=4, max_position_embeddings=128),
}
MODELS = {"llama": LlamaForCausalLM, "neox": GPTNeoXForCausalLM}


def tiny(family: str) -> wnb.LM:
    """A fresh tiny model (offloading adds hooks, so the session-wide ones of conftest are not used)."""
    torch.manual_seed(0)
    return wnb.wrap_model(MODELS[family](CONFIGS[family]()).eval(), name=family)


@pytest.fixture(params=sorted(CONFIGS))
def family(request):
    return request.param


class Moves:
    """Replays every move of an offloaded model's blocks and notes, at each block call, which blocks
    are on the compute device."""

    def __init__(self, lm, monkeypatch):
        self.blocks = [module(lm, name) for name in decoder_blocks(lm)]
        self.index = {id(b): i for i, b in enumerate(self.blocks)}
        self.on_device: set[int] = set()
        self.log: list[tuple[str, int]] = []
        fetch, evict = offload._fetch, offload._evict

        def fake_fetch(block):
            self.log.append(("fetch", self.index[id(block)]))
            self.on_device.add(self.index[id(block)])
            fetch(block)

        def fake_evict(block):
            self.log.append(("evict", self.index[id(block)]))
            self.on_device.discard(self.index[id(block)])
            evict(block)

        monkeypatch.setattr(offload, "_fetch", fake_fetch)
        monkeypatch.setattr(offload, "_evict", fake_evict)
        for i, block in enumerate(self.blocks):  # registered after offload's own pre-hook, so run after it
            block.register_forward_pre_hook(lambda mod, args, _i=i: self.log.append(("run", _i, set(self.on_device))))

    def runs(self):
        return [entry[1:] for entry in self.log if entry[0] == "run"]

    def moves(self):
        return [entry for entry in self.log if entry[0] != "run"]


@pytest.fixture
def offloaded(family, monkeypatch):
    lm = tiny(family)
    dense = copy.deepcopy(lm.model)
    wnb.offload_blocks(lm, "cpu")
    return lm, dense, Moves(lm, monkeypatch)


def ids():
    return torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- refusals

def test_offload_on_the_cpu_is_refused_before_loading():
    with pytest.raises(WnbError, match="onto a GPU one at a time.*whole model already is in memory"):
        wnb.load_model(device="cpu", offload=True)


def test_offload_of_a_remote_model_is_refused():
    with pytest.raises(WnbError, match="remote='local'"):
        wnb.load_model(remote="local", offload=True)


@pytest.mark.parametrize("argv, message", [
    (["prune", "--device", "cpu", "--offload"], "onto a GPU one at a time"),
    (["score", "--remote", "local", "--offload"], "remote"),
])
def test_command_refuses_offload_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "x"
    assert cli.main([*argv, "-o", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_offloading_twice_is_refused():
    lm = wnb.offload_blocks(tiny("llama"), "cpu")
    with pytest.raises(WnbError, match="offloaded already"):
        wnb.offload_blocks(lm, "cpu")


def test_resident_takes_a_block_only():
    lm = wnb.offload_blocks(tiny("llama"), "cpu")
    with pytest.raises(WnbError, match="one of the transformer blocks"):
        with wnb.resident(lm, module(lm, "model.layers.0.mlp")):
            pass


# ---------------------------------------------------------------- memory estimate

@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_block_estimate_is_a_real_blocks_weights(family, dtype, tmp_path):
    CONFIGS[family]().save_pretrained(tmp_path)  # a local folder holding only the config
    lm = tiny(family)
    itemsize = wnb.model.lm.DTYPES[dtype].itemsize
    real = [sum(p.numel() for p in module(lm, b).parameters()) * itemsize for b in decoder_blocks(lm)]
    assert estimate_block_bytes(str(tmp_path), dtype) == real
    outside = sum(p.numel() for p in lm.model.parameters()) * itemsize - sum(real)
    assert outside > 0 and wnb.model.loading.estimate_model_bytes(str(tmp_path), dtype) == outside + sum(real)


# ---------------------------------------------------------------- the hooks' schedule

def test_each_block_is_on_the_device_only_while_it_runs(offloaded):
    lm, dense, moves = offloaded
    assert lm.offload == lm.device == torch.device("cpu")
    with torch.no_grad():
        got = lm.model(ids()).logits
        want = dense(ids()).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert moves.runs() == [(i, {i}) for i in range(3)]
    assert moves.moves() == [(kind, i) for i in range(3) for kind in ("fetch", "evict")]


def test_a_forward_stopped_inside_a_block_still_moves_it_back(offloaded):
    lm, _, moves = offloaded

    class Stop(Exception):
        pass

    def stop(mod, args):
        raise Stop

    # registered after offload's pre-hook, as the sequential walk's catch of a block's inputs is
    handle = moves.blocks[1].register_forward_pre_hook(stop)
    with pytest.raises(Stop), torch.no_grad():
        lm.model(ids())
    handle.remove()
    assert moves.moves()[-2:] == [("fetch", 1), ("evict", 1)] and moves.on_device == set()


def test_an_early_stopped_capture_leaves_no_block_on_the_device(offloaded):
    lm, dense, moves = offloaded
    layer = [n for n in wnb.ffn_layers(lm) if wnb.model.architectures.block_of(lm, n) == 1][0]  # a forward, to order them
    moves.log.clear()
    acts = wnb.capture(lm, [layer], ids(), progress=False)[layer]  # nnsight stops the model in block 1
    assert moves.runs() == [(0, {0}), (1, {1})] and moves.on_device == set()
    reference = wnb.capture(wnb.wrap_model(dense), [layer], ids(), progress=False)[layer]
    assert torch.equal(acts.outputs, reference.outputs)


def test_a_resident_block_stays_for_the_whole_context(offloaded):
    lm, _, moves = offloaded
    block = moves.blocks[1]
    with wnb.resident(lm, block) as held:
        assert held is block and moves.on_device == {1}
        with wnb.resident(lm, block):  # nested: still held after the inner exit
            pass
        assert moves.on_device == {1}
        with torch.no_grad():
            lm.model(ids())
        assert moves.runs()[:3] == [(0, {0, 1}), (1, {1}), (2, {1, 2})]
        assert moves.on_device == {1}
    assert moves.on_device == set() and moves.moves()[-1] == ("evict", 1)


def test_a_resident_block_goes_back_after_an_exception(offloaded):
    lm, _, moves = offloaded
    with pytest.raises(KeyError), wnb.resident(lm, moves.blocks[2]):
        assert moves.on_device == {2}
        raise KeyError("interrupted")
    assert moves.on_device == set()


def test_edits_made_while_resident_are_kept(offloaded):
    lm, dense, moves = offloaded
    name = decoder_blocks(lm)[1]
    layer = [n for n in wnb.ffn_layers(lm) if n.startswith(name + ".")][0]
    weight = module(lm, layer).weight
    with wnb.resident(lm, moves.blocks[1]):
        wnb.model.architectures.set_layer_weight(lm, layer, torch.zeros_like(wnb.layer_weight(lm, layer)))
    assert module(lm, layer).weight is weight and not weight.any()  # same Parameter, edited
    with torch.no_grad():
        assert not torch.equal(lm.model(ids()).logits, dense(ids()).logits)


def test_resident_is_a_no_op_without_offload(monkeypatch):
    lm = tiny("llama")
    moved = []
    monkeypatch.setattr(offload, "_fetch", moved.append)
    monkeypatch.setattr(offload, "_evict", moved.append)
    with wnb.resident(lm, module(lm, decoder_blocks(lm)[0])):
        with torch.no_grad():
            lm.model(ids())
    assert moved == [] and lm.offload is None



# ---------------------------------------------------------------- the sequential walk

def calib():
    return torch.randint(0, VOCAB, (6, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_block_at_a_time_pruning_gives_the_all_in_memory_weights(offloaded, method):
    """The walk keeps the block it works on resident (and only that one), and the pruned weights are
    those of the model that was never offloaded."""
    lm, dense, moves = offloaded
    plain = wnb.wrap_model(dense)
    layers = wnb.ffn_layers(lm)
    with wnb.pruned(plain, method, 0.5, calib=calib(), batch_size=2, progress=False):
        want = {n: wnb.layer_weight(plain, n).detach().clone() for n in layers}
    moves.log.clear()
    with wnb.pruned(lm, method, 0.5, calib=calib(), batch_size=2, progress=False):
        got = {n: wnb.layer_weight(lm, n).detach().clone() for n in layers}
        assert moves.on_device == set()
    for name in layers:
        assert torch.equal(got[name], want[name]), name
    assert all(on == {i} for i, on in moves.runs())
    # block 0 once per batch to catch its inputs, then each block once, in order, for all its runs
    catch = [0] * (calib().shape[0] // 2)
    for kind in ("fetch", "evict"):
        assert [i for k, i in moves.moves() if k == kind] == catch + [0, 1, 2], kind


def test_block_at_a_time_expansion_gives_the_all_in_memory_outputs(offloaded):
    lm, dense, moves = offloaded
    plain = wnb.wrap_model(dense)
    with wnb.expanded(plain, 2, 0.5, calib(), progress=False, n_init=1):
        with torch.no_grad():
            want = plain.model(ids()).logits
    with wnb.expanded(lm, 2, 0.5, calib(), progress=False, n_init=1):
        assert moves.on_device == set()
        with torch.no_grad():
            got = lm.model(ids()).logits
    assert moves.on_device == set()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
