"""xgr_toolkit: serve generative-recommendation models with constrained beam search over semantic IDs."""

from .catalog import CatalogError, ItemCatalog
from .config import BeamConfig, ConfigError, ModelConfig, ServeConfig, XGRConfig, load_config, preset
from .model_dir import GRModel, load_model_dir, save_model_dir
from .modules import GRDecoder
from .reference import reference_beam_search
from .request import RecRequest, RequestError, ScoredItem, build_request

__all__ = ["BeamConfig", "CatalogError", "ConfigError", "GRDecoder", "GRModel", "ItemCatalog", "ModelConfig",
           "RecRequest", "RequestError", "ScoredItem", "ServeConfig", "XGRConfig", "build_request",
           "load_config", "load_model_dir", "preset", "reference_beam_search", "save_model_dir"]
