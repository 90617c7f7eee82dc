"""``python -m prefscore ...``: the same command line as ``prefscore ...``."""

from .cli import app

app(prog_name="prefscore")
