"""``python -m recipes.table3``: the Table 3 / Table 4 sweep (see :mod:`recipes.table3.cli`)."""
from recipes.cli import run_command
from recipes.table3.cli import main

raise SystemExit(run_command(main))
