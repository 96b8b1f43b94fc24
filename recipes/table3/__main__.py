"""``python -m recipes.table3``: the Table 3 / Table 4 sweep (see :mod:`recipes.table3.sweep`)."""
from recipes.cli import run_command
from recipes.table3.sweep import SweepError, main

raise SystemExit(run_command(main, also=(SweepError,)))
