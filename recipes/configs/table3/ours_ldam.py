# Table 3, "Ours + LDAM [1]": weighted subset KD around LDAM (as ldam.py, cosine-normalised head).
_base_ = ["./ours_shot.py"]

model = dict(head="normed")
method = dict(name="ours_ldam", criterion=dict(_delete_=True, name="ldam", max_m=0.5, s=30.0, drw_epoch=None))
