"""
kplus_fsm.adapters: the edges of kplus_fsm (installed from the repository's
``adapters/`` folder as the ``kplus_fsm.adapters`` package).

Adapters connect the pure core to the outside world and use only the public API
of :mod:`kplus_fsm`; the core never imports them. The Opn (Omise) HTTP client,
the fake Omise and webhook intake live here.
"""

from __future__ import annotations

__all__: list[str] = []
