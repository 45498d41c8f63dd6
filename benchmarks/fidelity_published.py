"""Score `simulate` against published prefill/decode measurements (benchmarks/data/published.toml).

Each row is simulated with its preset model and target, no per-row tuning; the error is
(predicted - measured) / measured of tokens/s. Rows marked holdout were never used to set a
constant, so their MAPE is the out-of-sample estimate.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import tomllib

from memstack.core.model.load_spec import load_model
from memstack.core.model.simulate import Workload, simulate
from memstack.core.model.targets import load_target

DATA = Path(__file__).parent / "data" / "published.toml"


def predict(row: dict) -> float:
    spec = load_model(row["model"])
    target = load_target(row["target"])
    batch = int(row.get("batch", 1))
    prompt = int(row.get("prompt_tokens", 0))
    gen = int(row.get("gen_tokens", 0))
    phase = row["phase"]
    work = Workload(batch, max(prompt, 1) if phase == "prefill" else prompt, max(gen, 1),
                    row["weights"], row.get("kv", "f16"), row.get("act", "auto"))
    t = simulate(spec, target, work).totals
    if phase == "prefill":
        return float(t["prefill_tok_s"])
    if phase == "decode":
        return float(t["seq_tok_s"]) * batch if batch > 1 else float(t["seq_tok_s"])
    return batch * gen / float(t["e2e_s"])  # e2e: output tokens over the whole run


def evaluate() -> list[dict]:
    rows = tomllib.loads(DATA.read_text())["measurement"]
    out = []
    for row in rows:
        pred = predict(row)
        out.append({**row, "predicted": pred,
                    "error": (pred - row["tokens_per_s"]) / row["tokens_per_s"]})
    return out


def summary(results: list[dict]) -> dict:
    def mape(rs: list[dict]) -> float:
        return 100 * statistics.fmean(abs(r["error"]) for r in rs) if rs else float("nan")

    groups = {"all": results, "holdout": [r for r in results if r.get("holdout")],
              "fitted": [r for r in results if not r.get("holdout")]}
    for phase in ("prefill", "decode", "e2e"):
        groups[phase] = [r for r in results if r["phase"] == phase]
    return {k: (len(v), mape(v), 100 * statistics.median(abs(r["error"]) for r in v) if v
                else float("nan")) for k, v in groups.items()}


def main() -> None:
    res = evaluate()
    for r in res:
        print(f"#{r['id']:>3} {'H' if r.get('holdout') else ' '} {r['model']:14} "
              f"{r['target']:11} {r['weights']:7} {r['phase']:7} b{r.get('batch', 1):<3} "
              f"p{r.get('prompt_tokens', 0):<5} meas {r['tokens_per_s']:>9.1f} "
              f"pred {r['predicted']:>9.1f} err {100 * r['error']:+6.1f}%")
    for k, (n, m, med) in summary(res).items():
        print(f"{k:8} n={n:3} MAPE {m:5.1f}%  median {med:5.1f}%")


if __name__ == "__main__":
    main()
