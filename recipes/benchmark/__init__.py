"""Benchmarks: what a run costs and where the time goes. They print figures and never assert on time.

    python -m recipes.benchmark               # a training run's step, teachers, data pipeline, end to end
    python -m recipes.benchmark.kd_loss       # WeightedSubsetKDLoss(BCE) against plain BCE
    python -m recipes.benchmark.image_decode  # PIL against mmcv decoding
    bash recipes/benchmark/gpu_checks.sh      # all of them on a GPU machine, in one script
"""
