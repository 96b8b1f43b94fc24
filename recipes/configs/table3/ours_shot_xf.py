# Not in the paper: "Ours (shot-based)" distilling cross-fitted teachers. The fold's training images are
# split into K = 4 stratified parts (rskd_loss.crossfit_parts, seeded with data.split_seed); teacher set k
# trains on every part but k, and each training image's bank row comes from the set that did not see it
# (out-of-fold logits instead of a teacher's logits on its own training images, which mostly repeat the
# labels). K = 4: each set sees 3/4 of the images, the train : test proportion of the 4-fold CV; the
# teachers cost K times theirs. Eq. 3's teacher metric: the mean of the K sets' validation logits.
_base_ = ["./ours_shot.py"]

method = dict(name="ours_shot_xf", crossfit_k=4, teachers_dir="runs/teachers_shot_xf4")
