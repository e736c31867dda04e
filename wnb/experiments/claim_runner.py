"""Run the claims of :mod:`wnb.experiments.claims` on a model: ``run_claims(lm, calib, held_out)`` gives one
row per claim with its statistic, 95% interval, the paper's value, the verdict (or why it was not run), and
whether the run is comparable with the paper's, with the settings that differ.

A :class:`ClaimPlan` says how much work each claim does (budgets ``small``, ``medium``, ``large``, and
``paper``: the papers' own settings); a :class:`ClaimContext` holds what several claims share (the first FFN
projections' outputs, the layer studies, the sign-ablation studies and every held-out pass), so running all
claims costs much less than running each alone.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import pandas as pd
from tqdm.auto import tqdm

from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.experiments import claim_runs, claim_runs_negative
from wnb.experiments.claims import PAPER_SETTINGS, Claim, NotRun, check_only, claim
from wnb.experiments.sign_ablation import ablated_nll
from wnb.model.architectures import ffn_layers, first_ffn_layers


@dataclass(frozen=True)
class ClaimPlan:
    """How much work each claim does. ``tokens``: calibration tokens of the WD, MD and sign statistics (None:
    all); ``n_boot``: bootstrap resamples of each layer's WD (W1); ``pair_seeds``: seeds of token pairs (W2);
    ``ablation_blocks``: the leading blocks whose FFN layers W3 sparsifies (None: every block); ``experts``: the
    k of the layer study (W4-W7; SparseGPT is k = 1); ``control_seeds``: random controls of the sign ablation;
    ``pairs``: the grammatical minimal pairs (``agreement``, ``tse`` offline; ``blimp`` needs the network);
    ``depth_layers``: layers of the depth profile, spread evenly over the blocks (None: every block)."""
    name: str
    tokens: int | None = None
    n_boot: int = 10
    pair_seeds: int = 3
    n_pairs: int = 50_000
    ablation_blocks: int | None = 2
    sparsity: float = 0.9
    experts: tuple = (2, 8)
    n_init: int = 3
    random_partitions: int = 5
    control_seeds: int = 1
    pairs: str = "agreement"
    pairs_per_phenomenon: int = 5
    knowledge_per_phenomenon: int = 5
    depth_layers: int | None = 6


PLANS = {
    "small": ClaimPlan("small"),
    "medium": ClaimPlan("medium", tokens=4096, n_boot=30, pair_seeds=5, ablation_blocks=4, experts=(2, 4, 8, 16),
                        control_seeds=3, pairs_per_phenomenon=20, knowledge_per_phenomenon=20, depth_layers=10),
    "large": ClaimPlan("large", tokens=16384, n_boot=100, pair_seeds=5, ablation_blocks=None, experts=(2, 4, 8, 16),
                       n_init=10, control_seeds=3, pairs_per_phenomenon=50, knowledge_per_phenomenon=40,
                       depth_layers=None),
    "paper": ClaimPlan("paper", tokens=None, n_boot=200, pair_seeds=5, ablation_blocks=None, experts=(2, 4, 8, 16),
                       n_init=100, random_partitions=10, control_seeds=3, pairs="blimp", pairs_per_phenomenon=1000,
                       knowledge_per_phenomenon=40, depth_layers=None),
}


def check_plan(plan) -> ClaimPlan:
    """A :class:`ClaimPlan`, or the name of one of :data:`PLANS`."""
    if isinstance(plan, ClaimPlan):
        return plan
    if plan not in PLANS:
        raise WnbError(f"unknown claims budget {plan!r}; choose one of {', '.join(PLANS)}")
    return PLANS[plan]


class ClaimContext:
    """What the claims share on one model: its windows, the plan, and a memo of intermediate results."""

    def __init__(self, lm, calib, held_out, plan="small", corpus: str | None = None, seed: int = 0,
                 progress: bool = True, batch_size: int = 8):
        self.lm, self.plan = lm, check_plan(plan)
        self.calib, self.held_out = check_windows(calib, lm), check_windows(held_out, lm, min_len=2)
        self.corpus, self.seed, self.progress, self.batch_size = corpus, int(seed), progress, batch_size
        self.memo: dict = {}

    def once(self, key, compute):
        """``compute()`` the first time ``key`` is asked for; the same result afterwards."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    @property
    def tokens(self) -> int:
        """The plan's calibration tokens, in whole windows (at least two)."""
        total, seq_len = self.calib.numel(), self.calib.shape[1]
        wanted = total if self.plan.tokens is None else min(total, int(self.plan.tokens))
        return max(min(2 * seq_len, total), wanted // seq_len * seq_len)

    def settings(self) -> dict:
        """The settings every claim shares, named as in :data:`wnb.experiments.claims.PAPER_SETTINGS`."""
        return {"model": self.lm.name, "corpus": self.corpus or "given windows", "seq_len": self.calib.shape[1],
                "calibration windows": self.calib.shape[0], "held-out windows": self.held_out.shape[0],
                "dtype": str(self.lm.dtype).removeprefix("torch."), "budget": self.plan.name}

    def first_layers(self) -> list[str]:
        layers = first_ffn_layers(self.lm)
        if not layers:
            raise NotRun(f"{self.lm.name} has no first FFN projection wnb knows")
        return layers

    def detail_layer(self) -> str:
        """The layer of the single-layer claims: the first FFN projection of block 1 (the paper's layer 1)."""
        layers = first_ffn_layers(self.lm) or ffn_layers(self.lm)
        return layers[1] if len(layers) > 1 else layers[0]

    def nll(self, lm, held_out, selection, side: str = "negative", batch_size: int = 8, progress: bool = True):
        """:func:`wnb.experiments.sign_ablation.ablated_nll`, kept by the neurons themselves: the sign studies,
        the surprisal and the depth profile share their held-out passes (its ``nll_fn``)."""
        neurons = tuple((name, tuple(int(i) for i in idx)) for name, idx in sorted(selection.items()))
        key = ("nll", held_out.data_ptr(), tuple(held_out.shape), neurons, side if neurons else None)
        return self.once(key, lambda: ablated_nll(lm, held_out, selection, side, batch_size=batch_size,
                                                  progress=progress))

    def require_weights(self, what: str) -> None:
        if getattr(self.lm, "remote", False):
            raise NotRun(f"{what} changes the model, which needs its weights on this machine (a remote model)")

    def require_tokenizer(self) -> None:
        if self.lm.tokenizer is None:
            raise NotRun(f"{self.lm.name} has no tokenizer, which minimal pairs and token classes need")


RUNS = {**claim_runs.RUNS, **claim_runs_negative.RUNS}


def _same(key: str, ours, theirs) -> bool:
    if key == "model" and " / " in str(theirs):  # a family of models: any of them
        families = [f.split("(")[0].strip().lower() for f in str(theirs).split(" / ")]
        return any(f and f in str(ours).lower() for f in families)
    return str(ours) == str(theirs)


def differences(entry: Claim, actual: dict) -> list[str]:
    """The paper's settings for ``entry`` that ``actual`` does not share, in words."""
    paper = {**PAPER_SETTINGS[entry.paper], **entry.setting}
    out = []
    for key, theirs in paper.items():
        ours = actual.get(key, "not measured")
        if not _same(key, ours, theirs):
            out.append(f"{key}: {ours} (paper: {theirs})")
    return out


def run_claim(claim_id: str, context: ClaimContext) -> dict:
    """One claim's row (:func:`run_claims`)."""
    entry = claim(claim_id)
    start = time.perf_counter()
    row = {"id": entry.id, "paper": entry.paper, "where": entry.where, "claim": entry.claim,
           "statistic": entry.statistic, "computation": entry.computation, "paper_value": entry.paper_value,
           "rule": entry.rule, "tab": entry.tab,
           "direction": entry.direction, "minimum": entry.minimum, "null": entry.null}
    try:
        result = RUNS[entry.id](context, entry)
    except WnbError as exc:  # NotRun says what the claim needs; any other refusal is reported the same way
        reason = str(exc) if isinstance(exc, NotRun) else f"could not run: {exc}"
        result = {"verdict": "not run", "reason": reason, "wording": f"not run: {reason}"}
    actual = {**context.settings(), **result.pop("settings", {})}
    differs = differences(entry, actual)
    row.update({"value": float("nan"), "low": float("nan"), "high": float("nan"), "reason": "", "ours": ""})
    row.update(result)
    row.update({"comparable": not differs, "differs": differs, "settings": actual,
                "seconds": time.perf_counter() - start})
    return row


def run_claims(lm, calib, held_out, only=None, budget="small", progress: bool = True, callback=None,
               corpus: str | None = None, seed: int = 0, context: ClaimContext | None = None) -> list[dict]:
    """Test every claim of both papers (or ``only`` those ids) on ``lm``: one dict per claim, in registry order,
    with ``id, paper, where, claim, statistic, value, low, high`` (the 95% interval), ``paper_value, ours``
    (our number in the paper's terms), ``verdict`` (holds / reversed / not observed / inconclusive / not run),
    ``wording, reason`` (why not run), ``comparable, differs`` (the settings that differ from the paper's),
    ``rule, detail`` (a table ``label, value, low, high`` of the comparisons behind the verdict) and
    ``seconds``. ``budget``: a :data:`PLANS` name or a :class:`ClaimPlan`. ``callback(index, total, id)`` is
    called before each claim (a job's ``begin``). ``context`` shares results between calls."""
    ids = check_only(only)
    context = context or ClaimContext(lm, calib, held_out, budget, corpus, seed, progress)
    rows = []
    with tqdm(ids, desc="claims", disable=not progress, leave=False) as bar:
        for index, claim_id in enumerate(bar):
            bar.set_postfix_str(claim_id)
            if callback is not None:
                callback(index, len(ids), f"{claim_id}: {claim(claim_id).claim}")
            rows.append(run_claim(claim_id, context))
    return rows


def claims_frame(rows: list[dict]) -> pd.DataFrame:
    """The rows as a flat table (the CSV): every column but the detail tables and the settings dict."""
    flat = [{k: ("; ".join(v) if k == "differs" else v) for k, v in row.items() if k not in ("detail", "settings")}
            for row in rows]
    return pd.DataFrame(flat)


def plan_dict(plan) -> dict:
    return asdict(check_plan(plan))

