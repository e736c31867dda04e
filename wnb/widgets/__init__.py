"""Widget panels shared by the notebooks and the Voila app.

Every panel draws what a :class:`wnb.app.session.Session` returns; no analysis happens here. Callbacks
run through :meth:`Panel.guarded`, which shows any error as a one-line message in the panel (the
traceback goes to the server's terminal, never to the page), disables the Run buttons while busy,
and sends tqdm progress bars into the panel.

    app = wnb.widgets.App()     # settings + tabs: Entangled neurons, Model overview, Sparsity, Sparse Expansion,
                                # Negative differentiation, Claims
    display(app)
    app.start()                 # analyze the default layer

May import: every package except wnb.cli.
"""
from wnb import plots  # noqa: F401  (tests patch wnb.widgets.plots)
from wnb.widgets.app import App, EntangledNeurons, Page
from wnb.widgets.claims import ClaimsView
from wnb.widgets.expansion import ExpansionView
from wnb.widgets.layer_panel import LayerNeuronPanel
from wnb.widgets.links import csv_link, data_link, png_link, show_figure, slug
from wnb.widgets.messages import error_text
from wnb.widgets.negative import NegativeView
from wnb.widgets.neurons import TABLE_ROWS, NeuronView
from wnb.widgets.overview import OverviewView
from wnb.widgets.panel import CSS, STRICT_ENV, Panel
from wnb.widgets.settings import Settings
from wnb.widgets.sparsity import SparsityView, parse_sparsities, scope_dropdown

__all__ = ["App", "ClaimsView", "CSS", "csv_link", "data_link", "EntangledNeurons", "error_text", "ExpansionView",
           "LayerNeuronPanel", "NegativeView", "NeuronView", "OverviewView", "Page", "Panel", "parse_sparsities", "png_link",
           "Settings", "scope_dropdown", "show_figure", "slug", "SparsityView", "STRICT_ENV", "TABLE_ROWS"]
