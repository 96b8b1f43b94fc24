# Table 3, "OLTR [9]": stage 2 (meta-embedding, class-aware sampler with 4 images per pick:
# zhmiao/OpenLongTailRecognition-OLTR config/ImageNet_LT/stage_2_meta_embedding.py), initialised from
# stage 1's best.pt. The sweep sets method.init_from to the stage-1 run of the same fold and seed; the
# value below is the folder of the README's single-run commands.
_base_ = ["./oltr_stage1.py"]

method = dict(
    name="oltr",
    oltr_stage=2,
    init_from="runs/oltr_stage1",
    sampler="class_aware",
    num_samples_cls=4,
)
