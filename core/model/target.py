"""Hardware targets: compute peaks, memory tiers, links and the efficiency terms runtimes pay.

A target is data (presets in ``core/data/targets.toml``, plugins, or a `target` record that
`memstack bench hw` measured). Every number is in SI base units: bytes, bytes/s, FLOP/s,
seconds. The first tier is the one the compute units read weights from (HBM on a GPU, DRAM on a
CPU, unified memory on Apple silicon); the others are where weights, KV or experts can be
offloaded to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Tier:
    name: str  # hbm | dram | unified | flash | ...
    capacity: float  # bytes
    bandwidth: float  # peak bytes/s
    efficiency: float = 0.8  # achievable fraction of `bandwidth` for long streaming reads
    latency: float = 0.0  # seconds per access
    # (chunk bytes, bytes/s) points for random reads of that size (flash); empty = flat
    chunk_curve: tuple[tuple[float, float], ...] = ()

    def effective_bandwidth(self) -> float:
        return self.bandwidth * self.efficiency


@dataclass(frozen=True)
class Link:
    src: str  # tier names
    dst: str
    bandwidth: float  # bytes/s, achievable
    latency: float = 0.0
    name: str = ""  # pcie4x16 | nvlink | uma | nvme


@dataclass(frozen=True)
class FormatCost:
    """What one weight format costs on this target beyond its bytes.

    `gemv_rate`: weights per second the target can dequantize and multiply in decode's
    matrix-vector kernels with all cores/SMs (0 = never compute-bound: only memory counts);
    prefill's matrix-matrix kernels amortise unpacking over the micro-batch instead.
    `gemm_efficiency`: fraction of the matmul dtype's peak that prefill reaches with this
    format (dequant on the fly, or a runtime's less tuned kernels, lower it).
    """

    gemv_rate: float = 0.0
    gemm_efficiency: float = 1.0


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # gpu | cpu | soc
    description: str
    compute: dict[str, float]  # peak dense FLOP/s (or OP/s) per dtype: fp32 fp16 bf16 fp8 int8
    tiers: tuple[Tier, ...]
    links: tuple[Link, ...] = ()
    compute_efficiency: float = 0.7  # achievable fraction of peak for large GEMMs (prefill)
    launch_overhead: float = 0.0  # seconds per kernel launch (decode pays it per kernel)
    kernels_per_layer: int = 0  # kernels a runtime launches per transformer layer per step
    token_overhead: float = 0.0  # fixed seconds per generated token (sampling, sync, host)
    formats: dict[str, FormatCost] = field(default_factory=dict)  # by scheme; "*" = default
    threads: int = 0  # CPU threads the runtime uses (cpu targets)
    sources: tuple[str, ...] = ()

    @property
    def main(self) -> Tier:
        return self.tiers[0]

    def tier(self, name: str) -> Tier | None:
        return next((t for t in self.tiers if t.name == name), None)

    def link(self, src: str, dst: str) -> Link | None:
        return next((ln for ln in self.links if {ln.src, ln.dst} == {src, dst}), None)

    def format_cost(self, scheme: str) -> FormatCost:
        return self.formats.get(scheme) or self.formats.get("*") or FormatCost()

    def peak(self, dtype: str) -> float:
        """Peak FLOP/s for a matmul dtype, falling back to the nearest wider one."""
        for d in {"fp8": ("fp8", "int8", "fp16", "bf16"), "int8": ("int8", "fp8", "fp16"),
                  "bf16": ("bf16", "fp16"), "fp16": ("fp16", "bf16"),
                  "fp32": ("fp32",)}.get(dtype, (dtype, "fp16", "bf16")):
            if self.compute.get(d):
                return self.compute[d]
        return self.compute.get("fp32") or max(self.compute.values())

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = asdict(self)
        rec["device"] = rec.pop("kind")  # the record's own `kind` says it is a target
        return {"v": 1, "kind": "target", **rec}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Target:
        tiers = tuple(
            Tier(**{**t, "chunk_curve": tuple(tuple(p) for p in t.get("chunk_curve", ()))})
            for t in rec["tiers"])
        links = tuple(Link(**ln) for ln in rec.get("links", ()))
        formats = {k: FormatCost(**v) for k, v in (rec.get("formats") or {}).items()}
        keep = {k: v for k, v in rec.items()
                if k in cls.__dataclass_fields__ and k not in ("tiers", "links", "formats")}
        if "device" in rec:
            keep["kind"] = rec["device"]
        if "sources" in keep:
            keep["sources"] = tuple(keep["sources"])
        return cls(tiers=tiers, links=links, formats=formats, **keep)
