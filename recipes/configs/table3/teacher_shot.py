# Subset teachers, shot-based rule (paper Sec. 2.1): head (>= 100 training positives) / medium /
# tail (< 20) (rskd_loss/partition.py SubsetPartitioner, thresholds from DEFAULTS). One run per subset:
# --set method.subset=j --out-dir <teachers_dir>/subset<j>. Each teacher is trained with BCE on its
# subset's classes only.
method = dict(
    name="teacher_shot",
    stage="teacher",
    criterion=dict(name="bce"),
    sampler=None,
    partition=dict(rule="shot"),
    subset=0,
)
