"""Build a TorchServe model archive (``NAME.mar``) from a model directory, with torch-model-archiver.

The archive holds the handler (``handlers/xgr_handler.py``), the model directory's files
(``config.yaml``, ``model.safetensors``, ``catalog.safetensors``, and ``item_names.json`` where there
is one), an optional compile cache, and a ``model-config.yaml``: TorchServe's batching, worker and
timeout settings plus a ``handler`` section the handler reads (engine name, widest beam).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import ServeConfig, load_config
from ..engines import ENGINES
from ..model_dir import CATALOG_FILE, CONFIG_FILE, WEIGHTS_FILE
from .item_names import ITEM_NAMES_FILE

__all__ = ["COMPILE_CACHE_DIR", "HANDLER_FILE", "MODEL_CONFIG_FILE", "PackageOptions", "model_config",
           "package_model"]

MODEL_CONFIG_FILE = "model-config.yaml"
COMPILE_CACHE_DIR = "compile_cache"  # its name inside the archive
HANDLER_FILE = Path(__file__).resolve().parents[2] / "handlers" / "xgr_handler.py"  # in the source tree
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class PackageOptions:
    """What goes into the archive's ``model-config.yaml``.

    ``max_beam_width`` (W) is the widest beam a request may ask for, and the beam a request gets when
    it names none. ``batch_size`` requests wait at most ``max_batch_delay_ms`` to be served together:
    a lone request pays that delay, so it is a latency cost chosen on purpose. ``engine``,
    ``batch_size`` and ``max_batch_delay_ms`` left None come from the model directory's ``config.yaml``
    (``serve.engine``; ``serve.max_batch``; ``serve.max_wait_ms``).
    """

    max_beam_width: int = 128
    engine: str | None = None
    batch_size: int | None = None
    max_batch_delay_ms: int | None = None
    min_workers: int = 1
    max_workers: int = 1
    response_timeout_s: int = 120  # past it the worker is killed and its batch answered 500
    startup_timeout_s: int = 600  # load, warm-up and (on a GPU) compile and graph capture
    device_type: str | None = None  # "cpu" or "gpu"; None: TorchServe's choice (a GPU where there is one)
    version: str = "1.0"

    def __post_init__(self) -> None:
        for key in ("max_beam_width", "batch_size", "min_workers", "max_workers", "response_timeout_s",
                    "startup_timeout_s"):
            value = getattr(self, key)
            if value is None and key == "batch_size":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} = {value!r}: allowed an integer >= 1")
        delay = self.max_batch_delay_ms
        if delay is not None and (not isinstance(delay, int) or isinstance(delay, bool) or delay < 0):
            raise ValueError(f"max_batch_delay_ms = {delay!r}: allowed an integer >= 0")
        if self.max_workers < self.min_workers:
            raise ValueError(f"max_workers = {self.max_workers}: allowed >= min_workers = {self.min_workers}")
        if self.engine is not None and self.engine not in ENGINES:
            raise ValueError(f"engine = {self.engine!r}: allowed one of {sorted(ENGINES)}")
        if self.device_type not in (None, "cpu", "gpu"):
            raise ValueError(f"device_type = {self.device_type!r}: allowed 'cpu', 'gpu' or none")


def _with_defaults(options: PackageOptions, serve: ServeConfig) -> PackageOptions:
    """``options`` with the settings it leaves None taken from the model directory's serve config."""
    return dataclasses.replace(
        options, engine=options.engine or serve.engine,
        batch_size=options.batch_size or serve.max_batch,
        max_batch_delay_ms=round(serve.max_wait_ms) if options.max_batch_delay_ms is None
        else options.max_batch_delay_ms)


def model_config(options: PackageOptions, compile_cache: bool = False) -> dict:
    """The archive's ``model-config.yaml`` as a dict (TorchServe's keys, then the handler's)."""
    options = _with_defaults(options, ServeConfig())
    config = {"minWorkers": options.min_workers, "maxWorkers": options.max_workers,
              "batchSize": options.batch_size, "maxBatchDelay": options.max_batch_delay_ms,
              "responseTimeout": options.response_timeout_s, "startupTimeout": options.startup_timeout_s}
    if options.device_type:
        config["deviceType"] = options.device_type
    handler = {"engine": options.engine, "max_beam_width": options.max_beam_width}
    if compile_cache:
        handler["compile_cache"] = COMPILE_CACHE_DIR
    config["handler"] = handler
    return config


def package_model(model_dir: str | Path, name: str, out: str | Path = "model_store",
                  options: PackageOptions | None = None, *, compile_cache: str | Path | None = None,
                  handler: str | Path | None = None) -> Path:
    """Write ``out/NAME.mar`` (replacing one that is there) and return its path.

    Args:
        model_dir: a model directory (``config.yaml``, ``model.safetensors``, ``catalog.safetensors``,
            optional ``item_names.json``); its config is validated before anything is written.
        name: the model's name in TorchServe (letters, digits, ``_ . -``).
        compile_cache: a ``TORCHINDUCTOR_CACHE_DIR`` to ship, so that workers start warm.
        handler: the handler file; default ``handlers/xgr_handler.py`` of the source tree.
    """
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    options = options or PackageOptions()
    model_dir, out = Path(model_dir), Path(out)
    if not _NAME.match(name):
        raise ValueError(f"--name {name!r}: allowed letters, digits, '_', '.' and '-', starting with a letter "
                         "or digit")
    for file in (CONFIG_FILE, WEIGHTS_FILE, CATALOG_FILE):
        if not (model_dir / file).is_file():
            raise FileNotFoundError(f"{model_dir / file}: missing; a model directory holds {CONFIG_FILE}, "
                                    f"{WEIGHTS_FILE} and {CATALOG_FILE}")
    options = _with_defaults(options, load_config(model_dir / CONFIG_FILE).serve)  # a bad config fails here
    handler = Path(handler) if handler else HANDLER_FILE
    if not handler.is_file():
        raise FileNotFoundError(f"{handler}: handler not found; pass --handler PATH/xgr_handler.py")
    extra = [model_dir / f for f in (CONFIG_FILE, WEIGHTS_FILE, CATALOG_FILE, ITEM_NAMES_FILE)
             if (model_dir / f).is_file()]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.mar").unlink(missing_ok=True)  # replaced, quietly
    with tempfile.TemporaryDirectory(prefix="xgr-package-") as tmp:
        staged = Path(tmp)
        if compile_cache is not None:
            if not Path(compile_cache).is_dir():
                raise FileNotFoundError(f"{compile_cache}: compile cache directory not found")
            shutil.copytree(compile_cache, staged / COMPILE_CACHE_DIR)
            extra.append(staged / COMPILE_CACHE_DIR)
        yaml_path = staged / MODEL_CONFIG_FILE
        yaml_path.write_text(yaml.safe_dump(model_config(options, compile_cache is not None), sort_keys=False))
        generate_model_archive(ModelArchiverConfig(
            model_name=name, handler=str(handler), version=options.version,
            extra_files=",".join(str(p) for p in extra), export_path=str(out), archive_format="default",
            force=True, config_file=str(yaml_path)))
    return out / f"{name}.mar"
