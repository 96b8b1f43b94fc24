# Profile "paper": the paper's Section 3.1 on a GPU: ImageNet-pretrained torchvision ResNet-50, input
# 256 x 256, Adam, lr 1e-4 reduced ten-fold on a validation-loss plateau (patience 5) down to 1e-7,
# 100 epochs, delta 0.6, T 10, 4-fold cross-validation. These are recipes/config.py DEFAULTS; they are
# repeated here so that this file states the whole setting. Data: the synthetic benchmark generated
# at 256 px (use the "rfmid" profile, or --set data.*, for real data).
data = dict(
    dataset="synthetic",
    root="data/synthetic_256",
    synthetic=dict(seed=0, num_images=None, image_size=256, num_classes=None),
    scheme="kfold",               # paper Sec. 3.1: "evaluated on test set based on 4-fold cross-validation"
    n_folds=4,
    image_size=256,               # paper Sec. 3.1: "The input size of the network is 256 x 256"
    batch_size=32,                # not given in the paper; DEFAULTS
    eval_batch_size=128,
    num_workers=8,
    preload=True,                 # decode once into a memory-mapped uint8 cache (data.root/.cache/), then
                                  # no CPU decoding per epoch; augmentation on the GPU (recipes/data/augment.py)
    augment=True,
)
model = dict(name="resnet50", pretrained=True, weights_path=None)   # paper Sec. 3.1
# model.name: a torchvision name (as here), small_cnn, efficientnet_lite0, or timm/<name> for any timm model
# (e.g. timm/resnet50.a1_in1k); no download at run time: weights from model.weights_path (.safetensors, .pth,
# .bin) or from timm's Hugging Face / torch hub cache (recipes/models/backbones.py)
schedule = dict(
    epochs=100,                   # paper Sec. 3.1: "a total of 100 epochs"
    lr=1e-4,                      # paper Sec. 3.1: "starts at 1e-4"
    weight_decay=0.0,             # not given in the paper
    plateau_factor=0.1,           # paper Sec. 3.1: "reduces ten-fold"
    plateau_patience=5,           # paper Sec. 3.1: "with the patience of 5"
    min_lr=1e-7,                  # paper Sec. 3.1: "till 1e-7"
)
method = dict(
    # partition.prior follows data.dataset (recipes/config.py DATASET_PRIORS); not set here
    kd=dict(temperature=10.0, delta=0.6),  # paper Sec. 3.1 (delta) and Table 4 (T = 10)
)
run = dict(device="cuda", amp="auto", channels_last="auto", compile=False, log_every=50)
