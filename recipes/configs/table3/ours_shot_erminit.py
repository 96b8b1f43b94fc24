# Not in the paper: "Ours (shot-based)" distilling teachers that start from the fold's ERM run: each subset
# teacher's backbone is initialised from the ERM run's best.pt (its head, of the subset's width, is new),
# so a tail teacher starts from features learnt on every image. The sweep adds the ERM run of the fold and
# (teacher) seed as a dependency of every teacher and sets their method.init_from.
_base_ = ["./ours_shot.py"]

method = dict(name="ours_shot_erminit", teacher_init="erm", teachers_dir="runs/teachers_shot_erminit")
