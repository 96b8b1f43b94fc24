# OLTR [9], stage 1 (not a table row): the OLTR network without the meta-embedding, instance-balanced
# sampling (zhmiao/OpenLongTailRecognition-OLTR config/ImageNet_LT/stage_1.py); baselines/oltr.py.
# Its best.pt initialises stage 2 ("oltr") and "Ours + OLTR".
_base_ = ["./erm.py"]

method = dict(
    name="oltr_stage1",
    stage="baseline",
    oltr_stage=1,
    criterion=dict(_delete_=True, name="oltr"),
    sampler=None,
)
