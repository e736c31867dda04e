"""Compression: the sparsity vocabulary and masks, SparseGPT, pruning one weight or the whole model in
place, joint quantization, Sparse Expansion (k-means router, one SparseGPT expert per cluster, routed
layers), saving pruned checkpoints and expansions, and sign-ablation hooks.

May import: wnb.errors, wnb.core, wnb.model, wnb.data, wnb.tracing, wnb.scoring."""
