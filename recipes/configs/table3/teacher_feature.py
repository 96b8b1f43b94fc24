# Subset teachers, feature-based rule (paper Sec. 2.1, Fig. 3): classes grouped by a shared phenotype,
# from the "feature" groups of the profile's prior (method.partition.prior).
_base_ = ["./teacher_shot.py"]

method = dict(name="teacher_feature", partition=dict(rule="feature"))
