"""Model families: one folder each (networks, tiled engine, importer of original checkpoints), shared
building blocks in ``common``. Importing this package registers every family with
:mod:`flowsr_cli.families.registry`, through which models are built, run and imported."""

from flowsr_cli.families import common, linf, srflow  # noqa: F401  (each registers its family)

# isort: split
from flowsr_cli.families import hcflow  # noqa: F401  (last: importers are asked, and named in errors, in this order)
