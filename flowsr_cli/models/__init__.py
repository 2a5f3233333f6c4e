"""Model architectures (built from specs through the registry) and their files."""

from flowsr_cli.models import encoders, latent, linf, linf_lp, srflow, srflow_lp  # noqa: F401  (registers the architectures)
from flowsr_cli.models.checkpoint import ModelFileError, load_model, read_model_metadata, save_model
from flowsr_cli.models.registry import ModelSpecError, make, register, registered_names

__all__ = [
    "ModelFileError",
    "ModelSpecError",
    "load_model",
    "make",
    "read_model_metadata",
    "register",
    "registered_names",
    "save_model",
]
