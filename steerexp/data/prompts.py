"""The eval prompts as the model sees them: rendered once per question, written to the run dir
(``prompts.jsonl``) and checked against the model's context before anything is generated.

A question whose prompt plus ``eval.max_new_tokens`` does not fit the model's positions
(``max_position_embeddings``) is skipped, not truncated: the count is printed and recorded
(``n_skipped_long`` in ``metrics.json``), and the run fails only when nothing is left to ask.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from steerexp.config.errors import SteerexpError
from steerexp.data.pairs import question_messages
from steerexp.data.records import Question

#: config keys that name a model's context length, in the order they are tried
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def prompt_text(loaded: Any, eval_cfg: Mapping[str, Any], q: Question) -> str:
    """The chat-templated prompt with the generation prompt (thinking kwargs pass through)."""
    return loaded.tokenizer.apply_chat_template(
        question_messages(eval_cfg, q),
        tokenize=False,
        add_generation_prompt=True,
        **loaded.chat_kwargs,
    )


def context_length(config: Any) -> int | None:
    """The model's number of positions, or None when its config names none."""
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_prompts(
    loaded: Any,
    eval_cfg: Mapping[str, Any],
    questions: Sequence[Question],
    run_dir: Path | None = None,
) -> tuple[list[Question], list[dict[str, Any]]]:
    """(questions that fit, one record per question): each record is ``question_id``,
    ``scenario`` (when the question has one), the rendered ``text``, ``n_tokens`` and
    ``skipped_long``; with ``run_dir`` the records go to ``prompts.jsonl`` there."""
    limit = context_length(loaded.hf.config)
    budget = int(eval_cfg["max_new_tokens"])
    kept: list[Question] = []
    records: list[dict[str, Any]] = []
    for q in questions:
        text = prompt_text(loaded, eval_cfg, q)
        n = len(loaded.tokenizer(text, add_special_tokens=False).input_ids)
        long = limit is not None and n + budget > limit
        record: dict[str, Any] = {"question_id": q.id}
        if getattr(q, "scenario", None) is not None:
            record["scenario"] = q.scenario
        records.append({**record, "text": text, "n_tokens": n, "skipped_long": long})
        if not long:
            kept.append(q)
    if run_dir is not None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        (Path(run_dir) / "prompts.jsonl").write_text(lines, encoding="utf-8")
    skipped = [r["question_id"] for r in records if r["skipped_long"]]
    if skipped and not kept:
        raise SteerexpError(
            f"every eval question is too long for the model: prompt + eval.max_new_tokens="
            f"{budget} exceeds its {limit} positions (shortest prompt "
            f"{min(r['n_tokens'] for r in records)} tokens); shorten the prompts or lower "
            "eval.max_new_tokens"
        )
    if skipped:
        shown = ", ".join(skipped[:8]) + (
            f" and {len(skipped) - 8} more" if len(skipped) > 8 else ""
        )
        print(
            f"[steerexp] skipped {len(skipped)} of {len(records)} eval questions whose prompt + "
            f"eval.max_new_tokens={budget} exceeds the model's {limit} positions: {shown} "
            "(n_skipped_long in metrics.json; prompts.jsonl has their lengths)",
            flush=True,
        )
    return kept, records
