# "Ours + ASL": weighted subset KD around the asymmetric loss (as asl.py).
_base_ = ["./ours_shot.py"]

method = dict(
    name="ours_asl",
    criterion=dict(_delete_=True, name="asl", gamma_neg=4.0, gamma_pos=0.0, clip=0.05, detach_focusing=True),
)
