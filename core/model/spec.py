"""A transformer's shape, and the parameter and KV counts every cost in `simulate` follows from.

One dataclass covers dense decoders (llama, mistral, qwen2, gpt2/opt) and MoE decoders
(mixtral, qwen-moe, deepseek with MLA attention): the fields that a family lacks stay 0.
Counts are per layer where layers differ only by being dense or MoE.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str  # llama | mistral | qwen2 | mixtral | qwen2_moe | deepseek | gpt2 | opt | ...
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int  # intermediate size of a dense FFN layer
    vocab: int
    gated_ffn: bool = True  # SwiGLU/GeGLU: gate, up and down (3 matrices) instead of 2
    tied_embeddings: bool = False
    learned_positions: int = 0  # rows of a learned position table (gpt2/opt), 0 for RoPE
    bias: bool = False  # linear layers carry biases (gpt2/opt; qwen2 has q/k/v biases)
    qkv_bias: bool = False
    norm: str = "rms"  # rms (1 vector) | layer (weight and bias)
    max_positions: int = 4096
    # mixture of experts: `experts` routed experts of `expert_ffn`, `top_k` per token,
    # `shared_experts` always-on experts of `shared_ffn`; the first `dense_layers` layers and
    # layers off the `moe_every` step are dense FFN layers of `ffn`.
    experts: int = 0
    top_k: int = 0
    expert_ffn: int = 0
    shared_experts: int = 0
    shared_ffn: int = 0
    dense_layers: int = 0
    moe_every: int = 1
    # multi-head latent attention (deepseek v2/v3): a compressed KV of kv_lora_rank + rope_dim
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    rope_dim: int = 0
    v_head_dim: int = 0
    dtype: str = "bf16"  # the precision the weights were published in
    source: str = ""

    # ---- structure -----------------------------------------------------------------------
    @property
    def moe(self) -> bool:
        return self.experts > 0

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0

    def is_moe_layer(self, i: int) -> bool:
        return self.moe and i >= self.dense_layers and (i + 1) % self.moe_every == 0

    @property
    def moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.layers))

    # ---- per-layer counts ------------------------------------------------------------------
    def attn_params(self) -> int:
        """q, k, v and output projections of one layer (MLA: its down/up projections)."""
        h, hd = self.hidden, self.head_dim
        if self.mla:
            qk = hd + self.rope_dim  # hd is the no-rope part of a query/key head here
            v = self.v_head_dim or hd
            q = (h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * self.heads * qk
                 if self.q_lora_rank else h * self.heads * qk)
            kv = (h * (self.kv_lora_rank + self.rope_dim) + self.kv_lora_rank
                  + self.kv_lora_rank * self.heads * (hd + v))
            return q + kv + self.heads * v * h
        q = h * self.heads * hd
        kv = 2 * h * self.kv_heads * hd
        o = self.heads * hd * h
        b = 0
        if self.bias or self.qkv_bias:
            b += (self.heads + 2 * self.kv_heads) * hd
        if self.bias:
            b += h
        return q + kv + o + b

    def kv_elements_per_token(self) -> int:
        """Elements one token adds to one layer's KV cache (MLA caches the latent + rope key)."""
        if self.mla:
            return self.kv_lora_rank + self.rope_dim
        return 2 * self.kv_heads * self.head_dim

    def attn_flops_per_ctx(self) -> int:
        """FLOPs of scores and weighted sum for one query token against one cached token."""
        if self.mla:  # absorbed form: scores and values both run in the latent space
            return 2 * self.heads * (2 * self.kv_lora_rank + self.rope_dim)
        return 4 * self.heads * self.head_dim

    def _ffn_params(self, inter: int) -> int:
        mats = 3 if self.gated_ffn else 2
        return mats * self.hidden * inter + ((inter + self.hidden) if self.bias else 0)

    def dense_ffn_params(self) -> int:
        return self._ffn_params(self.ffn)

    def expert_params(self) -> int:
        return self._ffn_params(self.expert_ffn) if self.moe else 0

    def shared_params(self) -> int:
        return self.shared_experts * self._ffn_params(self.shared_ffn) if self.moe else 0

    def router_params(self) -> int:
        return self.hidden * self.experts if self.moe else 0

    def norm_params(self) -> int:
        """Both norms of one layer."""
        return 2 * self.hidden * (2 if self.norm == "layer" else 1)

    # ---- whole model -----------------------------------------------------------------------
    def embedding_params(self) -> int:
        return self.vocab * self.hidden + self.learned_positions * self.hidden

    def lm_head_params(self) -> int:
        """The output projection; tied embeddings reuse the table but it is still read."""
        return self.vocab * self.hidden

    def layer_params(self, i: int) -> int:
        ffn = (self.router_params() + self.experts * self.expert_params() + self.shared_params()
               if self.is_moe_layer(i) else self.dense_ffn_params())
        return self.attn_params() + ffn + self.norm_params()

    def total_params(self) -> int:
        head = 0 if self.tied_embeddings else self.lm_head_params()
        final_norm = self.hidden * (2 if self.norm == "layer" else 1)
        return (self.embedding_params() + head + final_norm
                + sum(self.layer_params(i) for i in range(self.layers)))

    def active_params(self) -> int:
        """Parameters one token touches (routed experts: top_k of them)."""
        if not self.moe:
            return self.total_params()
        idle = (self.experts - self.top_k) * self.expert_params() * self.moe_layers
        return self.total_params() - idle

    # ---- records -----------------------------------------------------------------------------
    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"v": 1, "kind": "model"}
        rec.update(asdict(self))
        rec["params"] = self.total_params()
        rec["active_params"] = self.active_params()
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> ModelSpec:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in rec.items() if k in names})
