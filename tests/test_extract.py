"""Extraction: right token, right gradients, planted directions recovered, cache behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import group, tiny

from steerexp.config.compose import typed
from steerexp.config.errors import SteerexpError
from steerexp.data.pairs import load_pairs
from steerexp.data.records import Pair
from steerexp.models.modules import resolve_modules
from steerexp.models.tokens import encode, last_token_index, left_pad
from steerexp.stages.extract.activations import extract, loss_layer_path
from steerexp.stages.extract.losses import LOSSES, LossInputs
from steerexp.stages.fit.methods import fit_direction
from steerexp.store import context

HS = ["model.layers.1", "model.layers.2"]


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def pairs() -> list[Pair]:
    return load_pairs({**group("dataset", "honesty"), "max_pairs": 12})


@pytest.fixture(autouse=True)
def fresh_memo():
    with context.fresh():
        yield


def test_last_token_index_under_left_padding() -> None:
    ids, mask = left_pad([[5, 6, 7], [8], [1, 2, 3, 4, 5]], pad_id=0)
    assert ids.tolist()[1] == [0, 0, 0, 0, 8]
    assert last_token_index(mask).tolist() == [4, 4, 4]
    right = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    assert last_token_index(right).tolist() == [1, 0, 2]


def test_loss_layer_path_maps_hidden_states_index() -> None:
    assert loss_layer_path(36, -3) == "model.layers.33"
    assert loss_layer_path(4, -1) == "model.norm"
    assert loss_layer_path(4, 4) == "model.norm"
    assert loss_layer_path(4, -2) == "model.layers.2"  # hidden_states[3]: block 2
    assert loss_layer_path(4, 1) == "model.layers.0"
    assert loss_layer_path(4, 0) == loss_layer_path(4, -5) == "model.embed_tokens"
    with pytest.raises(SteerexpError, match=r"loss.layer=5 .*valid: 0..4 or -5..-1"):
        loss_layer_path(4, 5)
    with pytest.raises(SteerexpError, match="loss.layer=-9"):
        loss_layer_path(4, -9)


def test_acts_read_at_last_real_token(model, pairs) -> None:
    """Row i's activation equals an unpadded single-sequence forward at its final token."""
    e = extract(
        model,
        group("model", "tiny_random"),
        HS,
        group("loss", "nll"),
        pairs[:3],
        6,
        None,
        progress=False,
    )
    for row, p in enumerate(
        [pairs[0].messages(True), pairs[0].messages(False), pairs[1].messages(True)]
    ):
        ids, _ = encode(model.tokenizer, p, {})
        out = model.hf(torch.tensor([ids]), output_hidden_states=True)
        ref = out.hidden_states[2][0, -1]  # output of block 1
        torch.testing.assert_close(e.acts["model.layers.1"][row], ref, rtol=1e-4, atol=1e-5)


def _reference(model, pairs, modules, loss_cfg, grad_tokens: str) -> dict[str, torch.Tensor]:
    """Plain HF forward + forward hooks + torch.autograd, no nnsight, whole set in one batch."""
    seqs = []
    for p in pairs:
        seqs += [
            encode(model.tokenizer, p.messages(True), {}),
            encode(model.tokenizer, p.messages(False), {}),
        ]
    ids, mask = left_pad([s for s, _ in seqs], model.tokenizer.pad_token_id)
    width = ids.shape[1]
    tmask = torch.zeros_like(mask)
    for i, (_, n) in enumerate(seqs):
        tmask[i, width - n :] = 1
    loss_path = loss_layer_path(model.n_layers, loss_cfg["layer"])
    outs: dict[str, torch.Tensor] = {}
    mods = dict(model.hf.named_modules())
    hooks = [
        mods[m].register_forward_hook(
            lambda _m, _a, o, m=m: outs.__setitem__(m, o[0] if isinstance(o, tuple) else o)
        )
        for m in {*modules, loss_path}
    ]
    try:
        logits = model.hf(input_ids=ids, attention_mask=mask).logits
    finally:
        for h in hooks:
            h.remove()
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    ell = (lp * tmask[:, 1:]).sum(1) / tmask[:, 1:].sum(1)
    h = outs[loss_path][:, -1]
    loss = LOSSES.get(loss_cfg["name"])(
        LossInputs(h[0::2], h[1::2], ell[0::2], ell[1::2], len(pairs)), loss_cfg
    )
    grads = torch.autograd.grad(loss, [outs[m] for m in modules])
    ref = {}
    for m, g in zip(modules, grads, strict=True):
        ref[m] = (g * mask[..., None]).sum(1) if grad_tokens == "all" else g[:, -1]
    return ref


@pytest.mark.parametrize("loss", ["nll", "hs_diff", "reprpo_margin"])
@pytest.mark.parametrize("grad_tokens", ["all", "last"])
def test_gradients_match_plain_autograd(model, pairs, loss: str, grad_tokens: str) -> None:
    modules = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.k_proj", "model.layers.2"]
    cfg = {**group("loss", loss), "layer": -2}
    e = extract(
        model,
        group("model", "tiny_random"),
        modules,
        cfg,
        pairs[:6],
        4,
        None,
        progress=False,
        grad_tokens=grad_tokens,
    )
    ref = _reference(model, pairs[:6], modules, cfg, grad_tokens)
    for m in modules:
        scale = ref[m].norm()
        if scale == 0:
            assert e.grads[m].abs().max() == 0
            continue
        assert float((e.grads[m] - ref[m]).norm() / scale) <= 1e-4, m
    if loss != "nll" or grad_tokens == "all":
        assert e.grads["model.layers.1.self_attn.k_proj"].abs().sum() > 0


def test_nll_gradient_at_last_token_is_zero_so_default_sums(model, pairs) -> None:
    """Why grad_tokens=all is the default: the last position predicts no token of the sequence."""
    kw = dict(cache_root=None, progress=False)
    last = extract(
        model,
        group("model", "tiny_random"),
        HS,
        group("loss", "nll"),
        pairs[:4],
        8,
        grad_tokens="last",
        **kw,
    )
    summed = extract(
        model,
        group("model", "tiny_random"),
        HS,
        group("loss", "nll"),
        pairs[:4],
        8,
        grad_tokens="all",
        **kw,
    )
    assert last.grads[HS[0]].abs().max() == 0
    assert summed.grads[HS[0]].abs().max() > 0


def test_planted_direction_recovered(model, pairs) -> None:
    """Positive rows carry alpha_i * v (alpha varies by pair) in the residual stream after block 1
    (planted in its MLP output, which the block adds to the residual): mean_diff and pca_diff
    recover v with cosine >= 0.99 and the right sign."""
    g = torch.Generator().manual_seed(7)
    v = torch.randn(model.hf.config.hidden_size, generator=g)
    v = v / v.norm()

    def plant(_m, _a, out):
        h = out[0] if isinstance(out, tuple) else out
        alpha = (
            10.0
            * (2.0 + torch.arange(h.shape[0], dtype=h.dtype) // 2 % 5)
            * (torch.arange(h.shape[0]) % 2 == 0)
        )
        h = h + alpha[:, None, None] * v * float(h.detach().norm(dim=-1).mean())
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = model.hf.model.layers[1].mlp.register_forward_hook(plant)
    try:
        e = extract(
            model,
            group("model", "tiny_random"),
            ["model.layers.1"],
            group("loss", "nll"),
            pairs,
            12,
            None,
            progress=False,
        )
    finally:
        handle.remove()
    for method in ("mean_diff", "pca_diff"):
        d = fit_direction(
            method, e.acts["model.layers.1"], e.grads["model.layers.1"], e.loss_grad_norms
        )
        assert float(d @ v) >= 0.99, method


def test_cache_hit_skips_forward_and_is_identical(model, pairs, tmp_path: Path) -> None:
    calls = {"n": 0}
    handle = model.hf.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    args = (
        model,
        group("model", "tiny_random"),
        HS,
        group("loss", "hs_diff"),
        pairs[:4],
        4,
        tmp_path,
    )
    try:
        first = extract(*args, progress=False)
        n_first = calls["n"]
        context.current().extractions.clear()
        second = extract(*args, progress=False)
    finally:
        handle.remove()
    assert n_first == 2 and calls["n"] == n_first, "cache hit must not run the model"
    assert not first.cached and second.cached and first.key == second.key
    for m in HS:
        assert torch.equal(first.acts[m], second.acts[m]) and torch.equal(
            first.grads[m], second.grads[m]
        )
    other = extract(
        model,
        group("model", "tiny_random"),
        HS,
        group("loss", "hs_diff"),
        pairs[4:8],
        4,
        tmp_path,
        progress=False,
    )
    assert other.key != first.key, "a changed dataset must change the key"


def test_corrupt_cache_entry_is_rebuilt(model, pairs, tmp_path: Path) -> None:
    args = (model, group("model", "tiny_random"), HS, group("loss", "nll"), pairs[:2], 4, tmp_path)
    first = extract(*args, progress=False)
    f = tmp_path / first.key / "activations.safetensors"
    f.write_bytes(f.read_bytes()[:-40])
    context.current().extractions.clear()
    again = extract(*args, progress=False)
    assert not again.cached
    assert torch.equal(again.acts[HS[0]], first.acts[HS[0]])
    assert (tmp_path / first.key / "key.json").exists()


def test_bad_inputs_one_line_errors(model, pairs) -> None:
    mc, nll = group("model", "tiny_random"), group("loss", "nll")
    with pytest.raises(SteerexpError, match="contrast set is empty"):
        extract(model, mc, HS, nll, [], 4, None, progress=False)
    with pytest.raises(SteerexpError, match=r"unknown loss.tokens 'some'; valid: all, suffix"):
        typed("loss", {**nll, "tokens": "some"})  # the one conversion, where a dict comes in
    with pytest.raises(SteerexpError, match=r"unknown loss 'nl'; did you mean 'nll'"):
        extract(model, mc, HS, {**nll, "name": "nl"}, pairs, 4, None, progress=False)
    with pytest.raises(SteerexpError, match=r"empty side"):
        load_pairs({**group("dataset", "honesty"), "negative": ""})

    def poison(_m, _a, out):
        return out * float("nan")

    handle = model.hf.model.layers[2].mlp.register_forward_hook(poison)
    try:
        with pytest.raises(
            SteerexpError,
            match=r"non-finite activations at module 'model.layers.2' in extraction batch 0",
        ):
            extract(model, mc, HS, nll, pairs[:2], 4, None, progress=False)
    finally:
        handle.remove()
    for err in (SteerexpError("a\nb"),):
        assert "\n" not in str(err)


def test_module_template_errors_name_close_modules(model) -> None:
    with pytest.raises(
        SteerexpError,
        match=r"module.template='model.layers.\{N\}.mlp.gate_up_proj' matches no module.*closest: .*gate_proj",
    ):
        resolve_modules(
            model,
            {
                "template": "model.layers.{N}.mlp.gate_up_proj",
                "layers": None,
                "layer_frac": [0.3, 0.9],
            },
        )
    with pytest.raises(SteerexpError, match=r"module.layers=\[7\] is outside the model's 4 layers"):
        resolve_modules(
            model, {"template": "model.layers.{N}", "layers": [7], "layer_frac": [0.3, 0.9]}
        )
    assert resolve_modules(model, group("module", "o_proj")) == [
        f"model.layers.{i}.self_attn.o_proj" for i in (2, 3)
    ]


def test_activations_are_cached_without_the_loss(model, pairs, tmp_path: Path) -> None:
    """A loss sweep shares one activation entry; an activation-only extraction runs no backward
    and, once cached, no forward."""
    mc = group("model", "tiny_random")
    nll = extract(model, mc, HS, group("loss", "nll"), pairs[:4], 4, tmp_path, progress=False)
    hs = extract(model, mc, HS, group("loss", "hs_diff"), pairs[:4], 4, tmp_path, progress=False)
    assert nll.acts_key == hs.acts_key and nll.key != hs.key
    assert (tmp_path / nll.acts_key).is_dir() and (tmp_path / nll.key).is_dir()
    context.current().extractions.clear()
    calls = {"n": 0}
    handle = model.hf.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        acts_only = extract(
            model,
            mc,
            HS,
            group("loss", "reprpo_margin"),
            pairs[:4],
            4,
            tmp_path,
            progress=False,
            need_grads=False,
        )
    finally:
        handle.remove()
    assert calls["n"] == 0 and acts_only.cached and acts_only.key == nll.acts_key
    assert acts_only.grads == {} and acts_only.loss_grad_norms is None
    for m in HS:
        assert torch.equal(acts_only.acts[m], nll.acts[m])


def test_loss_grad_norms_are_each_samples_own_term(model, pairs) -> None:
    """No 1/n_pairs factor: the same pairs give the same norms inside a 2-pair and an 8-pair set."""
    mc, nll = group("model", "tiny_random"), group("loss", "nll")
    small = extract(model, mc, HS, nll, pairs[:2], 4, None, progress=False)
    large = extract(model, mc, HS, nll, pairs[:8], 4, None, progress=False)
    torch.testing.assert_close(small.loss_grad_norms, large.loss_grad_norms[:4], rtol=1e-5, atol=0)
    assert float(small.loss_grad_norms.min()) > 1e-4
    torch.testing.assert_close(small.grads[HS[0]] / 4, large.grads[HS[0]][:4], rtol=1e-4, atol=1e-9)


def test_loss_layer_indexes_like_output_hidden_states() -> None:
    model = tiny()
    ids = model.tokenizer("Would you lie to a friend?", return_tensors="pt").input_ids
    mods = dict(model.hf.named_modules())
    got: dict[str, torch.Tensor] = {}
    for k in range(-model.n_layers - 1, model.n_layers + 1):
        path = loss_layer_path(model.n_layers, k)
        hook = mods[path].register_forward_hook(
            lambda _m, _a, o: got.__setitem__("h", o[0] if isinstance(o, tuple) else o)
        )
        try:
            hs = model.hf(ids, output_hidden_states=True).hidden_states
        finally:
            hook.remove()
        assert torch.equal(got["h"], hs[k]), (k, path)
