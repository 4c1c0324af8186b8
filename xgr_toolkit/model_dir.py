"""A model directory: ``config.yaml`` + ``model.safetensors`` + ``catalog.safetensors``.

Nothing here unpickles: weights and catalog are safetensors, the config is YAML.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from .catalog import CatalogError, ItemCatalog
from .config import XGRConfig, load_config, save_config
from .modules import GRDecoder

__all__ = ["CONFIG_FILE", "CATALOG_FILE", "WEIGHTS_FILE", "GRModel", "check_model_files", "load_model_dir",
           "save_model_dir"]

CONFIG_FILE, WEIGHTS_FILE, CATALOG_FILE = "config.yaml", "model.safetensors", "catalog.safetensors"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class GRModel:
    """A loaded model directory."""

    config: XGRConfig
    decoder: GRDecoder
    catalog: ItemCatalog


def save_model_dir(path: str | Path, config: XGRConfig, decoder: GRDecoder, catalog: ItemCatalog) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_config(config, path / CONFIG_FILE)
    save_model(decoder, str(path / WEIGHTS_FILE))  # handles the tied embedding and head
    catalog.save(path / CATALOG_FILE)
    return path


def check_model_files(path: str | Path) -> Path:
    """``path`` as a Path, once it holds the three files; FileNotFoundError names the first one missing."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {'a file' if path.exists() else 'no such directory'}; a model directory "
                                f"holds {CONFIG_FILE}, {WEIGHTS_FILE} and {CATALOG_FILE}")
    for name in (CONFIG_FILE, WEIGHTS_FILE, CATALOG_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name}: missing; a model directory holds "
                                    f"{CONFIG_FILE}, {WEIGHTS_FILE} and {CATALOG_FILE}")
    return path


def load_model_dir(path: str | Path, device: str = "cpu", dtype: str = "float32") -> GRModel:
    """Load and check a model directory; the catalog must fit the model's SID layout."""
    path = check_model_files(path)
    config = load_config(path / CONFIG_FILE)
    decoder = GRDecoder(config.model)
    missing, unexpected = load_model(decoder, str(path / WEIGHTS_FILE), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path / WEIGHTS_FILE}: does not match {CONFIG_FILE}; missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    catalog = ItemCatalog.load(path / CATALOG_FILE)
    m = config.model
    if catalog.levels != m.levels or catalog.num_codes != m.codes:
        raise CatalogError(f"{path / CATALOG_FILE}: {catalog.levels} levels of {catalog.num_codes} codes, "
                           f"but {CONFIG_FILE} says {m.levels} levels of {m.codes} codes")
    decoder = decoder.to(device=device, dtype=DTYPES[dtype]).eval()
    return GRModel(config, decoder, catalog)
