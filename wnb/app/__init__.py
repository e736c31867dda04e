"""The app's server side: the session (one model, corpus, budget and seed, with cached analyses, in small
parts by domain), what a visitor may load (sources), the server's bounds and job estimates, visitor
seats, and a neuron's self-contained page.

May import: every package except wnb.widgets and wnb.cli. Kept light: :mod:`wnb.app.seats` loads
without torch."""
