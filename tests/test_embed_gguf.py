"""The gguf embedder against a tiny random llama written on the fly (no downloads)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ctransformers")
gguf = pytest.importorskip("gguf")

from gguf_model import write_tiny_llama  # noqa: E402  (tests/ is on sys.path under pytest)

from memstack.core import embed_gguf  # noqa: E402
from memstack.core.embed_gguf import GgufEmbedder, read_gguf_info  # noqa: E402
from memstack.core.errors import ConfigError, MemstackError  # noqa: E402

TEXTS = ["The agent likes coffee in the morning.", "The user prefers tea.",
         "Python vector store for agent memory", "hello world"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def emb(model_path: Path) -> GgufEmbedder:
    return GgufEmbedder(str(model_path))


def test_header_gives_dim_and_context(model_path: Path, tmp_path: Path) -> None:
    info = read_gguf_info(str(model_path))
    assert info == {"version": 3, "arch": "llama", "dim": 64, "context_length": 256}
    other = write_tiny_llama(tmp_path / "w32.gguf", n_embd=32, n_head=2, n_ctx=128)
    e = GgufEmbedder(str(other))
    assert (e.dim, e.context_length) == (32, 128)
    assert e.embed(["hello"]).shape == (1, 32)


def test_shape_dtype_and_unit_norm(emb: GgufEmbedder) -> None:
    assert (emb.name, emb.uses_idf, emb.dim) == ("gguf", False, 64)
    v = emb.embed(TEXTS)
    assert v.shape == (len(TEXTS), 64) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert emb.embed([]).shape == (0, 64)


def test_blank_text_gives_zero_row(emb: GgufEmbedder) -> None:
    v = emb.embed(["", "hello world", "  \n"])
    assert not v[0].any() and not v[2].any()
    assert np.isclose(np.linalg.norm(v[1]), 1.0)
    assert not emb.embed_query("").any()


def test_deterministic_and_independent_of_batch(emb: GgufEmbedder, model_path: Path) -> None:
    a = emb.embed(TEXTS)
    # reverse order: each text starts from a fresh KV cache, so neighbours do not matter
    b = emb.embed(TEXTS[::-1])[::-1]
    assert np.array_equal(a, b)
    assert np.array_equal(a, emb.embed(TEXTS))
    fresh = GgufEmbedder(str(model_path))
    assert np.array_equal(a, fresh.embed(TEXTS))


def test_different_texts_differ(emb: GgufEmbedder) -> None:
    v = emb.embed(TEXTS + ["The user prefers coffee."])
    sims = v @ v.T
    off = sims[~np.eye(len(v), dtype=bool)]
    assert off.max() < 0.99
    tokens = [tuple(emb.tokenize(t)) for t in TEXTS]
    assert len(set(tokens)) == len(TEXTS)
    assert len(emb.tokenize("hello world")) < len("hello world")  # word pieces, not bytes


def test_embed_query_matches_embed(emb: GgufEmbedder) -> None:
    q = emb.embed_query("The user prefers tea.", idf=lambda stems: np.ones(len(stems)))
    assert q.shape == (64,) and q.dtype == np.float32
    assert np.array_equal(q, emb.embed(["The user prefers tea."])[0])


def test_long_and_byte_fallback_text(emb: GgufEmbedder) -> None:
    long = "the agent remembers " * 2000
    assert len(emb.tokenize(long)) == emb.context_length == 256
    # 4-byte emoji fall back to byte tokens: more tokens than characters, which overflows
    # the buffer of ctransformers' own tokenize(); ours is sized for it
    emoji = "\U0001F600" * 40
    assert len(emb.tokenize(emoji)) > len(emoji) + 1
    v = emb.embed([long, emoji, "x" * 100_000])
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_options_and_spec(model_path: Path, tmp_path: Path) -> None:
    e = GgufEmbedder(f"{model_path},model_type=llama,ctx=32,threads=1")
    assert e.context_length == 32 and e.threads == 1
    assert e.spec() == f"gguf:{model_path.resolve()},ctx=32"
    assert len(e.tokenize("the agent remembers " * 50)) == 32
    assert GgufEmbedder(e.spec().removeprefix("gguf:")).identity() == e.identity()
    plain = GgufEmbedder(str(model_path))
    assert plain.spec() == "gguf:" + str(model_path.resolve())
    assert plain.threads == min(2, os.cpu_count() or 1)
    # a comma that does not start an option stays part of the path
    odd = tmp_path / "a,b.gguf"
    shutil.copy(model_path, odd)
    assert GgufEmbedder(str(odd)).path == str(odd.resolve())
    with pytest.raises(ConfigError, match="ctx must be an integer"):
        GgufEmbedder(f"{model_path},ctx=lots")


def test_identity_stable_and_tracks_file(model_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    shutil.copy(model_path, path)
    ident = GgufEmbedder(str(path)).identity()
    data = path.read_bytes()
    assert ident == {"name": "gguf", "version": 1, "dim": 64, "spec": f"gguf:{path.resolve()}",
                     "file_sha256": hashlib.sha256(data).hexdigest()[:16], "size": len(data)}
    assert GgufEmbedder(str(path)).identity() == ident
    # same bytes elsewhere: same hash, other spec
    other = GgufEmbedder(str(model_path)).identity()
    assert other["file_sha256"] == ident["file_sha256"] and other["spec"] != ident["spec"]
    # other weights, same size, swapped in by rename
    write_tiny_llama(tmp_path / "new.gguf", seed=1)
    os.replace(tmp_path / "new.gguf", path)
    swapped = GgufEmbedder(str(path)).identity()
    assert swapped["size"] == ident["size"] and swapped["file_sha256"] != ident["file_sha256"]
    # rewritten in place with another shape
    write_tiny_llama(path, n_layer=1)
    rewritten = GgufEmbedder(str(path)).identity()
    assert rewritten["file_sha256"] not in (ident["file_sha256"], swapped["file_sha256"])
    assert rewritten["size"] < ident["size"]


def test_hash_reads_in_chunks(model_path: Path) -> None:
    embed_gguf._hash_cache.clear()
    small = embed_gguf.file_sha256(str(model_path), chunk=4096)
    embed_gguf._hash_cache.clear()
    assert small == embed_gguf.file_sha256(str(model_path))
    assert small == hashlib.sha256(model_path.read_bytes()).hexdigest()[:16]


def test_missing_path_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ConfigError, match="nope.gguf does not exist") as err:
        GgufEmbedder(str(missing))
    assert err.value.exit_code == 2
    with pytest.raises(ConfigError, match="is not a file"):
        GgufEmbedder(str(tmp_path))
    with pytest.raises(ConfigError, match="give a model file"):
        GgufEmbedder(None)


def test_not_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"ggml" + bytes(100))
    with pytest.raises(ConfigError, match=r"model\.bin: not a GGUF file"):
        GgufEmbedder(str(bad))
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match="not a GGUF file"):
        GgufEmbedder(str(empty))


def test_truncated_gguf_is_refused_not_crashed(model_path: Path, tmp_path: Path) -> None:
    # ctransformers 0.2.27 segfaults on both of these; the header check must catch them first
    data = model_path.read_bytes()
    half = tmp_path / "half.gguf"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"half\.gguf: file is truncated"):
        GgufEmbedder(str(half))
    head = tmp_path / "head.gguf"
    head.write_bytes(data[:3000])
    with pytest.raises(ConfigError, match=r"head\.gguf: byte \d+: .*past the end"):
        GgufEmbedder(str(head))


def test_unsupported_tensor_type(tmp_path: Path) -> None:
    path = tmp_path / "bf16.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.zeros((4, 16), dtype=np.uint8),
                 raw_dtype=gguf.GGMLQuantizationType.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ConfigError, match="ggml type 30, which ctransformers 0.2.27 cannot"):
        GgufEmbedder(str(path))


def test_unknown_architecture_fails_cleanly(model_path: Path, tmp_path: Path) -> None:
    data = model_path.read_bytes().replace(b"llama.", b"bloom.")
    key = data.index(b"general.architecture") + len("general.architecture") + 4 + 8
    assert data[key : key + 5] == b"llama"
    path = tmp_path / "bloom.gguf"
    path.write_bytes(data[:key] + b"bloom" + data[key + 5 :])
    e = GgufEmbedder(str(path))  # the header is fine; the C library refuses the arch
    with pytest.raises(MemstackError, match=r"cannot load .*bloom\.gguf"):
        e.embed(["hello"])


def test_without_ctransformers(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ctransformers" else real(name, *a))
    with pytest.raises(MemstackError, match=r"pip install 'memstack\[llm\]'"):
        GgufEmbedder(str(model_path))


def test_loads_through_plugin_registry(model_path: Path) -> None:
    from memstack.plugins.registry import load_embedder

    e = load_embedder(f"gguf:{model_path}")
    assert isinstance(e, GgufEmbedder) and e.dim == 64
