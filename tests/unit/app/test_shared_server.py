"""The app as a shared server: one job owns the model, results that assume the dense model are cached
only while it is dense, and a page's controls are inert while a job runs (issue 19).

References: layer outputs from plain PyTorch forward hooks on the dense model; "written under a dense
key" is read off the cache folder itself.
"""
import threading

import pytest
import torch
from helpers import hooked_outputs
from helpers.widgets import LAYER, USER_CACHE, isolated_widget_cache, windows  # noqa: F401 (fixtures)

import wnb
import wnb.app
import wnb.core
import wnb.experiments
import wnb.experiments.sweeps
import wnb.model.bundled
import wnb.tracing
import wnb.tracing.nll
import wnb.widgets
import wnb.widgets as ww
from wnb.app.session import Session
from wnb.core import cache, jobs
from wnb.model import state

BUNDLED_COPY = USER_CACHE / "models" / f"{wnb.model.bundled.BUNDLED}-float32"  # made by the `bundled` fixture
DOWNSTREAM = "model.layers.2.mlp.gate_proj"  # its outputs change when LAYER is pruned
DENSE_KINDS = ("capture", "neuron_table", "held_capture", "pruned_weight", "overview", "sign_quadrants",
               "layer_study", "sign_field")


def entries():
    root = cache.cache_dir()
    return {p.relative_to(root) for kind in DENSE_KINDS for p in (root / kind).glob("*.safetensors")}


def test_a_second_thread_is_refused_while_a_job_holds_the_model(tiny_llama, windows):
    calib, _ = windows
    inside, release = threading.Event(), threading.Event()

    def job():
        with wnb.pruned(tiny_llama, "magnitude", 0.9, layers=[LAYER], progress=False):
            inside.set()
            release.wait(30)

    worker = threading.Thread(target=job)
    worker.start()
    try:
        assert inside.wait(30)
        assert not state.is_dense(tiny_llama)
        with state.refusing(), pytest.raises(state.ModelBusy, match="pruned"):
            wnb.capture(tiny_llama, [LAYER], calib, progress=False)
        with state.refusing(), pytest.raises(state.ModelBusy):
            wnb.perplexity(tiny_llama, calib, progress=False)
    finally:
        release.set()
        worker.join(30)
    assert state.is_dense(tiny_llama)
    acts = wnb.capture(tiny_llama, [LAYER], calib, progress=False)  # free again
    torch.testing.assert_close(acts[LAYER].outputs, hooked_outputs(tiny_llama, LAYER, calib))


def test_a_result_of_a_changed_model_is_never_cached(tiny_llama, windows):
    calib, held_out = windows
    session = Session(lm=tiny_llama, calib=calib, held_out=held_out, budget="small")
    with wnb.pruned(tiny_llama, "magnitude", 0.9, layers=[LAYER], progress=False):
        pruned_view = session.layer(DOWNSTREAM, progress=False)
        pruned_out = hooked_outputs(tiny_llama, DOWNSTREAM, calib)
        torch.testing.assert_close(pruned_view.outputs, pruned_out)  # computed on the model as it is...
        assert entries() == set()  # ...but stored nowhere under a dense key
    dense_out = hooked_outputs(tiny_llama, DOWNSTREAM, calib)
    assert not torch.allclose(dense_out, pruned_out)
    view = session.layer(DOWNSTREAM, progress=False)  # not the pruned view kept in memory either
    torch.testing.assert_close(view.outputs, dense_out)
    assert {e.parts[0] for e in entries()} >= {"capture", "neuron_table"}
    fresh = Session(lm=tiny_llama, calib=calib, held_out=held_out, budget="small").layer(DOWNSTREAM, progress=False)
    torch.testing.assert_close(fresh.outputs, dense_out)


def test_the_same_tab_is_inert_while_its_sweep_holds_the_pruned_model(tiny_llama, windows, monkeypatch):
    """The deterministic reproduction: a sweep held inside ``pruned`` while the same tab's layer and
    method change (and another tab's layer): nothing is written under a dense key during the job, the
    controls are put back, and what is shown afterwards is the dense computation."""
    calib, held_out = windows
    app = ww.App(session=Session(lm=tiny_llama, calib=calib, held_out=held_out, budget="small"), threaded=True)
    app.start()
    view = app.sparsity
    view.start()
    assert view.last_error is None and view.layer.value == LAYER
    inside, release = threading.Event(), threading.Event()
    real = wnb.experiments.sweeps.perplexity_interval

    def held(lm, *args, **kwargs):
        if not state.is_dense(lm):  # the sweep's first pruned run: stay inside pruned until released
            inside.set()
            release.wait(60)
        return real(lm, *args, **kwargs)

    monkeypatch.setattr(wnb.experiments.sweeps, "perplexity_interval", held)
    before = entries()
    view.sparsities.value = "0.5"
    view.run_sweep.click()
    try:
        assert inside.wait(60), view.status.value
        assert jobs.active() is not None and not state.is_dense(tiny_llama)
        view.layer.value = DOWNSTREAM
        view.method.value = "wanda"
        app.neurons.layer.value = DOWNSTREAM
        view.run_ablation.click()  # another of the tab's buttons: refused, and it does not cancel the sweep
        assert entries() == before  # nothing written under a dense key during the job
        assert view.layer.value == LAYER and view.method.value == "sparsegpt"  # put back on the server
        assert app.neurons.layer.value == LAYER
        assert "not now" in view.status.value and view.job is not None and not view.job.cancelled
    finally:
        release.set()
        view.wait(timeout=120)
    assert view.job is None and view.last_error is None, view.last_error
    assert list(view.sweep_result["method"]) == ["dense", "magnitude", "wanda", "sparsegpt"]
    # What is shown after the job is the dense computation of the layer shown.
    x_held = hooked_outputs(tiny_llama, LAYER, held_out)
    torch.testing.assert_close(view.result.dense.double(), x_held.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(app.neurons.view.outputs, hooked_outputs(tiny_llama, LAYER, calib))
    view.layer.value = DOWNSTREAM  # and the tab works again
    assert view.last_error is None and view.view.name == DOWNSTREAM
    torch.testing.assert_close(view.view.outputs, hooked_outputs(tiny_llama, DOWNSTREAM, calib))


# ---------------------------------------------------------------- the hub, within the server's limits

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, bundled):
    """A hub repository's files on disk: a tiny Llama with the bundled model's tokenizer."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("repo")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512))
    model.save_pretrained(folder)
    source = BUNDLED_COPY
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, folder / name)
    return folder


class FakeHub:
    """huggingface_hub's model_info and hf_hub_download on a local folder, recording every call."""

    def __init__(self, repo, extra=()):
        self.repo, self.extra, self.calls, self.tokens = repo, dict(extra), [], []
        self.snapshots = repo.parent / f"{repo.name}-snapshots" / COMMIT

    def files(self):
        listed = {p.name: p.stat().st_size for p in self.repo.iterdir() if p.is_file()}
        listed.update(self.extra)
        return listed

    def model_info(self, repo_id, **kwargs):
        from types import SimpleNamespace

        self.tokens.append(kwargs.get("token", "unset"))
        return SimpleNamespace(sha=COMMIT, siblings=[SimpleNamespace(rfilename=n, size=s)
                                                     for n, s in self.files().items()])

    def download(self, repo_id, filename, **kwargs):
        import shutil

        self.calls.append(filename)
        self.tokens.append(kwargs.get("token", "unset"))
        assert kwargs.get("revision") == COMMIT
        self.snapshots.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.repo / filename, self.snapshots / filename)
        return str(self.snapshots / filename)


def serve(monkeypatch, hub):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", hub.model_info)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.download)
    return hub


def test_a_hub_model_is_fetched_within_the_limits_with_its_commit(tiny_repo, monkeypatch, tmp_path):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    (repo / "modeling_evil.py").write_text("raise SystemExit")
    (repo / "pytorch_model.bin").write_bytes(b"pickle")
    (repo / "sub").mkdir()
    (repo / "sub" / "model.safetensors").write_bytes(b"x")
    hub = serve(monkeypatch, FakeHub(repo))
    started = []
    session = Session(model="wnb-test/tiny", budget="small", restricted=True)
    session.prepare(on_file=lambda i, n, name: started.append((i, n, name)))
    assert session.model_name == f"wnb-test/tiny@{COMMIT[:12]}"  # cache keys tell revisions apart
    assert hub.calls[0] == "config.json"  # the config alone, before any weight
    assert sorted(hub.calls) == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                                 "tokenizer_config.json"]  # no code, no pickle, no subfolder
    assert [name for _, _, name in started] == hub.calls[1:] and {n for _, n, _ in started} == {4}
    assert set(hub.tokens) == {False}  # anonymous: the server's token is never used for visitors
    assert session.calib.shape[1] == session.budget.seq_len
    hub.tokens.clear()
    monkeypatch.setenv("WNB_APP_HF_TOKEN", "1")  # the operator opts in
    Session(model="wnb-test/tiny", budget="small", restricted=True).prepare()
    assert set(hub.tokens) == {None}


def test_the_hub_limits_refuse_before_any_weight_is_downloaded(tiny_repo, monkeypatch, tmp_path):
    import json
    import shutil

    from wnb.app import sources

    def refused(repo, match, downloads, **env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        hub = serve(monkeypatch, FakeHub(repo))
        with pytest.raises(wnb.WnbError, match=match):
            Session(model="wnb-test/tiny", budget="small", restricted=True).prepare()
        assert hub.calls == downloads
        for name in env:
            monkeypatch.delenv(name)

    bins = tmp_path / "bins"
    bins.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(tiny_repo / name, bins / name)
    (bins / "pytorch_model.bin").write_bytes(b"weights")
    refused(bins, "no safetensors weights", [])
    refused(tiny_repo, "at most 1e-06 billion parameters", [], WNB_APP_MAX_PARAMS="1000")
    huge = tmp_path / "huge"
    shutil.copytree(tiny_repo, huge)  # a tiny file whose config claims 80 × 8192
    config = json.loads((huge / "config.json").read_text())
    config.update(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80)
    (huge / "config.json").write_text(json.dumps(config))
    refused(huge, "billion parameters", ["config.json"])
    monkeypatch.setenv("WNB_APP_MODELS", "EleutherAI/pythia-160m, gpt2")
    with pytest.raises(wnb.WnbError, match="pythia-160m, gpt2"):
        sources.app_model("wnb-test/tiny")
    assert sources.app_model("gpt2") == ("gpt2", None)


def test_a_download_can_be_cancelled_between_files(tiny_repo, monkeypatch):
    hub = serve(monkeypatch, FakeHub(tiny_repo))
    job = jobs.Job("loading the model")

    def begin(i, n, name):
        if i == 1:
            job.cancel()
        job.begin(i, n, name)

    with pytest.raises(jobs.Cancelled):
        Session(model="wnb-test/tiny", budget="small", restricted=True).prepare(on_file=begin)
    assert len(hub.calls) == 2  # the config and one file


def test_only_model_copies_wnb_wrote_are_offered(tmp_path, monkeypatch, bundled):
    import shutil

    from wnb.app import sources

    root = tmp_path / "cache"
    monkeypatch.setenv("WNB_CACHE", str(root))
    real = BUNDLED_COPY
    shutil.copytree(real, root / "models" / real.name)  # wnb's own copy, checksums and all
    planted = root / "models" / "planted"
    shutil.copytree(real, planted)
    (planted / "wnb-complete.json").unlink()  # copied in by someone else: no manifest
    extra = root / "models" / "extra"
    shutil.copytree(real, extra)
    shutil.copy(real / "model.safetensors", extra / "other.safetensors")  # a weight file wnb did not write
    tampered = root / "models" / "tampered"
    shutil.copytree(real, tampered)
    with open(tampered / "model.safetensors", "r+b") as f:  # same size, other bytes
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    assert set(sources.offered_models()) == {real.name}


def test_an_uploaded_text_is_kept_as_its_hash_only(tiny_llama, monkeypatch):
    from wnb.app import sources
    from wnb.core.cache import text_digest

    secret = "The secret visitor text about zebras. " * 300
    monkeypatch.setattr(sources, "app_corpus", lambda choice, upload=None: upload.decode())
    session = Session(lm=tiny_llama, budget="small", corpus=sources.UPLOAD, restricted=True, upload=secret.encode())
    monkeypatch.setattr(tiny_llama, "tokenizer", _WordTokenizer(), raising=False)
    session.calib  # cuts and caches the windows
    stored = list((cache.cache_dir() / "windows").glob("*.safetensors"))
    assert len(stored) == 1
    raw = stored[0].read_bytes()
    assert b"zebras" not in raw and text_digest(secret).encode() in raw


class _WordTokenizer:
    """Token ids from words (modulo the tiny vocabulary), enough to cut windows of a text."""

    def __call__(self, text, return_tensors=None, add_special_tokens=False, verbose=False):
        from types import SimpleNamespace

        ids = torch.tensor([[hash(w) % 128 for w in text.split()]])
        return SimpleNamespace(input_ids=ids)


def test_the_upload_is_checked_before_it_is_copied(tiny_llama):
    from wnb.app import sources

    settings = ww.Settings(session=Session(lm=tiny_llama, budget="small"))
    assert sources.MAX_UPLOAD_BYTES < 10 << 20  # below what Voila's websocket carries in one message
    settings.upload.value = ({"name": "big.txt", "type": "text/plain", "size": 9 << 20,
                              "content": memoryview(b"a" * (9 << 20)), "last_modified": __import__("datetime").datetime(2026, 1, 1)},)
    with pytest.raises(wnb.WnbError, match="at most 8 MiB"):
        settings.uploaded()
    settings.upload.value = ({"name": "model.bin", "type": "application/octet-stream", "size": 3,
                              "content": memoryview(b"abc"), "last_modified": __import__("datetime").datetime(2026, 1, 1)},)
    with pytest.raises(wnb.WnbError, match=".txt"):
        settings.uploaded()


def test_messages_on_the_page_hide_server_paths(tmp_path):
    from wnb.widgets.messages import error_text

    where = cache.cache_dir() / "models" / "x" / "config.json"
    text = error_text(wnb.WnbError(f"could not read {where}; typed '/etc/passwd'; pass trust_remote_code=True "
                                   "if you trust it"))
    assert str(cache.cache_dir()) not in text and "trust_remote_code" not in text
    assert "'/etc/passwd'" in text  # what the visitor typed is still named
    assert str(tmp_path) not in error_text(FileNotFoundError(f"[Errno 2] No such file: '{tmp_path}/a.json'"))


# ---------------------------------------------------------------- the server's own bounds

def test_values_a_page_sends_are_checked_against_the_servers_bounds(tiny_llama, windows, monkeypatch):
    calib, held_out = windows
    app = ww.App(session=Session(lm=tiny_llama, calib=calib, held_out=held_out, budget="small"))
    app.tabs.selected_index = 4
    view = app.negative
    view.seeds.max = 10**6  # a crafted message may set max, then value
    view.seeds.value = 10**6
    view.run.click()
    assert "random-control seeds must be a whole number from 1 to 10" in view.last_error and view.study is None
    app.tabs.selected_index = 3
    exp = app.expansion
    exp.sparsity.max = 0.999
    exp.sparsity.value = 0.999
    assert "sparsity of the experts must be a number from 0.1 to 0.95" in exp.last_error
    app.tabs.selected_index = 2
    sparsity = app.sparsity
    sparsity.sparsities.value = ", ".join(["0.5"] * 20)
    sparsity.run_sweep.click()
    assert "at most 12 sparsities" in sparsity.last_error and sparsity.sweep_result is None


def test_a_job_above_the_server_limit_is_refused_however_often_asked(tiny_llama, windows, monkeypatch):
    calib, held_out = windows
    monkeypatch.setenv("WNB_APP_MAX_JOB_SECONDS", "1e-9")
    app = ww.App(session=Session(lm=tiny_llama, calib=calib, held_out=held_out, budget="small"))
    app.tabs.selected_index = 2
    view = app.sparsity
    runs = []
    monkeypatch.setattr(wnb.experiments.sweeps, "sweep", lambda *a, **k: runs.append(1))
    for _ in range(3):
        view.run_sweep.click()
        assert "more than this server runs for one job" in view.last_error
    assert runs == []
    app.tabs.selected_index = 4
    app.negative.run.click()
    assert "more than this server runs for one job" in app.negative.last_error
    app.tabs.selected_index = 3
    app.expansion.tasks.run.click() if app.expansion.tasks.available else None
    if app.expansion.tasks.available:
        assert "more than this server runs for one job" in app.expansion.last_error
