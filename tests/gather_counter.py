"""Instrumentation for tests/test_onpolicy.py: counts whole-model ZeRO-3 gathers per generation round.

Imported through `--reward_funcs gather_counter.reward_count_gathers` (tests/ on PYTHONPATH): importing it wraps
DeepSpeed's `GatheredParameters.__enter__` to count gathers of more than 10 parameters (TRL gathers the whole
model for generation; ZeRO-3's own forward passes fetch parameters another way). The reward, called once per
generation round after it, appends the count since the previous round to `$GATHER_LOG.<rank>` and returns 0.
"""

from __future__ import annotations

import os

import deepspeed

_gathers = [0]
_enter = deepspeed.zero.GatheredParameters.__enter__


def _counting_enter(self):
    if getattr(self, "enabled", True) and len(getattr(self, "params", ())) > 10:
        _gathers[0] += 1
    return _enter(self)


deepspeed.zero.GatheredParameters.__enter__ = _counting_enter


def reward_count_gathers(prompts=None, completions=None, **kwargs) -> list[float]:
    """0.0 per completion; records the whole-model gathers of this generation round (see the module docstring)."""
    with open(f"{os.environ['GATHER_LOG']}.{os.environ.get('RANK', '0')}", "a") as fh:
        fh.write(f"{_gathers[0]}\n")
    _gathers[0] = 0
    return [0.0] * len(completions)
