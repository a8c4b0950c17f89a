"""One exception type for bad input, with one-line messages that name the value and the choices."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SteerexpError(ValueError):
    """Bad input or an unusable model/config combination. The message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def choice_error(
    what: str, value: object, choices: Iterable[str], n_close: int = 3
) -> SteerexpError:
    """``unknown method 'pca_dif'; did you mean 'pca_diff'? valid: a, b, c``."""
    choices = sorted(str(c) for c in choices)
    close = difflib.get_close_matches(str(value), choices, n=n_close, cutoff=0.5)
    hint = f" did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return SteerexpError(f"unknown {what} {value!r};{hint} valid: {', '.join(choices)}")


def error_text(e: BaseException) -> str:
    """One line for logs and status files: bad input as is, anything else with its type."""
    text = " ".join(str(e).split())
    return text if isinstance(e, SteerexpError) else f"{type(e).__name__}: {text}"


def plain_name(key: str, value: object) -> str:
    """``value`` must be usable as one file or folder name (it becomes a path component)."""
    text = str(value)
    if not text or text in (".", "..") or any(c in text for c in "/\\\0") or text.startswith("~"):
        raise SteerexpError(
            f"{key}={text!r} must be a plain name (one folder or file name: no '/', '\\', "
            "not '.' or '..'), e.g. my_sweep"
        )
    return text
