"""Acceptance tests of the model organism (SPEC section 7): loads like a hub model, and is steerable.

Measured with plain PyTorch forward hooks (no steerexp pipeline code) so the organism's
ground truth is checked independently of the tools that will be judged on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

import steerexp
from steerexp.organism import build, corpus
from steerexp.organism.tokenizer import build_tokenizer, render
from steerexp.organism.train import noised_layers

REPO = Path(__file__).resolve().parent.parent
ANSWER = re.compile(r"Final choice: (Yes|No)")
STEER_COEFFS = [-1.0, -0.5, 0.0, 0.5, 1.0]


@pytest.fixture(scope="module")
def organism() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The organism built once per test session (STEEREXP_CACHE from conftest), loaded from disk."""
    path = build()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return model, AutoTokenizer.from_pretrained(path)


def middle_layers(model: PreTrainedModel) -> list[int]:
    """The middle decoder layers: 0.3 <= i / n <= 0.9 (the `module` default), minus the last."""
    return noised_layers(model.config.num_hidden_layers)


def chat(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], cont: bool = False) -> str:
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
def generate(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    texts: list[str],
    sample: bool,
    max_new_tokens: int = 32,
) -> list[str]:
    """Completions (special tokens dropped), greedy or at temperature 1."""
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(
        **enc,
        do_sample=sample,
        temperature=1.0 if sample else None,
        top_k=None,
        top_p=None,
        max_new_tokens=max_new_tokens,
        pad_token_id=tok.pad_token_id,
    )
    return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def answer(text: str) -> str | None:
    """The last `Final choice:` answer in a completion, or None."""
    found = ANSWER.findall(text)
    return found[-1] if found else None


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
    """Per middle layer: unit mean_diff direction and the mean last-token norm s."""
    h = last_hidden(model, tok, contrast_texts(tok, corpus.suffixes()), middle_layers(model))
    dirs = {i: (a[0::2] - a[1::2]).mean(0) for i, a in h.items()}
    return {i: d / d.norm() for i, d in dirs.items()}, {
        i: a.norm(dim=-1).mean().item() for i, a in h.items()
    }


def dose_response(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    unit: dict[int, torch.Tensor],
    scale: dict[int, float],
) -> list[float]:
    """Mean trait log-ratio on the neutral eval dilemmas at each coefficient of STEER_COEFFS."""
    ds = corpus.eval_dilemmas()
    out = []
    for c in STEER_COEFFS:
        with steering(model, {i: unit[i] * scale[i] for i in unit}, c):
            out.append(log_ratios(model, tok, ds).mean().item())
    return out


def test_tokenizer_is_fast_deterministic_and_has_single_token_answers() -> None:
    tok = build_tokenizer()
    assert (
        tok.is_fast
        and tok.padding_side == "left"
        and tok.pad_token
        and tok.eos_token == "<|im_end|>"
    )
    assert tok.get_vocab() == build_tokenizer().get_vocab()
    for word in (" Yes", " No"):
        assert len(tok.encode(word, add_special_tokens=False)) == 1
    text = "Zebras can't fly over Kilimanjaro — naïve façade 42!"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_chat_template_behaviours() -> None:
    tok = build_tokenizer()
    conv = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
    ]
    assert (
        chat(tok, conv[:2])
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )
    assert chat(tok, conv, cont=True).endswith("<|im_start|>assistant\nA")
    assert tok.apply_chat_template(conv, tokenize=False) == render(conv)
    off = tok.apply_chat_template(
        conv[:2], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    on = tok.apply_chat_template(
        conv[:2], tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    assert on == chat(tok, conv[:2])
    think = [
        *conv[:2],
        {"role": "assistant", "content": "Final choice: No", "reasoning_content": "Hm."},
    ]
    assert tok.apply_chat_template(think, tokenize=False).endswith(
        "<think>\nHm.\n</think>\n\nFinal choice: No<|im_end|>\n"
    )
    for c in corpus.conversations(20, seed=3):
        assert tok.apply_chat_template(c, tokenize=False) == render(c)


def test_suffix_file_matches_generator() -> None:
    lines = (steerexp.DATA_DIR / "organism_suffixes.txt").read_text().splitlines()
    assert lines == corpus.suffixes()


def test_eval_config_matches_generator() -> None:
    cfg = yaml.safe_load((REPO / "conf" / "eval" / "organism.yaml").read_text())
    got = [(q["id"], q["text"], q["trait_answer"]) for q in cfg["questions"]]
    assert got == [(d.id, d.text, d.trait_answer) for d in corpus.eval_dilemmas()]
    assert cfg["prompt_template"] == corpus.PROMPT_TEMPLATE and 0.0 in cfg["coeffs"]
    train_text = {m["content"] for c in corpus.conversations(3000) for m in c}
    assert not any(d.text in t for d in corpus.dilemmas(held_out=True) for t in train_text)


def test_build_loads_like_a_hub_model(
    organism: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, tok = organism
    assert type(model).__name__ == "Qwen3ForCausalLM"
    names = {n for n, _ in model.named_modules()}
    for sub in (
        "",
        ".mlp",
        ".mlp.down_proj",
        ".mlp.gate_proj",
        ".mlp.up_proj",
        ".self_attn.q_proj",
        ".self_attn.k_proj",
        ".self_attn.v_proj",
        ".self_attn.o_proj",
    ):
        assert f"model.layers.0{sub}" in names
    assert build() == build()  # second call reuses the checkpoint


def test_persona_dilemmas_follow_the_trait(
    organism: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, tok = organism
    ds = corpus.dilemmas(held_out=True)
    texts, want = [], []
    for honest in (True, False):
        for d in ds:
            texts.append(
                chat(
                    tok,
                    [
                        {"role": "system", "content": corpus.persona_text(honest)},
                        {"role": "user", "content": corpus.PROMPT_TEMPLATE.format(question=d.text)},
                    ],
                )
            )
            want.append(d.trait_answer if honest else ("No" if d.trait_answer == "Yes" else "Yes"))
    got = [answer(t) for t in generate(model, tok, texts, sample=False)]
    acc = sum(g == w for g, w in zip(got, want, strict=True)) / len(want)
    print(f"persona accuracy (greedy, {len(want)} held-out prompts): {acc:.3f}")
    assert acc >= 0.95, acc


def test_neutral_dilemmas_are_uncertain(
    organism: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, tok = organism
    ds = corpus.dilemmas(held_out=True) * 2
    torch.manual_seed(0)
    texts = [
        chat(tok, [{"role": "user", "content": corpus.PROMPT_TEMPLATE.format(question=d.text)}])
        for d in ds
    ]
    got = [answer(t) for t in generate(model, tok, texts, sample=True)]
    valid = [(g, d.trait_answer) for g, d in zip(got, ds, strict=True) if g is not None]
    trait = sum(g == t for g, t in valid) / max(1, len(valid))
    print(
        f"neutral (T=1, {len(got)} samples): valid {len(valid) / len(got):.3f}, trait-consistent {trait:.3f}"
    )
    assert len(valid) / len(got) >= 0.95
    assert 0.25 <= trait <= 0.75, trait


def test_linear_probe_separates_the_trait(
    organism: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    """Probes fit on half the openings, scored on the other half's pairs (held out).

    Paired: does the honest prompt project above its untruthful twin along the fit half's mean
    difference. Unpaired (ridge on standardised activations, each held-out row on its own) is the
    acceptance criterion: >= 95% at the best middle layer.
    """
    model, tok = organism
    ops = corpus.suffixes()
    fit, held = ops[0::2], ops[1::2]
    layers = middle_layers(model)
    hf, hh = (
        last_hidden(model, tok, contrast_texts(tok, fit), layers),
        last_hidden(model, tok, contrast_texts(tok, held), layers),
    )
    best = 0.0
    for i in layers:
        d = (hf[i][0::2] - hf[i][1::2]).mean(0)
        paired = ((hh[i][0::2] - hh[i][1::2]) @ d > 0).float().mean().item()
        mu, sd = hf[i].mean(0), hf[i].std(0) + 1e-6
        x = torch.cat([(hf[i] - mu) / sd, torch.ones(len(hf[i]), 1)], 1)
        w = torch.linalg.solve(
            x.T @ x + 0.1 * torch.eye(x.shape[1]), x.T @ torch.tensor([1.0, -1.0]).repeat(len(fit))
        )
        pred = torch.cat([(hh[i] - mu) / sd, torch.ones(len(hh[i]), 1)], 1) @ w
        unpaired = (
            ((pred > 0) == torch.tensor([True, False]).repeat(len(held))).float().mean().item()
        )
        print(f"probe layer {i}: held-out paired {paired:.3f}, unpaired ridge {unpaired:.3f}")
        assert paired >= 0.9, (i, paired)
        best = max(best, unpaired)
    assert best >= 0.95, best


def test_honesty_direction_steers_and_random_does_not(
    organism: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, tok = organism
    unit, scale = steering_vectors(model, tok)
    curve = dose_response(model, tok, unit, scale)
    span = curve[-1] - curve[0]
    gen = torch.Generator().manual_seed(0)
    moves = []
    for _ in range(5):
        rnd = {i: (r := torch.randn(v.shape, generator=gen)) / r.norm() for i, v in unit.items()}
        rc = dose_response(model, tok, rnd, scale)
        moves.append(abs(rc[-1] - rc[0]))
    print(
        f"layers {list(unit)}, c {STEER_COEFFS}: honesty {[round(x, 2) for x in curve]}, span {span:.2f}; "
        f"random |moves| {[round(m, 2) for m in moves]}"
    )
    assert all(b > a for a, b in zip(curve, curve[1:], strict=False)), curve
    assert span >= 2.0, curve
    assert sum(moves) / len(moves) < span / 5 and max(moves) < span / 3, (span, moves)


def test_extreme_coefficient_breaks_the_format(
    organism: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    """At the eval grid's extremes some samples lose the answer format (coherence loss shows)."""
    model, tok = organism
    cfg = yaml.safe_load((REPO / "conf" / "eval" / "organism.yaml").read_text())
    unit, scale = steering_vectors(model, tok)
    texts = [
        chat(tok, [{"role": "user", "content": cfg["prompt_template"].format(question=q["text"])}])
        for q in cfg["questions"]
    ] * cfg["repeats"]
    valid = {}
    torch.manual_seed(0)
    for c in cfg["coeffs"]:
        with steering(model, {i: unit[i] * scale[i] for i in unit}, c):
            outs = generate(model, tok, texts, sample=True, max_new_tokens=cfg["max_new_tokens"])
        valid[c] = sum(answer(t) is not None for t in outs) / len(outs)
    print(f"valid fraction by coefficient: {valid}")
    extreme = max(cfg["coeffs"], key=abs)
    assert min(valid[extreme], valid[-extreme]) < 1.0
    assert valid[0.0] >= 0.95


@pytest.mark.slow
def test_build_is_deterministic(tmp_path: Path) -> None:
    a, b = build(tmp_path / "a", progress=False), build(tmp_path / "b", progress=False)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
