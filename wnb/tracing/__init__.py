"""Running the model over token windows: capturing linear layers' inputs and outputs (nnsight, one pass,
stopping after the deepest layer), walking the blocks one at a time for sequential calibration, and
held-out next-token NLL, perplexity and their intervals.

May import: wnb.errors, wnb.core, wnb.model, wnb.data."""
