"""Batched chat encoding: the same ids as one-at-a-time :func:`encode`, in one tokeniser call."""

from __future__ import annotations

from typing import Any

from steerexp.models import tokens
from steerexp.organism.tokenizer import build_tokenizer


def _convs(n: int) -> list[list[dict[str, str]]]:
    return [
        [
            {"role": "user", "content": ("Be honest." if i % 2 else "Lie.") + " really" * (i % 3)},
            {"role": "assistant", "content": f"I said {i} things"},
        ]
        for i in range(n)
    ]


def test_encode_many_matches_encode_with_one_tokeniser_call() -> None:
    tok = build_tokenizer()
    calls: list[int] = []
    real = type(tok).__call__

    def counting(self: Any, text: Any, **kw: Any) -> Any:
        calls.append(len(text) if isinstance(text, list) else 1)
        return real(self, text, **kw)

    convs = _convs(40)
    for kw in ({}, {"enable_thinking": False}):
        expected = [tokens.encode(tok, c, kw) for c in convs]
        type(tok).__call__ = counting  # type: ignore[method-assign]
        try:
            got = tokens.encode_many(tok, convs, kw)
            again = tokens.encode_many(tok, convs, kw)
        finally:
            type(tok).__call__ = real  # type: ignore[method-assign]
        assert got == expected == again
        assert len(calls) == 1  # one batched call; the second encode_many hit the memo
        calls.clear()


def test_encode_many_falls_back_where_the_prefix_does_not_split() -> None:
    tok = build_tokenizer()
    tok.chat_template = (
        "{%- for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ 'assistant:: ' }}{%- endif %}"
    )
    convs = _convs(6)
    assert tokens.encode_many(tok, convs, {}) == [tokens.encode(tok, c, {}) for c in convs]


def test_memos_live_in_the_run_context_and_go_with_their_tokenizer() -> None:
    """The loaded models and the per-tokenizer memos (encoded conversations, decoded vocab) are the
    run context's, not module globals: a fresh context starts without them and the outer one never
    sees its entries; a model loads once per context; a dropped tokenizer frees its entries."""
    import gc

    from helpers import tiny

    from steerexp.data.answers import answer_variants
    from steerexp.store import context

    outer = context.current()
    with context.fresh() as ctx:
        assert not ctx.models and not len(ctx.encoded) and not len(ctx.vocab)
        model = tiny()
        assert tiny() is model and model.reused and list(ctx.models.values()) == [model]
        tok = build_tokenizer()
        tokens.encode_many(tok, _convs(4), {})
        yes = answer_variants(tok, "Yes")
        assert tok in ctx.encoded and tok in ctx.vocab and yes
        assert tok not in outer.encoded and tok not in outer.vocab
        assert model not in outer.models.values()
        del tok
        gc.collect()
        assert not len(ctx.encoded) and not len(ctx.vocab)
