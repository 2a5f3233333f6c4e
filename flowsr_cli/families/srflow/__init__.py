"""SRFlow (fixed x4 conditional flow) and SRFlow-LP (SRFlow with the learned prior): networks, the tiled
engine, and the importer of original SRFlow checkpoints and original SRFlow-LP priors."""

from flowsr_cli.families.registry import Family, Importer, Network, register_family
from flowsr_cli.families.srflow.engine import run_srflow, run_srflow_lp
from flowsr_cli.families.srflow.importer import SRFLOW_CHECKPOINTS, import_srflow, import_srflow_with_prior
from flowsr_cli.families.srflow.network import SRFlow
from flowsr_cli.families.srflow.original_prior import OriginalSRFlowLP
from flowsr_cli.families.srflow.prior import SRFlowLP

register_family(
    Family(
        "srflow",
        networks={
            "srflow": Network(SRFlow, engine=run_srflow),
            "srflow-lp": Network(SRFlowLP, engine=run_srflow_lp, learned_prior=True),
            "srflow-lp-original": Network(OriginalSRFlowLP, engine=run_srflow_lp, learned_prior=True),
        },
        importer=Importer(SRFLOW_CHECKPOINTS, import_srflow, convert_with_prior=import_srflow_with_prior),
    )
)
