"""Ship a trained model inside the package: cast it to float16 into flowsr_cli/weights/NAME.safetensors
and register it as a bundled entry (sha256, size, training scale range, task) in flowsr_cli/hub/registry.json.

Usage: python scripts/export_bundled.py NAME MODEL_FILE --description TEXT [--scales 1,4]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from flowsr_cli.families.model_file import load_model, model_notes, save_model
from flowsr_cli.families.registry import network
from flowsr_cli.hub.manifest import UPSCALE

PACKAGE = Path(__file__).resolve().parent.parent / "flowsr_cli"


def export(name: str, source: Path, description: str, scales: tuple[float, float]) -> dict[str, object]:
    """Write the fp16 file, update the registry, and return the new registry entry."""
    metadata = model_notes(source)
    target = PACKAGE / "weights" / f"{name}.safetensors"
    target.parent.mkdir(exist_ok=True)
    model = load_model(source)
    save_model(model, target, dtype=torch.float16, **metadata)
    data = target.read_bytes()
    entry = {
        "description": description,
        "bundled": f"weights/{name}.safetensors",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "scales": list(scales),
    }
    task = network(model.spec["name"]).task
    if task != UPSCALE:
        entry["task"] = task
    registry_path = PACKAGE / "hub" / "registry.json"
    registry = json.loads(registry_path.read_text(encoding="utf-8"))
    registry["models"][name] = entry
    registry_path.write_text(json.dumps(registry, indent=2) + "\n", encoding="utf-8")
    return entry


def main() -> None:
    """Parse the command line and export one model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("model", type=Path)
    parser.add_argument("--description", required=True)
    parser.add_argument("--scales", default="1,4", help="training scale range, MIN,MAX")
    arguments = parser.parse_args()
    low, high = (float(value) for value in arguments.scales.split(","))
    entry = export(arguments.name, arguments.model, arguments.description, (low, high))
    print(f"{arguments.name}: {entry['bundled']} ({entry['size'] / 1e6:.2f} MB, sha256 {entry['sha256'][:12]})")


if __name__ == "__main__":
    main()
