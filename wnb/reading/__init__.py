"""Reading a neuron: the contexts of both tails and of every band of its distribution from one pass with
memory per neuron, the token table, differentiating pairs as text, its direct output effect, escaped
HTML highlights, and the per-expert views of a Sparse Expansion.

May import: wnb.errors, wnb.core, wnb.model, wnb.data, wnb.tracing, wnb.scoring."""
