# Table 3, "Ours (region-based)": as ours_shot with the region-rule teachers.
_base_ = ["./ours_shot.py"]

method = dict(name="ours_region", partition=dict(rule="region"), teachers_dir="runs/teachers_region")
