"""HCFlow (hierarchical conditional flow, Liang et al., ICCV 2021) for SR: the network and the importer of the
original's SR checkpoints. Its tiled engine comes later, so ``upscale`` cannot run it yet."""

from flowsr_cli.families.hcflow.importer import HCFLOW_CHECKPOINTS, import_hcflow
from flowsr_cli.families.hcflow.network import HCFlowSR
from flowsr_cli.families.registry import Family, Importer, Network, register_family

register_family(
    Family(
        "hcflow",
        networks={"hcflow": Network(HCFlowSR, engine=None)},
        importer=Importer(HCFLOW_CHECKPOINTS, import_hcflow),
    )
)
