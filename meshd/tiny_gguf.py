"""Write a tiny random-weight llama model as GGUF, for a real llama-server in tests and ``meshd demo``.

Nothing is downloaded. It needs the ``gguf`` package (and numpy, which gguf requires): the ``demo`` and
``test`` extras install it (:data:`meshd.llamacpp.GGUF_REQUIREMENT`). Import this module only when a model is
to be written: it imports gguf at the top.

The model is a 2-layer llama (64-dim embeddings, 4 heads, FFN 256, context 512, all F32) with a
SentencePiece-style vocabulary: ``<unk>``, ``<s>``, ``</s>``, the chat template's ``<|im_start|>`` and
``<|im_end|>``, the 256 byte tokens ``<0x00>``..``<0xFF>`` and a few word pieces. Weights come from a
fixed seed, so the file is the same on every run (~0.7 MB).

Random weights would make the model emit arbitrary bytes, i.e. invalid UTF-8 and control characters.
The output-matrix rows of the control tokens and of every byte token outside printable ASCII are zero,
so those tokens always score 0 while the best of the others scores well above it: with
``temperature: 0`` the model answers the same printable text every time (and never ends on its own, so
requests must set ``max_tokens``).

Usage: ``python -m meshd.tiny_gguf OUT.gguf``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np

ARCH = "llama"
N_LAYER = 2
N_EMBD = 64
N_HEAD = 4
N_FF = 256
N_CTX = 512
SEED = 20261127

# A ChatML-style template: llama-server renders it with its Jinja engine and also recognises it by name.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# SentencePiece marks a leading space with U+2581.
WORD_PIECES = [
    "\u2581the",
    "\u2581mesh",
    "\u2581node",
    "\u2581peer",
    "\u2581model",
    "\u2581token",
    "\u2581hello",
    "\u2581world",
    "\u2581llama",
    "\u2581and",
    "\u2581is",
    "ing",
]

UNK_ID, BOS_ID, EOS_ID, IM_START_ID, IM_END_ID = 0, 1, 2, 3, 4
FIRST_BYTE_ID = 5


def vocabulary(extra_tokens: Sequence[str] = ()) -> tuple[list[str], list[float], list[int]]:
    """Token strings, scores and types of the model's vocabulary, in id order.

    ``extra_tokens`` are appended as user-defined tokens (one token each, e.g. ``<tool_call>``).
    """
    # The template's markers are control tokens: one token each instead of a dozen bytes.
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    scores = [0.0] * len(tokens)
    control = gguf.TokenType.CONTROL
    types = [gguf.TokenType.UNKNOWN, control, control, control, control]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(gguf.TokenType.BYTE)
    for i, piece in enumerate(WORD_PIECES):
        tokens.append(piece)
        scores.append(-1.0 - i)
        types.append(gguf.TokenType.NORMAL)
    for extra in extra_tokens:
        tokens.append(extra)
        scores.append(0.0)
        types.append(gguf.TokenType.USER_DEFINED)
    return tokens, scores, [int(t) for t in types]


def silent_token_ids() -> list[int]:
    """Ids whose output row is zeroed: control/unknown tokens and bytes outside printable ASCII."""
    ids = [UNK_ID, BOS_ID, EOS_ID, IM_START_ID, IM_END_ID]
    ids += [FIRST_BYTE_ID + b for b in range(256) if not 0x20 <= b <= 0x7E]
    return ids


def _tensor_name(kind: gguf.MODEL_TENSOR, bid: int | None = None) -> str:
    name = gguf.TENSOR_NAMES[kind]
    if bid is not None:
        name = name.format(bid=bid)
    return name + ".weight"


def write_tiny_llama(
    path: Path | str,
    seed: int = SEED,
    *,
    extra_tokens: Sequence[str] = (),
    space_prefix: bool | None = None,
    chat_template: str = CHAT_TEMPLATE,
) -> Path:
    """Write the tiny model to ``path`` and return it as a Path.

    The keyword arguments make variants (the default model is unchanged): ``extra_tokens`` (see
    :func:`vocabulary`), ``space_prefix=False`` (no SentencePiece space before the text, which llama-server's
    grammar-constrained tool calls need) and another ``chat_template``.
    """
    path = Path(path)
    tokens, scores, types = vocabulary(extra_tokens)
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int) -> np.ndarray:
        # numpy shape (rows, cols) is ggml's ne = [cols, rows]: cols is the input dimension.
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    writer = gguf.GGUFWriter(path, ARCH)
    writer.add_name("meshd-tiny-random")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if space_prefix is not None:
        writer.add_add_space_prefix(space_prefix)
    writer.add_chat_template(chat_template)

    embd = rng.standard_normal((n_vocab, N_EMBD)).astype(np.float32)
    writer.add_tensor(_tensor_name(gguf.MODEL_TENSOR.TOKEN_EMBD), embd)
    for bid in range(N_LAYER):
        writer.add_tensor(_tensor_name(gguf.MODEL_TENSOR.ATTN_NORM, bid), ones(N_EMBD))
        for kind in (
            gguf.MODEL_TENSOR.ATTN_Q,
            gguf.MODEL_TENSOR.ATTN_K,
            gguf.MODEL_TENSOR.ATTN_V,
            gguf.MODEL_TENSOR.ATTN_OUT,
        ):
            writer.add_tensor(_tensor_name(kind, bid), matrix(N_EMBD, N_EMBD))
        writer.add_tensor(_tensor_name(gguf.MODEL_TENSOR.FFN_NORM, bid), ones(N_EMBD))
        writer.add_tensor(_tensor_name(gguf.MODEL_TENSOR.FFN_GATE, bid), matrix(N_FF, N_EMBD))
        writer.add_tensor(_tensor_name(gguf.MODEL_TENSOR.FFN_UP, bid), matrix(N_FF, N_EMBD))
        writer.add_tensor(_tensor_name(gguf.MODEL_TENSOR.FFN_DOWN, bid), matrix(N_EMBD, N_FF))
    writer.add_tensor(_tensor_name(gguf.MODEL_TENSOR.OUTPUT_NORM), ones(N_EMBD))
    output = matrix(n_vocab, N_EMBD)
    output[silent_token_ids(), :] = 0.0
    writer.add_tensor(_tensor_name(gguf.MODEL_TENSOR.OUTPUT), output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) != 2:
        sys.exit("usage: python -m meshd.tiny_gguf OUT.gguf")
    out = write_tiny_llama(sys.argv[1])
    sys.stdout.write(f"{out} {out.stat().st_size} bytes\n")
