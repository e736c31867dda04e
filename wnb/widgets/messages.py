"""What a panel says: one readable line for any error (Python advice replaced by what to pick on the page,
the server's paths never shown) and the size guard's words for a large job."""
from __future__ import annotations

import os
import re
import sys
import tempfile

from wnb.core.cache import cache_dir
from wnb.errors import WnbError

# The API's messages point at Python calls; on the page they point at the controls instead.
PAGE_WORDS = {" (all: wnb.linear_layers(lm))": " (every layer is in the layer list)",
              "pick names from wnb.ffn_layers(lm) or wnb.linear_layers(lm)": "pick one from the layer list",
              ", e.g. from wnb.ffn_layers(lm)": " from the layer list",
              "; pass trust_remote_code=True if you trust it": "; this server never runs a model's own code"}


def server_roots() -> list[str]:
    """Folders of the server whose paths a page must not show: wnb's cache, the home, temporary and
    working folders, Python's prefix (longest first, so the most specific is replaced)."""


    roots = {os.path.expanduser("~"), tempfile.gettempdir(), os.getcwd(), sys.prefix, sys.base_prefix}
    try:
        roots.add(str(cache_dir()))
    except WnbError:
        pass
    for variable in ("HF_HOME", "XDG_CACHE_HOME", "WNB_MODEL_DIRS"):
        roots.update(p for p in os.environ.get(variable, "").split(os.pathsep) if p.strip())
    return sorted((r.rstrip("/") for r in roots if len(r.rstrip("/")) > 1), key=len, reverse=True)


def visitor_words(text: str) -> str:
    """``text`` with the server's own paths replaced by "…" (the visitor's input, e.g. a typed path, stays)."""
    for root in server_roots():
        text = re.sub(re.escape(root) + r"(/[^\s'\",;)]*)?", "…", text)
    return text


def error_text(exc: BaseException) -> str:
    """One readable line: a WnbError's own message (Python advice replaced by what to pick on the page),
    otherwise the exception type and its first line; server paths never shown (:func:`visitor_words`)."""
    if isinstance(exc, WnbError):
        text = str(exc)
        for api, page in PAGE_WORDS.items():
            text = text.replace(api, page)
        return visitor_words(text)
    first = (str(exc).strip().splitlines() or [""])[0]
    return visitor_words(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


def rough_duration(seconds: float) -> str:
    """``95`` → ``"2 min"``; under a minute in seconds, from 2 hours on in hours."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def cost_message(cost: dict, what: str, button: str) -> str:
    """The size guard's words for a large whole-model job (``cost`` from the session's ``*_cost``);
    empty when the job is not large."""
    if not cost.get("large"):
        return ""
    return (f"{what}: {cost['runs']} runs changing {cost['layers']} layer(s) take roughly "
            f"{rough_duration(cost['seconds'])} here and hold {cost['bytes'] / 2**30:.1f} GiB beside the model. "
            f"Press {button} again to go ahead, or choose fewer layers (the layers list) or fewer settings.")
