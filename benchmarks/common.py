"""Shared helpers for the benchmark scripts: machine facts, timing, peak RSS, tables, caching.

Every benchmark script returns a *section*: a plain dict that `run_all.py` turns into one part
of BENCHMARKS.md and that each script prints as a markdown table when run alone:

    {"key": "ingest", "title": "...", "command": "...", "notes": [...],
     "rows": [{"system": ..., "metric": ..., "value": ..., "unit": ..., "higher": bool}],
     "targets": [{"name": ..., "ok": bool | None, "detail": ...}], "wall_s": ...}

`ratio` in the tables is always memstack's value divided by the row's value for the same metric
(so for throughput > 1 means memstack is faster, for latency/RSS < 1 means memstack is faster).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))
LOCOMO = os.path.join(SHARED_DATA, "locomo-sample.json")
CACHE = os.environ.get("MEMSTACK_BENCH_CACHE", os.path.join(tempfile.gettempdir(),
                                                            "memstack-bench-cache"))
PY = sys.executable
VENV_BIN = os.path.dirname(PY)
PACKAGES = ("memstack", "numpy", "lmdb", "msgpack", "scipy", "tiktoken", "bm25s", "PyStemmer",
            "chromadb", "psutil")

if HERE not in sys.path:
    sys.path.insert(0, HERE)


# -- machine facts -------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fp:
            for line in fp:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version_of(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_facts() -> dict:
    import psutil

    vm = psutil.virtual_memory()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(vm.total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": {p: version_of(p) for p in PACKAGES},
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def memory_bandwidth_gbs(mb: int = 512, repeats: int = 5) -> float:
    """Best-of-N numpy copy of an `mb` MB array, counting bytes read + written, GB/s."""
    a = np.ones(mb * 2**20 // 8, dtype=np.float64)
    b = np.empty_like(a)
    np.copyto(b, a)  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    gbs = 2 * a.nbytes / best / 1e9
    del a, b
    return round(gbs, 1)


# -- timing ----------------------------------------------------------------------------
def median(xs: Sequence[float]) -> float:
    return float(np.median(np.asarray(xs, dtype=np.float64))) if len(xs) else float("nan")


def pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else float("nan")


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class NoiseMeter:
    """How busy the machine was with *other* processes while a benchmark ran: system-wide busy
    CPU time minus this process's and its reaped children's CPU time, in cores on average."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.busy0 = self._busy()
        self.own0 = self._own()
        self.load0 = os.getloadavg()[0]

    @staticmethod
    def _busy() -> float:
        import psutil

        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    @staticmethod
    def _own() -> float:
        import resource

        a = resource.getrusage(resource.RUSAGE_SELF)
        b = resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    def summary(self) -> str:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        other = max(0.0, (self._busy() - self.busy0) - (self._own() - self.own0)) / dt
        return (f"machine noise during this section: other processes kept {other:.2f} of "
                f"{os.cpu_count()} cores busy on average; 1-min load average "
                f"{self.load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")


# -- peak RSS --------------------------------------------------------------------------
class TreeRssSampler:
    """Polls the summed RSS of a process and all its descendants in a background thread.

    The sum counts pages shared between forked workers once per process, like `ps` does.
    """

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


TIME_BIN = "/usr/bin/time"


class RunResult:
    def __init__(self, rc: int, wall_s: float, maxrss: int, tree_peak: int, stdout: str,
                 stderr: str):
        self.rc, self.wall_s, self.stdout, self.stderr = rc, wall_s, stdout, stderr
        self.maxrss = maxrss  # bytes: /usr/bin/time's %M (largest single process), 0 if unused
        self.tree_peak = tree_peak  # bytes: polled sum over the tree (0 if not polled)

    @property
    def peak_rss(self) -> int:
        return max(self.maxrss, self.tree_peak)


def run_measured(cmd: Sequence[str], *, timeout: float, poll: float | None = 0.05,
                 env: dict | None = None, cwd: str | None = None, check: bool = True,
                 time_rss: bool = False) -> RunResult:
    """Run `cmd` to exit; wall time from spawn to reaped exit, and its peak RSS.

    poll: sample the summed RSS of the process tree every `poll` seconds. time_rss: run the
    command under /usr/bin/time and take its %M. (The ru_maxrss that wait4 reports for our own
    child is useless: Python spawns with vfork, so the child's high-water mark includes this
    parent's peak RSS; /usr/bin/time forks a fresh small process.)
    The child runs in its own session so a timeout kills the whole tree. stdout/stderr go to
    temporary files (no pipe can fill up and stall the child).
    """
    cmd = list(cmd)
    full = ([TIME_BIN, "-f", "\nMEMSTACK_BENCH_MAXRSS_KB=%M", *cmd]
            if time_rss and os.path.exists(TIME_BIN) else cmd)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(full, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                             env=env, cwd=cwd, start_new_session=True)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        sampler = TreeRssSampler(p.pid, poll) if poll else None
        try:
            if sampler:
                sampler.__enter__()
            _, status = os.waitpid(p.pid, 0)
            wall = time.perf_counter() - t0
        finally:
            timer.cancel()
            if sampler:
                sampler.__exit__()
        p.returncode = os.waitstatus_to_exitcode(status)
        try:  # stray grandchildren, if any
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        out.seek(0)
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
        maxrss = 0
        if full is not cmd:
            head, _, tail = stderr.rpartition("MEMSTACK_BENCH_MAXRSS_KB=")
            if tail.strip().isdigit():
                maxrss = int(tail.strip()) * 1024
                stderr = head.rstrip("\n")
        res = RunResult(p.returncode, wall, maxrss, sampler.peak if sampler else 0,
                        out.read().decode("utf-8", "replace"), stderr)
    if timed_out.is_set():
        raise TimeoutError(f"timed out after {timeout:.0f} s: {shlex.join(cmd)}")
    if check and res.rc != 0:
        raise RuntimeError(f"exit {res.rc}: {shlex.join(cmd)}\n{res.stderr[-2000:]}")
    return res


def run_worker(script: str, args: Sequence[str], *, timeout: float,
               poll: float | None = 0.05) -> tuple[dict, RunResult]:
    """Run `python script args...` whose last stdout line is a JSON object; return it."""
    res = run_measured([PY, os.path.join(HERE, script), *args], timeout=timeout, poll=poll,
                       env=bench_env())
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"worker {script} {args} printed no result:\n{res.stderr[-2000:]}")
    return json.loads(lines[-1]), res


def bench_env() -> dict:
    """Environment for child processes: offline, no telemetry, no progress bars."""
    env = dict(os.environ)
    env.update({"ANONYMIZED_TELEMETRY": "False", "CHROMA_TELEMETRY": "False",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1",
                "PYTHONHASHSEED": "0"})
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    # bytecode caches as an installed package has them, kept out of the repository
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = cache_path("pycache")
    return env


def vm_hwm() -> int:
    """This process's peak RSS in bytes (VmHWM: per address space, exact, no polling)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fp:
            for line in fp:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # not Linux: ru_maxrss (may include the parent's peak, see run_measured)

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mib(nbytes: float) -> float:
    return round(nbytes / 2**20, 1)


# -- temp dirs and caches ----------------------------------------------------------------
@contextmanager
def temp_dir(prefix: str = "memstack-bench-") -> Iterator[str]:
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def cache_path(*parts: str) -> str:
    os.makedirs(CACHE, exist_ok=True)
    return os.path.join(CACHE, *parts)


def synth_jsonl(n: int, seed: int = 0) -> str:
    """A cached JSONL file of n synthetic turns (benchmarks/synth.py), built once."""
    from synth import write_jsonl

    path = cache_path(f"turns-{n}-s{seed}.jsonl")
    if not os.path.exists(path):
        tmp = path + f".tmp{os.getpid()}"
        write_jsonl(tmp, n, seed)
        os.replace(tmp, path)
    return path


def read_texts(path: str, limit: int | None = None) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as fp:
        for line in fp:
            out.append(json.loads(line))
            if limit is not None and len(out) >= limit:
                break
    return out


def cached_build(name: str, build: Callable[[str], None]) -> tuple[str, float | None]:
    """A directory under the cache built once by build(tmpdir); returns (path, seconds or None
    when it came from the cache). A marker file says the build finished."""
    path = cache_path(name)
    if os.path.exists(os.path.join(path, ".complete")):
        return path, None
    shutil.rmtree(path, ignore_errors=True)
    tmp = path + f".tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        build(tmp)
        dt = time.perf_counter() - t0
        with open(os.path.join(tmp, ".complete"), "w") as fp:
            fp.write(f"{dt:.3f}\n")
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path, dt


def memstack_ingest_cmd(jsonl: str, store: str) -> list[str]:
    return [os.path.join(VENV_BIN, "memstack"), "ingest", jsonl, "--store", store, "-q"]


def memstack_fingerprint() -> str:
    """A short hash of memstack's own source: a cached store is rebuilt when the code that
    writes stores changes (others work on memstack while benchmarks run)."""
    import hashlib

    h = hashlib.sha1()
    for sub in ("core", "formats", "plugins", "cli"):
        folder = os.path.join(REPO, sub)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if name.endswith(".py"):
                h.update(name.encode())
                with open(os.path.join(folder, name), "rb") as fp:
                    h.update(fp.read())
    return h.hexdigest()[:10]


def _store_opens(path: str) -> bool:
    try:
        from memstack.core.store import LmdbStore

        with LmdbStore(path) as st:
            return int(st.meta["stats"]["n"]) > 0
    except Exception:  # noqa: BLE001 - any failure means: rebuild
        return False


def memstack_store(n: int, seed: int = 0, timeout: float = 1800) -> tuple[str, float | None]:
    """A cached memstack store holding the n synthetic turns, built with `memstack ingest`.
    Keyed by memstack's source fingerprint; stale builds of the same size are removed."""
    jsonl = synth_jsonl(n, seed)
    name = f"memstack-{n}-s{seed}-{memstack_fingerprint()}"
    for old in os.listdir(cache_path()):
        if old.startswith(f"memstack-{n}-s{seed}") and old != name:
            shutil.rmtree(cache_path(old), ignore_errors=True)
    path = cache_path(name)
    if os.path.exists(os.path.join(path, ".complete")) and not _store_opens(path):
        shutil.rmtree(path, ignore_errors=True)

    def build(tmp: str) -> None:
        run_measured(memstack_ingest_cmd(jsonl, tmp), timeout=timeout, poll=None,
                     env=bench_env())

    return cached_build(name, build)


# -- chromadb ----------------------------------------------------------------------------
CHROMA_COLLECTION = "memstack_bench"


def chroma_client(path: str):
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False,
                                                                  allow_reset=False))


# -- sections and tables -------------------------------------------------------------------
def fmt_value(v: float | None, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    a = abs(v)
    if unit in ("", "ratio") and a <= 1.0:
        s = f"{v:.3f}"
    elif a >= 1000:
        s = f"{v:,.0f}"
    elif a >= 100:
        s = f"{v:.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}" if a >= 1 else f"{v:.3f}"
    return f"{s} {unit}".strip() if unit not in ("", "ratio") else s


def add_ratios(rows: list[dict]) -> list[dict]:
    """ratio = memstack value / row value, for rows whose metric memstack also reports."""
    base = {}
    for r in rows:
        key = (r["metric"], r.get("group", ""))
        if r["system"].startswith("memstack") and key not in base:
            base[key] = r["value"]
    for r in rows:
        m = base.get((r["metric"], r.get("group", "")))
        v = r["value"]
        r["ratio"] = (m / v) if (m is not None and v not in (None, 0)
                                 and np.isfinite(v) and np.isfinite(m)) else None
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| system | metric | value | memstack ÷ this |", "|---|---|---|---|"]
    for r in rows:
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['system']} | {r['metric']} | {fmt_value(r['value'], r.get('unit', ''))}"
                     f" | {ratio} |")
    return "\n".join(lines)


def targets_line(targets: list[dict]) -> str:
    parts = []
    for t in targets:
        mark = "PASS" if t["ok"] else ("n/a" if t["ok"] is None else "FAIL")
        parts.append(f"{t['name']}: **{mark}** ({t['detail']})")
    return "Targets: " + "; ".join(parts) if parts else "Targets: none"


def render_section(sec: dict, level: int = 2) -> str:
    out = [f"{'#' * level} {sec['title']}", ""]
    if sec.get("command"):
        out += [f"Command: `{sec['command']}`", ""]
    out += [markdown_table(sec["rows"]), ""]
    out += [targets_line(sec.get("targets", [])), ""]
    for note in sec.get("notes", []):
        out.append(f"- {note}")
    if sec.get("notes"):
        out.append("")
    if sec.get("wall_s") is not None:
        out += [f"Section wall time: {sec['wall_s']:.0f} s", ""]
    return "\n".join(out)


def base_args(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats (< 5 min)")
    ap.add_argument("--json", metavar="PATH", help="also write the section as JSON to PATH")
    return ap


def finish(sec: dict, args: argparse.Namespace, t0: float,
           meter: NoiseMeter | None = None) -> dict:
    sec["wall_s"] = time.perf_counter() - t0
    if meter is not None:
        sec.setdefault("notes", []).append(meter.summary())
    add_ratios(sec["rows"])
    print(render_section(sec))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fp:
            json.dump(sec, fp, indent=1, default=float)
    return sec


def command_line() -> str:
    rel = os.path.relpath(sys.argv[0], REPO)
    return shlex.join([".venv/bin/python", rel, *sys.argv[1:]])
