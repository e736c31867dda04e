"""A loaded model as wnb holds it: :class:`LM` (the Hugging Face model, its tokenizer, the nnsight wrapper,
the device and a name), and the devices and dtypes wnb runs on."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from wnb.errors import WnbError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LM:
    """A loaded model: ``model`` (Hugging Face), ``tokenizer``, ``nnsight`` wrapper, ``device``, ``name``.

    ``remote`` is False for a local model, True for one run on NDIF (``model`` is then a weightless
    skeleton on the meta device and ``device`` is where inputs are prepared), or ``"local"`` for
    nnsight's in-process simulation of the remote path.

    ``offload`` is None, or the GPU the transformer blocks are moved onto one at a time from CPU memory
    (``load_model(..., offload=True)``, :mod:`wnb.model.offload`); ``device`` is then that GPU too.
    """

    model: nn.Module
    tokenizer: object
    nnsight: object
    device: torch.device
    name: str
    _order: list[str] | None = field(default=None, repr=False)
    remote: bool | str = False
    offload: torch.device | None = None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def wrap_model(model: nn.Module, tokenizer=None, name: str | None = None) -> LM:
    """Wrap an already loaded Hugging Face causal LM (e.g. a tiny one built from a config)."""
    from nnsight import NNsight

    model.eval()
    device = next(model.parameters()).device
    return LM(model=model, tokenizer=tokenizer, nnsight=NNsight(model), device=device,
              name=name or type(model).__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise WnbError(f"unknown device {str(device)!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise WnbError(f"device {str(device)!r} is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:N' (or 'mps')")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WnbError(f"device {str(device)!r} was asked for but no CUDA device is available here; "
                       "use device='cpu' or 'auto'")
    return device


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        dtype = str(dtype)
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise WnbError(f"dtype {dtype!r} is not supported; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def model_label(name: str, revision: str | None = None) -> str:
    """The model's ``LM.name``: its id, with ``@revision`` when a branch or checkpoint was asked for, so that
    cache keys (which hold the name) tell checkpoints apart."""
    return name if not revision else f"{name}@{revision}"


def require_local(lm: LM, what: str) -> None:
    """Refuse work that needs the model's weights here when ``lm`` runs remotely."""
    if lm.remote:
        raise WnbError(f"{what} needs the model's weights on this machine, but {lm.name} was loaded with "
                       f"remote={lm.remote!r}; load it with wnb.load_model(...) and remote=False instead")
