"""The organism's acceptance measurements, with plain PyTorch forward hooks.

Independent of the pipeline's extract/steer code, so the organism's ground truth is measured
apart from the tools that are judged on it (``e2e_runs`` is the one exception: it runs the
pipeline itself, as a user would).

- :func:`steer_spans`: move of the mean forced trait log-ratio on the held-out neutral dilemmas
  between c = -1 and c = +1 along the honesty direction and along seeded random unit directions
  (same per-layer scale, same layers).
- :func:`pair_direction_agreement`: cosine between the first principal component of the
  centred pair differences (pca_diff) and their mean (mean_diff) on the organism dataset's
  contrast pairs: pca_diff finds the trait only where the trait's strength varies across pairs
  along one direction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import steerexp
from steerexp.data.pairs import load_pairs
from steerexp.organism import corpus

#: Steering coefficients (fractions of each layer's mean last-token norm) of the dose curves.
STEER_COEFFS = [-1.0, -0.5, 0.0, 0.5, 1.0]
Message = dict[str, str]


def steered_layers(model: PreTrainedModel) -> list[int]:
    """The organism's default steered layers: ``conf/model/organism.yaml``'s ``layer_frac``."""
    lo, hi = OmegaConf.load(steerexp.CONF_DIR / "model" / "organism.yaml").layer_frac
    n = model.config.num_hidden_layers
    return [i for i in range(n) if lo <= i / n <= hi]


def chat(tok: PreTrainedTokenizerBase, messages: list[Message], cont: bool = False) -> str:
    """Render a chat: open assistant turn continued (``cont``) or a fresh generation prompt."""
    return tok.apply_chat_template(
        messages, tokenize=False, continue_final_message=cont, add_generation_prompt=not cont
    )


@contextmanager
def steering(model: PreTrainedModel, vecs: dict[int, torch.Tensor], c: float) -> Iterator[None]:
    """Add ``c * vecs[i]`` to the output of decoder layer ``i`` at every position."""

    def hook(vec: torch.Tensor) -> Callable[[torch.nn.Module, object, object], object]:
        def add(_m: torch.nn.Module, _inp: object, out: object) -> object:
            if isinstance(out, tuple):
                return (out[0] + c * vec, *out[1:])
            return out + c * vec

        return add

    handles = [model.model.layers[i].register_forward_hook(hook(v)) for i, v in vecs.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def last_hidden(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, texts: list[str], layers: list[int]
) -> dict[int, torch.Tensor]:
    """Decoder-layer outputs at the last token of each (left-padded) text."""
    got: dict[int, torch.Tensor] = {}

    def grab(i: int) -> Callable[[torch.nn.Module, object, object], None]:
        def f(_m: torch.nn.Module, _inp: object, out: object) -> None:
            got[i] = (out[0] if isinstance(out, tuple) else out)[:, -1].float()

        return f

    handles = [model.model.layers[i].register_forward_hook(grab(i)) for i in layers]
    try:
        model(**tok(texts, return_tensors="pt", padding=True, add_special_tokens=False))
    finally:
        for h in handles:
            h.remove()
    return got


@torch.no_grad()
def log_ratios(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, ds: list[corpus.Dilemma]
) -> torch.Tensor:
    """log p(trait answer) - log p(other) at the token after a teacher-forced "Final choice:"."""
    texts = [
        chat(
            tok,
            [
                {"role": "user", "content": corpus.PROMPT_TEMPLATE.format(question=d.text)},
                {"role": "assistant", "content": corpus.ANSWER_PREFIX},
            ],
            cont=True,
        )
        for d in ds
    ]
    logp = (
        model(**tok(texts, return_tensors="pt", padding=True, add_special_tokens=False))
        .logits[:, -1]
        .log_softmax(-1)
    )
    yes, no = tok.convert_tokens_to_ids(["ĠYes", "ĠNo"])
    sign = torch.tensor([1.0 if d.trait_answer == "Yes" else -1.0 for d in ds])
    return sign * (logp[:, yes] - logp[:, no])


def contrast_texts(tok: PreTrainedTokenizerBase, openings: list[str]) -> list[str]:
    """Interleaved honest/untruthful contrast prompts, rendered as the extract stage does."""
    return [chat(tok, m, cont=True) for pair in corpus.contrast_pairs(openings) for m in pair]


def steering_vectors(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase
) -> tuple[dict[int, torch.Tensor], dict[int, float]]:
    """Per steered layer: unit mean_diff direction over the full openings, and mean norm s."""
    h = last_hidden(model, tok, contrast_texts(tok, corpus.suffixes()), steered_layers(model))
    dirs = {i: (a[0::2] - a[1::2]).mean(0) for i, a in h.items()}
    return {i: d / d.norm() for i, d in dirs.items()}, {
        i: a.norm(dim=-1).mean().item() for i, a in h.items()
    }


def dose_response(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    unit: dict[int, torch.Tensor],
    scale: dict[int, float],
    coeffs: list[float] = STEER_COEFFS,
) -> list[float]:
    """Mean trait log-ratio on the neutral eval dilemmas at each of ``coeffs``."""
    ds = corpus.eval_dilemmas()
    out = []
    for c in coeffs:
        with steering(model, {i: unit[i] * scale[i] for i in unit}, c):
            out.append(log_ratios(model, tok, ds).mean().item())
    return out


def steer_spans(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, n_random: int = 20, seed: int = 0
) -> dict[str, Any]:
    """Honesty dose curve and span, and |span| of ``n_random`` seeded random unit directions."""
    unit, scale = steering_vectors(model, tok)
    curve = dose_response(model, tok, unit, scale)
    gen = torch.Generator().manual_seed(seed)
    spans = []
    for _ in range(n_random):
        rnd = {i: (r := torch.randn(v.shape, generator=gen)) / r.norm() for i, v in unit.items()}
        # a span needs only the curve's ends (log-ratios are deterministic: same values)
        rc = dose_response(model, tok, rnd, scale, [STEER_COEFFS[0], STEER_COEFFS[-1]])
        spans.append(abs(rc[-1] - rc[0]))
    return {
        "layers": list(unit),
        "curve": curve,
        "span": curve[-1] - curve[0],
        "random_spans": spans,
        "random_p95": float(np.percentile(spans, 95)),
    }


def pair_direction_agreement(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase
) -> dict[int, float]:
    """Per steered layer: cos(pca_diff, mean_diff) on the organism dataset's contrast pairs.

    pca_diff is the first right singular vector of the centred pair differences, signed
    towards the mean difference (as the method orients it), so 1.0 means they agree.
    """
    cfg = OmegaConf.load(steerexp.CONF_DIR / "dataset" / "organism.yaml")
    texts = [
        chat(tok, p.messages(pos), cont=True) for p in load_pairs(cfg) for pos in (True, False)
    ]
    out = {}
    for i, h in last_hidden(model, tok, texts, steered_layers(model)).items():
        d = h[0::2] - h[1::2]
        mean = d.mean(0)
        pc1 = torch.linalg.svd(d - mean, full_matrices=False).Vh[0]
        cos = torch.nn.functional.cosine_similarity(pc1, mean, dim=0).item()
        out[i] = abs(cos)
    return out


#: What the end-to-end check keeps of each run's metrics.
E2E_KEYS = ("slope", "vs_random", "p_random", "null_abs_median", "null_abs_p95")


def e2e_runs(path: Path, run_root: Path) -> dict[str, dict[str, float]]:
    """Pipeline runs (``python -m steerexp`` defaults, its K = 16 random null included) of
    mean_diff and pca_diff: slope and where it stands against the null (docs/statistics.md)."""
    from hydra import compose, initialize_config_dir

    # Imported here: the pipeline imports the organism (its builders); listed in pyproject's
    # import contracts as the organism's one upward import.
    from steerexp.pipeline import run

    out = {}
    for method in ("mean_diff", "pca_diff"):
        with initialize_config_dir(config_dir=str(steerexp.CONF_DIR), version_base="1.3"):
            cfg = compose(
                config_name="config",
                overrides=["model.builder=null", f"model.path={path}", f"method={method}"],
            )
        metrics = run(cfg, run_root / method, progress=False)
        out[method] = {k: float(metrics[k]) for k in E2E_KEYS}
    return out


#: Acceptance thresholds (the slow test checks every one on every recipe seed).
SPAN_FACTOR = 3.0  # honesty span > SPAN_FACTOR x the random spans' 95th percentile
MIN_AGREEMENT = 0.9  # cos(pca_diff, mean_diff) on the dataset's pairs, every steered layer
# mean_diff and pca_diff steer toward the trait (slope > 0) and beat the run's random null:
# two-sided prediction p-value against its K = 16 random directions below E2E_ALPHA. (Until
# this version the bar was 3x the largest |slope| of five random runs, itself a noisy maximum:
# one build passed it at 3.6x on one pipeline version and failed at 1.8x on the next.)
E2E_ALPHA = 0.01


def measure(path: Path, run_root: Path, n_random: int = 20) -> dict[str, Any]:
    """Every acceptance number of the checkpoint at ``path`` (e2e runs go under ``run_root``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    spans = steer_spans(model, tok, n_random=n_random)
    agreement = pair_direction_agreement(model, tok)
    e2e = e2e_runs(path, run_root)
    return {
        **spans,
        "agreement": agreement,
        "e2e": e2e,
        "passed": {
            "span": spans["span"] > SPAN_FACTOR * spans["random_p95"],
            "agreement": min(agreement.values()) >= MIN_AGREEMENT,
            "e2e": all(r["slope"] > 0 and r["p_random"] < E2E_ALPHA for r in e2e.values()),
        },
    }
