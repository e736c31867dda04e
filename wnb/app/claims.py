"""The claims for the app and the command: each claim of both papers run on the session's model at its budget
(:func:`wnb.experiments.claim_runner.run_claim`), cached one by one while the model is dense, with an estimate
before it starts, and the line the claims page is subtitled with (the page itself is
:mod:`wnb.app.claims_page`, which the session does not import: it draws with seaborn)."""
from __future__ import annotations

from dataclasses import asdict

from wnb.core import cache
from wnb.experiments.claim_runner import PLANS, ClaimContext, ClaimPlan, run_claim
from wnb.experiments.claims import check_only, claim
from wnb.scoring.sketch import SKETCH_VERSION

# Seconds of each claim on the bundled SmolLM2-135M at the small budget on a 2-core CPU (measured; shared
# work such as the first projections' outputs and the sign-ablation study counted where it first runs).
SMALL_SECONDS = {"W1": 14, "W2": 2, "W3": 36, "W4": 35, "W5": 1, "W6": 1, "W7": 1, "N1": 3, "N2": 52, "N3": 1,
                 "N4": 18, "N5": 1, "N6": 60}
PLAN_FACTOR = {"small": 1.0, "medium": 9.0, "large": 40.0, "paper": 300.0}  # medium measured: 33 min vs 3.6
BUNDLED_PARAMETERS = 135e6
LARGE_CLAIMS_SECONDS = 300


class Claims:
    """Every claim of both papers on the session's model, cached."""

    def claims_plan(self) -> ClaimPlan:
        """The plan of the session's budget (``small``, ``medium``, ``large``)."""
        return PLANS.get(self.budget_name, PLANS["small"])

    def claims_context(self, progress: bool = True) -> ClaimContext:
        """The context the claims share (outputs, layer studies, held-out passes), kept while the windows are."""
        current = getattr(self, "_claims_shared", None)
        if current is None or current.calib is not self.calib or current.lm is not self.lm:
            current = ClaimContext(self.lm, self.calib, self.held_out, self.claims_plan(), self.corpus, self.seed,
                                   progress)
            self._claims_shared = current
        current.progress = progress
        return current

    def claim_key(self, claim_id: str) -> str:
        return self.key(claim=claim(claim_id).id, plan=asdict(self.claims_plan()), held_out=self.held_out,
                        corpus=self.corpus, rule=claim(claim_id).rule, sketch=SKETCH_VERSION)

    def claim_cached(self, claim_id: str) -> bool:
        """Whether the claim's row is on disk already (known without loading the model)."""
        return self.use_cache and cache.entry_path("claim", self.claim_key(claim_id)).exists()

    def claim_row(self, claim_id: str, progress: bool = True) -> dict:
        """One claim's row (:func:`wnb.experiments.claim_runner.run_claims`), cached."""
        entry = claim(claim_id)
        return self._cached("claim", self.claim_key(entry.id),
                            lambda: run_claim(entry.id, self.claims_context(progress)))

    def claim_rows(self, only=None, progress: bool = True, on_run=None, cached_only: bool = False) -> list[dict]:
        """The rows of ``only`` (default all), in registry order; ``on_run(index, total, label)`` before each
        (a job's ``begin``); with ``cached_only``, only those already on disk (nothing is computed)."""
        ids = check_only(only)
        if cached_only:
            ids = [i for i in ids if self.claim_cached(i)]
        rows = []
        for index, claim_id in enumerate(ids):
            if on_run is not None:
                on_run(index, len(ids), f"{claim_id}: {claim(claim_id).claim}")
            rows.append(self.claim_row(claim_id, progress))
        return rows

    def claims_cost(self, only=None) -> dict:
        """A rough time for the claims of ``only`` not yet cached: the bundled model's small-budget seconds,
        scaled by the budget, the model's size and the device (:data:`SMALL_SECONDS`)."""
        missing = [i for i in check_only(only) if not self.claim_cached(i)]
        if not missing:
            return {"cached": True, "large": False}
        size = sum(p.numel() for p in self.lm.model.parameters()) / BUNDLED_PARAMETERS
        device = next(self.lm.model.parameters()).device.type
        speed = 1.0 if device == "cpu" else 0.02
        seconds = sum(SMALL_SECONDS[i] for i in missing) * PLAN_FACTOR.get(self.claims_plan().name, 1.0) * size * speed
        return {"cached": False, "seconds": seconds, "runs": len(missing), "bytes": 0,
                "large": seconds > LARGE_CLAIMS_SECONDS}

    def claims_setting(self) -> str:
        """One line on what the claims were run on: model, corpus, windows, budget, seed (the page's subtitle,
        :func:`wnb.app.claims_page.session_page`)."""
        return (f"{self.model_name} · corpus {self.corpus} · {self.calib.shape[0]} calibration and "
                f"{self.held_out.shape[0]} held-out windows of {self.calib.shape[1]} tokens · budget "
                f"{self.claims_plan().name} · seed {self.seed}")
