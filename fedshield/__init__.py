"""The ``fedshield`` command: simulate, predict, keys, audit (``fedshield/cli.py``). It serves
every party, so it sits above the simulation harness, the server, the sites and the audit."""
