# Subset teachers, region-based rule (paper Sec. 2.1, Table 1): classes grouped by the fundus region
# they appear in, from the profile's prior (method.partition.prior, e.g. "synthetic" or "rfmid").
_base_ = ["./teacher_shot.py"]

method = dict(name="teacher_region", partition=dict(rule="region"))
