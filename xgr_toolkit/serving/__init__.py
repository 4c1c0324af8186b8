"""Serving: the JSON protocol, the batch service behind the TorchServe handler, packaging and a local server.

``server`` and ``packaging`` import TorchServe's tools lazily, so the protocol and the service work
without them.
"""

from .item_names import ITEM_NAMES_FILE, load_item_names, save_item_names
from .packaging import PackageOptions, package_model
from .protocol import decode_body, error_body, parse_request, response_body
from .server import TorchServe, TorchServeError
from .service import BatchStats, RecService, Reply

__all__ = ["ITEM_NAMES_FILE", "BatchStats", "PackageOptions", "RecService", "Reply", "TorchServe",
           "TorchServeError", "decode_body", "error_body", "load_item_names", "package_model", "parse_request",
           "response_body", "save_item_names"]
