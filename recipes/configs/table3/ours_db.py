# Table 3, "Ours + DB Loss [12]": weighted subset KD around the DB loss (preset as db.py). The teachers
# are those of ONE rule, the sweep's --ours-rule (default shot); the sweep sets partition.rule and
# teachers_dir to match.
_base_ = ["./ours_shot.py"]

method = dict(name="ours_db", criterion=dict(_delete_=True, name="db", preset="coco"))
