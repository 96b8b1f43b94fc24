"""The Table 3 / Table 4 sweep: rows, the job graph, local and SLURM launch, collection, evidence and
figures. Run it as ``python -m recipes.table3`` from the checkout's root.
"""
