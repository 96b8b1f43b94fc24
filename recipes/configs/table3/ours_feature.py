# Table 3, "Ours (feature-based)" (also Table 4, "Weighted"): as ours_shot with the feature-rule teachers.
_base_ = ["./ours_shot.py"]

method = dict(name="ours_feature", partition=dict(rule="feature"), teachers_dir="runs/teachers_feature")
