# RSKD ("Ours + Focal") in mmpretrain 1.2: copy this file, then edit the paths and NUM_CLASSES.
#
#   python tools/train.py rskd_example.py        (mmpretrain's script), or in Python:
#   from mmengine.config import Config; from mmengine.runner import Runner
#   Runner.from_cfg(Config.fromfile("rskd_example.py")).train()
#
# Before training, once (README, "RSKD in your own training loop"):
#   * the teachers' logits of every TRAINING image, in the order of the training data set
#     (item i = row i), in a TeacherLogitBank:  rskd_loss.build_bank(TEACHER_BANK, teachers, loader, N)
#   * the teachers' per-class AP on the VALIDATION images, as fractions, in a JSON list:
#     rskd_loss.teacher_average_precision(teachers, val_loader)  ->  json.dump(ap.tolist(), f)
# Self-contained (no _base_), so it reads without mmpretrain's bundled configs.

custom_imports = dict(imports=["rskd_loss.integrations.mmpretrain"], allow_failed_imports=False)
default_scope = "mmpretrain"

NUM_CLASSES = 20
DATA_ROOT = "data/my_dataset"                       # images + OpenMMLab-2.0 multi-label annotation files
TEACHER_BANK = "work_dirs/teachers/bank.rskd"       # rskd_loss.TeacherLogitBank of the training set
TEACHER_AP = "work_dirs/teachers/teacher_ap.json"   # the teachers' per-class validation AP (fractions)

model = dict(
    type="ImageClassifier",
    data_preprocessor=dict(num_classes=NUM_CLASSES, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           to_rgb=True, to_onehot=True),
    backbone=dict(type="ResNet", depth=50, num_stages=4, out_indices=(3,), style="pytorch"),
    neck=dict(type="GlobalAveragePooling"),
    head=dict(
        type="RSKDMultiLabelClsHead",               # looks each sample's teacher logits up by its sample_idx
        teacher_bank=TEACHER_BANK,
        head=dict(
            type="MultiLabelLinearClsHead", num_classes=NUM_CLASSES, in_channels=2048,
            loss=dict(
                type="RSKDWeightedSubsetKDLoss",    # Eq. 4 around any mmpretrain-style loss:
                base=dict(type="RSKDFocalLoss"),    # the project's focal loss; dict(type="FocalLoss") is mmpretrain's
                num_classes=NUM_CLASSES, temperature=10.0, delta=0.6,
                # soft_targets=True,                # with data_preprocessor batch augments (Mixup / CutMix)
            ),
        ),
    ),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="RandomResizedCrop", scale=224),
    dict(type="RandomFlip", prob=0.5, direction="horizontal"),
    dict(type="PackInputs"),                        # keeps "sample_idx" (in its default meta_keys): RSKD needs it
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="ResizeEdge", scale=256, edge="short"),
    dict(type="CenterCrop", crop_size=224),
    dict(type="PackInputs"),
]

train_dataloader = dict(
    batch_size=32, num_workers=4, persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
    dataset=dict(type="MultiLabelDataset", data_root=DATA_ROOT, ann_file="train.json", pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=64, num_workers=4, persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type="MultiLabelDataset", data_root=DATA_ROOT, ann_file="val.json", pipeline=test_pipeline),
)
# Class-wise AP (average=None, percent) is what RSKDWeightHook reads; mAP for the log and save_best.
val_evaluator = [dict(type="AveragePrecision", average=None), dict(type="AveragePrecision")]
test_dataloader, test_evaluator = val_dataloader, val_evaluator

custom_hooks = [dict(type="RSKDWeightHook", teacher_ap=TEACHER_AP)]   # Eq. 3 after every validation

optim_wrapper = dict(optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=1e-4))
param_scheduler = dict(type="CosineAnnealingLR", by_epoch=True, T_max=30)
train_cfg = dict(by_epoch=True, max_epochs=30, val_interval=1)    # validate every epoch: Eq. 3 is per epoch
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50),
    param_scheduler=dict(type="ParamSchedulerHook"),
    # the KD weights are a buffer of the loss: they are in every checkpoint's state_dict
    checkpoint=dict(type="CheckpointHook", interval=1, max_keep_ckpts=3, save_best="multi-label/mAP", rule="greater"),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="VisualizationHook", enable=False),
)
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
               dist_cfg=dict(backend="nccl"))
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="UniversalVisualizer", vis_backends=vis_backends)
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
work_dir = "work_dirs/rskd_example"
