"""Helpers shared by the tests (importable: ``from helpers import ...``): tiny random models of three
families and a word-level tokenizer with tiny models using it (no download), a layer's outputs from a
plain forward hook (one or many layers), a counter of the model's forward passes, and the ``wnb`` command's
exit status."""
from __future__ import annotations

from pathlib import Path

import torch

import wnb
from wnb.cli import main as wnb_main
from wnb.experiments import agreement

VOCAB = 128
ROOT = Path(__file__).resolve().parents[2]  # the repository


def tiny_model(config_cls, model_cls, **kwargs):
    torch.manual_seed(0)
    model = model_cls(config_cls(**kwargs)).eval()
    return wnb.wrap_model(model, name=model_cls.__name__)


def hooked_outputs(lm, name, windows):
    """The layer's outputs [tokens, d_out] from a plain forward hook."""
    seen = []
    handle = lm.model.get_submodule(name).register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        with torch.no_grad():
            lm.model(windows)
    finally:
        handle.remove()
    return seen[0].reshape(-1, seen[0].shape[-1])


def hooked_layers(lm, layers, windows, n_tokens=None) -> dict:
    """``{layer: [tokens, d_out] float32}`` from full forwards of one window at a time with plain forward hooks
    (no wnb code), window-major, the first ``n_tokens`` tokens."""
    seen = {name: [] for name in layers}
    handles = [lm.model.get_submodule(name).register_forward_hook(
        lambda mod, args, out, name=name: seen[name].append(out.reshape(-1, out.shape[-1]).detach().float()))
        for name in layers]
    try:
        with torch.no_grad():
            for w in windows:
                lm.model(w[None])
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(v)[:n_tokens] for name, v in seen.items()}


def count_forwards(lm) -> list:
    """A list that grows by one on every forward of the whole model (a plain forward pre-hook on
    ``lm.model``); ``calls.handle.remove()`` removes the hook."""
    calls = _Calls()
    calls.handle = lm.model.register_forward_pre_hook(lambda mod, args: calls.append(1))
    return calls


class _Calls(list):
    """The calls counted, with the hook's handle."""

    handle = None


def run_cli(*argv) -> int:
    """The ``wnb`` command's exit status; argparse's own refusals (SystemExit 2) count as one too."""
    try:
        return wnb_main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


# ---------------------------------------------------------------- a word-level tokenizer

SPECIAL = ["[UNK]", "<s>", "</s>"]
EXTRA = ["the", "The", "that", "and", "to", "of", "in", ".", ",", "she", "is", "cat", "1990", "ory"]


def words() -> list[str]:
    vocab = dict.fromkeys(SPECIAL)
    for pair in agreement.NOUNS + agreement.INTRANSITIVE + agreement.TRANSITIVE:
        vocab.update(dict.fromkeys(pair))
    for phrase in agreement.PREPOSITIONS + agreement.SAYING:
        vocab.update(dict.fromkeys(phrase.split()))
    vocab.update(dict.fromkeys(EXTRA))
    return list(vocab)


def word_text(n_words: int, seed: int = 0) -> str:
    """A seeded random text over the word vocabulary (no special tokens): no two long windows of it alike."""
    vocab = words()[3:]
    order = torch.randint(0, len(vocab), (n_words,), generator=torch.Generator().manual_seed(seed))
    return " ".join(vocab[i] for i in order)


def windows_of(lm, text: str, seq_len: int) -> torch.Tensor:
    """Every non-overlapping ``seq_len`` window of ``text``, from the tokenizer itself."""
    ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    return ids[: ids.numel() // seq_len * seq_len].view(-1, seq_len)


def word_tokenizer(bos: bool = True, eos: bool = True, chat_template: str | None = None,
                   prepend_bos: bool = False):
    """A fast word-level tokenizer (split on spaces and punctuation) with optional BOS/EOS tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(words())}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    if prepend_bos:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    kwargs = {"unk_token": "[UNK]"}
    if bos:
        kwargs["bos_token"] = "<s>"
    if eos:
        kwargs["eos_token"] = "</s>"
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, **kwargs)
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def tiny_word_llama(tokenizer=None, seed: int = 0, layers: int = 2):
    """A tiny random Llama over the word vocabulary (its own copy: wrapped with its own tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(words()), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(config).eval()
    return wnb.wrap_model(model, tokenizer if tokenizer is not None else word_tokenizer(), name="tiny-word-llama")


def tiny_opt(layers: int = 3):
    """A tiny random OPT (ReLU after ``fc1``: the follow-up's contrast to smooth activations), no tokenizer."""
    from transformers import OPTConfig, OPTForCausalLM

    return tiny_model(OPTConfig, OPTForCausalLM, vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=layers,
                      num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=32, bos_token_id=0,
                      eos_token_id=0, pad_token_id=1)
