"""LINF (arbitrary-scale conditional flow) and LINF-LP (LINF with the learned prior): networks, tiled
engines, and the importer of original LINF and LINF-LP checkpoints."""

from flowsr_cli.families.linf.engine import run_linf
from flowsr_cli.families.linf.importer import LINF_CHECKPOINTS, import_linf, import_linf_with_prior
from flowsr_cli.families.linf.network import LINF
from flowsr_cli.families.linf.original_prior import OriginalLatentModule, OriginalLINFLP
from flowsr_cli.families.linf.prior import LINFLP
from flowsr_cli.families.linf.prior_engine import run_linf_lp
from flowsr_cli.families.registry import Family, Importer, Network, register_family

register_family(
    Family(
        "linf",
        networks={
            "linf": Network(LINF, engine=run_linf),
            "linf-lp": Network(LINFLP, engine=run_linf_lp, learned_prior=True),
            "linf-lp-original": Network(OriginalLINFLP, engine=run_linf_lp, learned_prior=True),
            "lp-latent-original": Network(OriginalLatentModule),
        },
        importer=Importer(LINF_CHECKPOINTS, import_linf, convert_with_prior=import_linf_with_prior),
    )
)
