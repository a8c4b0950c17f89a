"""The records the data readers produce: a contrast ``Pair``, an eval ``Question``, a chat
``Message``, and the dataset's fixed ``max_pairs`` subsample."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from steerexp.config.errors import SteerexpError

Message = dict[str, str]


@dataclass(frozen=True)
class Pair:
    """One contrast pair: a user turn and an open assistant turn per side.

    By default both sides share the assistant opening ``suffix`` after a positive and a
    negative persona; ``negative_suffix`` gives the negative side its own opening (e.g. the
    same prompt continued two ways, as in CAA-style A/B pairs).
    """

    positive: str
    negative: str
    suffix: str
    negative_suffix: str | None = None
    #: where the pair came from in a user file (``line 4``), for messages; not part of the pair
    where: str = field(default="", compare=False)

    def messages(self, positive: bool) -> list[Message]:
        persona = self.positive if positive else self.negative
        suffix = self.suffix if positive or self.negative_suffix is None else self.negative_suffix
        return [{"role": "user", "content": persona}, {"role": "assistant", "content": suffix}]

    def key(self) -> tuple[str, ...]:
        """What the extraction cache hashes: every text of the pair (unchanged for shared suffixes)."""
        base = (self.positive, self.negative, self.suffix)
        return base if self.negative_suffix is None else (*base, self.negative_suffix)


@dataclass(frozen=True)
class Question:
    """An eval dilemma; ``trait_answer`` is the answer the positive trait (honesty) gives.

    ``scenario`` names the unit of replication the question belongs to (paraphrases of one
    situation share it; the slope's standard error is clustered by it); empty: its own id."""

    id: str
    text: str
    trait_answer: str
    scenario: str = ""

    def __post_init__(self) -> None:
        if not self.scenario:
            object.__setattr__(self, "scenario", self.id)


#: The ``max_pairs`` subsample is part of the dataset's definition, not of a run: runs that
#: differ only in ``seed`` (e.g. several random baselines) share one contrast set and so one
#: extraction.
SUBSAMPLE_SEED = 0


def subsample(pairs: list[Pair], max_pairs: Any) -> list[Pair]:
    """At most ``max_pairs`` pairs (``dataset.max_pairs``; None = all), a seeded sample fixed by
    the dataset, not the run."""
    if max_pairs is None:
        return pairs
    if int(max_pairs) < 1:
        raise SteerexpError(f"dataset.max_pairs={max_pairs} must be >= 1 (or null for all)")
    if len(pairs) > int(max_pairs):
        return random.Random(SUBSAMPLE_SEED).sample(pairs, int(max_pairs))
    return pairs
