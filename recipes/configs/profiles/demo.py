# Profile "demo": CPU, the synthetic benchmark at the demo size, a small CNN, a few epochs.
# Goal: all 14 rows of Table 3 (plus their teachers and OLTR stage 1) finish in <= 10 min on
# 2 CPU cores. The knobs that set the run time are the underscore variables of the first block: tune
# them here, in one place (mmengine drops nothing, recipes.config ignores names starting with "_").
#
# Merge order (recipes/config.py): DEFAULTS <- this profile <- method config <- --set.

# --- the time knobs (measured: Tables 3 + 4, 30 runs, 175 s on 2 idle CPU cores;
# docs/experiments/2026-11-27-demo-sweep-times.md) ---
_num_images = 1500      # synthetic images (generator default 4000); 12 classes keep all three shot
_num_classes = 12       # groups non-empty: train counts 502 ... 4 at the 70 % hold-out part
_image_size = 64        # generated and trained at 64 px (generator default, recipes/data/synthetic.py)
_epochs = 4
_batch_size = 64
_width = 16             # small_cnn channels (recipes/models/backbones.py small_cnn_backbone: w, 2w, 4w, 4w)
_lr = 1e-3              # Adam's own default (Kingma & Ba 2015): a CNN trained from scratch, not the
                        # paper's 1e-4 fine-tuning rate of a pre-trained ResNet-50
# ------------------------------------------------------------------------------------------------

data = dict(
    dataset="synthetic",
    root="data/synthetic_demo",   # its own folder: a generation there with other options is refused
    synthetic=dict(seed=0, num_images=_num_images, image_size=_image_size, num_classes=_num_classes),
    scheme="holdout",             # one 7:1:2 split (paper Sec. 3.2); the paper's 4-fold CV is "paper"
    fold=0,
    image_size=_image_size,
    batch_size=_batch_size,
    eval_batch_size=256,
    num_workers=0,                # 2 cores: worker processes cost more than they give at 64 px
    preload=True,                 # decode every image once into memory
    augment=True,
)
model = dict(name="small_cnn", pretrained=False, weights_path=None, width=_width)
schedule = dict(
    epochs=_epochs,
    lr=_lr,
    plateau_patience=1,           # paper: 5 of 100 epochs; scaled to a run of a few epochs
    min_lr=1e-6,
)
# method.partition.prior is not set: it follows data.dataset (recipes/config.py DATASET_PRIORS), so the
# synthetic benchmark gets rskd_loss/priors/synthetic.json and --set data.dataset='csv' asks for yours
run = dict(device="cpu", amp="none", compile=False, log_every=10)
