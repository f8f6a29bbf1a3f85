"""The command line: ``app`` (the Typer app, ``main``), one module per command, the options they share
(``options``), where results go (``destinations``, ``prediction_run``) and what is said on stderr (``console``).

Nothing is imported here: ``fer_cli.cli.app:main`` is the entry point.
"""
