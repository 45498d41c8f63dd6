"""Write a tiny random llama GGUF file, so GGUF code paths are tested without downloading a model.

The vocabulary is sentencepiece-like: <unk>, <s>, </s>, the 256 byte-fallback tokens, single
characters, then every prefix of "▁word" for a few hundred common English words. llama.cpp's SPM
tokenizer only merges a bigram whose concatenation is in the vocabulary, so the prefix chains let
whole words come out as one token and different texts give different token sequences.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SPACE = "\u2581"  # sentencepiece's "▁" word-start marker

# token types as in gguf.TokenType, written as ints so this module imports without gguf
_NORMAL, _UNKNOWN, _CONTROL, _UNUSED, _BYTE = 1, 2, 3, 5, 6

WORDS = """
the of and to a in is it you that he was for on are with as i his they be at one have this from
or had by hot word but what some we can out other were all there when up use your how said an
each she which do their time if will way about many then them write would like so these her long
make thing see him two has look more day could go come did number sound no most people my over
know water than call first who may down side been now find any new work part take get place made
live where after back little only round man year came show every good me give our under name very
through just form sentence great think say help low line differ turn cause much mean before move
right boy old too same tell does set three want air well also play small end put home read hand
port large spell add even land here must big high such follow act why ask men change went light
kind off need house picture try us again animal point mother world near build self earth father
head stand own page should country found answer school grow study still learn plant cover food sun
four between state keep eye never last let thought city tree cross farm hard start might story saw
far sea draw left late run while press close night real life few north open seem together next
white children begin got walk example ease paper group always music those both mark often letter
until mile river car feet care second book carry took science eat room friend began idea fish
mountain stop once base hear horse cut sure watch color face wood main enough plain girl usual
young ready above ever red list though feel talk bird soon body dog family direct pose leave song
measure door product black short numeral class wind question happen complete ship area half rock
order fire south problem piece told knew pass since top whole king space heard best hour better
true during hundred five remember step early hold west ground interest reach fast verb sing listen
six table travel less morning ten simple several vowel toward war lay against pattern slow center
love person money serve appear road map rain rule govern pull cold notice voice unit power town
fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest correct
able pound done beauty drive stood contain front teach week final gave green oh quick develop
ocean warm free minute strong special mind behind clear tail produce fact street inch multiply
nothing course stay wheel full force blue object decide surface deep moon island foot system busy
test record boat common gold possible plane stead dry wonder laugh thousand ago ran check game
shape equate miss brought heat snow tire bring yes distant fill east paint language among memory
agent user model store recall query vector python meeting coffee likes prefers lives
""".split()


def build_vocab(vocab_size: int | None = None) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types; `vocab_size` truncates word pieces or pads with unused."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [_UNKNOWN, _CONTROL, _CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [_BYTE] * 256
    base = len(tokens)
    chars = [SPACE, *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
             *".,;:!?'\"()-_/@#$%&*+=<>[]{}"]
    pieces = list(dict.fromkeys(chars))
    seen = set(pieces)
    for word in WORDS:  # prefixes before the longer piece, so truncation keeps chains whole
        full = SPACE + word
        for k in range(2, len(full) + 1):
            if full[:k] not in seen:
                seen.add(full[:k])
                pieces.append(full[:k])
    if vocab_size is not None:
        if vocab_size < base + len(chars):
            raise ValueError(f"vocab_size must be at least {base + len(chars)}")
        pieces = pieces[: vocab_size - base]
    tokens += pieces
    types += [_NORMAL] * len(pieces)
    if vocab_size is not None:
        pad = vocab_size - len(tokens)
        tokens += [f"<unused{i}>" for i in range(pad)]
        types += [_UNUSED] * pad
    # sentencepiece scores are log-probabilities: earlier (shorter, commoner) pieces score higher
    scores = [0.0] * base + [-float(i) for i in range(len(tokens) - base)]
    return tokens, scores, types


def write_tiny_llama(path: str | os.PathLike[str], *, vocab_size: int | None = None,
                     n_embd: int = 64, n_layer: int = 2, n_head: int = 4, n_ff: int = 128,
                     n_ctx: int = 256, seed: int = 0) -> Path:
    """Write a random-weight llama GGUF (v3, all f32) that ctransformers 0.2.27 loads and embeds."""
    import gguf

    if n_embd % n_head:
        raise ValueError("n_embd must be a multiple of n_head")
    path = Path(path)
    tokens, scores, types = build_vocab(vocab_size)
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("memstack-tiny-llama")
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)  # all f32
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    # numpy shape is (out, in); GGUF stores the reversed ggml order, as llama.cpp expects
    w.add_tensor("token_embd.weight", rng.standard_normal((n_vocab, n_embd)).astype(np.float32))
    for i in range(n_layer):
        blk = f"blk.{i}."
        w.add_tensor(blk + "attn_norm.weight", norm())
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(blk + name + ".weight", mat(n_embd, n_embd))
        w.add_tensor(blk + "ffn_norm.weight", norm())
        w.add_tensor(blk + "ffn_gate.weight", mat(n_ff, n_embd))
        w.add_tensor(blk + "ffn_down.weight", mat(n_embd, n_ff))
        w.add_tensor(blk + "ffn_up.weight", mat(n_ff, n_embd))
    w.add_tensor("output_norm.weight", norm())
    w.add_tensor("output.weight", mat(n_vocab, n_embd))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
