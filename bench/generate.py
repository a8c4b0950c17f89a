"""Generation: batched per-row coefficients, steering overhead, and the memory of a default run.

Measured on the organism (``model=organism`` with ``conf/eval/organism.yaml``); while the
organism's configs or builder are not available, on ``model=tiny_random`` with ``eval=white_lie``
(printed). Every ratio is taken within this run, A and B interleaved, median of repeats, with one
torch thread (also in the child processes; see :func:`single_thread`):

- (a) 9 coefficients x 8 questions x 2 repeats (144 rows) in ONE ``generate_rows`` call
  (``max_batch_size`` 144: one chunk) vs one ``generate_rows`` call per coefficient (16 rows
  each), with the eval config's sampling settings; target >= 3x faster;
- (b) steered generation through nnsight (``generate_rows`` with a ``Steering`` on every ``hs``
  layer) vs plain ``model.hf.generate`` on the same 16 prompts, greedy, eos off (both write
  exactly ``max_new_tokens`` tokens per row); target: steered throughput >= 0.75x of unsteered.
  Unsteered ``generate_rows`` is printed too, to split nnsight overhead from steering cost;
- (c) peak resident set size of a default ``python -m steerexp`` run in a child process (a
  wrapper child reads ``getrusage(RUSAGE_CHILDREN).ru_maxrss``, so earlier children of this
  process do not count), with a fresh extraction cache and the checkpoint linked in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from steerexp import CONF_DIR, cache_dir
from steerexp.config.compose import group_config
from steerexp.data.answers import make_answer_spec
from steerexp.data.pairs import load_questions
from steerexp.data.records import Question
from steerexp.models.checkpoints import checkpoint_path
from steerexp.models.loading import LoadedModel, load_model
from steerexp.models.modules import resolve_modules
from steerexp.models.steering import Steering
from steerexp.models.tokens import left_pad
from steerexp.stages.generate import rows as gen_rows
from steerexp.stages.generate.rows import RowSpec, generate_rows, grid, prompt_ids

REPO = Path(__file__).resolve().parent.parent
COEFFS = [-1.0, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 1.0]
N_QUESTIONS, REPEATS = 8, 2
BATCHED_NEW_TOKENS = 32
STEER_NEW_TOKENS = 48
TIMING_REPEATS = 3
STEER_REPEATS = 5
TARGET_BATCHED = 3.0
TARGET_STEERED = 0.75
TARGET_PEAK_MB = 2048.0
FALLBACK = ["model=tiny_random", "dataset=honesty", "eval=white_lie"]


@contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread while inside (``STEEREXP_BENCH_THREADS`` overrides, as in bench.fisher):
    on a shared, oversubscribed CPU a descheduled worker stalls every thread barrier and timings
    swing 10-100x. The previous thread count is restored on exit."""
    saved = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("STEEREXP_BENCH_THREADS", "1")))
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def group(name: str, option: str) -> dict[str, Any]:
    """One config-group option as composed; keys that follow the model's resolve against
    ``tiny_random`` (layer_frac 0.3-0.9, loss layer -3), as the benchmarks always measured."""
    return group_config(name, option, *([] if name == "model" else ["model=tiny_random"]))


def organism_ready(groups: tuple[str, ...] = ("eval", "dataset")) -> bool:
    """True when ``conf/<group>/organism.yaml`` exists for each group and the checkpoint builds (or is built)."""
    missing = [g for g in groups if not (CONF_DIR / g / "organism.yaml").exists()]
    if missing:
        names = ", ".join(f"conf/{g}/organism.yaml" for g in missing)
        print(f"(organism not ready: no {names}; using {' '.join(FALLBACK)})")
        return False
    try:
        checkpoint_path(group("model", "organism"))
    except Exception as e:  # noqa: BLE001 -- any build failure means: measure on the fallback
        print(f"(organism build failed: {type(e).__name__}: {e}; using {' '.join(FALLBACK)})")
        return False
    return True


def run_overrides(ready: bool) -> list[str]:
    """Command-line overrides that select the benchmark model (none: the default organism run)."""
    return [] if ready else list(FALLBACK)


def seeded_cache(root: Path, model_name: str) -> Path:
    """A fresh ``STEEREXP_CACHE`` at ``root`` holding only a link to the built checkpoint."""
    ckpt = Path(checkpoint_path(group("model", model_name))).resolve()
    try:
        rel = ckpt.relative_to(cache_dir().resolve())
    except ValueError:
        rel = Path(model_name) / ckpt.name
    link = root / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(ckpt, target_is_directory=True)
    return root


def child_env(cache: Path) -> dict[str, str]:
    """Environment of a ``python -m steerexp`` child: the given cache, one torch thread (see
    :func:`single_thread`), no network, no W&B."""
    return {
        **os.environ,
        "STEEREXP_CACHE": str(cache),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }


def run_steerexp(args: list[str], cache: Path) -> float:
    """Run ``python -m steerexp <args>`` to completion; its wall time in seconds (raises with its tail)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "steerexp", *args],
        cwd=REPO,
        env=child_env(cache),
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(
            f"python -m steerexp {' '.join(args)} failed (rc {proc.returncode}):\n{tail}"
        )
    return seconds


def line(label: str, a: str, b: str, ratio: float, target: str, ok: bool) -> None:
    """One measurement: both numbers, their ratio, the target and PASS/FAIL."""
    print(
        f"{label:<34} {a:>16} {b:>16} {ratio:>7.2f}x   target {target:<9} {'PASS' if ok else 'FAIL'}",
        flush=True,
    )


def eval_setup(ready: bool) -> tuple[dict[str, Any], list[Question]]:
    """The eval config and 8 questions (the organism's first 8, or synthesized variants of the fallback's)."""
    ev = group("eval", "organism" if ready else "white_lie")
    qs = load_questions(ev)
    questions = [
        qs[i]
        if len(qs) >= N_QUESTIONS
        else Question(
            f"{qs[i % len(qs)].id}_{i}",
            qs[i % len(qs)].text + " Really?" * i,
            qs[i % len(qs)].trait_answer,
        )
        for i in range(N_QUESTIONS)
    ]
    return ev, questions


def random_steering(loaded: LoadedModel, seed: int = 0) -> Steering:
    """Seeded random unit directions on every ``hs`` layer, scaled to a tenth of a typical norm."""
    modules = resolve_modules(loaded, group("module", "hs"))
    gen = torch.Generator().manual_seed(seed)
    d = int(loaded.hf.config.hidden_size)
    vectors = {
        m: torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0) for m in modules
    }
    return Steering(vectors, {m: 0.1 * d**0.5 for m in modules})


def timed(fn: Callable[[], Any]) -> float:
    """Wall time of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(
    fns: dict[str, Callable[[], Any]], warmup: Callable[[], Any], repeats: int = TIMING_REPEATS
) -> dict[str, float]:
    """Median wall time per function, calls interleaved round-robin after one ``warmup`` call."""
    warmup()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def bench_batched(
    loaded: LoadedModel, ev: dict[str, Any], questions: list[Question], steering: Steering
) -> None:
    """(a) One 144-row call vs one 16-row call per coefficient, same sampling settings."""
    spec = make_answer_spec(
        loaded.tokenizer, ev["answer_regex"], ev["answers"], ev["answer_prefix"]
    )
    rows = grid(questions, COEFFS, REPEATS)
    big = {**ev, "max_new_tokens": BATCHED_NEW_TOKENS, "max_batch_size": len(rows)}
    small = {**big, "max_batch_size": N_QUESTIONS * REPEATS}
    per_coeff: list[list[RowSpec]] = [[r for r in rows if r.coeff == c] for c in COEFFS]

    def batched() -> None:
        generate_rows(loaded, big, rows, steering, spec, seed=0, progress=False)

    def one_per_coeff() -> None:
        for chunk in per_coeff:
            generate_rows(loaded, small, chunk, steering, spec, seed=0, progress=False)

    def warmup() -> None:
        generate_rows(loaded, small, per_coeff[0], steering, spec, seed=0, progress=False)

    t = interleaved({"batched": batched, "per_coeff": one_per_coeff}, warmup)
    print(
        f"(a) {len(rows)} rows = {len(COEFFS)} coeffs x {N_QUESTIONS} questions x {REPEATS} repeats, "
        f"max_new_tokens={BATCHED_NEW_TOKENS}, sampling as eval config; median of {TIMING_REPEATS}"
    )
    ratio = t["per_coeff"] / t["batched"]
    line(
        "per-coeff calls / one batched call",
        f"{t['per_coeff']:.2f} s",
        f"{t['batched']:.2f} s",
        ratio,
        f">= {TARGET_BATCHED:.1f}x",
        ratio >= TARGET_BATCHED,
    )


def bench_steered(
    loaded: LoadedModel, ev: dict[str, Any], questions: list[Question], steering: Steering
) -> None:
    """(b) Steered nnsight generation vs plain HF generate: same prompts, greedy, fixed length."""
    spec = make_answer_spec(
        loaded.tokenizer, ev["answer_regex"], ev["answers"], ev["answer_prefix"]
    )
    rows = grid(questions, [0.5, -0.5], 1)
    greedy = {
        **ev,
        "max_new_tokens": STEER_NEW_TOKENS,
        "do_sample": False,
        "repetition_penalty": None,
        "max_batch_size": len(rows),
    }
    ids, mask = left_pad(
        [prompt_ids(loaded, ev, r.question) for r in rows], loaded.tokenizer.pad_token_id
    )
    ids, mask = ids.to(loaded.device), mask.to(loaded.device)
    pad = loaded.tokenizer.pad_token_id
    lengths: dict[str, int] = {}

    # HF runs with eos off to a fixed length; steerexp's rows would stop at their answer or an
    # end-of-turn token, so both stops are switched off here (no regex, no stop ids).
    free = dataclasses.replace(spec, regex=None)

    def steered() -> None:
        generate_rows(loaded, greedy, rows, steering, free, seed=0, progress=False)

    def counted_steered() -> None:
        steps = [0]
        handle = loaded.hf.lm_head.register_forward_hook(
            lambda *_: steps.__setitem__(0, steps[0] + 1)
        )
        try:
            steered()
        finally:
            handle.remove()
        lengths["steered"] = steps[0]

    def nnsight_plain() -> None:
        generate_rows(loaded, greedy, rows, None, free, seed=0, progress=False)

    def hf_plain() -> None:
        with torch.no_grad():
            out = loaded.hf.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=STEER_NEW_TOKENS,
                do_sample=False,
                pad_token_id=pad,
            )
        lengths["hf"] = out.shape[1] - ids.shape[1]

    gen_cfg = loaded.hf.generation_config
    saved_eos = gen_cfg.eos_token_id
    gen_cfg.eos_token_id = None
    try:
        with mock.patch.object(gen_rows, "stop_ids", lambda _loaded: set()):
            t = interleaved(
                {"steered": steered, "hf": hf_plain, "nnsight": nnsight_plain},
                lambda: (hf_plain(), counted_steered()),
                STEER_REPEATS,
            )
    finally:
        gen_cfg.eos_token_id = saved_eos
    n_tok = len(rows) * STEER_NEW_TOKENS
    print(
        f"(b) {len(rows)} rows x {STEER_NEW_TOKENS} new tokens, greedy, eos off "
        f"(tokens generated: hf {lengths.get('hf')}, steered {lengths.get('steered')}); median of {STEER_REPEATS}"
    )
    ratio = t["hf"] / t["steered"]
    line(
        "steered / unsteered HF throughput",
        f"{n_tok / t['steered']:.0f} tok/s",
        f"{n_tok / t['hf']:.0f} tok/s",
        ratio,
        f">= {TARGET_STEERED:.2f}x",
        ratio >= TARGET_STEERED,
    )
    print(
        f"(info: unsteered generate_rows via nnsight {n_tok / t['nnsight']:.0f} tok/s = "
        f"{t['hf'] / t['nnsight']:.2f}x of HF; steered / unsteered nnsight time {t['steered'] / t['nnsight']:.2f}x)",
        flush=True,
    )


def bench_memory(ready: bool) -> None:
    """(c) Peak RSS of a default ``python -m steerexp`` run, read in a wrapper child process."""
    model = "organism" if ready else "tiny_random"
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        cache = seeded_cache(Path(tmp) / "cache", model)
        args = [*run_overrides(ready), f"hydra.run.dir={tmp}/run"]
        code = (
            "import json, resource, subprocess, sys, time\n"
            "t0 = time.perf_counter()\n"
            f"p = subprocess.run([sys.executable, '-m', 'steerexp', *{args!r}], capture_output=True, text=True)\n"
            "print(json.dumps({'rc': p.returncode, 's': time.perf_counter() - t0, "
            "'kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, 'tail': (p.stdout + p.stderr)[-3000:]}))\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=child_env(cache),
            capture_output=True,
            text=True,
            check=True,
        )
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise RuntimeError(f"default run failed (rc {res['rc']}):\n{res['tail']}")
    peak = res["kb"] / 1024
    print(
        f"(c) python -m steerexp {' '.join(run_overrides(ready))} (fresh extraction cache): {res['s']:.1f} s wall"
    )
    print(
        f"{'peak RSS of a default run':<34} {peak:>13.0f} MB   target < {TARGET_PEAK_MB:.0f} MB "
        f"{'PASS' if peak < TARGET_PEAK_MB else 'FAIL'}",
        flush=True,
    )


def main() -> None:
    """Batched vs per-coefficient generation, steered vs plain HF throughput, default-run peak RSS.

    (a) and (b) need only the organism's eval config; (c) runs the full default (its dataset too)."""
    ready = organism_ready(("eval",))
    loaded = load_model(group("model", "organism" if ready else "tiny_random"))
    ev, questions = eval_setup(ready)
    steering = random_steering(loaded)
    with single_thread():
        print(
            f"model {loaded.name}: {loaded.n_layers} layers, d={loaded.hf.config.hidden_size}, "
            f"torch threads={torch.get_num_threads()}",
            flush=True,
        )
        bench_batched(loaded, ev, questions, steering)
        bench_steered(loaded, ev, questions, steering)
    bench_memory(organism_ready())


if __name__ == "__main__":
    main()
