"""Token budgets: how many calibration and held-out windows of what length the app, the notebooks and
the command work on (``small`` for tests and Binder, ``medium``, ``large``), and which layers a
whole-model run changes by default."""
from __future__ import annotations

import os
from dataclasses import dataclass

from wnb.errors import WnbError

BUDGET_ENV = "WNB_BUDGET"
DEFAULT_BUDGET = "medium"
# Which layers the whole-model runs (sweeps, ablation, expansion perplexity) change.
SCOPES = {"all": "every FFN layer", "block": "the FFN layers of the selected layer's block",
          "layer": "the selected layer only"}


@dataclass(frozen=True)
class Budget:
    """Token budget: calibration and held-out windows, and the tokens per layer of the model overview."""

    seq_len: int
    n_calib: int
    n_eval: int
    overview_tokens: int
    scope: str = "layer"  # default layers of whole-model runs (see SCOPES): the cheap one
    sweep: str = "0.3, 0.5, 0.7, 2:4"  # default sparsities of the perplexity sweep

    @property
    def calib_tokens(self) -> int:
        return self.seq_len * self.n_calib


BUDGETS = {
    "small": Budget(seq_len=128, n_calib=8, n_eval=4, overview_tokens=512, sweep="0.5, 2:4"),
    "medium": Budget(seq_len=256, n_calib=32, n_eval=16, overview_tokens=1024),
    "large": Budget(seq_len=512, n_calib=64, n_eval=32, overview_tokens=4096),
}


PAPER_SEQ_LEN = 2048  # the follow-up's windows (WikiText-2, 2048 tokens)
STUDY_EVAL_WINDOWS = 8  # the fewest held-out windows the sign study's paired bootstrap resamples


def study_sizes(budget: Budget, context: int | None = None) -> tuple[int, int, int]:
    """``(seq_len, calibration windows, held-out windows)`` for the sign study within ``budget``'s tokens: the
    longest window the model's ``context`` allows, up to the follow-up's 2048, that still leaves
    :data:`STUDY_EVAL_WINDOWS` held-out windows, and never shorter than the budget's own (long windows make
    the first-token sink a small share of the tokens, as in the paper)."""
    held_tokens = budget.n_eval * budget.seq_len
    longest = min(PAPER_SEQ_LEN, context or PAPER_SEQ_LEN, held_tokens // STUDY_EVAL_WINDOWS)
    seq_len = max(budget.seq_len, longest)
    return seq_len, max(1, budget.calib_tokens // seq_len), max(1, held_tokens // seq_len)


def budget_from_env(default: str = DEFAULT_BUDGET) -> str:
    """The budget named by ``$WNB_BUDGET`` (tests set ``small``), else ``default``."""
    name = os.environ.get(BUDGET_ENV, "").strip() or default
    check_budget(name)
    return name


def check_budget(name: str) -> Budget:
    if name not in BUDGETS:
        raise WnbError(f"unknown token budget {name!r}; choose one of {', '.join(BUDGETS)}")
    return BUDGETS[name]
