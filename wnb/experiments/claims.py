"""Every claim of both papers as data: what it says, where the paper says it, the wnb computation that
tests it, the statistic, the paper's number and setting, and the decision rule — fixed here, before any
data is seen (``wnb claims``, the app's Claims tab and ``notebooks/06_claims.ipynb`` show it as written).

Verdicts (:func:`wnb.core.inference.verdict` on the statistic's 95% interval, direction and minimum effect):

- **holds**: the interval lies on the paper's side of the null;
- **reversed**: it lies on the other side;
- **not observed**: it includes the null and excludes an effect of the paper's size (or of the declared
  ``minimum`` where the paper gives none);
- **inconclusive**: too wide to tell;
- **not run**: the claim needs what this model or machine lacks (a tokenizer, local weights, a gated MLP,
  the network for BLiMP...); the row says which.

Beside each verdict: **comparable** or not, with the settings that differ from the paper's (model, corpus,
tokens, window length, layers, pair set...), so a verdict on the bundled model never reads as a failed
replication. The runner is :func:`wnb.experiments.claim_runner.run_claims`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from wnb.errors import WnbError

SAWMYA = "Sawmya et al., ICLR 2025"
KONG = "Kong et al., ICLR 2026"
VERDICTS = ("holds", "reversed", "not observed", "inconclusive", "not run")

# The settings each paper's numbers come from (PAPER.md §1, §8): what "comparable" is measured against.
PAPER_SETTINGS = {
    SAWMYA: {"model": "EleutherAI/pythia-1.4b-deduped", "corpus": "wikitext2", "seq_len": 2048,
             "calibration windows": 128},
    KONG: {"model": "Pythia / Llama / Qwen / Mistral (1B-8B)", "corpus": "wikitext2", "seq_len": 2048,
           "calibration windows": 256},
}


class NotRun(WnbError):
    """A claim that cannot run here; the message says what it needs (a tokenizer, the network...)."""


@dataclass(frozen=True)
class Claim:
    """One claim: ``direction`` is the paper's side of the statistic's null (``"greater"``: above it,
    ``"less"``: below); ``null`` the value of no effect; ``effect`` the paper's effect size in the same
    units where it gives one, else ``minimum`` (declared here) is the yardstick of *not observed*;
    ``setting`` the claim's own settings in the paper (beyond :data:`PAPER_SETTINGS`); ``tab`` the app's
    tab that shows it in detail; ``needs`` what it cannot run without."""
    id: str
    paper: str
    where: str
    claim: str
    computation: str
    statistic: str
    direction: str
    minimum: float
    paper_value: str
    setting: dict = field(default_factory=dict)
    effect: float | None = None
    null: float = 0.0
    tab: str = "Claims"
    needs: tuple = ()

    @property
    def rule(self) -> str:
        """The decision rule in words, as the page shows it."""
        side = "above" if self.direction == "greater" else "below"
        size = (f"the paper's effect ({self.effect:g})" if self.effect is not None
                else f"the declared minimum effect ({self.minimum:g})")
        return (f"holds if the 95% interval of the statistic lies {side} {self.null:g}; reversed if it lies on the "
                f"other side; not observed if it includes {self.null:g} but excludes {size}; else inconclusive")

    def as_dict(self) -> dict:
        return {**asdict(self), "rule": self.rule}


CLAIMS: tuple[Claim, ...] = (
    Claim("W1", SAWMYA, "§3, Fig. 1", "Every linear layer has a few strongly non-Gaussian neurons.",
          "wnb.capture of every first FFN projection, wnb.wasserstein_to_gaussian, the first token left out",
          "per layer, mean WD of the top 3% / median WD, minus the same ratio for Gaussian neurons of the same "
          "token count; the weakest layer, 95% interval from half-samples of the windows", "greater", 0.5,
          "no number: top neurons far above the rest in every layer",
          {"fraction": 0.03, "layers": "every linear layer"}, tab="Model overview"),
    Claim("W2", SAWMYA, "Fig. 2e", "WD and mapping difficulty go together across a layer's neurons.",
          "wnb.mapping_difficulty with several seeds of token pairs, against WD of the same layer",
          "Spearman ρ of WD and MD over the layer's neurons (R² beside it); 95% bootstrap over neurons and pair "
          "samples", "greater", 0.3, "no number: 'strongly correlated'", {"token pairs": 50_000},
          tab="Entangled neurons"),
    Claim("W3", SAWMYA, "Fig. 3", "Sparsifying the top 3% of neurons by WD hurts perplexity more than choosing them "
          "at random, by mean, by variance or by weight norm.",
          "wnb.ablation (SparseGPT at 90% on 3% of each FFN layer's rows), held-out NLL per window",
          "Δ NLL per token, WD choice − each other choice (the smallest), paired over held-out windows",
          "greater", 0.01, "no number in nats: WD far worse in the figure",
          {"layers": "every FFN layer", "sparsity": 0.9, "fraction": 0.03}, tab="Sparsity"),
    Claim("W4", SAWMYA, "Fig. 9, Table 1", "Sparse Expansion beats SparseGPT at equal sparsity, more so as k grows.",
          "wnb.study_layer for each k: held-out relative output error of the layer, expansion vs SparseGPT",
          "Δ relative error (‖y − y_dense‖ / ‖y_dense‖), largest k − SparseGPT, paired over held-out windows; "
          "each k beside it", "less", 0.005, "perplexity falls with k = 1, 2, 4, 8, 16",
          {"k": "1, 2, 4, 8, 16", "sparsity": 0.9, "evaluated": "whole-model perplexity"}, tab="Sparse Expansion"),
    Claim("W5", SAWMYA, "Fig. 7", "Relative improvement grows with WD, and WD explains it best among WD, mean and "
          "variance.", "wnb.relative_improvement and wnb.ri_regression of the layer study",
          "R² of RI on WD − the larger R² on mean or variance; 95% bootstrap over neurons", "greater", 0.02,
          "R² > 0.16 on WD, best of WD, mean, variance", {"k": 16, "sparsity": 0.9}, tab="Sparse Expansion"),
    Claim("W6", SAWMYA, "Fig. 5", "After expansion each expert's outputs of a Wasserstein neuron are closer to a "
          "Gaussian.", "wnb.experiments.layer_study.weighted_group_wd over the router's experts and over random "
          "partitions of the same sizes (sample-size correction)",
          "median over Wasserstein neurons of per-expert WD / random-partition WD − 1; 95% bootstrap over neurons",
          "less", 0.1, "median WD −42% for 98% of Wasserstein neurons (not corrected for sample size)",
          {"k": 16, "sparsity": 0.9}, tab="Sparse Expansion"),
    Claim("W7", SAWMYA, "Fig. 5", "After expansion the mapping difficulty of the Wasserstein neurons falls.",
          "wnb.entanglement_change (MD before vs token-share weighted MD per expert)",
          "median over Wasserstein neurons of MD after / MD before − 1; 95% bootstrap over neurons", "less", 0.1,
          "MD drops after expansion (no number)", {"k": 16, "sparsity": 0.9}, tab="Sparse Expansion"),
    Claim("N1", KONG, "§3", "The non-Gaussian mass of first-projection Wasserstein neurons sits below raw zero.",
          "wnb.wasserstein_split at the raw zero for the top 1% by WD of every first FFN projection",
          "mean share of WD below y = 0 over the Wasserstein neurons − 0.5; 95% bootstrap over neurons",
          "greater", 0.1, "the differentiation happens on the negative side", {"fraction": 0.01},
          tab="Negative differentiation", needs=("gated or smooth first projection",)),
    Claim("N2", KONG, "Table 1", "Zeroing the negative side of the Wasserstein neurons raises perplexity more than "
          "zeroing random neurons of the same count.",
          "wnb.sign_ablation_study (negative side, top 1%, random control)",
          "Δ NLL per token, Wasserstein − random ablation, paired over held-out windows (the weakest seed)",
          "greater", 0.01, "perplexity rises far more than random", {"fraction": 0.01},
          tab="Negative differentiation", needs=("local weights",)),
    Claim("N3", KONG, "Tables 2-3", "… and lowers grammatical minimal-pair accuracy more than random and "
          "perplexity-matched controls.", "wnb.sign_ablation_study with minimal pairs (McNemar on the same pairs)",
          "Δ accuracy, Wasserstein − control (the weaker of random and matched), paired over pairs "
          "(Bonett-Price)", "less", 0.02, "BLiMP and TSE accuracy fall more than under either control",
          {"fraction": 0.01, "pairs": "BLiMP 67 x 1,000, TSE"}, tab="Negative differentiation",
          needs=("a tokenizer",)),
    Claim("N4", KONG, "§5", "The matched control hurts non-grammatical tasks more (double dissociation).",
          "wnb.sign_ablation_study with wnb.knowledge_pairs (facts, sums: no grammar)",
          "Δ knowledge accuracy, Wasserstein − matched control, paired over items", "greater", 0.02,
          "the matched control hurts non-grammatical benchmarks more",
          {"fraction": 0.01, "pairs": "non-grammatical benchmarks"}, tab="Negative differentiation",
          needs=("a tokenizer",)),
    Claim("N5", KONG, "§4", "The excess surprisal of the ablation falls on function words.",
          "wnb.token_surprisal of the Wasserstein ablation, by token class (closed word list)",
          "mean Δ NLL on function-word tokens − on content tokens; 95% bootstrap over held-out windows",
          "greater", 0.01, "excess surprisal on syntactic scaffolding (determiners, prepositions)",
          {"token classes": "spaCy UPOS"}, tab="Negative differentiation", needs=("a tokenizer",)),
    Claim("N6", KONG, "§6", "Early layers matter most for grammar.",
          "wnb.sign_ablation_depth (one layer at a time) with minimal pairs",
          "mean Δ accuracy of the early half of the layers − of the late half (normal interval, layers taken as "
          "independent: conservative)", "less", 0.02, "grammar most sensitive to the early layers",
          {"layers": "every block"}, tab="Negative differentiation", needs=("a tokenizer",)),
)
IDS = tuple(c.id for c in CLAIMS)


def claim(claim_id: str) -> Claim:
    """The registry's entry for ``claim_id`` (W1-W7, N1-N6)."""
    for entry in CLAIMS:
        if entry.id == str(claim_id).upper():
            return entry
    raise WnbError(f"unknown claim {claim_id!r}; choose from {', '.join(IDS)}")


def check_only(only) -> list[str]:
    """The claim ids of ``only`` (None: all) in registry order; unknown ids refused with the list."""
    if only is None:
        return list(IDS)
    wanted = [only] if isinstance(only, str) else list(only)
    if not wanted:
        raise WnbError(f"no claims asked for; choose from {', '.join(IDS)}")
    ids = {claim(c).id for c in wanted}
    return [c for c in IDS if c in ids]
