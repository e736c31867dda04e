"""The data: corpora as text, token windows (calibration and held out) and their checks, and positions in
the windows (the first token, the attention sink).

May import: wnb.errors, wnb.core, wnb.model."""
