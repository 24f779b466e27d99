"""Training sets: the published on-disk format (`{split}_cand_*.csv` + `{split}_triplets_*.npy`), building it from
per-alert tables (cuts, split by source, N_max), the TFDS `btsbot_alerts` builder, the tf.data input pipeline and
the random-access split sources the training loop reads (`sources.load_sources`)."""
