"""``python -m kplus_fsm`` runs the ``kplus-fsm`` command line."""

from .cli import main

main()
