"""Alert packets in, model inputs out: avro containers and readers (files, folders, tarballs, parquet), gzip+FITS
stamps, and the image triplet + 25 metadata features of each alert (Rehemtulla et al. 2024, section 2.2).

Nothing here imports JAX or TensorFlow, so decoding can run in light worker processes."""
