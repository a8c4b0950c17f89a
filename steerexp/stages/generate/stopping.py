"""Where each generated row ends: at an end-of-turn token, once the answer regex matches, or at the cap."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor
from transformers import StoppingCriteria

from steerexp.models.loading import LoadedModel

STOP_REASONS = ("stop_token", "regex", "length")


class RowStop(StoppingCriteria):
    """Per-row early stop: at an end-of-turn token (not kept) or once the answer regex matches
    the decoded completion (answer kept). Records where each row ends and why; unstopped rows
    end at ``length``."""

    def __init__(self, tokenizer: Any, stop: set[int], regex: re.Pattern[str] | None, width: int):
        self.tokenizer, self.stop, self.regex, self.width = tokenizer, stop, regex, width
        self.end: dict[int, int] = {}
        self.reason: dict[int, str] = {}

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        """The ``StoppingCriteria`` form, for a batch that keeps every row (``generate``)."""
        return self.update(input_ids, torch.arange(input_ids.shape[0]))

    def update(self, input_ids: Tensor, rows: Tensor) -> Tensor:
        """Record which of the batch's rows (``rows[i]``: the original row of batch row ``i``)
        end with the token just written; returns, per batch row, whether it has ended."""
        n = input_ids.shape[1] - self.width
        last = input_ids[:, -1].tolist()
        ids = rows.tolist()
        live = [i for i in range(len(ids)) if ids[i] not in self.end]
        for i in live:
            if last[i] in self.stop:
                self.end[ids[i]], self.reason[ids[i]] = n - 1, "stop_token"
        live = [i for i in live if ids[i] not in self.end]
        if self.regex is not None and live:
            new = input_ids[live, self.width :].cpu()
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            for i, text in zip(live, texts, strict=True):
                if self.regex.search(text):
                    self.end[ids[i]], self.reason[ids[i]] = n, "regex"
        done = torch.tensor([i in self.end for i in ids], dtype=torch.bool)
        return done.to(input_ids.device)

    def cut(self, i: int, n: int) -> tuple[int, str]:
        """Row ``i``'s kept length and stop reason after ``n`` generated steps."""
        return self.end.get(i, n), self.reason.get(i, "length")


def stop_ids(loaded: LoadedModel) -> set[int]:
    """Ids that end a turn: EOS (tokenizer and generation config), pad, and every special token
    the chat template writes (for Qwen-style templates ``<|im_start|>`` and ``<|im_end|>``)."""
    tok = loaded.tokenizer
    eos = loaded.hf.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos])
    ids |= {tok.pad_token_id, tok.eos_token_id}
    template = tok.chat_template
    text = "\n".join(template.values()) if isinstance(template, dict) else str(template or "")
    specials = dict(zip(tok.all_special_tokens, tok.all_special_ids, strict=True))
    specials |= {
        t.content: i for i, t in tok.added_tokens_decoder.items() if getattr(t, "special", False)
    }
    ids |= {i for t, i in specials.items() if t and t in text}
    return ids - {None}
