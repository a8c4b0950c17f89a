"""steerexp beside its peers, steering-vectors 0.12.2 and repeng 0.4.0, on the same model and work.

Everything runs in this one process, on one torch thread, each case's sides interleaved
round-robin, timed in CPU time (``time.process_time``: other processes on a shared machine
cost wall time, not this process's CPU time), minimum of repeats. Equivalence is checked
before anything is timed: the same direction (cosine > 0.999 per layer) and the same greedy
tokens on every prompt. Ratio = peer time / steerexp time (> 1: steerexp is faster).

Cases, per shape (:data:`SHAPES`: the organism, and a Qwen3-0.6B-shaped model with
``model.random_init=true`` where matmuls dominate; its default contrast pairs and ``hs`` layers):

- fresh ``pca_diff`` extraction vs repeng ``ControlVector.train`` and fresh ``mean_diff`` vs
  steering-vectors ``train_steering_vector``: each side at its default batch size
  (``extract.batch_size`` 16, repeng 32, steering-vectors 1), and each at its fastest of
  the shape's ``batches`` (fastest by the same minimum of interleaved repeats). "Fresh": no extraction cache, no in-process memo; the peers' timings
  include rendering the chat template, as steerexp's do;
- one-coefficient steered generation (16 prompts x 48 tokens, greedy, eos off) vs
  steering-vectors' ``apply`` and repeng's ``ControlModel`` around ``generate``, and vs plain
  HF ``generate`` (info);
- 7 coefficients: one batched ``generate_rows`` call (the eval config's ``max_batch_size``) vs
  7 peer calls (target >= 2.5).

Each peer gets its own plain HF copy of the checkpoint (as its users have); steerexp runs on
its nnsight-wrapped model. A peer that is not installed is skipped (``pip install
steerexp[peers]``). ``python -m bench peers`` runs every shape; ``--shape NAME`` one.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from transformers import AutoModelForCausalLM

from bench.generate import single_thread
from steerexp.config.compose import group_config
from steerexp.data.answers import make_answer_spec
from steerexp.data.pairs import load_pairs, load_questions
from steerexp.data.records import Pair, Question
from steerexp.models.loading import LoadedModel, load_model
from steerexp.models.modules import resolve_modules
from steerexp.models.steering import Steering
from steerexp.models.tokens import left_pad
from steerexp.stages.extract import activations
from steerexp.stages.fit.methods import fit_from_config
from steerexp.stages.generate import rows as gen_rows
from steerexp.store import context

RESULTS = Path(__file__).resolve().parent / "results.json"
COEFFS = [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
COEFF = 0.5
TARGET, TARGET_BATCHED = 1.0, 2.5
EXTRACT_BATCH = 16  # extract.batch_size's default


@dataclasses.dataclass(frozen=True)
class Shape:
    """A model and the size of the work; ``key`` names its entry in ``bench/results.json``."""

    key: str
    model: str  # a conf/model option
    model_overrides: dict[str, Any]
    n_pairs: int
    n_prompts: int
    new_tokens: int
    batches: tuple[int, ...]  # batch sizes tried for each side's best
    repeats: int


REPEATS = int(os.environ.get("STEEREXP_BENCH_PEERS_REPEATS", "5"))
SHAPES = {
    "organism": Shape("peers", "organism", {}, 128, 16, 48, (16, 32, 64), REPEATS),
    # Full width, heads and 151936-token vocab, 4 of 28 blocks, float32 (this CPU has no bf16
    # matmul units); the work cut so the case runs in minutes on one core.
    "qwen3-0.6b": Shape(
        "peers_qwen3_0_6b",
        "qwen3_0_6b",
        {"random_init": True, "num_layers": 4, "dtype": "float32", "device": "cpu"},
        16,
        4,
        16,
        (16, 32),
        3,
    ),
}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def repeng() -> Any:
    """repeng 0.4.0, which names ``np.float_`` (gone in NumPy 2) in an annotation at import."""
    import numpy as np

    if not hasattr(np, "float_"):
        np.float_ = np.float64  # type: ignore[attr-defined]
    import repeng as module

    return module


def cpu_min(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Minimum CPU seconds per function over ``repeats`` interleaved rounds (after a warm-up)."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.process_time()
            fn()
            best[k] = min(best[k], time.process_time() - t)
    return best


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


@dataclasses.dataclass
class Setup:
    shape: Shape
    loaded: LoadedModel
    model_cfg: dict[str, Any]
    modules: list[str]
    layers: list[int]
    pairs: list[Pair]
    prompts: list[list[int]]
    questions: list[Question]
    ev: dict[str, Any]
    peer_tok: Any

    def peer_model(self) -> torch.nn.Module:
        """A plain HF copy of the checkpoint (no nnsight), as a peer's user would have."""
        model = AutoModelForCausalLM.from_pretrained(self.loaded.path, dtype=torch.float32)
        model.generation_config.eos_token_id = None
        return model.eval()


def setup(shape: Shape) -> Setup:
    over = [f"model={shape.model}"]
    model_cfg = {**group_config("model", shape.model), **shape.model_overrides}
    loaded = load_model(model_cfg)
    loaded.hf.generation_config.eos_token_id = None
    modules = resolve_modules(loaded, group_config("module", "hs", *over))
    layers = [int(m.rsplit(".", 1)[1]) for m in modules]
    pairs = load_pairs(group_config("dataset", "organism", *over))[: shape.n_pairs]
    tok = loaded.tokenizer
    ev = group_config("eval", "organism", *over)
    base = load_questions(ev)
    questions = [
        Question(f"{q.id}_{i}", q.text + " Really?" * (i // len(base)), q.trait_answer)
        for i in range(shape.n_prompts)
        for q in [base[i % len(base)]]
    ]
    peer_tok = copy.deepcopy(tok)
    peer_tok.padding_side = "right"  # peers read activations from a plain forward
    return Setup(
        shape,
        loaded,
        model_cfg,
        modules,
        layers,
        pairs,
        [gen_rows.prompt_ids(loaded, ev, q) for q in questions],
        questions,
        ev,
        peer_tok,
    )


def steerexp_direction(
    s: Setup, method: str, batch: int = EXTRACT_BATCH
) -> dict[int, torch.Tensor]:
    """A fresh extraction (memo and tokeniser memo cleared, no disk cache) and fit."""
    context.current().extractions.clear()
    context.current().encoded.clear()
    ex = activations.extract(
        s.loaded,
        s.model_cfg,
        s.modules,
        group_config("loss", "nll"),
        s.pairs,
        batch,
        cache_root=None,
        progress=False,
        need_grads=False,
    )
    cfg = group_config("method", method)
    return {
        layer: fit_from_config(cfg, ex.acts[m]).vector
        for layer, m in zip(s.layers, s.modules, strict=True)
    }


def rendered(s: Setup) -> list[tuple[str, str]]:
    """Each pair's two chat-templated texts: a peer's user renders them too, as steerexp does
    inside its extraction, so the peers' timings include it."""
    tok = s.loaded.tokenizer

    def text(p: Pair, positive: bool) -> str:
        msgs = p.messages(positive)
        return tok.apply_chat_template(msgs, tokenize=False, continue_final_message=True)

    return [(text(p, True), text(p, False)) for p in s.pairs]


def repeng_direction(s: Setup, model: torch.nn.Module, batch: int) -> dict[int, torch.Tensor]:
    rp = repeng()
    data = [rp.DatasetEntry(pos, neg) for pos, neg in rendered(s)]
    vec = rp.ControlVector.train(
        model, s.peer_tok, data, hidden_layers=s.layers, batch_size=batch, method="pca_diff"
    )
    return {k: torch.from_numpy(v) for k, v in vec.directions.items()}


def sv_direction(s: Setup, model: torch.nn.Module, batch: int) -> dict[int, torch.Tensor]:
    from steering_vectors import train_steering_vector

    vec = train_steering_vector(
        model, s.peer_tok, rendered(s), layers=s.layers, batch_size=batch, show_progress=False
    )
    return dict(vec.layer_activations)


def extraction_cases(s: Setup, out: dict[str, Any]) -> None:
    """Fresh pca_diff vs repeng and mean_diff vs steering-vectors, at each peer's default and best batch."""
    peers: list[tuple[str, str, Callable[..., dict[int, torch.Tensor]], int]] = []
    if installed("repeng"):
        peers.append(("repeng", "pca_diff", repeng_direction, 32))
    if installed("steering_vectors"):
        peers.append(("steering_vectors", "mean_diff", sv_direction, 1))
    for name, method, fn, default in peers:
        model = s.peer_model()
        ours = steerexp_direction(s, method)
        theirs = fn(s, model, default)
        cos = min(cosine(ours[k], theirs[k]) for k in s.layers)
        out[f"{name}_{method}_cos"] = cos
        if cos <= 0.999:
            print(f"{name} {method}: directions differ (min cos {cos:.6f}); not timed", flush=True)
            continue
        mine = dict.fromkeys([EXTRACT_BATCH, *s.shape.batches])
        theirs_b = dict.fromkeys([default, *s.shape.batches])
        sides = {f"steerexp@{b}": lambda b=b, m=method: steerexp_direction(s, m, b) for b in mine}
        for b in theirs_b:
            sides[f"{name}@{b}"] = lambda b=b, fn=fn, model=model: fn(s, model, b)
        t = cpu_min(sides, s.shape.repeats)
        own = min(mine, key=lambda b: t[f"steerexp@{b}"])
        best = min(theirs_b, key=lambda b: t[f"{name}@{b}"])
        # Defaults against defaults, and each side at its own fastest batch size.
        for label, b, ours in (("default", default, EXTRACT_BATCH), ("best", best, own)):
            ratio = t[f"{name}@{b}"] / t[f"steerexp@{ours}"]
            out[f"{method}_fresh_vs_{name}_{label}"] = ratio
            report(
                f"{method} fresh, {len(s.pairs)} pairs: {name} @{b} / steerexp @{ours} ({label})",
                t[f"{name}@{b}"],
                t[f"steerexp@{ours}"],
                ratio,
                TARGET,
            )
        out[f"{name}_{method}_batches"] = {"default": default, "best": best, "steerexp_best": own}


def report(label: str, peer: float, ours: float, ratio: float, target: float) -> None:
    ok = "PASS" if ratio >= target else "FAIL"
    print(
        f"{label:<58} {peer:8.3f} s {ours:8.3f} s {ratio:6.2f}x  target >= {target:.1f}  {ok}",
        flush=True,
    )


def steering(s: Setup) -> Steering:
    """Seeded random unit directions on the run's layers, at a scale that changes the tokens."""
    gen = torch.Generator().manual_seed(0)
    d = int(s.loaded.hf.config.hidden_size)
    vectors = {
        m: torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0) for m in s.modules
    }
    return Steering(vectors, {m: 0.5 * d**0.5 for m in s.modules})


def generation_cases(s: Setup, out: dict[str, Any]) -> None:
    """One coefficient, and 7 coefficients batched vs 7 peer calls; greedy, eos off."""
    st = steering(s)
    layer_vecs = {
        layer: st.scales[m] * st.vectors[m] for layer, m in zip(s.layers, s.modules, strict=True)
    }
    tok = s.loaded.tokenizer
    ids, mask = left_pad(s.prompts, tok.pad_token_id)
    spec = make_answer_spec(tok, s.ev["answer_regex"], s.ev["answers"], s.ev["answer_prefix"])
    free = dataclasses.replace(spec, regex=None)
    greedy = {
        **s.ev,
        "max_new_tokens": s.shape.new_tokens,
        "do_sample": False,
        "repetition_penalty": None,
        "workers": 1,  # in this process, so its CPU time counts (one chunk runs here anyway)
    }

    def ours(coeffs: list[float]) -> dict[float, list[list[int]]]:
        rows = gen_rows.grid(s.questions, coeffs, 1)
        done = gen_rows.generate_rows(s.loaded, greedy, rows, st, free, seed=0, progress=False)
        by: dict[float, list[list[int]]] = {c: [] for c in coeffs}
        for r in done:
            by[r.coeff].append(r.completion_ids)
        return by

    def hf(model: torch.nn.Module) -> list[list[int]]:
        res = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=s.shape.new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        return res[:, ids.shape[1] :].tolist()

    peers: dict[str, Callable[[float], list[list[int]]]] = {}
    plain = s.peer_model()
    if installed("steering_vectors"):
        from steering_vectors import SteeringVector

        sv_model, sv_vec = s.peer_model(), SteeringVector(layer_vecs, "decoder_block")

        def sv(c: float) -> list[list[int]]:
            with sv_vec.apply(sv_model, multiplier=c):
                return hf(sv_model)

        peers["steering_vectors"] = sv
    if installed("repeng"):
        rp_mod = repeng()
        rp_model = rp_mod.ControlModel(s.peer_model(), s.layers)
        rp_vec = rp_mod.ControlVector(
            rp_model.config.model_type, {k: v.numpy() for k, v in layer_vecs.items()}
        )

        def rp(c: float) -> list[list[int]]:
            rp_model.set_control(rp_vec, c)
            try:
                return hf(rp_model)
            finally:
                rp_model.reset()

        peers["repeng"] = rp
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(gen_rows, "stop_ids", lambda _loaded: set()))
        mine = ours(COEFFS)
        for name, fn in list(peers.items()):
            same = sum(fn(c) == mine[c] for c in COEFFS)
            out[f"{name}_greedy_identical"] = f"{same}/{len(COEFFS)} coefficients"
            print(f"{name}: identical greedy tokens at {same}/{len(COEFFS)} coefficients")
            if same < len(COEFFS):
                del peers[name]
        sides: dict[str, Callable[[], Any]] = {
            "steerexp": lambda: ours([COEFF]),
            "hf": lambda: hf(plain),
            **{n: (lambda fn=fn: fn(COEFF)) for n, fn in peers.items()},
        }
        t = cpu_min(sides, s.shape.repeats)
        work = f"{s.shape.n_prompts} prompts x {s.shape.new_tokens} tokens"
        for name in peers:
            out[f"steered_1coeff_vs_{name}"] = ratio = t[name] / t["steerexp"]
            report(f"steered, 1 coefficient, {work}: {name}", t[name], t["steerexp"], ratio, TARGET)
        out["steered_vs_plain_hf"] = ratio = t["hf"] / t["steerexp"]
        report(f"steered, 1 coefficient, {work}: plain HF (info)", t["hf"], t["steerexp"], ratio, 0)
        sides = {"steerexp": lambda: ours(COEFFS)}
        sides |= {n: (lambda fn=fn: [fn(c) for c in COEFFS]) for n, fn in peers.items()}
        t = cpu_min(sides, s.shape.repeats)
        for name in peers:
            out[f"batched_7coeff_vs_{name}"] = ratio = t[name] / t["steerexp"]
            report(
                f"7 coefficients, {work}: {name} 7 calls / one call",
                t[name],
                t["steerexp"],
                ratio,
                TARGET_BATCHED,
            )


def run_shape(name: str, shape: Shape) -> dict[str, Any]:
    """Every case on one shape, printed; the ratios and the conditions they were taken in."""
    load0, wall0 = os.getloadavg()[0], time.perf_counter()
    with single_thread():
        s = setup(shape)
        out: dict[str, Any] = {}
        print(
            f"\n[{name}] model {s.loaded.name}: {s.loaded.n_layers} blocks, "
            f"d={s.loaded.hf.config.hidden_size}, vocab {s.loaded.hf.config.vocab_size}, "
            f"layers {s.layers}; {len(s.pairs)} pairs, {shape.n_prompts} prompts x "
            f"{shape.new_tokens} tokens; torch threads={torch.get_num_threads()}; "
            f"CPU time, min of {shape.repeats}",
            flush=True,
        )
        extraction_cases(s, out)
        generation_cases(s, out)
    out.update(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        command=f"python -m bench peers --shape {name}",
        shape={
            "model": shape.model,
            **shape.model_overrides,
            "blocks": s.loaded.n_layers,
            "hidden_size": int(s.loaded.hf.config.hidden_size),
            "vocab_size": int(s.loaded.hf.config.vocab_size),
            "layers": s.layers,
            "pairs": len(s.pairs),
            "prompts": shape.n_prompts,
            "new_tokens": shape.new_tokens,
        },
        wall_s=time.perf_counter() - wall0,
        load_avg_start=load0,
        load_avg_end=os.getloadavg()[0],
        cpus=os.cpu_count(),
        threads=1,
        repeats=shape.repeats,
        targets={"peer_ratio": TARGET, "batched_7coeff": TARGET_BATCHED},
    )
    print(
        f"[{name}] {out['wall_s']:.0f} s wall; load average {load0:.1f} -> "
        f"{out['load_avg_end']:.1f} on {out['cpus']} CPUs",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> None:
    """Every case on the chosen shapes, recorded in ``bench/results.json`` (the organism under
    ``peers``, the Qwen3-0.6B shape under ``peers_qwen3_0_6b``)."""
    parser = argparse.ArgumentParser(prog="python -m bench peers")
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    args = parser.parse_args(argv or [])
    missing = [m for m in ("repeng", "steering_vectors") if not installed(m)]
    if missing:
        print(f"(not installed, skipped: {', '.join(missing)}; pip install 'steerexp[peers]')")
    for name, shape in SHAPES.items():
        if args.shape not in (name, "all"):
            continue
        out = run_shape(name, shape)
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        results[shape.key] = out
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
