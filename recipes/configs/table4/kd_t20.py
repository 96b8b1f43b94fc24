# Table 4, "KD (T = 20)": subset KD from the feature-rule teachers (the paper's Table 4 is on the
# feature rule: its "Weighted" row equals Table 3's "Ours (feature-based)") WITHOUT the dynamic weights
# of Eq. 3 (every class weight stays 1), temperature 20.
_base_ = ["../table3/ours_feature.py"]

method = dict(name="kd_t20", kd=dict(temperature=20.0, dynamic_weights=False))
