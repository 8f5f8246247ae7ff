"""Command-line option checks shared by the `rsa` commands and the training entry points (no CLI imports)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def unknown_options(argv: Iterable[str], known: Iterable[str]) -> list[str]:
    """Messages for the long options in `argv` that are not in `known` (nor a unique prefix of one), each with
    the closest known option when there is one: `--populaton (did you mean --population?)`."""
    known = sorted(set(known))
    messages = []
    for item in argv:
        if item == "--":
            break
        if not item.startswith("--") or len(item) < 3:
            continue
        name = item.partition("=")[0]
        if name in known or len([k for k in known if k.startswith(name)]) == 1:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        messages.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return messages
