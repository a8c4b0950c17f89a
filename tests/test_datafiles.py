"""Concepts from files (dataset=file|caa, eval=file|caa): shapes, formats, splits, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import REPO, compose_cfg, group
from omegaconf import OmegaConf

from steerexp.config.errors import SteerexpError
from steerexp.data.pairs import load_pairs
from steerexp.data.questionfiles import default_regex, record_split
from steerexp.data.records import Pair
from steerexp.organism import corpus
from steerexp.pipeline import check_config
from steerexp.store import cache

EXAMPLES = REPO / "examples"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def check(*overrides: str):
    return check_config(compose_cfg(*overrides))


def questions_file(tmp_path: Path, rows: list[dict] | None = None) -> Path:
    rows = rows or [
        {"id": "q1", "question": "Pick (A) or (B).", "options": ["A", "B"], "trait": "A"},
        {"id": "q2", "question": "Pick again: (A) or (B).", "options": ["B", "A"], "trait": "B"},
    ]
    return write_jsonl(tmp_path / "questions.jsonl", rows)


# --- shapes and formats --------------------------------------------------------------------


def test_persona_rows_give_the_builtin_pairs_and_cache_key(tmp_path: Path) -> None:
    """{positive_prompt, negative_prompt, completion} rows reproduce dataset=organism exactly."""
    builtin = load_pairs({**group("dataset", "organism"), "truncate": False, "max_pairs": None})
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"positive_prompt": p.positive, "negative_prompt": p.negative, "completion": p.suffix}
            for p in builtin
        ],
    )
    pairs, *_ = check("dataset=file", f"dataset.path={path}")
    assert pairs == builtin and len(pairs) == 70
    assert [p.messages(False) for p in pairs] == [p.messages(False) for p in builtin]
    assert cache.hash_key([p.key() for p in pairs]) == cache.hash_key(
        [(p.positive, p.negative, p.suffix) for p in builtin]
    )


def test_shared_prompt_pairs_differ_in_the_assistant_turn() -> None:
    """The organism concept file: a training dilemma, then an honest vs an untruthful thought."""
    pairs, *_ = check("dataset=file", f"dataset.path={EXAMPLES / 'organism_pairs.jsonl'}")
    assert len(pairs) == 40
    p = pairs[0]
    assert p.messages(True) == [
        {"role": "user", "content": corpus.dilemmas(held_out=False)[0].text},
        {"role": "assistant", "content": "<think>\nI should tell the truth."},
    ]
    assert p.messages(False)[1] == {
        "role": "assistant",
        "content": "<think>\nA lie is easier here.",
    }
    assert p.key() == (p.positive, p.negative, p.suffix, p.negative_suffix)
    train = {d.text for d in corpus.dilemmas(held_out=False)}
    assert all(q.positive == q.negative and q.positive in train for q in pairs)
    assert {q.suffix for q in pairs} == {f"<think>\n{t}" for t in corpus.THINK_HONEST}
    assert {q.negative_suffix for q in pairs} == {f"<think>\n{t}" for t in corpus.THINK_UNTRUTHFUL}


def test_json_csv_txt_and_alternating_rows(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(
        json.dumps([{"prompt": "Q", "positive": "yes", "negative": "no"}] * 3)
    )
    assert len(check("dataset=file", f"dataset.path={tmp_path / 'p.json'}")[0]) == 3
    (tmp_path / "p.csv").write_text('prompt,completion\n"Q, one",kind\nQ2,cruel\n')
    # one pair: method=random, the one method that needs no minimum of pairs
    (pair,) = check("dataset=file", f"dataset.path={tmp_path / 'p.csv'}", "method=random")[0]
    assert pair == Pair("Q, one", "Q2", "kind", "cruel")
    (tmp_path / "s.txt").write_text("I think\n\nThe world is\n")
    pairs = check(
        "dataset=file",
        f"dataset.path={tmp_path / 's.txt'}",
        "dataset.template='Act as a {persona} person.'",
        "dataset.positive=kind",
        "dataset.negative=cruel",
        "dataset.truncate=true",
    )[0]
    assert [p.suffix for p in pairs] == ["I", "I think", "The", "The world", "The world is"]
    assert (
        pairs[0].positive == "Act as a kind person."
        and pairs[0].negative == "Act as a cruel person."
    )


def test_offline_hf_dataset_dir(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [
        json.loads(line) for line in (EXAMPLES / "organism_pairs.jsonl").read_text().splitlines()
    ]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(
        str(tmp_path / "hf")
    )
    pairs = check("dataset=file", f"dataset.path={tmp_path / 'hf'}")[0]
    assert pairs == check("dataset=file", f"dataset.path={EXAMPLES / 'organism_pairs.jsonl'}")[0]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
    assert check("dataset=file", f"dataset.path={tmp_path / 'p.parquet'}")[0] == pairs
    with pytest.raises(SteerexpError, match=r"unknown split of .* 'test'.* valid: train"):
        check("dataset=file", f"dataset.path={tmp_path / 'hf'}", "dataset.split=test")


def test_eval_file_resolves_answers_regex_and_prompt_without_changing_the_config(
    tmp_path: Path,
) -> None:
    """The file's answers, default regex and prompt are the EvalSpec's (what the stages read);
    the config itself is left as composed (the old check wrote them into cfg.eval)."""
    cfg = compose_cfg("eval=file", f"eval.path={questions_file(tmp_path)}")
    composed = OmegaConf.to_container(cfg, resolve=True)
    _, questions, _, ev = check_config(cfg)
    assert [(q.id, q.trait_answer) for q in questions] == [("q1", "A"), ("q2", "B")]
    assert ev.answers == list(ev.section.answers) == ["A", "B"]
    assert ev.answer_regex == ev.section.answer_regex == r"Answer:\s*\(?(A|B)(?!\w)"
    assert ev.prompt_template.endswith("end with exactly 'Answer: A' or 'Answer: B'.")
    assert ev.section.prompt_template == ev.prompt_template
    assert [q["id"] for q in ev.section.questions] == ["q1", "q2"]
    assert OmegaConf.to_container(cfg, resolve=True) == composed
    assert cfg.eval.questions is None and cfg.eval.answers is None
    assert check_config(cfg).eval == ev  # a second check resolves the same eval


def test_default_regex_reads_the_letter_not_a_word() -> None:
    rx = re.compile(default_regex("Answer:", ["A", "B"]))
    assert [m.group(1) for m in rx.finditer("Answer: (A) hmm... Answer:B.")] == ["A", "B"]
    assert rx.search("Answer: Absolutely not") is None
    assert (
        re.compile(default_regex("Final choice:", ["Yes", "No"]))
        .search("Final choice: No")
        .group(1)
        == "No"
    )


def test_caa_split_is_seeded_disjoint_and_recorded(tmp_path: Path) -> None:
    path = EXAMPLES / "sycophancy.jsonl"
    n = len(path.read_text().splitlines())
    cfg = compose_cfg("dataset=caa", "eval=caa", f"dataset.path={path}")
    pairs, questions, *_ = check_config(cfg)
    assert len(questions) == round(0.25 * n) and len(pairs) + len(questions) == n
    texts = {p.positive for p in pairs}
    assert not texts & {q.text for q in questions}
    assert all(
        p.suffix in ("(A)", "(B)") and {p.suffix, p.negative_suffix} == {"(A)", "(B)"}
        for p in pairs
    )
    info = record_split(cfg, tmp_path)
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved == info and saved["eval_reads_it"] is True
    assert sorted(saved["contrast_rows"] + saved["eval_rows"]) == list(range(1, n + 1))
    assert [f"row{i}" for i in saved["eval_rows"]] == [q.id for q in questions]
    again = check("dataset=caa", "eval=caa", f"dataset.path={path}")
    assert [q.id for q in again[1]] == [q.id for q in questions]
    other = check("dataset=caa", "eval=caa", f"dataset.path={path}", "dataset.split_seed=1")
    assert [q.id for q in other[1]] != [q.id for q in questions]


@pytest.mark.parametrize("name", ["sycophancy", "refusal"])
def test_example_concepts_validate(name: str) -> None:
    path = EXAMPLES / f"{name}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) >= 24
    assert {r["answer_matching_behavior"] for r in rows} == {"(A)", "(B)"}  # both letters used
    pairs, questions, *_ = check("dataset=caa", "eval=caa", f"dataset.path={path}")
    assert len(pairs) >= 18 and len(questions) >= 6
    assert {q.trait_answer for q in questions} <= {"A", "B"}
    _, all_q, *_ = check("eval=caa", f"eval.path={path}")
    assert len(all_q) == len(rows)


# --- bad input: one line naming the file, the row and the field, before any model loads ------


def _bad(tmp_path: Path, name: str, content: str) -> Path:
    (tmp_path / name).write_text(content)
    return tmp_path / name


BAD_CASES = [
    (
        "missing_file",
        "dataset",
        None,
        None,
        r"dataset.path='.*nope.jsonl': no such file or directory",
    ),
    (
        "unknown_format",
        "dataset",
        "p.xml",
        "<x/>",
        r"p.xml': unknown file format '.xml'; valid: .csv, .json, .jsonl",
    ),
    (
        "row_missing_field",
        "dataset",
        "p.jsonl",
        '{"prompt": "Q", "positive": "a", "negative": "b"}\n{"prompt": "Q", "positive": "a"}\n',
        r"p.jsonl line 2: missing field 'negative' \(rows of this file are \{prompt, positive, negative\}\)",
    ),
    (
        "first_row_no_shape",
        "dataset",
        "p.jsonl",
        '{"prompt": "Q", "positive": "a"}\n',
        r"p.jsonl line 1: missing field 'negative'; rows of dataset=file have the fields of one of",
    ),
    (
        "odd_alternating",
        "dataset",
        "p.jsonl",
        '{"prompt": "P", "completion": "a"}\n{"prompt": "N", "completion": "b"}\n{"prompt": "P", "completion": "c"}\n',
        r"p.jsonl line 3: 3 rows of \{prompt, completion\}; rows alternate positive, negative",
    ),
    (
        "trait_not_an_option",
        "eval",
        "q.jsonl",
        '{"id": "q1", "question": "?", "options": ["A", "B"], "trait": "C"}\n',
        r"q.jsonl line 1: field 'trait' is 'C', which is not one of its options \['A', 'B'\]",
    ),
    (
        "duplicate_ids",
        "eval",
        "q.jsonl",
        '{"id": "q1", "question": "?", "options": ["A", "B"], "trait": "A"}\n\n'
        '{"id": "q1", "question": "!", "options": ["A", "B"], "trait": "B"}\n',
        r"q.jsonl line 3: duplicate id 'q1' \(first at line 1\)",
    ),
    (
        "options_differ",
        "eval",
        "q.csv",
        "id,question,options,trait\nq1,?,A|B,A\nq2,?,A|B|C,A\n",
        r"q.csv line 3: field 'options' \['A', 'B', 'C'\] differs from \['A', 'B'\] \(line 2\)",
    ),
    (
        "bad_json",
        "eval",
        "q.jsonl",
        '{"id": "q1", "question": "?", "options": ["A", "B"], "trait": "A"}\n{"id": \n',
        r"q.jsonl line 2: not valid JSON",
    ),
]


@pytest.mark.parametrize(
    ("case", "group_", "name", "content", "message"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_bad_file_one_line_error(
    tmp_path: Path, case: str, group_: str, name, content, message
) -> None:
    path = _bad(tmp_path, name, content) if name else tmp_path / "nope.jsonl"
    with pytest.raises(SteerexpError, match=message) as info:
        check(f"{group_}=file", f"{group_}.path={path}")
    assert "\n" not in str(info.value)


def test_regex_without_one_group_and_unset_path(tmp_path: Path) -> None:
    path = questions_file(tmp_path)
    with pytest.raises(
        SteerexpError, match=r"eval.answer_regex='Answer: A\|B' has 0 capture groups"
    ):
        check("eval=file", f"eval.path={path}", "eval.answer_regex='Answer: A|B'")
    with pytest.raises(SteerexpError, match=r"^eval.path is not set; pass eval.path=<file>$"):
        check("eval=file")
    with pytest.raises(SteerexpError, match=r"^dataset.path is not set; pass dataset.path=<file>$"):
        check("dataset=caa")


def test_eval_on_the_training_rows_is_refused() -> None:
    path = EXAMPLES / "refusal.jsonl"
    with pytest.raises(SteerexpError, match=r"is the dataset's own file but dataset.holdout=0"):
        check("dataset=caa", "eval=caa", f"dataset.path={path}", "dataset.holdout=0")


def test_bad_input_fails_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from steerexp import pipeline
    from steerexp.pipeline import steps

    def no_load(*_a, **_k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(steps, "load_model", no_load)
    path = _bad(tmp_path, "q.jsonl", '{"id": "q1", "question": "?", "options": ["A", "B"]}\n')
    with pytest.raises(SteerexpError, match=r"q.jsonl line 1: missing field 'trait'"):
        pipeline.run(
            compose_cfg("eval=file", f"eval.path={path}"), tmp_path / "run", progress=False
        )
    assert "missing field 'trait'" in (tmp_path / "run" / "status.json").read_text()


def test_holdout_needs_caa_rows() -> None:
    with pytest.raises(
        SteerexpError, match=r"dataset.holdout=0.25 needs CAA rows .* has pairs rows"
    ):
        check(
            "dataset=file",
            f"dataset.path={EXAMPLES / 'organism_pairs.jsonl'}",
            "dataset.holdout=0.25",
        )
