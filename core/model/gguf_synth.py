"""Write random-weight llama GGUF models of a chosen size and weight format, for decode benchmarks.

Decode speed depends on the shapes and the bytes of the weights, not on their values, so a model
with N(0, 0.02²) weights measures what a trained model of the same shape would (the runtime
never branches on values). The shapes follow real small llamas: head_dim 64, layers ≈ hidden/64
(small models are deep for their width), a SwiGLU FFN of ~8/3 hidden rounded to a multiple of
256, untied output. The vocabulary is sentencepiece-like (byte fallback, characters, prefix
chains of common words, padded with unused tokens) so the llama tokenizer loads it.

Tensors are written one at a time (header first, sizes known up front), so a 500M-parameter
model needs memory for one tensor, not the model.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memstack.core.errors import ConfigError

SPACE = "\u2581"  # sentencepiece's "▁" word-start marker
WEIGHT_STD = 0.02
HEAD_DIM = 64
# llama.cpp's general.file_type of a model whose matrices are all of one type (k-quants: the
# *_M file types, whose matrices llama.cpp mixes; here every matrix takes the named type)
FTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9,
          "q4_k": 15, "q5_k": 17, "q6_k": 18}
K_QUANTS = ("q4_k", "q5_k", "q6_k")  # super-blocks of 256: every row length a multiple of 256
_NORMAL, _UNKNOWN, _CONTROL, _UNUSED, _BYTE = 1, 2, 3, 5, 6  # gguf.TokenType values

WORDS = """
the of and to a in is it you that he was for on are with as i his they be at one have this from
or had by hot word but what some we can out other were all there when up use your how said an
each she which do their time if will way about many then them write would like so these her long
make thing see him two has look more day could go come did number sound no most people my over
know water than call first who may down side been now find any new work part take get place made
live where after back little only round man year came show every good me give our under name very
through just form sentence great think say help low line differ turn cause much mean before move
right boy old too same tell does set three want air well also play small end put home read hand
agent user model store recall query vector python meeting coffee likes prefers lives memory
""".split()


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    context: int = 512

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, numpy shape (out, in)) of every tensor, in llama.cpp's names."""
        h, f = self.hidden, self.ffn
        out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (self.vocab, h))]
        for i in range(self.layers):
            b = f"blk.{i}."
            out += [(b + "attn_norm.weight", (h,)), (b + "attn_q.weight", (h, h)),
                    (b + "attn_k.weight", (h, h)), (b + "attn_v.weight", (h, h)),
                    (b + "attn_output.weight", (h, h)), (b + "ffn_norm.weight", (h,)),
                    (b + "ffn_gate.weight", (f, h)), (b + "ffn_down.weight", (h, f)),
                    (b + "ffn_up.weight", (f, h))]
        return out + [("output_norm.weight", (h,)), ("output.weight", (self.vocab, h))]

    def params(self) -> int:
        return sum(math.prod(s) for _, s in self.tensors())


def _vocab_for(params_target: float) -> int:
    """Vocabulary like small models have, scaled down so tiny test models stay tiny."""
    if params_target >= 30e6:
        return 16000
    return 8000 if params_target >= 5e6 else 1024


def shape_for(params_target: float, vocab: int | None = None,
              multiple: int = HEAD_DIM) -> LlamaShape:
    """The llama shape (hidden a multiple of `multiple`, layers = hidden/64) whose size is
    nearest in log scale."""
    if params_target <= 0:
        raise ConfigError(f"params_target must be positive, got {params_target}")
    vocab = vocab or _vocab_for(params_target)
    best: LlamaShape | None = None
    for hidden in range(multiple, 16384 + 1, multiple):
        step = 256 if hidden >= 512 or multiple >= 256 else 64
        ffn = -(-hidden * 8 // 3 // step) * step
        shape = LlamaShape(hidden, max(2, min(48, round(hidden / 64))), hidden // HEAD_DIM, ffn,
                           vocab)
        if best is None or (abs(math.log(shape.params() / params_target))
                            < abs(math.log(best.params() / params_target))):
            best = shape
        if shape.params() > 2 * params_target:
            break
    assert best is not None
    return best


def build_vocab(vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types: specials, 256 byte tokens, characters, word-prefix chains
    (llama's SPM tokenizer merges only pairs whose concatenation is a token), then unused pads."""
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [_UNKNOWN, _CONTROL, _CONTROL] + [_BYTE] * 256
    base = len(tokens)
    pieces = list(dict.fromkeys([SPACE, *"abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-"]))
    seen = set(pieces)
    for word in WORDS:
        full = SPACE + word
        for k in range(2, len(full) + 1):
            if full[:k] not in seen:
                seen.add(full[:k])
                pieces.append(full[:k])
    if vocab_size < base + 64:
        raise ConfigError(f"vocab_size must be at least {base + 64}, got {vocab_size}")
    pieces = pieces[: vocab_size - base]
    tokens += pieces
    types += [_NORMAL] * len(pieces)
    pad = vocab_size - len(tokens)
    tokens += [f"<unused{i}>" for i in range(pad)]
    types += [_UNUSED] * pad
    scores = [0.0] * base + [-float(i) for i in range(len(tokens) - base)]
    return tokens, scores, types


def _add_metadata(w, shape: LlamaShape, ftype: str) -> None:
    tokens, scores, types = build_vocab(shape.vocab)
    w.add_name(f"memstack-synth-llama-{shape.params() / 1e6:.0f}m-{ftype}")
    w.add_context_length(shape.context)
    w.add_embedding_length(shape.hidden)
    w.add_block_count(shape.layers)
    w.add_feed_forward_length(shape.ffn)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(FTYPES[ftype])
    w.add_quantization_version(2)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)


def _encode(values: np.ndarray, ftype: str) -> np.ndarray:
    """The tensor's stored bytes: 1-D tensors stay F32 (as llama.cpp keeps norms), matrices
    take the model's format through memstack's byte-exact ggml quantizers."""
    if values.ndim == 1 or ftype == "f32":
        return values.astype(np.float32)
    if ftype == "f16":
        return values.astype(np.float16)
    from memstack.core.quant.schemes import GgmlScheme

    return np.ascontiguousarray(GgmlScheme(ftype).quantize(values).parts["blocks"])


def _nbytes(shape: tuple[int, ...], ftype: str) -> tuple[int, int]:
    """(ggml type, bytes) of a tensor, known before it is generated (the header comes first)."""
    n = math.prod(shape)
    if len(shape) == 1 or ftype == "f32":
        return 0, 4 * n
    if ftype == "f16":
        return 1, 2 * n
    from memstack.core.quant.schemes import GgmlScheme

    s = GgmlScheme(ftype)
    return s.ggml_type, n // s.block * s.width


def _values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) == 1:  # RMSNorm gains near 1
        return (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= np.float32(WEIGHT_STD)
    return x


def write_llama_gguf(path: str | os.PathLike[str], *, params_target: float, ftype: str,
                     seed: int = 0, vocab: int | None = None) -> Path:
    """Write a random llama GGUF of about `params_target` parameters in `ftype` (f32, f16,
    q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k: the types ctransformers 0.2.27 runs and
    memstack quantizes); written to a temporary name and renamed, so an interrupted write
    leaves no model."""
    if ftype not in FTYPES:
        raise ConfigError(f"ftype must be one of {', '.join(FTYPES)}, got {ftype!r}")
    try:
        from gguf import GGMLQuantizationType, GGUFWriter
    except ImportError:
        raise ConfigError("writing GGUF needs the gguf package: pip install "
                          "'memstack[gguf]'") from None
    path = Path(path)
    shape = shape_for(params_target, vocab, 256 if ftype in K_QUANTS else HEAD_DIM)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    writer = GGUFWriter(str(tmp), "llama")
    try:
        _add_metadata(writer, shape, ftype)
        plan = shape.tensors()
        for name, shp in plan:
            gtype, nbytes = _nbytes(shp, ftype)
            writer.add_tensor_info(name, list(shp), np.dtype(np.float32), nbytes,
                                   raw_dtype=GGMLQuantizationType(gtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, (_, shp) in enumerate(plan):
            writer.write_tensor_data(_encode(_values(np.random.default_rng([seed, i]), shp),
                                             ftype))
        writer.close()
        os.replace(tmp, path)
    finally:
        for fout in writer.fout or []:
            fout.close()
        if tmp.exists():
            tmp.unlink()
    return path
