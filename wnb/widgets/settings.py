"""The settings row shared by every view: model, corpus, token budget, seed."""
from __future__ import annotations

from typing import Callable

import ipywidgets as widgets

from wnb.app.budgets import BUDGETS, budget_from_env
from wnb.app.limits import BOUNDS, bounded
from wnb.app.session import Session
from wnb.app.sources import MAX_UPLOAD_BYTES, UPLOAD, offered_models
from wnb.data.corpora import CORPORA
from wnb.errors import WnbError
from wnb.widgets.panel import Panel

# ---------------------------------------------------------------- settings

class Settings(Panel):
    """Model, corpus, token budget and seed shared by every view; ``session`` is the current one."""

    def __init__(self, budget: str | None = None, session: Session | None = None):

        budget = budget or budget_from_env()
        # No box takes a server path: models are the bundled one, a hub id or a folder offered by name;
        # corpora are named or uploaded (wnb.app.sources).
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
        self.seed = widgets.BoundedIntText(value=0, min=BOUNDS["seed"][0], max=BOUNDS["seed"][1], description="seed",
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
        # a job: a hub model downloads file by file, with a bar and Cancel (in the app's worker thread)
        self.job_button(self.apply, "loading the model", lambda job: self.apply_settings(job))
        self.describe()

    def describe(self) -> None:
        b = self.session.budget
        self.info(f"{self.session.model_name} · corpus {self.session.corpus} · budget {self.session.budget_name}: "
                  f"{b.n_calib} × {b.seq_len} calibration tokens, {b.n_eval} × {b.seq_len} held out · "
                  f"seed {self.session.seed}")

    # The job of Apply loads the new session's model itself: it holds no model of the old one.
    loads_model = True

    def uploaded(self) -> bytes | None:
        """The bytes of the uploaded corpus file, if any (ipywidgets 8: a tuple of dicts with 'content'),
        its name and size checked before anything is copied."""

        files = self.upload.value
        if not files:
            return None
        first = files[0]
        name, content = str(first.get("name", "")), first.get("content")
        size = len(content) if content is not None else 0
        if not name.lower().endswith(".txt"):
            raise WnbError("the corpus upload takes a .txt file of UTF-8 text")
        if size > MAX_UPLOAD_BYTES or int(first.get("size", 0) or 0) > MAX_UPLOAD_BYTES:
            raise WnbError(f"the uploaded file has {max(size, int(first.get('size', 0) or 0)) / 2**20:.1f} MiB; "
                           f"at most {MAX_UPLOAD_BYTES >> 20} MiB of text is accepted")
        return bytes(content)

    def on_change(self, listener: Callable[[Session], None]) -> None:
        """Call ``listener(session)`` whenever new settings are applied."""
        self._listeners.append(listener)

    def apply_settings(self, job=None) -> Session:
        session = Session(model=self.model.value, corpus=self.corpus.value, budget=self.budget.value,
                          seed=bounded("seed", self.seed.value), restricted=True, upload=self.uploaded())
        on_file = (lambda i, n, name: job.begin(i, n, f"downloading {name}")) if job is not None else None
        with self.busy(f"loading {session.model_name} and cutting token windows…"):
            session.prepare(on_file)  # load the model and the corpus now, so a bad id is reported here
        self.session = session
        self.describe()
        for listener in self._listeners:
            listener(session)
        return session
