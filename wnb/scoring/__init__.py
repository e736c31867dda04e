"""Scores of neurons from their captured outputs (and inputs): the exact and the streaming Wasserstein
distance to a Gaussian, mapping difficulty, the sign view, tables of one layer or many, neuron
selections, and dense-vs-approximate comparisons.

May import: wnb.errors, wnb.core, wnb.model, wnb.data, wnb.tracing."""
