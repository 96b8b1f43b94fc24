# Table 3, "ERM Model": plain binary cross-entropy on every class (baselines/bce.py, registry name
# "bce", alias "erm").
method = dict(
    name="erm",
    stage="baseline",
    criterion=dict(name="bce"),
    sampler=None,
)
