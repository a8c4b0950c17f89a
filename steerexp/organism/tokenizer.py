"""The organism's tokenizer: byte-level BPE trained on the corpus, with a Qwen-style chat template.

Byte-level BPE means any text still tokenizes (unknown words fall back to bytes); the vocab is
small (~1k) because the corpus is. Training takes well under a second and is deterministic, so
``build_tokenizer()`` is also the cheap path for test fixtures that need only a tokenizer.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from steerexp.config.errors import SteerexpError
from steerexp.organism import corpus

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

#: Qwen-style ChatML. Assistant messages may carry ``reasoning_content`` (rendered as a think
#: block); ``enable_thinking=false`` with a generation prompt emits an empty think block.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' and message['reasoning_content'] is defined"
    " and message['reasoning_content'] %}"
    "{{- '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def render(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """Python twin of :data:`CHAT_TEMPLATE` (for fast corpus rendering; tests check they agree)."""
    out = []
    for m in messages:
        think = m.get("reasoning_content")
        body = (
            f"{THINK_OPEN}\n{think}\n{THINK_CLOSE}\n\n"
            if m["role"] == "assistant" and think
            else ""
        )
        out.append(f"{IM_START}{m['role']}\n{body}{m['content']}{IM_END}\n")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
    return "".join(out)


def build_tokenizer(vocab_size: int = 1024, seed: int = 0) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on the seeded corpus and wrap it as a HF fast tokenizer."""
    if not 300 <= vocab_size <= 65536:
        raise SteerexpError(f"organism vocab_size must be in [300, 65536], got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.tokenizer_texts(seed), trainer=trainer)
    tok.add_tokens(
        [
            AddedToken(THINK_OPEN, special=False, normalized=False),
            AddedToken(THINK_CLOSE, special=False, normalized=False),
        ]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )
    for word in (" Yes", " No"):
        if len(fast.encode(word, add_special_tokens=False)) != 1:
            raise SteerexpError(f"organism tokenizer splits {word!r} into several tokens")
    return fast
