"""Fast Fisher solve vs a dense d×d solve: ``fisher_steer_cov_reg1`` at n = 256, d = 9728.

Measured (one line each, with target and PASS/FAIL):
- speed ratio (wall clock, both paths on the same number of torch threads: 1 by default, so
  the ratio compares algorithms rather than how well each survives oversubscribed shared
  cores; set ``STEEREXP_BENCH_THREADS``): dense float32 (form ``F = UᵀU`` d×d, ``torch.linalg.solve(F + λI, ḡ)``) over the
  fast path (``fit_from_config`` of the real method config), both from the same float32 G;
  median of repeats for the fast path, one dense run (it takes seconds);
- relative difference of the two unit directions;
- peak extra memory: peak resident set size (Linux ``VmHWM``) of a fresh child process during
  the solve, minus its resident size just before. The child warms up on a tiny problem first
  (libraries, thread pool) and resets the peak with ``/proc/self/clear_refs`` (value 5), so the
  number is the solve's own footprint in RSS pages, allocator caching included. Where the reset
  is not allowed, the lifetime peak is used, which can only overstate.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from steerexp.stages.fit.methods import fit_from_config, load_method_config, pair_vote

METHOD = "fisher_steer_cov_reg1"
N, D = 256, 9728
TARGET_SPEEDUP = 50.0
TARGET_REL_DIFF = 1e-3
TARGET_PEAK_MB = 200.0
REPO = Path(__file__).resolve().parent.parent


def make_grads(n: int = N, d: int = D, seed: int = 0) -> torch.Tensor:
    """Gradient-like float32 rows: a shared mean, a rank-8 signal and a decaying-spectrum noise."""
    gen = torch.Generator().manual_seed(seed)
    col_scale = torch.linspace(1.0, 0.05, d).pow(2)
    noise = torch.randn(n, d, generator=gen) * col_scale
    low_rank = torch.randn(n, 8, generator=gen) @ torch.randn(8, d, generator=gen)
    return (0.3 * torch.randn(d, generator=gen) + low_rank * 0.2 + noise).float()


def fast_direction(grads: torch.Tensor) -> torch.Tensor:
    """The production path: the method config through :func:`fit_from_config`."""
    return fit_from_config(load_method_config(METHOD), grads, grads).vector


def dense_direction(grads: torch.Tensor) -> torch.Tensor:
    """What one would write without the kernel form: the d×d covariance Fisher in float32."""
    cfg = load_method_config(METHOD)
    n, d = grads.shape
    gbar = grads.mean(dim=0)
    u = (grads - gbar) / (n - 1) ** 0.5
    f = u.T @ u
    lam = float(cfg["reg"]) * float(torch.trace(f)) / d
    f.diagonal().add_(lam)
    x = torch.linalg.solve(f, gbar)
    keep, _ = pair_vote(x, grads)  # the one sign rule, the pair vote (the acts here are the grads)
    return (x if keep else -x) / x.norm()


def _status_kb(key: str) -> int:
    match = re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(match.group(1)) if match else 0


def child_peak(mode: str) -> None:
    """Run in a fresh process: print JSON with the peak extra RSS (MB) of one ``mode`` solve."""
    torch.set_num_threads(int(os.environ.get("STEEREXP_BENCH_THREADS", "1")))
    solve = fast_direction if mode == "fast" else dense_direction
    solve(make_grads(8, 16))
    grads = make_grads()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        how = "VmHWM reset"
    except OSError:
        how = "lifetime VmHWM (upper bound)"
    before = _status_kb("VmRSS")
    solve(grads)
    extra_mb = (_status_kb("VmHWM") - before) / 1024
    print(json.dumps({"extra_mb": extra_mb, "how": how}))


def measure_peak(mode: str) -> tuple[float, str]:
    """Peak extra memory of one solve, measured in a fresh child process."""
    code = f"from bench.fisher import child_peak; child_peak({mode!r})"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["extra_mb"]), str(result["how"])


def _line(label: str, value: str, target: str, ok: bool) -> None:
    print(f"{label:<34} {value:>14}   target {target:<10} {'PASS' if ok else 'FAIL'}", flush=True)


def main() -> None:
    """Print speed ratio, relative difference and peak memory of the fast Fisher solve."""
    threads = int(os.environ.get("STEEREXP_BENCH_THREADS", "1"))
    torch.set_num_threads(threads)
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(
        f"{METHOD}: n={N}, d={D}, both paths on torch threads={threads} "
        f"(STEEREXP_BENCH_THREADS), 1-min load average {load}",
        flush=True,
    )
    grads = make_grads()
    fast_direction(grads)
    fast_times = []
    for _ in range(5):
        t0 = time.perf_counter()
        v_fast = fast_direction(grads)
        fast_times.append(time.perf_counter() - t0)
    t_fast = statistics.median(fast_times)
    t0 = time.perf_counter()
    v_dense = dense_direction(grads)
    t_dense = time.perf_counter() - t0
    print(f"fast (kernel form, float64) {t_fast * 1e3:.1f} ms; dense float32 {t_dense:.2f} s")
    ratio = t_dense / t_fast
    _line(
        "speed ratio dense/fast",
        f"{ratio:.0f}x",
        f">= {TARGET_SPEEDUP:.0f}x",
        ratio >= TARGET_SPEEDUP,
    )
    rel = float((v_fast.double() - v_dense.double()).norm() / v_dense.double().norm())
    _line(
        "relative difference fast vs dense",
        f"{rel:.2e}",
        f"<= {TARGET_REL_DIFF:.0e}",
        rel <= TARGET_REL_DIFF,
    )
    peak, how = measure_peak("fast")
    _line(
        f"peak extra RSS, fast ({how})",
        f"{peak:.0f} MB",
        f"< {TARGET_PEAK_MB:.0f} MB",
        peak < TARGET_PEAK_MB,
    )
    dense_peak, _ = measure_peak("dense")
    print(f"(for comparison: peak extra RSS of the dense solve {dense_peak:.0f} MB)", flush=True)


if __name__ == "__main__":
    main()
