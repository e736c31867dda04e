"""benchmarks/gpu_check.py, the one prepared GPU check (issue 13), on the CPU: the dry run
(`--tiny --device cpu`) runs every step and writes its report; a failing step is recorded while the
later ones still run; the time budget skips what is left; the wheels script names what the GPU machine
lacks; and the pieces the GPU run relies on (weight comparison, threaded exact WD, the stand-in of the
bundled model) do what they say."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT

import wnb
import wnb.model.bundled
import wnb.model.loading

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
WHEELS = ROOT / "benchmarks" / "gpu_wheels.sh"
STEP_KEYS = list("abcdefgh")
ROW_FIELDS = {"step", "name", "status", "seconds", "peak_gpu_mib", "peak_rss_mib"}
# Imported here only because they are installed here; the GPU machine runs without them.
OPTIONAL_HERE = {
    "dill": "torch imports it only where it is installed",
    "httpx2": "huggingface-hub 2.x's HTTP client; the machine's huggingface-hub 1.33 uses httpx",
    "httpcore2": "the same",
    "truststore": "the same",
    "pytz": "pandas imports it only where it is installed (here lm-eval's dependencies bring it)",
}


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The issue's command, as a user runs it: every step, tiny, on the CPU."""
    out = tmp_path_factory.mktemp("gpu")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "-o", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    return proc, out, json.loads((out / "gpu_check.json").read_text()), wall


def test_dry_run_runs_every_step(dry_run):
    proc, out, report, wall = dry_run
    steps = report["steps"]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert [r["step"] for r in steps] == STEP_KEYS
    assert report["status"] == "complete" and "running" not in report
    assert report["device"] == "cpu" and report["tiny"] is True and report["dtype"] == "bfloat16"
    for row in steps:
        assert ROW_FIELDS <= set(row), row
        assert row["status"] == "ok", row
        assert row["seconds"] > 0 and row["peak_gpu_mib"] is None  # no GPU here
        assert row["peak_rss_mib"] > 0
        assert row["results"]["summary"]
    assert report["seconds"] >= sum(r["seconds"] for r in steps) - 1
    assert report["seconds"] < report["budget_s"]  # nothing was cut by the time budget
    print(f"dry run: {wall:.1f} s wall, {report['seconds']} s in the report")


def test_dry_run_results_hold_what_the_issue_asks(dry_run):
    _, out, report, _ = dry_run
    res = {r["step"]: r["results"] for r in report["steps"]}
    a = res["a"]
    assert a["returncode"] == 0 and a["counts"].get("passed", 0) >= 1 and a["counts"].get("failed", 0) == 0
    assert "passed" in a["summary"] and (out / a["log"]).exists()
    assert "tests/gpu/test_gpu.py" in a["command"]
    assert res["b"]["neox"]["dtype"] == res["b"]["llama"]["dtype"] == "bfloat16"
    assert "random" in res["b"]["windows"]
    c = res["c"]
    assert c["layers"] == res["b"]["neox"]["ffn_layers"]
    assert c["tokens"] == c["device_side"]["tokens"] > c["cpu_side"]["tokens"]
    assert c["streaming_vs_exact_max_abs"] <= gpu_check.WD_TOLERANCE
    assert c["cpu_side"]["scale"] == pytest.approx(c["tokens"] / c["cpu_side"]["tokens"])
    for part in ("capture", "exact_wd", "streaming"):
        want = c["cpu_side"][f"{part}_s"] * c["cpu_side"]["scale"] / c["device_side"][f"{part}_s"]
        assert c["cpu_over_gpu"][part] == pytest.approx(want, rel=0.02, abs=0.01)
    d = res["d"]
    assert [(r["method"], r["sparsity"]) for r in d["runs"]] == [("sparsegpt", "0.5"), ("sparsegpt", "2:4"),
                                                                 ("wanda", "0.5"), ("wanda", "2:4")]
    assert all(r["min_zeros"] >= 0.5 - 1e-3 and r["finite_logits"] for r in d["runs"])
    assert d["one_layer"]["same_mask"] > 0.99  # the same weight and inputs, pruned twice on the CPU
    e = res["e"]
    assert e["experts"] == 16 and e["calib_tokens"] == gpu_check.TINY.expand_tokens
    assert 0 < e["rel_error"] < 1 and e["forward_dense_ms"] > 0 and e["forward_expanded_ms"] > 0
    f = res["f"]
    assert f["weights"]["layers"] == len(f["layers"]) > 0
    assert gpu_check.weights_agree(f["weights"]) and f["blocks_on_gpu_after"] == 0
    assert "CUDA only" in f["cap"] and f["load_model_offload"].startswith("refused on cpu")
    g = res["g"]
    assert g["prune_rows"] == g["neurons"] and {"ri", "regression", "shares", "change"} <= set(g["expansion_tables"])
    h = res["h"]
    assert h["layers"] == gpu_check.TINY.llama["num_hidden_layers"] and h["tokens"] == 4 * gpu_check.TINY.seq_len
    for run in ("forward", "read", "read_contexts"):
        assert h[f"{run}_tokens_per_s"] > 0
        assert h[f"{run}_10m_tokens_min"] == pytest.approx(1e7 / h[f"{run}_tokens_per_s"] / 60, abs=0.1)
    assert 0 <= h["wd_median"] < 10 and "bytes per neuron" in h["plan"]


def test_dry_run_markdown_table(dry_run):
    _, out, report, _ = dry_run
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# wnb GPU check: complete")
    header = next(line for line in md.splitlines() if line.startswith("| step |"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["step", "what", "status", "seconds", "peak GPU MiB",
                                                                 "peak RSS MiB", "result"]
    rows = [line for line in md.splitlines() if re.match(r"\| [a-h] \|", line)]
    assert [r.split("|")[1].strip() for r in rows] == STEP_KEYS
    for row, step in zip(rows, report["steps"]):
        assert f"| {step['status']} |" in row
    assert "## c. capture and WD" in md and "## d. whole-model pruning" in md and "## f. offload" in md
    assert "## h. one-pass reader" in md


def test_dry_run_imports_only_what_the_gpu_machine_has_or_gets(dry_run):
    """Every distribution the check imported is in the machine's image or in gpu_wheels.sh's list."""
    _, _, report, _ = dry_run
    carried = wheel_names()
    missing = {d for d in report["environment"]["imported"]
               if d not in gpu_check.DEVICE_PACKAGES and d not in carried and d not in OPTIONAL_HERE}
    assert not missing, f"imported by the check but neither on the GPU machine nor in gpu_wheels.sh: {missing}"
    assert "nnsight" in report["environment"]["imported"] and "nnsight" in carried


def wheel_names() -> set[str]:
    text = WHEELS.read_text()
    block = text[text.index("WHEELS=("):text.index("\n)", text.index("WHEELS=("))]
    return {re.sub(r"[-_.]+", "-", m).lower() for m in re.findall(r"^\s+([A-Za-z0-9_.-]+)==", block, re.M)}


def test_wheels_script_pins_one_version_of_each_for_python_312():
    text = WHEELS.read_text()
    block = text[text.index("WHEELS=("):text.index("\n)", text.index("WHEELS=("))]
    names = re.findall(r"^\s+([A-Za-z0-9_.-]+)==([^\s#]+)", block, re.M)
    assert len({n for n, _ in names}) == len(names) >= 2
    assert "--python-version 3.12" in text and "--only-binary=:all:" in text and "--no-deps" in text
    for name, version in names:  # the versions tested here, where installed here
        try:
            here = __import__("importlib.metadata").metadata.version(name)
        except Exception:
            continue
        assert here == version, f"{name}: gpu_wheels.sh pins {version}, this environment has {here}"


# ---------------------------------------------------------------- failures, filters, the time budget

def test_a_failing_step_is_recorded_and_the_next_steps_still_run(tmp_path):
    code = gpu_check.main(["--tiny", "--device", "cpu", "--steps", "b,f", "--fail", "b", "-o", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = {r["step"]: r for r in report["steps"]}
    assert code == 1 and report["status"] == "complete"
    assert rows["b"]["status"] == "failed" and "forced failure (--fail b)" in rows["b"]["error"]
    assert rows["b"]["where"].startswith("gpu_check.py:")
    assert rows["f"]["status"] == "ok" and gpu_check.weights_agree(rows["f"]["results"]["weights"])
    assert all(rows[k]["status"] == "skipped: not selected (--steps)" for k in "acdegh")
    md = (tmp_path / "gpu_check.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| b | "))
    assert "| failed: " in row and "forced failure (--fail b)" in row


def test_an_exception_inside_a_step_keeps_its_results_so_far(tmp_path, monkeypatch):
    def broken(self, res):
        res["before"] = 1
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(gpu_check.Check, "step_e", broken)
    code = gpu_check.main(["--tiny", "--device", "cpu", "--steps", "e,g", "-o", str(tmp_path)])
    rows = {r["step"]: r for r in json.loads((tmp_path / "gpu_check.json").read_text())["steps"]}
    assert code == 1
    assert rows["e"]["status"] == "failed" and rows["e"]["results"] == {"before": 1}
    assert rows["e"]["error"].endswith("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert rows["g"]["status"] == "ok"


def test_the_time_budget_skips_the_remaining_steps(tmp_path):
    assert gpu_check.main(["--tiny", "--device", "cpu", "--budget-s", "0", "-o", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [r["status"] for r in report["steps"]] == ["skipped: time budget"] * 8
    assert report["status"] == "complete"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the step runs where CUDA is")
def test_the_reader_step_is_skipped_without_cuda_unless_tiny(tmp_path):
    assert gpu_check.main(["--device", "cpu", "--steps", "h", "-o", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "gpu_check.json").read_text())["steps"][-1]
    assert row["step"] == "h" and row["status"] == "skipped: needs CUDA (the dry run, --tiny, runs it on the CPU)"
    assert row["seconds"] < 5


def test_bad_arguments_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--steps", "a,z"])
    assert "unknown step(s) ['z']" in capsys.readouterr().err
    if not torch.cuda.is_available():  # wnb's own refusal, before any work
        assert gpu_check.main(["--device", "cuda", "-o", str(tmp_path)]) == 2
        assert "no CUDA device is available" in capsys.readouterr().err


# ---------------------------------------------------------------- the pieces

def test_compare_weights_sees_a_changed_mask_and_a_changed_value():
    torch.manual_seed(0)
    want = {"a": torch.randn(8, 16), "b": torch.randn(4, 4)}
    want["a"][:, ::2] = 0
    same = gpu_check.compare_weights({k: v.clone() for k, v in want.items()}, want)
    assert same == {"layers": 2, "min_same_mask": 1.0, "max_rel_diff": 0.0} and gpu_check.weights_agree(same)
    moved = {k: v.clone() for k, v in want.items()}
    moved["a"][0, 0], moved["a"][0, 1] = 1.0, 0.0  # one zero moved: 2 of 128 entries differ
    cmp = gpu_check.compare_weights(moved, want)
    assert cmp["min_same_mask"] == pytest.approx(1 - 2 / 128) and not gpu_check.weights_agree(cmp)
    scaled = {k: v * 1.01 for k, v in want.items()}
    cmp = gpu_check.compare_weights(scaled, want)
    assert cmp["min_same_mask"] == 1.0 and cmp["max_rel_diff"] == pytest.approx(0.01, rel=1e-4)
    assert not gpu_check.weights_agree(cmp)
    with pytest.raises(gpu_check.StepFailed, match="different layers"):
        gpu_check.compare_weights({"a": want["a"]}, want)


def test_threaded_exact_wd_equals_the_plain_call():
    torch.manual_seed(0)
    y = torch.randn(3000, 2500) ** 3  # heavy tails: WD well away from 0
    plain = wnb.wasserstein_to_gaussian(y)
    threads = torch.get_num_threads()
    threaded = gpu_check.exact_wd(y, threads=3, block=700)
    torch.testing.assert_close(threaded, plain, rtol=0, atol=1e-12)
    assert torch.get_num_threads() == threads  # torch's own thread count is restored


def test_wd_difference_ignores_only_neurons_constant_in_both():
    a = {"x": torch.tensor([0.1, float("nan"), 0.3])}
    assert gpu_check.wd_difference(a, {"x": torch.tensor([0.1, float("nan"), 0.35])}) == pytest.approx(0.05)
    assert gpu_check.wd_difference(a, {"x": torch.tensor([0.1, 0.2, 0.3])}) == float("inf")


def test_random_models_and_windows_are_seeded():
    a = gpu_check.build_model("neox", gpu_check.TINY_NEOX, torch.device("cpu"), torch.bfloat16, seed=3)
    b = gpu_check.build_model("neox", gpu_check.TINY_NEOX, torch.device("cpu"), torch.bfloat16, seed=3)
    assert {p.dtype for p in a.parameters()} == {torch.bfloat16}
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a.config.num_hidden_layers == gpu_check.TINY_NEOX["num_hidden_layers"]
    w = gpu_check.random_windows(50, 3, 7, seed=1)
    assert w.shape == (3, 7) and torch.equal(w, gpu_check.random_windows(50, 3, 7, seed=1))
    assert 0 <= int(w.min()) and int(w.max()) < 50


def test_full_sizes_are_the_papers_shapes():
    full = gpu_check.Sizes()
    assert full.seq_len == 2048 and full.windows == 128 and full.expand_tokens == 262_144 and full.experts == 16
    assert {k: v for k, v in full.neox.items() if k != "num_hidden_layers"} == \
        {k: v for k, v in gpu_check.PYTHIA_14B.items() if k != "num_hidden_layers"}
    assert full.neox["num_hidden_layers"] <= 24 and full.llama == gpu_check.LLAMA3_8B


def test_the_bundled_stand_in_loads_as_the_bundled_model(tmp_path, monkeypatch):
    """A config and a tokenizer (what gpu_wheels.sh carries) become a random-weight model that
    wnb.load_model() finds where it keeps its float32 copy of the bundled model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    folder = tmp_path / "smollm2"
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(61)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>") \
        .save_pretrained(folder)
    LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                tie_word_embeddings=True).save_pretrained(folder)
    cache = tmp_path / "cache"
    made = gpu_check.bundled_stand_in(folder, cache)
    assert made.is_relative_to(cache) and (made / "wnb-complete.json").exists()
    monkeypatch.setenv("WNB_CACHE", str(cache))
    lm = wnb.load_model(device="cpu")
    assert lm.name == wnb.model.bundled.BUNDLED and lm.model.config.hidden_size == 32
    assert len(wnb.ffn_layers(lm)) == 2 * 3
    ids = lm.tokenizer("w1 w2 w3", return_tensors="pt").input_ids
    assert ids.shape[1] >= 3 and torch.isfinite(lm.model(ids).logits).all()
    # wnb sizes the bundled model by its float32 copy on disk (weights plus the file's small header)
    assert wnb.model.loading.estimate_model_bytes() == pytest.approx(sum(p.numel() * 4 for p in lm.model.parameters()),
                                                              rel=0.05)
