"""Chat encoding, left padding and the forward inputs of a padded batch (every stage tokenises this way)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


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
