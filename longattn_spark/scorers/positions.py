"""Sequences longer than the model was trained on: never scored silently (pure: no torch,
no Spark).

A RoPE model trained to N positions (``max_position_embeddings`` in its config) still runs
on L > N tokens, but its attention past position N is extrapolation, outside what it
learned, so a score at that length may reflect the position encoding more than the text.
The paper scored 32K windows with a Llama-3 whose context its authors had first extended by
adjusting the RoPE base frequency (ABF, paper §4.1); its released scoring code passes a
larger ``rope_theta``. ``extrapolation_note`` says so in one line, for the score run's
summary, the scorer's record in the scores table (``longattn.scorer.<scorer_id>``) and the
report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: config.json fields naming the trained context length, in the order they are looked for
POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length")


def trained_positions(describe: Mapping[str, Any] | None) -> int | None:
    """The trained context length from a scorer's description: its own
    ``max_position_embeddings`` (LongAttn) or its ``model_config``'s (whole-model methods);
    None when it names none."""
    if not describe:
        return None
    sources = [describe]
    config = describe.get("model_config")
    if isinstance(config, Mapping):
        sources.append(config)
    for source in sources:
        for name in POSITION_FIELDS:
            value = source.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def extrapolation_note(trained: int | None, seq_len: int | None, *, method: str = "longattn",
                       rope_theta: float | None = None) -> str | None:
    """One line when sequences of ``seq_len`` tokens run past the ``trained`` positions,
    else None (also when either is unknown)."""
    if not trained or not seq_len or int(seq_len) <= int(trained):
        return None
    remedy = ("the paper's remedy is a larger RoPE base, --rope-theta (its authors first "
              "extended the model's context by adjusting the base frequency)")
    if method != "longattn":
        remedy += ", which --method longattn takes"
    given = f"; scored with --rope-theta {rope_theta:g}" if rope_theta else ""
    return (f"the model was trained to {int(trained):,} positions (max_position_embeddings) "
            f"and L = {int(seq_len):,} extrapolates beyond them: attention past position "
            f"{int(trained):,} is outside what it learned; {remedy}, or a model trained to at "
            f"least L{given}")
