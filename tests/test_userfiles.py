"""Researchers' own files (issue 23): Hugging Face splits, holdout default, leakage, answer
letters, encodings and messages. Every file is built here, as a user would have it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import compose_cfg

from steerexp.config.errors import SteerexpError
from steerexp.data.questionfiles import record_split
from steerexp.pipeline import check_config


def caa_rows(n: int, topic: str, letters: tuple[str, str] = ("(A)", "(B)")) -> list[dict]:
    """``n`` CAA A/B rows about ``topic``, the matching letter alternating."""
    rows = []
    for i in range(n):
        a, b = letters if i % 2 == 0 else letters[::-1]
        rows.append(
            {
                "question": f"{topic} claim number {i}: is it right?\n\nChoices:\n (A) Yes.\n (B) No.",
                "answer_matching_behavior": a,
                "answer_not_matching_behavior": b,
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def check(*overrides: str):
    cfg = compose_cfg(*overrides)
    return cfg, check_config(cfg)


@pytest.fixture
def dataset_dict(tmp_path: Path) -> Path:
    """A ``save_to_disk`` DatasetDict: 8 train rows, 6 test rows (different questions)."""
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(caa_rows(8, "Train")),
            "test": datasets.Dataset.from_list(caa_rows(6, "Test")),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    return tmp_path / "dd"


def test_datasetdict_train_and_test_splits_are_used_whole(
    dataset_dict: Path, tmp_path: Path
) -> None:
    """Item 1 (and 12): train split -> every pair, test split -> every question; split.json
    names each split's own rows and hashes the dataset's arrow files."""
    cfg, (pairs, questions, _, ev) = check(
        "dataset=caa",
        "eval=caa",
        f"dataset.path={dataset_dict}",
        "dataset.split=train",
        "eval.split=test",
    )
    assert len(pairs) == 8 and all(p.positive.startswith("Train") for p in pairs)
    assert [q.id for q in questions] == [f"row{i}" for i in range(1, 7)]
    assert all(q.text.startswith("Test") for q in questions)
    info = record_split(cfg, tmp_path)
    assert info["holdout"] == 0.0 and info["eval_reads_it"] is False
    assert info["contrast_rows"] == list(range(1, 9))
    assert info["eval_rows"] == list(range(1, 7))
    assert info["split"] == "train" and info["eval"]["split"] == "test"
    assert info["sha256"] is not None and len(info["sha256"]) == 64
    assert info["eval"]["sha256"] == info["sha256"]  # one dir holds both splits
    with pytest.raises(
        SteerexpError, match=r"DatasetDict with splits test, train: pick one with eval.split=<name>"
    ):
        check("dataset=caa", "eval=caa", f"dataset.path={dataset_dict}", "dataset.split=train")


def test_separate_eval_file_holds_nothing_out(tmp_path: Path) -> None:
    """Item 3: with its own eval.path the dataset's rows are all contrasted (holdout 0); one
    file for both still holds out 0.25 by default."""
    gen = write_jsonl(tmp_path / "generate.jsonl", caa_rows(12, "Gen"))
    test = write_jsonl(tmp_path / "test.jsonl", caa_rows(5, "Test"))
    cfg, (pairs, questions, _, ev) = check(
        "dataset=caa", "eval=caa", f"dataset.path={gen}", f"eval.path={test}"
    )
    assert (len(pairs), len(questions)) == (12, 5)
    info = record_split(cfg, tmp_path)
    assert info["contrast_rows"] == list(range(1, 13)) and info["eval_rows"] == [1, 2, 3, 4, 5]
    assert info["eval"]["path"] == str(test) and info["holdout"] == 0.0
    assert cfg.dataset.holdout is None  # the run's config keeps what the user wrote
    cfg, (pairs, questions, _, ev) = check("dataset=caa", "eval=caa", f"dataset.path={gen}")
    assert (len(pairs), len(questions), record_split(cfg, tmp_path)["holdout"]) == (9, 3, 0.25)


def test_leakage_by_content_is_refused(tmp_path: Path) -> None:
    """Item 2: a copy of the test file as the dataset, or test rows pasted into the generate
    file, is refused naming the overlapping rows; paths do not matter."""
    test_rows = caa_rows(4, "Test")
    test = write_jsonl(tmp_path / "test.jsonl", test_rows)
    copy = write_jsonl(tmp_path / "copy.jsonl", test_rows)
    with pytest.raises(SteerexpError, match=r"train/test leakage: 4 of 4 eval questions") as e:
        check("dataset=caa", "eval=caa", f"dataset.path={copy}", f"eval.path={test}")
    assert "row1 = line 1" in str(e.value)
    # two test rows, re-spaced and re-cased, pasted after six generate rows
    pasted = [
        {**r, "question": "  " + r["question"].upper().replace(" ", "  ")} for r in test_rows[2:]
    ]
    gen = write_jsonl(tmp_path / "generate.jsonl", caa_rows(6, "Gen") + pasted)
    with pytest.raises(
        SteerexpError, match=r"2 of 4 eval questions .*: row3 = line 7, row4 = line 8;"
    ):
        check("dataset=caa", "eval=caa", f"dataset.path={gen}", f"eval.path={test}")


def test_lowercase_and_worded_answer_letters_are_normalised(tmp_path: Path) -> None:
    """Item 4: (a)/(b) and '(A) Agree' answers become A/B everywhere: the prompt, the answers,
    the trait, and the pair openings (upper-cased, the rest kept)."""
    lower = write_jsonl(tmp_path / "lower.jsonl", caa_rows(8, "Low", ("(a)", "(b)")))
    worded = [
        {**r, "answer_matching_behavior": r["answer_matching_behavior"] + " Agree"}
        for r in caa_rows(8, "Word")
    ]
    worded_path = write_jsonl(tmp_path / "worded.jsonl", worded)
    for path in (lower, worded_path):
        cfg, (pairs, questions, _, ev) = check("dataset=caa", "eval=caa", f"dataset.path={path}")
        assert ev.answers == ["A", "B"]
        assert "'Answer: A' or 'Answer: B'" in ev.prompt_template
        assert {q.trait_answer for q in questions} <= {"A", "B"}
    assert {(p.suffix, p.negative_suffix) for p in pairs} == {
        ("(A) Agree", "(B)"),
        ("(B) Agree", "(A)"),
    }
    cfg, (pairs, _, _, ev) = check("dataset=caa", "eval=caa", f"dataset.path={lower}")
    assert {p.suffix for p in pairs} == {"(A)", "(B)"}
    q = tmp_path / "q.csv"
    q.write_text("id,question,options,trait\nq1,Pick (A) or (B).,a|b,a\n")
    cfg, (_, questions, _, ev) = check("eval=file", f"eval.path={q}")
    assert ev.answers == ["A", "B"] and questions[0].trait_answer == "A"


def test_shown_options_must_match_the_answers(tmp_path: Path) -> None:
    """Item 4: a question showing (C) while the answers name only A and B is refused, naming
    the real fields."""
    rows = caa_rows(8, "Three")
    rows[2]["question"] += "\n (C) Maybe."
    path = write_jsonl(tmp_path / "three.jsonl", rows)
    with pytest.raises(
        SteerexpError,
        match=r"three.jsonl line 3: the question shows options \(A\), \(B\), \(C\) but its "
        r"answers \(answer_matching_behavior / answer_not_matching_behavior\) are A, B",
    ):
        check("dataset=caa", "eval=caa", f"dataset.path={path}")


def test_encodings_bom_and_spaced_headers(tmp_path: Path) -> None:
    """Item 5: a UTF-8 BOM and spaces around header names are read; latin-1 fails in one
    line naming the file, the byte and its line."""
    header = ["id", "question", "options", "trait"]
    rows = [["q1", "Café: pick (A) or (B).", "A|B", "A"], ["q2", "Pick (A) or (B).", "A|B", "B"]]
    bom = tmp_path / "bom.csv"
    with bom.open("w", encoding="utf-8-sig", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    _, (_, questions, *_) = check("eval=file", f"eval.path={bom}")
    assert [q.id for q in questions] == ["q1", "q2"] and questions[0].text.startswith("Café")
    spaced = tmp_path / "spaced.csv"
    spaced.write_text(" id , question ,options, trait\n" + "q1,Pick (A) or (B).,A|B,A\n")
    _, (_, questions, *_) = check("eval=file", f"eval.path={spaced}")
    assert questions[0].id == "q1"
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(
        (json.dumps(caa_rows(1, "Plain")[0]) + "\n").encode()
        + (json.dumps(caa_rows(1, "Café")[0], ensure_ascii=False) + "\n").encode("latin-1")
    )
    with pytest.raises(
        SteerexpError,
        match=r"^\S*latin.jsonl is not UTF-8 \(byte 0xe9 at line 2\); re-save it as UTF-8",
    ):
        check("dataset=caa", f"dataset.path={latin}")


def test_messages_name_the_right_key(tmp_path: Path) -> None:
    """Item 6: a typo'd dataset.path in one-file mode names dataset.path; truncated JSON says
    where without 'at at'."""
    with pytest.raises(SteerexpError, match=r"^dataset.path='\S*nope.jsonl': no such file"):
        check("dataset=caa", "eval=caa", f"dataset.path={tmp_path / 'nope.jsonl'}")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"question": "unterminated')
    with pytest.raises(SteerexpError) as e:
        check("dataset=caa", f"dataset.path={bad}")
    assert "at at" not in str(e.value)
    assert "not valid JSON (Unterminated string starting at: line 1 column 15)" in str(e.value)


# --- prompts against the model, recorded prompts, cost columns, dtype, report ----------------


def test_long_prompts_are_skipped_counted_and_recorded(tmp_path: Path) -> None:
    """Items 8 and 9: an over-long prompt is skipped (not judged), every rendered prompt is
    written once with its length, and nothing left to ask is an error."""
    from helpers import tiny

    from steerexp.data.prompts import check_prompts, prompt_text
    from steerexp.data.records import Question

    loaded = tiny()
    cfg = compose_cfg("model=tiny_random", "eval.max_new_tokens=16")
    questions = [
        Question("short", "Is this short? (A) yes (B) no", "A"),
        Question("long", "word " * 600, "A"),
    ]
    eval_cfg = {**dict(cfg.eval), "max_new_tokens": 16}
    kept, records = check_prompts(loaded, eval_cfg, questions, tmp_path)
    assert [q.id for q in kept] == ["short"]
    saved = [json.loads(line) for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert saved == records and [r["question_id"] for r in saved] == ["short", "long"]
    assert saved[0]["text"] == prompt_text(loaded, eval_cfg, questions[0])
    assert "Is this short?" in saved[0]["text"] and saved[0]["text"] != questions[0].text
    assert [r["skipped_long"] for r in saved] == [False, True] and saved[1]["n_tokens"] > 512
    with pytest.raises(SteerexpError, match=r"every eval question is too long .* 512 positions"):
        check_prompts(loaded, eval_cfg, questions[1:])


def test_mean_len_counts_generated_tokens_and_pmass_is_summarised() -> None:
    """Item 10: ids that decode to nothing still count as tokens, and a forced judge's valid
    rows with almost no mass on the options are summarised and flagged."""
    import torch

    from steerexp.stages.judge.judges import dose_frame
    from steerexp.stages.regress import coherence
    from steerexp.store.results import GenRow, Judgement

    rows = [
        GenRow("q1", c, 0, "A", [7] * n, "", torch.zeros(n, 2), "length")
        for c, n in ((0.0, 3), (0.0, 5), (1.0, 4))
    ]
    judged = [Judgement(0.1, p, True, True) for p in (3e-5, 2e-5, 0.9)]
    dose = dose_frame(rows, judged)
    assert dose["n_tokens"].tolist() == [3, 5, 4]
    table = coherence.cost_table([0.0, 0.2], [0.0, 1.0], dose, dose["n_tokens"])
    assert table["mean_len"].tolist() == [4.0, 4.0]
    assert table["pmass_median"].tolist() == pytest.approx([2.5e-5, 0.9])
    assert table["low_pmass_frac"].tolist() == [1.0, 0.0]
    summary = coherence.pmass_summary(dose)
    assert summary["pmass_median"] == pytest.approx(3e-5)
    assert summary["low_pmass_frac"] == pytest.approx(2 / 3)


def test_hub_models_load_float32_on_cpu_unless_dtype_is_set() -> None:
    """Item 11: model.dtype defaults to auto: float32 on CPU, bfloat16 on a GPU; a dtype the
    user sets is kept."""
    from helpers import group

    from steerexp.models.loading import load_model, resolve_dtype

    assert group("model", "qwen3_0_6b")["dtype"] == "auto"
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    loaded = load_model({**group("model", "tiny_random"), "dtype": "auto", "device": "cpu"})
    assert next(loaded.hf.parameters()).dtype.is_floating_point
    assert str(next(loaded.hf.parameters()).dtype) == "torch.float32"


def test_report_says_no_persona_given() -> None:
    """Item 13: a file concept without a persona has no prompting reference: say so, not nan."""
    import pandas as pd

    from steerexp.sweep.report import footer

    part = pd.DataFrame(
        [
            {
                "status": "failed",
                "null_key": "k",
                "null_k": 4,
                "null_abs_median": 0.1,
                "null_abs_p95": 0.3,
                "prompt_shift": float("nan"),
                "null_cached": False,
                "null_build_s": 1.0,
            }
        ]
    )
    text = "\n".join(footer(part))
    assert "prompting reference: no persona given" in text and "nan" not in text


def test_caa_generate_and_test_files_run_end_to_end(tmp_path: Path) -> None:
    """A CAA-style generate/test pair through eval.path: every generate row is a pair, every
    test row is asked, judged and recorded (split.json, prompts.jsonl, metrics)."""
    import pandas as pd

    from steerexp.pipeline import run

    gen = write_jsonl(tmp_path / "generate.jsonl", caa_rows(10, "Gen"))
    test = write_jsonl(tmp_path / "test.jsonl", caa_rows(5, "Test", ("(a)", "(b)")))
    cfg = compose_cfg(
        "model=tiny_random",
        "judge=forced",
        "dataset=caa",
        "eval=caa",
        f"dataset.path={gen}",
        f"eval.path={test}",
        "eval.coeffs=[-1,0,1]",
        "eval.repeats=1",
        "eval.max_new_tokens=4",
        "random_null.k=0",
        f"cache_dir={tmp_path / 'cache'}",
    )
    metrics = run(cfg, tmp_path / "run", progress=False)
    assert metrics["status"] == "ok" and metrics["n_pairs"] == 10
    assert metrics["n_skipped_long"] == 0 and 0 <= metrics["low_pmass_frac"] <= 1
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["contrast_rows"] == list(range(1, 11)) and split["eval_rows"] == [1, 2, 3, 4, 5]
    assert split["eval"]["sha256"] and split["eval"]["path"] == str(test)
    dose = pd.read_csv(tmp_path / "run" / "dose_response.csv")
    assert sorted(set(dose["question_id"])) == [f"row{i}" for i in range(1, 6)]
    assert len(dose) == 5 * 3 and dose["valid"].all()
    prompts = (tmp_path / "run" / "prompts.jsonl").read_text().splitlines()
    assert [json.loads(p)["question_id"] for p in prompts] == [f"row{i}" for i in range(1, 6)]
    cost = pd.read_csv(tmp_path / "run" / "coherence.csv")
    per = dose.groupby("coeff")["n_tokens"].mean()
    assert cost.set_index("coeff")["mean_len"].tolist() == per.tolist()


def test_hf_dir_hash_follows_its_content(tmp_path: Path) -> None:
    """Item 12: a save_to_disk dir gets a sha256 (of its arrow files) that changes with its rows."""
    datasets = pytest.importorskip("datasets")
    from steerexp.data.tables import file_hash

    datasets.Dataset.from_list(caa_rows(4, "One")).save_to_disk(str(tmp_path / "a"))
    datasets.Dataset.from_list(caa_rows(4, "One")).save_to_disk(str(tmp_path / "b"))
    datasets.Dataset.from_list(caa_rows(4, "Two")).save_to_disk(str(tmp_path / "c"))
    hashes = [file_hash(tmp_path / name) for name in "abc"]
    assert hashes[0] is not None and hashes[0] == hashes[1] != hashes[2]


def _data_errors(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Data-file problems of issue 23, each as (overrides, the one-line message expected)."""
    test = write_jsonl(tmp_path / "test.jsonl", caa_rows(4, "Test"))
    copy = write_jsonl(tmp_path / "copy.jsonl", caa_rows(4, "Test"))
    three = caa_rows(8, "Three")
    three[0]["question"] += "\n (C) Maybe."
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(
        (json.dumps(caa_rows(1, "Café")[0], ensure_ascii=False) + "\n").encode("latin-1")
    )
    return {
        "leakage": (
            ["dataset=caa", "eval=caa", f"dataset.path={copy}", f"eval.path={test}"],
            "train/test leakage: 4 of 4 eval questions",
        ),
        "shown_c": (
            ["dataset=caa", "eval=caa", f"dataset.path={write_jsonl(tmp_path / 'c.jsonl', three)}"],
            "line 1: the question shows options (A), (B), (C)",
        ),
        "latin1": (
            ["dataset=caa", "eval=caa", f"dataset.path={latin}"],
            "latin.jsonl is not UTF-8 (byte 0xe9 at line 1)",
        ),
    }


@pytest.mark.parametrize("case", ["leakage", "shown_c", "latin1"])
def test_data_errors_fail_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Item 7 (this helper's part): each new data-file problem is a one-line SteerexpError,
    raised and recorded before any model loads."""
    from steerexp import pipeline
    from steerexp.pipeline import steps

    def no_load(*_a, **_k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(steps, "load_model", no_load)
    overrides, message = _data_errors(tmp_path)[case]
    with pytest.raises(SteerexpError) as e:
        pipeline.run(compose_cfg(*overrides), tmp_path / "run", progress=False)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert message in (tmp_path / "run" / "status.json").read_text()


def test_data_error_from_the_command_line_is_one_line(tmp_path: Path) -> None:
    """Item 7: through the CLI, a data-file problem is bad input: exit 2, one
    'steerexp: error:' line and no traceback."""
    from helpers import steerexp_in_process

    overrides, message = _data_errors(tmp_path)["leakage"]
    out = steerexp_in_process(*overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("steerexp: error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr[-2000:]


def test_letter_options_are_read_in_their_own_case() -> None:
    """Item 4: the judge's variants of option A are 'A' tokens only (as the regex reads it),
    not the article ' a'; word answers stay case-insensitive."""
    from helpers import tiny

    from steerexp.data.answers import answer_variants

    tok = tiny().tokenizer
    lower = [i for i in range(len(tok)) if tok.decode([i]).strip() == "a"]
    assert lower, "the test needs a vocabulary with an 'a' token"
    ids = answer_variants(tok, "A")
    assert ids and all(tok.decode([i]).strip() == "A" for i in ids)
    assert not set(ids) & set(lower)
    assert answer_variants(tok, "yes") == answer_variants(tok, "Yes")
