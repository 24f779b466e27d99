"""BTSbot v2 metadata-only network (`um_nn`; Rehemtulla et al. 2025) with the v2 recipe: the metadata branch that
`frozen_fusion` takes (train it, then pass its workdir as `--config.init_from_metadata`).

    btsbot-train --config=um_nn_v2 --workdir=runs/um_nn_v2 --config.data_dir=DIR
"""

from btsbot_jax.configs._v2 import recipe


def get_config():
    return recipe("v2_um_nn")
