"""The image rescaling models the `rescale` commands take: their scales, the default name, and the check of a
``--model`` before it loads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from flowsr_cli.errors import UsageError

if TYPE_CHECKING:
    from flowsr_cli.families.rescalers import PreparedRescaler
    from flowsr_cli.hub.catalog import Hub

SCALES = (2, 4)
DEFAULT_RESCALER = "hcflow-rescale-x{scale}"
"""The model `rescale down` and `rescale eval` use unless told: the bundled one of the scale."""


def prepared_rescaler(hub: Hub, model: str, scale: int | None = None) -> PreparedRescaler:
    """The rescaling model ``model`` names, checked before it loads: it exists, is a rescaling model, and has
    ``scale`` (when given)."""
    from flowsr_cli.families.rescalers import prepare_rescaler
    from flowsr_cli.hub.catalog import written_as_path
    from flowsr_cli.hub.manifest import RESCALE

    if written_as_path(model) and not Path(model).expanduser().is_file():
        raise UsageError(f"model file {model}: not found")
    if hub.find(model) is None and not Path(model).expanduser().is_file():
        known = ", ".join(hub.names_for(RESCALE))
        raise UsageError(f"unknown model {model!r}; image rescaling models: {known}, or a path to a .safetensors model")
    prepared = prepare_rescaler(model, hub)
    if scale is not None and prepared.scale != scale:
        raise UsageError(f"--model {model}: it rescales by {prepared.scale}, not by --scale {scale}")
    return prepared
