"""
Generate ``docs/state-machine.md`` from the transition table, so the docs can
never drift from the rules: ``tests/test_docs.py`` fails when the file is stale.

Regenerate with ``python -m kplus_fsm.cli.diagram docs/state-machine.md``.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from .._machine import TRANSITIONS, Signal
from .._model import EventKind, Outcome, Status

_INTRO = """\
# The state machine

<!-- Generated from kplus_fsm._machine.TRANSITIONS by kplus_fsm/cli/diagram.py.
     Do not edit by hand: run `python -m kplus_fsm.cli.diagram docs/state-machine.md`. -->

A K PLUS payment is `created` (recorded before the API call), becomes `pending`
when Omise creates the charge, and ends `successful`, `failed` or `expired`.
Every input is classified into a *signal* and looked up in one frozen table,
`kplus_fsm.TRANSITIONS`; the cell gives the outcome, the state after and the
event appended. `read_*` signals come from charges read with our secret key (the
create response, a re-fetch, a poll); `hint_*` from webhook payloads.

Checks made before the table (see `kplus_fsm/_machine.py`):

- a charge whose payment id, charge id, amount, currency or livemode does not
  match the payment is `rejected`;
- a webhook event id already applied to the payment is a `duplicate`;
- a webhook with a key outside `charge.create`, `charge.complete`,
  `charge.update`, `charge.expire` is `unknown` (kept and reported);
- a payment request for an existing payment id with other parameters is `rejected`;
- malformed input (not JSON, wrong types) never reaches the table: it is recorded
  as `rejected` and a `MalformedInputError` is raised.

The state is derived from the charge's `status` only, never from `expired` or
`expired_at`.

## Diagram

Solid arrows are applied transitions. A terminal state changes only through an
authoritative read, as a flagged `charge.corrected` event.

"""


def _label(signals: list[str]) -> str:
    return ", ".join(signals)


def render() -> str:
    """The whole of ``docs/state-machine.md``."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (state, signal), rule in TRANSITIONS.items():
        if rule.outcome is Outcome.APPLIED and rule.to is not None:
            src = "[*]" if state is None else state.value
            label = signal.value
            if rule.event is EventKind.CHARGE_CORRECTED:
                label = f"corrected by {label}"
            edges[src, rule.to.value].append(label)
    lines = ["```mermaid", "stateDiagram-v2"]
    order = ["[*]", *(s.value for s in Status)]
    for (src, dst), signals in sorted(
        edges.items(), key=lambda kv: (order.index(kv[0][0]), order.index(kv[0][1]))
    ):
        lines.append(f"    {src} --> {dst}: {_label(signals)}")
    for status in Status:
        if status.is_terminal:
            lines.append(f"    {status.value} --> [*]")
    lines.append("```")

    table = ["## The table", ""]
    header = ["state \\ signal", *(s.value for s in Signal)]
    table.append("| " + " | ".join(header) + " |")
    table.append("|" + "---|" * len(header))
    for state in (None, *Status):
        cells = ["(none)" if state is None else state.value]
        for signal in Signal:
            rule = TRANSITIONS[state, signal]
            cell = rule.outcome.value
            if rule.to is not None and (state is None or rule.to != state):
                cell += f" → {rule.to.value}"
            if rule.event is not None:
                cell += f" `{rule.event.value}`"
            cells.append(cell)
        table.append("| " + " | ".join(cells) + " |")

    reasons = ["", "## Every cell, with its reason", ""]
    for (state, signal), rule in TRANSITIONS.items():
        name = "(none)" if state is None else state.value
        event = f" — appends `{rule.event.value}`" if rule.event else ""
        reasons.append(
            f"- `{name}` + `{signal.value}` → **{rule.outcome.value}**{event}: {rule.reason}"
        )
    return _INTRO + "\n".join(lines) + "\n\n" + "\n".join(table + reasons) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if args:
        Path(args[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
