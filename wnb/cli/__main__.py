"""``python -m wnb.cli``: the ``wnb`` command without its console script."""
from wnb.cli import entry

entry()
