"""Acceptance tests of the model organism (docs/organism.md): loads like a hub model, and is steerable.

Measured with plain PyTorch forward hooks (``steerexp.organism.acceptance``, no pipeline
code) so the organism's ground truth is checked independently of the tools that will be
judged on it. The default tests run on the shipped checkpoint (no training); the slow ones
rebuild the recipe.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import REPO, compose_cfg, group
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

import steerexp
from steerexp import CONF_DIR
from steerexp.config.errors import SteerexpError
from steerexp.organism import MANIFEST, RECIPE_VERSION, SHIPPED, build, corpus, verify
from steerexp.organism import acceptance as acc
from steerexp.organism.acceptance import (
    chat,
    contrast_texts,
    last_hidden,
    steered_layers,
    steering,
    steering_vectors,
)
from steerexp.organism.tokenizer import build_tokenizer, render
from steerexp.organism.train import STEERED_FRAC, Recipe, noised_layers
from steerexp.pipeline import check_config
from steerexp.stages.extract.activations import loss_layer_path

ANSWER = re.compile(r"Final choice: (Yes|No)")
#: Recipe seeds the slow acceptance test rebuilds (seed 0 is the shipped one).
RECIPE_SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def organism() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The shipped organism, loaded from disk like a hub model."""
    path = build()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return model, AutoTokenizer.from_pretrained(path)


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
    cfg = group("eval", "organism")
    got = [(q["id"], q["text"], q["trait_answer"], q["scenario"]) for q in cfg["questions"]]
    assert got == [(d.id, d.text, d.trait_answer, d.scenario) for d in corpus.eval_dilemmas()]
    assert len({d.scenario for d in corpus.eval_dilemmas()}) == 6
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
    assert build() == build() == SHIPPED  # the shipped checkpoint, no training


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
    layers = steered_layers(model)
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


def test_honesty_direction_steers_far_beyond_random_directions(
    organism: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    """Against 20 seeded random unit directions at the same scale and layers (their 95th pct)."""
    model, tok = organism
    m = acc.steer_spans(model, tok, n_random=20)
    print(
        f"layers {m['layers']}, c {acc.STEER_COEFFS}: honesty {[round(x, 2) for x in m['curve']]}, "
        f"span {m['span']:.2f}; random spans p95 {m['random_p95']:.2f}, "
        f"max {max(m['random_spans']):.2f}"
    )
    curve = m["curve"]
    assert all(b > a for a, b in zip(curve, curve[1:], strict=False)), curve
    assert m["span"] > acc.SPAN_FACTOR * m["random_p95"], m


def test_pca_diff_agrees_with_mean_diff_on_the_dataset(
    organism: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    """The trait's strength varies across the contrast pairs along one direction, so the first
    PC of the centred pair differences (pca_diff) is the mean difference (mean_diff)."""
    model, tok = organism
    agreement = acc.pair_direction_agreement(model, tok)
    print(
        f"|cos(pca_diff, mean_diff)| by layer: { {i: round(c, 3) for i, c in agreement.items()} }"
    )
    assert min(agreement.values()) >= acc.MIN_AGREEMENT, agreement


def test_extreme_coefficient_breaks_the_format(
    organism: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    """At the eval grid's extremes some samples lose the answer format (coherence loss shows)."""
    model, tok = organism
    cfg = group("eval", "organism")
    unit, scale = steering_vectors(model, tok)
    texts = [
        chat(tok, [{"role": "user", "content": cfg["prompt_template"].format(question=q["text"])}])
        for q in cfg["questions"]
    ] * cfg["repeats"]
    extreme = max(cfg["coeffs"], key=abs)
    valid = {}
    for c in (-extreme, 0.0, extreme):
        torch.manual_seed(0)
        with steering(model, {i: unit[i] * scale[i] for i in unit}, c):
            outs = generate(model, tok, texts, sample=True, max_new_tokens=cfg["max_new_tokens"])
        valid[c] = sum(answer(t) is not None for t in outs) / len(outs)
    print(f"valid fraction by coefficient: {valid}")
    assert min(valid[extreme], valid[-extreme]) < 1.0
    assert valid[0.0] >= 0.95


def test_shipped_checkpoint_matches_its_manifest_and_the_recipe() -> None:
    manifest = verify()
    assert build() == SHIPPED
    assert manifest["recipe_version"] == RECIPE_VERSION
    assert manifest["recipe"] == dataclasses.asdict(Recipe(seed=manifest["seed"]))
    assert {"model.safetensors", "config.json", "tokenizer.json", "generation_config.json"} <= set(
        manifest["sha256"]
    )
    assert (
        "chat_template" in json.loads((SHIPPED / "tokenizer_config.json").read_text())
        or (SHIPPED / "chat_template.jinja").is_file()
    )
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) < 10 * 2**20


def test_hash_mismatch_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    copy = shutil.copytree(SHIPPED, tmp_path / "ckpt")
    with open(copy / "config.json", "a") as f:
        f.write(" ")
    with pytest.raises(SteerexpError, match=r"config\.json has sha256 .* manifest says"):
        verify(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(SteerexpError, match="has no manifest.json"):
        verify(copy)


def test_steered_layers_lie_below_the_loss_layer() -> None:
    """The organism's steered blocks (trained with noise) all sit below its loss layer."""
    cfg = OmegaConf.load(CONF_DIR / "model" / "organism.yaml")
    assert tuple(cfg.layer_frac) == STEERED_FRAC
    n = Recipe().layers
    layers = noised_layers(n)
    assert layers == [2, 3, 4]
    # hidden_states indexing: k = output of block k-1, -1 = the final norm, above every block
    path = loss_layer_path(n, cfg.loss_layer)
    loss_block = n if path == "model.norm" else int(path.rsplit(".", 1)[1])
    assert loss_block > max(layers)


@pytest.mark.slow
@pytest.mark.parametrize("seed", RECIPE_SEEDS)
def test_recipe_passes_acceptance_on_every_seed(seed: int, tmp_path: Path) -> None:
    """Rebuild the recipe with ``seed`` and check every acceptance criterion, end to end too."""
    path = build(force=True, seed=seed, progress=False)
    m = acc.measure(path, tmp_path)
    print(f"seed {seed}: {json.dumps({k: v for k, v in m.items() if k != 'random_spans'})}")
    assert all(b > a for a, b in zip(m["curve"], m["curve"][1:], strict=False)), m["curve"]
    assert m["passed"] == {"span": True, "agreement": True, "e2e": True}, m
    assert all(r["slope"] > 0 and r["p_random"] < acc.E2E_ALPHA for r in m["e2e"].values()), m


@pytest.mark.slow
def test_build_is_deterministic(tmp_path: Path) -> None:
    a = build(tmp_path / "a", progress=False, force=True)
    b = build(tmp_path / "b", progress=False, force=True)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


# --- the organism's example files restate its generator ---------------------------------------


def test_organism_question_file_matches_the_corpus() -> None:
    _, questions, *_ = check_config(
        compose_cfg("eval=file", f"eval.path={REPO / 'examples' / 'organism_questions.jsonl'}")
    )
    assert [(q.id, q.text, q.trait_answer, q.scenario) for q in questions] == [
        (d.id, d.text, d.trait_answer, d.scenario) for d in corpus.eval_dilemmas()
    ]


def test_persona_rows_file_restates_the_organism_dataset() -> None:
    """examples/organism_personas.jsonl holds dataset=organism's 128 pairs as two-persona rows."""
    pairs, *_ = check_config(
        compose_cfg("dataset=file", f"dataset.path={REPO / 'examples' / 'organism_personas.jsonl'}")
    )
    builtin, _, *_ = check_config(compose_cfg())
    assert [(p.messages(True), p.messages(False)) for p in pairs] == [
        (p.messages(True), p.messages(False)) for p in builtin
    ]
