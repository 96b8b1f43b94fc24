"""``python -m recipes.benchmark``: what a training run costs (see :mod:`recipes.benchmark.run_cost`)."""
from recipes.benchmark.run_cost import main

main()
