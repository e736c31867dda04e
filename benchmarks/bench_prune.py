"""Pruning against its baselines on the bundled model.

1. ``layers``: SparseGPT on one 1536x576 (gate_proj) and one 576x1536 (down_proj) layer of the bundled
   model, calibrated on 32x256 tokens, vs a plain loop of the same algorithm written from the paper in
   the shape of the authors' reference (float32, per-column rank-1 update of the row-major block,
   explicit H⁻¹). Same Hessian; ratio of best times, mask agreement, calibration reconstruction error.
2. ``model``: whole-model pruning time of every FFN layer per method (50%), sequential calibration.
3. ``table``: held-out perplexity for magnitude, Wanda, SparseGPT at 50%, 70% and 2:4.
4. ``ablation``: the paper's Fig. 3 — 3% of every FFN layer's neurons at 90% (SparseGPT), chosen by WD,
   at random, by output mean, output variance or weight norm.
5. ``llmc``: llm-compressor's oneshot SparseGPT and Wanda on the same FFN linears, windows and sparsity,
   run in its own virtual environment (``benchmarks/.venv-llmc``, see ``llmc_oneshot.py``).

    python benchmarks/bench_prune.py [layers model table ablation llmc] [--calib 32] [--eval 32] [--repeat 1]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch
from _util import machine, table, timed

import wnb
import wnb.compression
import wnb.model
from wnb.compression.sparsegpt import SparseGPT

HERE = Path(__file__).resolve().parent
LLMC_PYTHON = HERE / ".venv-llmc" / "bin" / "python"


# ---------------------------------------------------------------- baseline: plain reference loop

def reference_sparsegpt(weight: torch.Tensor, H: torch.Tensor, sparsity: float = 0.5, prunen: int = 0,
                        prunem: int = 0, blocksize: int = 128, percdamp: float = 0.01) -> torch.Tensor:
    """SparseGPT as the paper's pseudo-code and the authors' reference class run it (float32)."""
    W = weight.clone().float()
    H = H.clone().float()
    cols = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H[range(cols), range(cols)] += percdamp * torch.mean(torch.diag(H))
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i:i + prunem] ** 2 / (torch.diag(Hinv1)[i:i + prunem].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


# ---------------------------------------------------------------- parts

def windows(lm, n_calib, n_eval, seq_len=256):
    return wnb.token_windows(lm, wnb.load_corpus(), seq_len=seq_len, n_calib=n_calib, n_eval=n_eval, seed=0)


def bench_layers(lm, calib, repeat=3):
    names = ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.down_proj"]
    acts = wnb.capture(lm, names, calib, outputs=False, progress=False)
    rows = []
    for name in names:
        weight = wnb.layer_weight(lm, name).detach().float()
        x = acts[name].inputs
        def accumulate():
            acc = SparseGPT(weight)
            acc.add_batch(x)
            return acc

        t_hessian, sgpt = timed(accumulate, repeat=1)
        H = sgpt.hessian()
        for sparsity, n, m in ((0.5, 0, 0), ("2:4", 2, 4)):
            t_ref, ref = timed(lambda: reference_sparsegpt(weight, H, 0.5, n, m), repeat)
            t_wnb, got = timed(lambda: sgpt.prune(sparsity), repeat)
            agree = ((got == 0) == (ref == 0)).double().mean().item()
            err = lambda w: (torch.linalg.norm(x @ (weight - w).T) / torch.linalg.norm(x @ weight.T)).item()
            rows.append({"layer": name.split("model.")[1], "shape": "x".join(map(str, weight.shape)),
                         "sparsity": str(sparsity), "wnb s": t_wnb, "reference s": t_ref,
                         "ratio": t_wnb / t_ref, "mask agreement": agree,
                         "rel. error wnb": err(got), "rel. error ref": err(ref)})
        rows[-1]["hessian s"] = rows[-2]["hessian s"] = t_hessian
    return rows


def bench_model(lm, calib, held_out, methods=("magnitude", "wanda", "sparsegpt"), sparsities=(0.5,)):
    """One sweep row per (method, sparsity), printed as soon as it is done (runs are long on a CPU)."""
    rows = [_show(wnb.sweep(lm, calib, held_out, methods=(), sparsities=(), progress=False))]
    for sparsity in sparsities:
        for method in methods:
            rows.append(_show(wnb.sweep(lm, calib, held_out, methods=(method,), sparsities=(sparsity,),
                                        dense=False, progress=False)))
    return rows


def bench_ablation(lm, calib, held_out, criteria=("wd", "random", "mean", "variance", "weight_norm")):
    rows = [_show(wnb.ablation(lm, calib, held_out, criteria=(), progress=False))]
    for criterion in criteria:
        rows.append(_show(wnb.ablation(lm, calib, held_out, criteria=(criterion,), fraction=0.03, sparsity=0.9,
                                       dense=False, progress=False)))
    return rows


def _show(frame) -> dict:
    row = frame.to_dict("records")[0]
    print("  ", row, flush=True)
    return row


def bench_llmc(lm, calib, held_out, sparsity=0.5, repeat: int = 1):
    """llm-compressor in its own environment vs wnb here, on the same windows; both evaluated here.
    With ``repeat`` > 1 the two tools alternate that many times and each keeps its best time (this
    machine's speed drifts by up to ±20% over minutes; alternating exposes both to the same drift)."""
    if not LLMC_PYTHON.exists():
        return [{"note": f"{LLMC_PYTHON} missing: create it as described in benchmarks/README.md"}]
    from wnb.model.bundled import bundled_cache

    folder = HERE / ".llmc-work"
    folder.mkdir(exist_ok=True)
    torch.save({"calib": calib}, folder / "calib.pt")
    rows = [{"tool": "dense", "method": "-", "prune s": 0.0, "perplexity": wnb.perplexity(lm, held_out, progress=False)}]
    for method in ("sparsegpt", "wanda"):
        out = folder / f"{method}.pt"
        cmd = [str(LLMC_PYTHON), str(HERE / "llmc_oneshot.py"), str(bundled_cache()), str(folder / "calib.pt"),
               method, str(sparsity), str(out)]
        theirs, ours = [], []
        for _ in range(repeat):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                rows.append({"tool": "llm-compressor", "method": method, "prune s": float("nan"),
                             "perplexity": float("nan"), "note": proc.stderr.strip().splitlines()[-1][:200]})
                break
            result = torch.load(out)
            theirs.append(result["seconds"])
            start = time.perf_counter()
            with wnb.pruned(lm, method, sparsity, calib=calib, progress=False):
                ours.append(time.perf_counter() - start)
                ppl = wnb.perplexity(lm, held_out, progress=False)
            print(f"   {method}: llm-compressor {theirs[-1]:.1f} s, wnb {ours[-1]:.1f} s", flush=True)
        if not theirs:
            continue
        rows.append({"tool": "llm-compressor", "method": method, "prune s": min(theirs),
                     "perplexity": _perplexity_with(lm, result["weights"], held_out), "runs s": theirs})
        rows.append({"tool": "wnb", "method": method, "prune s": min(ours), "perplexity": ppl, "runs s": ours,
                     "time vs llmc": min(ours) / min(theirs)})
    return rows


def _perplexity_with(lm, weights: dict, held_out) -> float:
    """Perplexity with the given ``{module name: weight}`` loaded, dense weights restored after."""
    saved = {}
    try:
        for name, w in weights.items():
            mod = lm.model.get_submodule(name)
            saved[name] = mod.weight.detach().clone()
            with torch.no_grad():
                mod.weight.copy_(w)
        return wnb.perplexity(lm, held_out, progress=False)
    finally:
        with torch.no_grad():
            for name, w in saved.items():
                lm.model.get_submodule(name).weight.copy_(w)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", default=["layers", "model"],
                        choices=["layers", "model", "table", "ablation", "llmc"])
    parser.add_argument("--calib", type=int, default=32, help="calibration windows of 256 tokens")
    parser.add_argument("--eval", type=int, default=32, help="held-out windows of 256 tokens")
    parser.add_argument("--repeat", type=int, default=1, help="llmc: alternate the two tools this many times, "
                        "keep each one's best time")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    lm = wnb.load_model(device="cpu")
    calib, held_out = windows(lm, args.calib, args.eval)
    print(f"# bench_prune on {machine()}; calib {args.calib}x256, held-out {args.eval}x256 tokens\n")
    results = {}
    for part in args.parts:
        start = time.perf_counter()
        if part == "layers":
            rows = bench_layers(lm, calib)
        elif part == "model":
            rows = bench_model(lm, calib, held_out)
        elif part == "table":
            rows = bench_model(lm, calib, held_out, sparsities=(0.7, "2:4", 0.5))
        elif part == "ablation":
            rows = bench_ablation(lm, calib, held_out)
        else:
            rows = bench_llmc(lm, calib, held_out, repeat=args.repeat)
        results[part] = rows
        print(f"## {part} ({time.perf_counter() - start:.0f} s)\n\n{table(rows)}\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
