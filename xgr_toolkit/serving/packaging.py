"""Build a TorchServe model archive (``NAME.mar``) from a model directory, with torch-model-archiver.

The archive holds the handler (``handlers/xgr_handler.py``), the model directory's files
(``config.yaml``, ``model.safetensors``, ``catalog.safetensors``, and ``item_names.json`` where there
is one), an optional compile cache (the artifact ``xgr export`` writes, :mod:`xgr_toolkit.compile_cache`),
and a ``model-config.yaml``: TorchServe's batching, worker and timeout settings plus a ``handler`` section
the handler reads (engine name, widest beam, where the compile cache is).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..compile_cache import compiled_shapes, exported_precision, read_manifest
from ..config import ServeConfig, XGRConfig, load_config
from ..engines import ENGINES
from ..model_dir import CATALOG_FILE, CONFIG_FILE, WEIGHTS_FILE, check_model_files
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


def model_config(options: PackageOptions, compile_cache: bool = False, linear_precision: str = "dtype") -> dict:
    """The archive's ``model-config.yaml`` as a dict (TorchServe's keys, then the handler's). ``linear_precision``
    (the model directory's ``serve.linear_precision``) is recorded for whoever deploys the archive, and the
    handler refuses a compile cache built for another."""
    options = _with_defaults(options, ServeConfig())
    config = {"minWorkers": options.min_workers, "maxWorkers": options.max_workers,
              "batchSize": options.batch_size, "maxBatchDelay": options.max_batch_delay_ms,
              "responseTimeout": options.response_timeout_s, "startupTimeout": options.startup_timeout_s}
    if options.device_type:
        config["deviceType"] = options.device_type
    handler = {"engine": options.engine, "max_beam_width": options.max_beam_width, "linear_precision": linear_precision}
    if compile_cache:  # what `xgr export` compiled: the workers compile too, whatever config.yaml says
        handler["compile_cache"] = COMPILE_CACHE_DIR
        handler["compile"] = True
    config["handler"] = handler
    return config


def _check_compile_cache(path: Path, manifest: dict, options: PackageOptions, config: XGRConfig) -> None:
    """An artifact from ``xgr export`` must have been compiled for what this archive's workers will compile, or
    they would compile anyway: the fast engine, the same beam width, model shape, buckets, dtype and device type."""
    where = f"--compile-cache {path}"
    if options.engine != "fast":
        raise ValueError(f"{where}: the archive's engine is {options.engine!r}, which compiles nothing; "
                         "package with --engine fast")
    if manifest.get("max_beam_width") != options.max_beam_width:
        raise ValueError(f"{where}: exported for --beam-width {manifest.get('max_beam_width')}, the archive has "
                         f"--beam-width {options.max_beam_width}; its workers would compile anyway: export again "
                         f"with --beam-width {options.max_beam_width}")
    compiled = dataclasses.replace(config, serve=dataclasses.replace(config.serve, compile=True))  # as the workers
    wanted = json.loads(json.dumps(compiled_shapes(compiled, options.max_beam_width)))
    shapes = manifest.get("shapes") or {}
    precision = exported_precision(manifest)
    if precision != config.serve.linear_precision:
        raise ValueError(f"{where}: compiled for serve.linear_precision {precision!r}, {CONFIG_FILE} has "
                         f"{config.serve.linear_precision!r}; export it again from this model directory")
    differ = sorted(k for k in wanted if shapes.get(k) != wanted[k])
    if differ:
        raise ValueError(f"{where}: exported for another model or serve config ({', '.join(differ)} differ from "
                         f"{CONFIG_FILE}); export it again from this model directory")
    exported = "gpu" if str(manifest.get("device", "cpu")).startswith("cuda") else "cpu"
    if options.device_type and options.device_type != exported:
        raise ValueError(f"{where}: exported for the {exported}, the archive has --device-type "
                         f"{options.device_type}; export again with --device {'cuda' if exported == 'cpu' else 'cpu'}")


def package_model(model_dir: str | Path, name: str, out: str | Path = "model_store",
                  options: PackageOptions | None = None, *, compile_cache: str | Path | None = None,
                  handler: str | Path | None = None) -> Path:
    """Write ``out/NAME.mar`` (replacing one that is there) and return its path.

    Args:
        model_dir: a model directory (``config.yaml``, ``model.safetensors``, ``catalog.safetensors``,
            optional ``item_names.json``); its config is validated before anything is written.
        name: the model's name in TorchServe (letters, digits, ``_ . -``).
        compile_cache: the directory ``xgr export`` wrote (checked against this archive's engine, beam width
            and config), or a plain ``TORCHINDUCTOR_CACHE_DIR``; shipped so that workers start warm.
        handler: the handler file; default ``handlers/xgr_handler.py`` of the source tree.
    """
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    options = options or PackageOptions()
    model_dir, out = Path(model_dir), Path(out)
    if not _NAME.match(name):
        raise ValueError(f"--name {name!r}: allowed letters, digits, '_', '.' and '-', starting with a letter "
                         "or digit")
    check_model_files(model_dir)
    config = load_config(model_dir / CONFIG_FILE)  # a bad config fails here
    options = _with_defaults(options, config.serve)
    if compile_cache is not None:
        compile_cache = Path(compile_cache)
        manifest = read_manifest(compile_cache, "--compile-cache")  # None: a plain inductor cache directory
        if manifest is not None:
            _check_compile_cache(compile_cache, manifest, options, config)
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
            # The archiver copies a directory's contents to the archive's root: hand it one holding compile_cache/.
            shutil.copytree(compile_cache, staged / "cache" / COMPILE_CACHE_DIR, ignore=shutil.ignore_patterns("locks"))
            extra.append(staged / "cache")
        yaml_path = staged / MODEL_CONFIG_FILE
        yaml_path.write_text(yaml.safe_dump(model_config(options, compile_cache is not None,
                                                         config.serve.linear_precision), sort_keys=False))
        generate_model_archive(ModelArchiverConfig(
            model_name=name, handler=str(handler), version=options.version,
            extra_files=",".join(str(p) for p in extra), export_path=str(out), archive_format="default",
            force=True, config_file=str(yaml_path)))
    return out / f"{name}.mar"
