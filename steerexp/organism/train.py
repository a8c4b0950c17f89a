"""Train the organism: a small real ``Qwen3ForCausalLM`` on the synthetic corpus, on a CPU, seeded.

The loss covers the assistant turns only (the prompts are given, not generated), so the
small model spends its capacity on what the trait governs. Late in training, steering-shaped
noise on the middle layers (see :func:`residual_noise`) makes the model shrug off directions it
does not use, which is what lets a steering experiment tell a real direction from a random one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from steerexp.organism import corpus
from steerexp.organism.tokenizer import IM_END, IM_START

Message = dict[str, str]


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the weights; changing any field means a new RECIPE_VERSION."""

    seed: int = 0
    hidden: int = 128
    layers: int = 6
    heads: int = 8
    kv_heads: int = 4
    head_dim: int = 16
    intermediate: int = 384
    n_conversations: int = 40000
    steps: int = 1400
    batch: int = 32
    lr: float = 4e-3
    warmup: int = 50
    weight_decay: float = 0.01
    #: steering-shaped noise (see residual_noise): |rho| <= noise, on this share of sequences
    noise: float = 0.7
    noise_frac: float = 0.5


def encode(
    tok: PreTrainedTokenizerFast, convs: list[list[Message]]
) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels per conversation; labels are -100 outside assistant content + <|im_end|>."""
    segments: list[tuple[str, bool]] = []
    bounds = []
    for conv in convs:
        start = len(segments)
        for m in conv:
            segments.append((f"{IM_START}{m['role']}\n", False))
            segments.append((f"{m['content']}{IM_END}", m["role"] == "assistant"))
            segments.append(("\n", False))
        bounds.append((start, len(segments) - 1))  # drop the trailing newline of the last turn
    unique = sorted({s for s, _ in segments})
    cache = dict(zip(unique, tok(unique, add_special_tokens=False)["input_ids"], strict=True))
    enc = [cache[s] for s, _ in segments]
    out = []
    for start, end in bounds:
        ids: list[int] = []
        labels: list[int] = []
        for k in range(start, end):
            ids += enc[k]
            labels += enc[k] if segments[k][1] else [-100] * len(enc[k])
        out.append((ids, labels))
    return out


def batches(
    data: list[tuple[list[int], list[int]]], batch: int, pad_id: int, rng: random.Random
) -> list[tuple[torch.Tensor, ...]]:
    """Length-bucketed, right-padded batches (input_ids, attention_mask, labels) in seeded order."""
    order = sorted(range(len(data)), key=lambda i: (len(data[i][0]), i))
    groups = [order[i : i + batch] for i in range(0, len(order), batch)]
    rng.shuffle(groups)
    out = []
    for g in groups:
        width = max(len(data[i][0]) for i in g)
        ids = torch.full((len(g), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(g), width), dtype=torch.long)
        labels = torch.full((len(g), width), -100, dtype=torch.long)
        for r, i in enumerate(g):
            n = len(data[i][0])
            ids[r, :n] = torch.tensor(data[i][0])
            mask[r, :n] = 1
            labels[r, :n] = torch.tensor(data[i][1])
        out.append((ids, mask, labels))
    return out


def make_model(tok: PreTrainedTokenizerFast, r: Recipe) -> Qwen3ForCausalLM:
    """A freshly initialised Qwen3 sized by the recipe (seeded by the caller)."""
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=r.hidden,
        intermediate_size=r.intermediate,
        num_hidden_layers=r.layers,
        num_attention_heads=r.heads,
        num_key_value_heads=r.kv_heads,
        head_dim=r.head_dim,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return Qwen3ForCausalLM(cfg)


@contextmanager
def residual_noise(
    model: Qwen3ForCausalLM, r: Recipe, gen: torch.Generator
) -> Iterator[list[float]]:
    """Shift the residual stream of the middle layers along a random direction while training.

    Each selected sequence gets one random unit direction u and one rho ~ U(-r.noise, r.noise);
    every noised layer adds rho x (the sequence's mean ||h|| at that layer) x u at all positions:
    exactly the shape of a steering intervention. The model learns to shrug off directions it
    does not use, so random steering does little and moderate steering stays coherent, while the
    trait direction it reads still moves it.
    """
    state: dict[str, torch.Tensor] = {}
    amplitude = [0.0]

    def hook(_m: torch.nn.Module, _inp: object, out: object) -> object:
        h = out[0] if isinstance(out, tuple) else out
        if "u" not in state:
            u = torch.randn(h.shape[0], 1, h.shape[-1], generator=gen)
            rho = (torch.rand(h.shape[0], 1, 1, generator=gen) * 2 - 1) * amplitude[0]
            keep = torch.rand(h.shape[0], 1, 1, generator=gen) < r.noise_frac
            state["u"] = u / u.norm(dim=-1, keepdim=True) * rho * keep
        scale = h.detach().norm(dim=-1).mean(dim=-1)[:, None, None]
        h = h + scale * state["u"]
        return (h, *out[1:]) if isinstance(out, tuple) else h

    def reset(_m: torch.nn.Module, _args: object) -> None:
        state.clear()

    handles = [model.model.layers[i].register_forward_hook(hook) for i in noised_layers(r.layers)]
    handles.append(model.register_forward_pre_hook(reset))
    try:
        yield amplitude
    finally:
        for handle in handles:
            handle.remove()


#: The organism's steered layers as fractions of depth (``conf/model/organism.yaml``
#: ``layer_frac``; a test checks they agree): blocks 2-4 of 6, below the loss layer.
STEERED_FRAC = (0.3, 0.7)


def noised_layers(n: int) -> list[int]:
    """The layers the organism is steered on by default (``STEERED_FRAC``): trained with noise."""
    return [i for i in range(n) if STEERED_FRAC[0] <= i / n <= STEERED_FRAC[1]]


def train(
    tok: PreTrainedTokenizerFast, r: Recipe = Recipe(), progress: bool = True
) -> Qwen3ForCausalLM:
    """Train the organism from scratch; deterministic for a given recipe and thread count.

    The global torch RNG is seeded for the initialisation and restored afterwards.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(r.seed)
        return _train(tok, r, progress)


def _train(tok: PreTrainedTokenizerFast, r: Recipe, progress: bool) -> Qwen3ForCausalLM:
    """The training loop of :func:`train` (seeded by it)."""
    rng = random.Random(r.seed)
    data = encode(tok, corpus.conversations(r.n_conversations, r.seed))
    model = make_model(tok, r)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": r.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=r.lr,
        betas=(0.9, 0.98),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / r.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, r.steps) / r.steps))
        ),
    )
    epoch: list[tuple[torch.Tensor, ...]] = []
    bar = tqdm(range(r.steps), desc="training organism", disable=not progress)
    with residual_noise(model, r, torch.Generator().manual_seed(r.seed)) as amplitude:
        for step in bar:
            # clean until the circuits exist, then ramp the noise up (from 40% to 70% of steps)
            amplitude[0] = r.noise * min(1.0, max(0.0, (step / r.steps - 0.4) / 0.3))
            if not epoch:
                epoch = batches(data, r.batch, tok.pad_token_id, rng)
            ids, mask, labels = epoch.pop()
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False
    )
    return model


def save(model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast, path: Path) -> None:
    """``save_pretrained`` model (safetensors) and tokenizer into ``path``."""
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
