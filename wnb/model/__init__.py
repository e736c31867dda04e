"""The model: loading it (the bundled GGUF, the Hugging Face hub, NDIF), naming its layers by role for every
supported family, moving blocks to the GPU one at a time (offload), and who holds it (one lock, what is
applied to it now).

May import: wnb.errors, wnb.core."""
