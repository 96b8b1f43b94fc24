# Profile "rfmid": the paper's settings (profile "paper") on RFMiD (Pachade et al., Data 2021), the
# three official splits merged and re-split for 4-fold cross-validation (recipes/data/rfmid.py,
# write_rfmid_merged_csv: the merged CSV names every image by its path relative to data/RFMiD).
# Put the official folders under data/RFMiD (Training_Set/, Evaluation_Set/, Test_Set/).
_base_ = ["./paper.py"]

data = dict(
    dataset="rfmid",
    root="data/RFMiD",
    csv="rfmid_merged.csv",       # written by write_rfmid_merged_csv next to the official folders
    image_dir=".",                # the merged CSV's image column is relative to data/RFMiD itself
    rfmid_variant="auto",         # full (45 conditions) or challenge (27 + OTHER), from the header
)
# method.partition.prior: "rfmid" (rskd_loss/priors/rfmid.json), the default of data.dataset="rfmid"
