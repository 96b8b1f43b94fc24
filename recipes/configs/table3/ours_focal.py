# Table 3, "Ours + Focal Loss [8]": weighted subset KD around the focal loss (as focal.py).
_base_ = ["./ours_shot.py"]

method = dict(name="ours_focal", criterion=dict(_delete_=True, name="focal", alpha=0.25, gamma=2.0))
