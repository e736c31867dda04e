"""The session's model and windows: loading the model (a hub model within the server's limits), cutting
the token windows, the cache keys of the session's results, the dense-only cache, and the layer names."""
from __future__ import annotations

import torch

from wnb.app.budgets import SCOPES
from wnb.app.sources import app_corpus, fetch_hub_model
from wnb.core import cache
from wnb.data.corpora import load_corpus
from wnb.data.windows import token_windows
from wnb.errors import WnbError
from wnb.model.architectures import (
    block_of,
    check_layers,
    ffn_layers,
    first_ffn_layers,
    linear_layers,
)
from wnb.model.bundled import BUNDLED
from wnb.model.lm import LM, model_label
from wnb.model.loading import load_model
from wnb.model.state import dense_only, is_dense


class Loading:
    """The model, the windows, keys and the dense-only cache of a :class:`~wnb.app.session.Session`."""

    @property
    def lm(self) -> LM:
        if self._lm is None:
            self._lm = self._load()
        return self._lm

    def prepare(self, on_file=None) -> None:
        """Load the model and cut the windows now; a hub model (the app) is fetched within the server's
        limits, with ``on_file(index, total, filename)`` before each file (a job's ``begin``: Cancel)."""
        if self._lm is None:
            self._lm = self._load(on_file)
        self._windows()

    def _load(self, on_file=None) -> LM:
        if not self.restricted or self.model is None:
            return load_model(self.model, device=self.device)
        commit = None
        if self._folder is not None:  # a folder offered by the server
            folder = self._folder
        else:

            folder, commit = fetch_hub_model(self.model, on_file=on_file)
        try:
            lm = load_model(str(folder), device=self.device)
        except WnbError:  # the visitor's words: no server path, no advice to run the model's own code
            raise WnbError(f"could not load {self.model!r} with transformers: this server loads models that "
                           "transformers knows without code of their own") from None
        # the id or offered name, not the folder it was read from; a hub model with its commit, so that cache
        # keys tell revisions apart
        lm.name = model_label(self.model, commit[:12] if commit else None)
        return lm

    @property
    def model_name(self) -> str:
        return self._lm.name if self._lm is not None else (self.model or "bundled SmolLM2-135M-Instruct")

    @property
    def model_key(self) -> str:
        """The model's name in cache keys: known without loading it for the bundled model and named ones,
        ``LM.name`` (with the resolved commit) for a hub model of the app."""
        if self._lm is None and self.restricted and self.model is not None and self._folder is None:
            return self.lm.name
        return self._lm.name if self._lm is not None else (self.model or BUNDLED)

    def corpus_text(self, name: str | None = None, split: str = "train") -> str:
        """The session's corpus (or the corpus ``name``, in ``split``) as text (the app: only what its server
        offers, :func:`wnb.app.sources.app_corpus`)."""
        name = name or self.corpus
        return app_corpus(name, self.upload, split) if self.restricted else load_corpus(name, split)

    def _windows(self):
        if self._calib is None:
            b = self.budget
            text = self.corpus_text()
            key = cache.key(model=self.model_key, text=cache.text_digest(text), seq_len=b.seq_len, n_calib=b.n_calib, n_eval=b.n_eval,
                            seed=self.seed)
            self._calib, self._held_out = cache.cached(
                "windows", key, lambda: token_windows(self.lm, text, b.seq_len, b.n_calib, b.n_eval, self.seed),
                enabled=self.use_cache)
        return self._calib, self._held_out

    @property
    def calib(self) -> torch.Tensor:
        return self._windows()[0]

    @property
    def held_out(self) -> torch.Tensor:
        return self._windows()[1]

    def _cached(self, kind: str, key: str, compute, enabled: bool | None = None):
        """:func:`wnb.core.cache.cached` of a result that assumes the dense model: computed while holding the
        model and stored only if nothing was applied to it meanwhile (:func:`wnb.model.state.dense_only`)."""
        return cache.cached(kind, key, dense_only(lambda: self.lm, compute),
                            enabled=self.use_cache if enabled is None else enabled)

    def _dense_now(self) -> bool:
        """Whether nothing is applied to the model now (True before it is loaded)."""
        return self._lm is None or is_dense(self._lm)

    def key(self, **parts) -> str:
        """Cache key of a result of this session: model, calibration windows, seed and ``parts``."""
        return cache.key(model=self.model_key, calib=self.calib, seed=self.seed, **parts)

    def _layer_names(self) -> dict[str, list[str]]:
        """FFN, first-FFN and all linear layer names, cached by model so a warm visit never loads it."""
        if self._names is None:
            self._names = self._cached(
                "layer_names", cache.key(model=self.model_key),
                lambda: {"ffn": ffn_layers(self.lm), "first_ffn": first_ffn_layers(self.lm),
                         "linear": linear_layers(self.lm)}, enabled=self.use_cache)
        return self._names

    def ffn_layers(self) -> list[str]:
        return list(self._layer_names()["ffn"])

    def linear_layers(self) -> list[str]:
        return list(self._layer_names()["linear"])

    def check_layer(self, name: str) -> str:
        """``name`` if it is a linear layer of the model; otherwise wnb's error listing the closest names."""
        if name in self._layer_names()["linear"]:
            return name
        (name,) = check_layers(self.lm, [name])  # raises WnbError with suggestions
        return name

    def default_layer(self) -> str:
        """The first FFN projection of block 1 (block 0 if the model has one block)."""
        names = self._layer_names()
        first = names["first_ffn"] or names["ffn"] or names["linear"]
        return first[1] if len(first) > 1 else first[0]

    def scope_layers(self, scope: str, layer: str) -> list[str]:
        """The layers a whole-model run changes: ``"all"`` FFN layers, the ``"block"`` of ``layer``, or ``"layer"``."""
        if scope not in SCOPES:
            raise WnbError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
        layer = self.check_layer(layer)
        if scope == "layer":
            return [layer]
        ffn = self.ffn_layers()
        if scope == "all":
            return ffn
        block = block_of(self.lm, layer)
        same = [n for n in ffn if block_of(self.lm, n) == block]
        return same or [layer]
