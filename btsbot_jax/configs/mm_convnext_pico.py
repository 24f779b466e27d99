"""BTSbot v2 image + metadata ConvNeXt-pico trained end to end (`mm_ConvNeXt`; Rehemtulla et al. 2025) with the v2
recipe: the ConvNeXt feature map beside the metadata branch, under a combined head.

    btsbot-train --config=mm_convnext_pico --workdir=runs/mm_convnext_pico --config.data_dir=DIR
"""

from btsbot_jax.configs._v2 import recipe


def get_config():
    return recipe("v2_mm_ConvNeXt")
