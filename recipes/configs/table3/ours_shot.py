# Table 3, "Ours (shot-based)": BCE + weighted subset KD (Eq. 4) from the shot-rule teachers, the KD
# weights updated every epoch from per-class validation AP (Eq. 3). T 10 (paper Table 4) and
# delta 0.6 (paper Sec. 3.1); Eq. 2 as printed, KL(student || teacher) (rskd_loss/kd.py says why). The sweep sets
# method.teachers_dir per fold and seed; the value below is the README's single-run folder.
method = dict(
    name="ours_shot",
    stage="student",
    criterion=dict(name="bce"),
    sampler=None,
    partition=dict(rule="shot"),
    teachers_dir="runs/teachers_shot",
    kd=dict(temperature=10.0, delta=0.6, order="student_teacher", dynamic_weights=True),
)
