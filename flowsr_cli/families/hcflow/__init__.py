"""HCFlow (hierarchical conditional flow, Liang et al., ICCV 2021): the SR network, its tiled engine, the image
rescaling network with its own engine (`flowsr rescale`; ``upscale`` cannot run it) and the importer of the
original's SR and rescaling checkpoints."""

from flowsr_cli.families.hcflow.engine import run_hcflow
from flowsr_cli.families.hcflow.importer import HCFLOW_CHECKPOINTS
from flowsr_cli.families.hcflow.network import HCFlowSR
from flowsr_cli.families.hcflow.prior import HCFlowLP
from flowsr_cli.families.hcflow.prior_engine import run_hcflow_lp
from flowsr_cli.families.hcflow.rescale_engine import run_hcflow_rescale
from flowsr_cli.families.hcflow.rescaling import HCFlowRescaler
from flowsr_cli.families.hcflow.rescaling_importer import import_hcflow_checkpoint
from flowsr_cli.families.registry import Family, Importer, Network, register_family

register_family(
    Family(
        "hcflow",
        networks={
            "hcflow": Network(HCFlowSR, engine=run_hcflow),
            "hcflow-lp": Network(HCFlowLP, engine=run_hcflow_lp, learned_prior=True),
            "hcflow-rescale": Network(HCFlowRescaler, rescaler=run_hcflow_rescale),
        },
        importer=Importer(HCFLOW_CHECKPOINTS, import_hcflow_checkpoint),
    )
)
