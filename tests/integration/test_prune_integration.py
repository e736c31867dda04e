"""The bundled SmolLM2-135M-Instruct pruned whole: 50% of every FFN layer, calibrated on 32x256 bundled
tokens. Perplexity must order as in the paper: magnitude > Wanda >= SparseGPT > dense."""
import hashlib

import pytest

import wnb

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def windows(bundled):
    return wnb.token_windows(bundled, wnb.load_corpus(), seq_len=256, n_calib=32, n_eval=4, seed=0)


def _hash(lm):
    return hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in lm.model.parameters())).hexdigest()


def test_fifty_percent_perplexity_ordering(bundled, windows):
    calib, held_out = windows
    before = _hash(bundled)
    ppl = {"dense": wnb.perplexity(bundled, held_out, progress=False)}
    for method in ("magnitude", "wanda", "sparsegpt"):
        with wnb.pruned(bundled, method, 0.5, calib=calib, progress=False) as report:
            assert len(report) == len(wnb.ffn_layers(bundled))
            assert all(r.zeros == pytest.approx(0.5) for r in report.values())
            ppl[method] = wnb.perplexity(bundled, held_out, progress=False)
    assert _hash(bundled) == before
    assert ppl["magnitude"] > ppl["wanda"] >= ppl["sparsegpt"] > ppl["dense"], ppl
