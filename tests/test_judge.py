"""Judge stage on a real byte-level BPE tokenizer trained here (no downloads)."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from steerexp.config.errors import SteerexpError
from steerexp.data.answers import AnswerSpec, answer_variants, make_answer_spec
from steerexp.stages.judge.judges import JUDGES, forced_suffix, judge_rows, token_at_char
from steerexp.store.results import GenRow, Judgement

REGEX = "Final choice: (Yes|No)"
PREFIX = "Final choice:"
WORDS = ["Yes", "yes", "YES", "No", "no", "NO", "not", "now", "nobody", "Yesterday", "note", "know"]


def _corpus() -> list[str]:
    """A few hundred lines in which answer words and their look-alikes become single tokens."""
    lines = []
    for i in range(300):
        w = WORDS[i % len(WORDS)]
        lines.append(
            f"Final choice: {w}. I said {w} and {w.lower()} then {w}, not now, nobody knows."
        )
        lines.append(f"{w} is {w}\nFinal choice: {'Yes' if i % 2 else 'No'}\nyes no Yes No YES NO")
    return lines


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2/Qwen style ``Ġ`` tokens) wrapped as a transformers fast tokenizer."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    for t in "Yes ĠYes yes Ġyes YES No ĠNo no Ġno not Ġnot now Ġnobody ĠYesterday".split():
        assert fast.convert_tokens_to_ids(t) != fast.unk_token_id and t in fast.get_vocab(), t
    return fast


@pytest.fixture(scope="module")
def spec(tok: PreTrainedTokenizerFast) -> AnswerSpec:
    return make_answer_spec(tok, REGEX, ["Yes", "No"], PREFIX)


def _row(tok: PreTrainedTokenizerFast, text: str, trait: str = "No", seed: int = 0) -> GenRow:
    """A row for ``text`` with random (normalised-looking) answer log-probs per step."""
    ids = tok.encode(text)
    g = torch.Generator().manual_seed(seed)
    logps = torch.log_softmax(torch.randn(len(ids), 3, generator=g) * 3, dim=-1)[:, :2]
    return GenRow("q", 0.5, 0, trait, ids, tok.decode(ids, skip_special_tokens=True), logps.float())


def _no_rescore(row: GenRow, text: str) -> torch.Tensor:
    raise AssertionError("rescore must not be called when the regex matched")


def _ids_of(tok: PreTrainedTokenizerFast, tokens: list[str]) -> set[int]:
    return {tok.convert_tokens_to_ids(t) for t in tokens}


def test_variant_sets_exact(tok: PreTrainedTokenizerFast) -> None:
    yes, no = set(answer_variants(tok, "Yes")), set(answer_variants(tok, "No"))
    want_yes = {i for t, i in tok.get_vocab().items() if t.replace("Ġ", "").lower() == "yes"}
    want_no = {i for t, i in tok.get_vocab().items() if t.replace("Ġ", "").lower() == "no"}
    assert yes == want_yes and no == want_no
    assert _ids_of(tok, ["Yes", "ĠYes", "yes", "Ġyes", "YES"]) <= yes
    assert _ids_of(tok, ["No", "ĠNo", "no", "Ġno", "NO"]) <= no
    assert not (_ids_of(tok, ["not", "Ġnot", "now", "Ġnow", "Ġnobody", "ĠYesterday"]) & (yes | no))
    assert answer_variants(tok, "yes") == answer_variants(tok, "Yes")  # cached, case-insensitive


def test_bad_answers_and_regex(tok: PreTrainedTokenizerFast) -> None:
    with pytest.raises(SteerexpError, match="xylophonequartz"):
        answer_variants(tok, "xylophonequartz")
    for bad in ["Final choice: Yes|No", "Final (choice): (Yes|No)", "Final choice: (Yes|No"]:
        with pytest.raises(
            SteerexpError, match=r"eval\.answer_regex=.*(capture groups|does not compile)"
        ) as e:
            make_answer_spec(tok, bad, ["Yes", "No"], PREFIX)
        assert "\n" not in str(e.value)
    with pytest.raises(SteerexpError, match="distinct"):
        make_answer_spec(tok, REGEX, ["Yes", "yes"], PREFIX)
    with pytest.raises(SteerexpError):
        make_answer_spec(tok, REGEX, ["Yes"], PREFIX)


def test_token_at_char_handles_spaces_and_multibyte(tok: PreTrainedTokenizerFast) -> None:
    text = "café 日本. Final choice: Yes"
    ids = tok.encode(text)
    step = token_at_char(tok, ids, text, text.rindex("Yes"))
    assert tok.convert_ids_to_tokens(ids[step]) == "ĠYes"
    step = token_at_char(tok, ids, text, text.index("本"))
    assert tok.decode(ids[: step + 1]).endswith("本") and not tok.decode(ids[:step]).endswith("本")


def test_last_match_wins(tok: PreTrainedTokenizerFast, spec: AnswerSpec) -> None:
    row = _row(tok, "café 日本. Final choice: Yes. Hmm, not now.\nFinal choice: No")
    yes_ids, no_ids = set(answer_variants(tok, "Yes")), set(answer_variants(tok, "No"))
    first = next(i for i, t in enumerate(row.completion_ids) if t in yes_ids)
    last = max(i for i, t in enumerate(row.completion_ids) if t in no_ids)
    assert first < last
    row.answer_logps[first] = torch.log(torch.tensor([0.7, 0.2]))
    row.answer_logps[last] = torch.log(torch.tensor([0.1, 0.6]))
    j = JUDGES.get("logratio")(row, spec, _no_rescore)
    assert j.valid and not j.forced
    assert j.log_ratio == pytest.approx(math.log(0.6 / 0.1), rel=1e-5)  # trait "No"
    assert j.pmass == pytest.approx(0.7, rel=1e-5)


def test_sign_flips_with_trait(tok: PreTrainedTokenizerFast, spec: AnswerSpec) -> None:
    text = "I would not. Final choice: No"
    honest = JUDGES.get("logratio")(_row(tok, text, "No", seed=3), spec, _no_rescore)
    liar = JUDGES.get("logratio")(_row(tok, text, "Yes", seed=3), spec, _no_rescore)
    assert honest.valid and liar.valid
    assert honest.log_ratio == pytest.approx(-liar.log_ratio)
    assert honest.pmass == pytest.approx(liar.pmass)


def test_pmass_and_ratio_at_answer_step(tok: PreTrainedTokenizerFast, spec: AnswerSpec) -> None:
    row = _row(tok, "Final choice: Yes", seed=7)
    step = len(row.completion_ids) - 1
    lp = row.answer_logps[step].double()
    j = JUDGES.get("logratio")(row, spec, _no_rescore)
    assert j.log_ratio == pytest.approx(float(lp[1] - lp[0]), rel=1e-6)
    assert j.pmass == pytest.approx(float(lp.exp().sum()), rel=1e-6)


def test_no_match_invalid(tok: PreTrainedTokenizerFast, spec: AnswerSpec) -> None:
    for text in ["I said yes and no, nobody knows.", "", "Final choice: maybe"]:
        j = JUDGES.get("logratio")(_row(tok, text), spec, _no_rescore)
        assert not j.valid and not j.forced
        assert math.isnan(j.log_ratio) and math.isnan(j.pmass)


def test_case_insensitive_regex_group_must_be_an_answer(tok: PreTrainedTokenizerFast) -> None:
    loose = make_answer_spec(tok, r"(?i)final choice: (\w+)", ["Yes", "No"], PREFIX)
    assert JUDGES.get("logratio")(_row(tok, "final choice: YES"), loose, _no_rescore).valid
    assert not JUDGES.get("logratio")(_row(tok, "Final choice: nobody"), loose, _no_rescore).valid


def test_forced_rescores_with_prefix(tok: PreTrainedTokenizerFast, spec: AnswerSpec) -> None:
    calls: list[tuple[GenRow, str]] = []

    def rescore(row: GenRow, text: str) -> torch.Tensor:
        calls.append((row, text))
        return torch.log(torch.tensor([0.25, 0.5]))

    row = _row(tok, "I am not sure, nobody knows")
    j = judge_rows("forced", [row], spec, rescore)[0]
    assert len(calls) == 1 and calls[0][0] is row
    assert calls[0][1] == "\n" + PREFIX == forced_suffix(row.completion, PREFIX)
    assert forced_suffix("line\n", PREFIX) == PREFIX and forced_suffix("", PREFIX) == PREFIX
    assert j == Judgement(pytest.approx(math.log(2.0)), pytest.approx(0.75), True, True)

    matched = _row(tok, "Final choice: No")
    j2 = judge_rows("forced", [matched], spec, _no_rescore)[0]
    assert j2.valid and not j2.forced
    assert j2 == judge_rows("logratio", [matched], spec, _no_rescore)[0]


def test_forced_non_finite_is_invalid(tok: PreTrainedTokenizerFast, spec: AnswerSpec) -> None:
    j = JUDGES.get("forced")(
        _row(tok, "hmm"), spec, lambda r, t: torch.tensor([-math.inf, -math.inf])
    )
    assert not j.valid and j.forced and math.isnan(j.log_ratio)


def test_shape_mismatch_and_unknown_trait(tok: PreTrainedTokenizerFast, spec: AnswerSpec) -> None:
    row = _row(tok, "Final choice: No")
    row.answer_logps = row.answer_logps[:-1]
    with pytest.raises(ValueError, match="shape"):
        JUDGES.get("logratio")(row, spec, _no_rescore)
    with pytest.raises(SteerexpError, match="Maybe"):
        JUDGES.get("logratio")(_row(tok, "Final choice: No", trait="Maybe"), spec, _no_rescore)
    with pytest.raises(SteerexpError, match="unknown judge"):
        judge_rows("logratoi", [], spec, _no_rescore)


def test_organism_tokenizer_variants() -> None:
    """On the organism's own tokenizer, when that module exists."""
    organism_tok = pytest.importorskip("steerexp.organism.tokenizer")
    if not hasattr(organism_tok, "build_tokenizer"):
        pytest.skip("steerexp.organism.tokenizer.build_tokenizer not available yet")
    tok = organism_tok.build_tokenizer()
    spec = make_answer_spec(tok, REGEX, ["Yes", "No"], PREFIX)
    for ids, word in zip(spec.variant_ids, ["yes", "no"], strict=True):
        assert ids and all(tok.decode([i]).strip().lower() == word for i in ids)
    text = "Final choice: Yes"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[token_at_char(tok, ids, text, text.index("Yes"))] in spec.variant_ids[0]


def test_any_answer_set_with_the_derived_regex(tok: PreTrainedTokenizerFast) -> None:
    """Letters A/B/C with eval=file's default regex: the trait option against all the others."""
    from steerexp.data.questionfiles import default_regex

    spec = make_answer_spec(
        tok, default_regex("Answer:", ["A", "B", "C"]), ["A", "B", "C"], "Answer:"
    )
    assert all(spec.variant_ids)
    ids = tok.encode("Hmm, A or B? Answer: (C)")
    g = torch.Generator().manual_seed(5)
    logps = torch.log_softmax(torch.randn(len(ids), 4, generator=g) * 3, dim=-1)[:, :3].float()
    row = GenRow("q", 0.5, 0, "B", ids, tok.decode(ids, skip_special_tokens=True), logps)
    step = token_at_char(tok, ids, row.completion, row.completion.rindex("C"))
    lp = logps[step].double()
    j = JUDGES.get("logratio")(row, spec, _no_rescore)
    assert j.valid
    assert j.log_ratio == pytest.approx(float(lp[1] - torch.logsumexp(lp[[0, 2]], 0)), rel=1e-6)
    assert j.pmass == pytest.approx(float(lp.exp().sum()), rel=1e-6)
    word = tok.encode("Answer: Absolutely")
    bad = GenRow("q", 0.5, 0, "B", word, tok.decode(word), torch.zeros(len(word), 3))
    assert not JUDGES.get("logratio")(bad, spec, _no_rescore).valid
