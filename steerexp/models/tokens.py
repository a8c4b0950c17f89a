"""Chat encoding, left padding and the forward inputs of a padded batch (every stage tokenises this way)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from steerexp.store import context


def encode(
    tokenizer: Any, messages: list[dict[str, str]], chat_kwargs: Mapping[str, Any]
) -> tuple[list[int], int]:
    """Token ids of the open assistant turn and how many of them are the suffix."""
    full = tokenizer.apply_chat_template(
        messages, tokenize=False, continue_final_message=True, **chat_kwargs
    )
    prefix = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True, **chat_kwargs
    )
    if full.startswith(prefix):
        head = tokenizer(prefix, add_special_tokens=False).input_ids
        tail = tokenizer(full[len(prefix) :], add_special_tokens=False).input_ids
        return head + tail, len(tail)
    ids = tokenizer(full, add_special_tokens=False).input_ids
    n = len(tokenizer(messages[-1]["content"], add_special_tokens=False).input_ids)
    return ids, min(n, len(ids) - 1)


Conversation = list[dict[str, str]]


def _render(
    tokenizer: Any, conversations: Sequence[Conversation], kwargs: Mapping[str, Any]
) -> list[str]:
    if not conversations:
        return []
    return list(tokenizer.apply_chat_template(list(conversations), tokenize=False, **kwargs))


def _ids(tokenizer: Any, texts: Sequence[str]) -> dict[str, list[int]]:
    """Each distinct text tokenised, all in one call."""
    unique = list(dict.fromkeys(texts))
    if not unique:
        return {}
    return dict(zip(unique, tokenizer(unique, add_special_tokens=False).input_ids, strict=True))


def encode_many(
    tokenizer: Any, conversations: Sequence[Conversation], chat_kwargs: Mapping[str, Any]
) -> list[tuple[list[int], int]]:
    """:func:`encode` of every conversation (the same ids, bit for bit): each distinct
    conversation is rendered once and every distinct text tokenised in one batched call (and
    kept per tokenizer in the run context, :attr:`~steerexp.store.context.RunContext.encoded`)."""
    memo = context.current().encoded.setdefault(tokenizer, {})
    kw = json.dumps(dict(chat_kwargs), sort_keys=True, default=str)
    keys = [kw + json.dumps(c, sort_keys=True) for c in conversations]
    todo = {k: c for k, c in zip(keys, conversations, strict=True) if k not in memo}
    if todo:
        convs = list(todo.values())
        fulls = _render(tokenizer, convs, {"continue_final_message": True, **chat_kwargs})
        heads = _render(
            tokenizer, [c[:-1] for c in convs], {"add_generation_prompt": True, **chat_kwargs}
        )
        # As in encode: the head's and tail's ids where the head prefixes the full text, else
        # the full text's ids and the last message's length (capped).
        split = [f.startswith(h) for f, h in zip(fulls, heads, strict=True)]
        parts = [
            (h, f[len(h) :]) if ok else (f, c[-1]["content"])
            for c, f, h, ok in zip(convs, fulls, heads, split, strict=True)
        ]
        ids = _ids(tokenizer, [t for pair in parts for t in pair])
        for k, (a, b), ok in zip(todo, parts, split, strict=True):
            if ok:
                memo[k] = (ids[a] + ids[b], len(ids[b]))
            else:
                memo[k] = (ids[a], min(len(ids[b]), len(ids[a]) - 1))
    return [(list(memo[k][0]), memo[k][1]) for k in keys]


def left_pad(seqs: Sequence[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-padded ids and attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


def model_inputs(ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Forward kwargs for a left-padded batch: positions count real tokens only (as in ``generate``)."""
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": (mask.cumsum(-1) - 1).clamp_min(0),
    }


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last non-padding token of each row (any padding side)."""
    width = mask.shape[1]
    return width - 1 - mask.flip(-1).argmax(-1)


def first_output(out: Any) -> Tensor:
    """A module's hidden-state output (decoder layers return a tuple whose first item it is)."""
    return out[0] if isinstance(out, tuple) else out
