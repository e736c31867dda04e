"""What the notebooks and the app work on: one model, one corpus, one token budget, one seed.

A :class:`Session` loads the model and cuts the token windows lazily, and returns each analysis
through the on-disk cache (:func:`wnb.core.cache.cached`) keyed by everything that changes it (model,
calibration windows — so corpus, budget and seed —, layer, analysis parameters). It is composed of one
part per domain, each in its own module: :class:`~wnb.app.loading.Loading` (the model, the windows,
keys and the dense-only cache), :class:`~wnb.app.layers.Layers` (one layer's neurons, its contexts, the
model overview), :class:`~wnb.app.compression.Compression` (pruning, sweeps, the ablation, Sparse
Expansion, downstream tasks), :class:`~wnb.app.negative.Negative` (the follow-up's sign ablation),
:class:`~wnb.app.claims.Claims` (every claim of both papers tested, with verdicts) and
:class:`~wnb.app.costs.Costs` (what a job will take, before it starts). Every number comes from a wnb
function; the widgets in :mod:`wnb.widgets` only draw what a session returns.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

from wnb.app.budgets import budget_from_env, check_budget
from wnb.app.claims import Claims
from wnb.app.compression import Compression
from wnb.app.costs import Costs
from wnb.app.layers import Layers
from wnb.app.loading import Loading
from wnb.app.negative import Negative
from wnb.app.sources import UPLOAD, app_corpus, app_model
from wnb.app.views import LayerView
from wnb.data.corpora import CORPORA
from wnb.errors import WnbError
from wnb.model.lm import LM


class Session(Loading, Layers, Compression, Negative, Claims, Costs):
    """Model + corpus + budget + seed, with cached analyses.

    ``model=None`` is the bundled SmolLM2; any other string is a Hugging Face id or folder. Tests and
    power users may pass an already loaded ``lm`` and ready ``calib`` / ``held_out`` windows instead.
    """

    def __init__(self, model: str | None = None, corpus: str = "bundled", budget: str | None = None,
                 seed: int = 0, device: str = "auto", lm: LM | None = None, calib: torch.Tensor | None = None,
                 held_out: torch.Tensor | None = None, use_cache: bool = True, n_pairs: int = 50_000,
                 restricted: bool = False, upload: bytes | None = None, skip_first: int = 0):
        self.model = (model or "").strip() or None
        self.corpus = (corpus or "bundled").strip()
        # restricted (the app): no typed path is opened; see wnb.app.sources
        self.restricted = restricted
        self.upload = upload
        self.skip_first = int(skip_first)  # positions of every window left out of WD, MD and the tables
        self._contexts = None  # (key, NeuronContexts) of the last layer read
        self._folder = None
        if restricted:
            self.model, self._folder = app_model(self.model)
            if self.corpus not in (*CORPORA, UPLOAD):
                app_corpus(self.corpus)  # raises: says what is allowed
        self.budget_name = budget or budget_from_env()
        self.budget = check_budget(self.budget_name)
        if int(seed) < 0:
            raise WnbError(f"seed must be a non-negative integer (got {seed})")
        self.seed = int(seed)
        self.device = device
        self.use_cache = use_cache
        self.n_pairs = n_pairs
        self._lm = lm
        self._calib = calib
        self._held_out = held_out
        self.given_windows = calib is not None  # the sign study then uses them as they are (wnb.app.negative)
        # what the held-out windows are, in words (the command says so when they come from a text of their own)
        self.held_out_text = f"{self.corpus} (windows disjoint from the calibration ones)"
        self._sign_windows = None
        self.sign_held_out: tuple[str, str] | None = None  # the sign study's held-out text, (corpus, split)
        self._layer: LayerView | None = None
        self._study = None  # (key, LayerStudy) of the last layer study
        self._names: dict[str, list[str]] | None = None
        self._claims_shared = None  # the ClaimContext the claims share (wnb.app.claims)
        return_freed_memory()


def return_freed_memory() -> None:
    """Have glibc give large freed blocks back to the system (Linux; a no-op elsewhere).

    glibc raises its mmap threshold each time a large block is freed, so later tensors of tens of MB come
    from the heap and stay resident after they are freed. The app's kernel must stay under Binder's 2 GB;
    a fixed 1 MiB threshold (``mallopt(M_MMAP_THRESHOLD)``) keeps its resting memory ~150 MB lower.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        pass
