"""The benchmark runner's command line: sections in order, each with the options after it."""

from __future__ import annotations

import pytest

from bench.__main__ import SECTIONS, parse


def test_options_reach_the_section_they_follow() -> None:
    assert parse(["peers", "--shape", "qwen3-0.6b", "fisher"]) == [
        ("peers", ["--shape", "qwen3-0.6b"]),
        ("fisher", []),
    ]
    assert parse(["run"]) == [("run", [])]


def test_no_argument_runs_every_section_once() -> None:
    assert [name for name, _ in parse([])] == SECTIONS


@pytest.mark.parametrize("argv", [["nope"], ["--shape", "organism"], ["peers", "organism"]])
def test_unknown_words_are_refused_with_the_valid_sections(argv: list[str]) -> None:
    with pytest.raises(SystemExit, match="valid: fisher"):
        parse(argv)


def test_peers_refuses_an_unknown_shape() -> None:
    from bench import peers

    with pytest.raises(SystemExit):
        peers.main(["--shape", "qwen3-4b"])
