"""The Table 3 / Table 4 sweep, run as ``python -m recipes.table3`` from the checkout's root.

Its modules, each importing only the ones listed before it (``tests/recipes/test_import_graph.py``
checks that no import goes round in a circle):

* :mod:`~recipes.table3.rows`: the table rows, the sweep folder's layout, :class:`~recipes.table3.rows.SweepError`;
* :mod:`~recipes.table3.jobs`: the job graph (rows x folds x seeds and their teachers / OLTR stage 1)
  and each job's ``recipes.train`` command line;
* :mod:`~recipes.table3.local`: running the jobs on this machine (in process, child processes, GPUs),
  with a progress line that estimates the time left;
* :mod:`~recipes.table3.slurm`: the same graph through submitit (SLURM with ``afterok`` dependencies,
  or submitit's local executor);
* :mod:`~recipes.table3.store`: reading a run from its folder or its record (``<out>/records/``), gathering
  the records, their provenance;
* :mod:`~recipes.table3.collect`: the tables from the runs' ``result.json`` (or their records);
* :mod:`~recipes.table3.figures`: Figs. 1, 4 and 5;
* :mod:`~recipes.table3.evidence`: paired differences, bootstrap intervals and the method's diagnostics;
* :mod:`~recipes.table3.cli`: the command line (``get_args_parser``, ``main``), the top.
"""
