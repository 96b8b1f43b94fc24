"""The training engine: :class:`~recipes.engine.trainer.Trainer` (loaders, optimiser, AMP, DDP, finite
check, checkpoints and resume, logging, the final test; it knows no method) and one Task per method
(:mod:`~recipes.engine.tasks`: model, criterion, data view, the loss of a batch, epoch-end work).

Around them: ``checkpoints`` (atomic, ``weights_only``-loadable), ``run_lock`` (one live run per
folder), ``run_log`` (metrics.jsonl, TensorBoard), ``predict`` and ``teacher_sources`` (teacher
checkpoints, the logit bank, the partition).
"""
