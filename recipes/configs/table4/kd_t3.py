# Table 4, "KD (T = 3)": subset KD from the feature-rule teachers (the paper's Table 4 is on the
# feature rule: its "Weighted" row equals Table 3's "Ours (feature-based)") WITHOUT the dynamic weights
# of Eq. 3 (every class weight stays 1), temperature 3.
_base_ = ["../table3/ours_feature.py"]

method = dict(name="kd_t3", kd=dict(temperature=3.0, dynamic_weights=False))
