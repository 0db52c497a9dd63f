"""
The runtime of ``kplus-fsm serve`` (private): the webhook receiver as a
production service. The command (:mod:`kplus_fsm.cli.serve`) parses its flags
with :mod:`.options` alone and imports the rest only when it runs, so that no
other command loads uvicorn, h11, prometheus_client or the HTTP client.

- :mod:`.options`: what serve is told (:class:`~.options.ServeOptions`) and how
  its flags are read; imports nothing heavy.
- :mod:`.app`: what one serving process holds and answers (the runtime, the
  ASGI application, ``/ready``).
- :mod:`.run`: the processes (the socket, the signals, the supervisor).
- :mod:`.http`: uvicorn with the head and body deadlines.
- :mod:`.metrics`: ``/metrics`` (prometheus_client, imported once a process
  knows whether it is one of several).

Nothing is imported here: importing the package costs nothing.
"""
