# Table 3, "Ours + OLTR [9]": weighted subset KD around OLTR's stage 2 (as oltr_stage2.py: meta-embedding,
# class-aware sampler with 4 images per pick, initialised from the OLTR stage-1 run).
_base_ = ["./ours_shot.py"]

method = dict(
    name="ours_oltr",
    criterion=dict(_delete_=True, name="oltr"),
    oltr_stage=2,
    init_from="runs/oltr_stage1",
    sampler="class_aware",
    num_samples_cls=4,
)
