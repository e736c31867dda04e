"""Experiments built from the pieces below: sweeps and the Fig. 3 ablation, the layer study (relative
improvement, per-expert views), the follow-up's sign ablation with its minimal pairs and surprisal,
downstream tasks, and the claims of both papers tested on the loaded model.

May import: every package above it (errors, core, model, data, tracing, scoring, reading, compression)."""
