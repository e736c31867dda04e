"""The settings row shared by every view: model, corpus, token budget, seed."""
from __future__ import annotations

from typing import Callable

import ipywidgets as widgets

from ..session import BUDGETS, Session, budget_from_env
from .panel import Panel

# ---------------------------------------------------------------- settings

class Settings(Panel):
    """Model, corpus, token budget and seed shared by every view; ``session`` is the current one."""

    def __init__(self, budget: str | None = None, session: Session | None = None):
        from ..data import CORPORA
        from ..sources import MAX_UPLOAD_BYTES, UPLOAD, offered_models

        budget = budget or budget_from_env()
        # No box takes a server path: models are the bundled one, a hub id or a folder offered by name;
        # corpora are named or uploaded (wnb.sources).
        self.model = widgets.Combobox(value="", options=sorted(offered_models()), ensure_option=False,
                                      placeholder="bundled SmolLM2-135M-Instruct (or a Hugging Face id)",
                                      description="model", layout=widgets.Layout(width="420px"))
        self.corpus = widgets.Dropdown(options=[*CORPORA, UPLOAD], value="bundled", description="corpus",
                                       layout=widgets.Layout(width="240px"))
        self.upload = widgets.FileUpload(accept=".txt,text/plain", multiple=False,
                                         description=f"upload .txt (≤ {MAX_UPLOAD_BYTES >> 20} MiB)",
                                         layout=widgets.Layout(width="220px", display="none"))
        self.corpus.observe(lambda change: setattr(self.upload.layout, "display",
                                                   "" if change["new"] == UPLOAD else "none"), names="value")
        self.budget = widgets.Dropdown(options=list(BUDGETS), value=budget, description="budget",
                                       layout=widgets.Layout(width="200px"))
        self.seed = widgets.BoundedIntText(value=0, min=0, max=2**31 - 1, description="seed",
                                           layout=widgets.Layout(width="160px"))
        self.apply = widgets.Button(description="Apply settings", icon="check",
                                    layout=widgets.Layout(width="auto", min_width="130px", flex="0 0 auto"))
        for control, name in ((self.model, "model"), (self.corpus, "corpus"), (self.upload, "upload"),
                              (self.budget, "budget"), (self.seed, "seed")):
            control.add_class(f"wnb-setting-{name}")
        super().__init__([widgets.HBox([self.model, self.corpus, self.upload, self.budget, self.seed, self.apply],
                                       layout=widgets.Layout(flex_flow="row wrap"))], printable=False)
        self.buttons = [self.apply]
        self.add_class("wnb-settings")
        self._listeners: list[Callable[[Session], None]] = []
        self.session = session or Session(budget=budget, restricted=True)
        self.apply.on_click(self.callback(lambda _: self.apply_settings()))
        self.describe()

    def describe(self) -> None:
        b = self.session.budget
        self.info(f"{self.session.model_name} · corpus {self.session.corpus} · budget {self.session.budget_name}: "
                  f"{b.n_calib} × {b.seq_len} calibration tokens, {b.n_eval} × {b.seq_len} held out · "
                  f"seed {self.session.seed}")

    def uploaded(self) -> bytes | None:
        """The bytes of the uploaded corpus file, if any (ipywidgets 8: a tuple of dicts with 'content')."""
        files = self.upload.value
        if not files:
            return None
        return bytes(files[0]["content"])

    def on_change(self, listener: Callable[[Session], None]) -> None:
        """Call ``listener(session)`` whenever new settings are applied."""
        self._listeners.append(listener)

    def apply_settings(self) -> Session:
        session = Session(model=self.model.value, corpus=self.corpus.value, budget=self.budget.value,
                          seed=self.seed.value, restricted=True, upload=self.uploaded())
        with self.busy(f"loading {session.model_name} and cutting token windows…"):
            session.calib  # load the model and the corpus now, so a bad id or path is reported here
        self.session = session
        self.describe()
        for listener in self._listeners:
            listener(session)
        return session
