"""Building blocks several families share: flow layers, LR encoders, the learned prior's latent module,
patch coordinates, memory layouts. The encoders and the latent module are parts a spec can name."""

from flowsr_cli.families.common.encoders import EDSRBaseline, RRDBEncoder
from flowsr_cli.families.common.latent import LatentModule
from flowsr_cli.families.registry import Family, Network, register_family

register_family(
    Family(
        "common",
        networks={
            "edsr-baseline": Network(EDSRBaseline),
            "rrdb": Network(RRDBEncoder),
            "lp-latent": Network(LatentModule),
        },
    )
)
