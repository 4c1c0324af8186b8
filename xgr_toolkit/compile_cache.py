"""The compile artifact: what ``xgr export`` writes, ``xgr package --compile-cache`` ships and the handler
loads before the engine compiles, so that a worker's warm-up finds compiled code instead of compiling.

An artifact is a directory::

    xgr-compile-cache.json   manifest: method, torch/triton versions, device, threads, and what was compiled
                             (model shape, beam width, buckets, dtype): the inputs of the compiled shapes
    triton/                  a TRITON_CACHE_DIR: the Triton kernels of ``xgr_toolkit/ops`` (JIT-compiled by
                             Triton, outside torch.compile) and Triton's launcher; with "cache-dir" also inductor's
    inductor/                method "cache-dir": the TORCHINDUCTOR_CACHE_DIR the warm-up filled (FX graphs,
                             AOTAutograd entries, compiled C++ kernels, autotuning results)
    mega-cache.bin           method "mega-cache": ``torch.compiler.save_cache_artifacts()``, the portable bytes of
                             inductor's and AOTAutograd's entries (Triton kernels bundled, no compiled C++)

Either way :func:`use_compile_cache` points ``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR`` at the
artifact's ``inductor/`` and ``triton/`` and, for "mega-cache", writes its entries there with
``torch.compiler.load_cache_artifacts``. What still runs in a warm process is dynamo's tracing of every
region and loading the compiled code (docs/cold_start.md has the measurements behind the default).

Inductor's entries are pickles: an artifact must come from a builder you trust (docs/reliability.md).
A directory without a manifest is taken as a plain ``TORCHINDUCTOR_CACHE_DIR`` (what ``--compile-cache``
took before ``xgr export`` existed).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

__all__ = ["DEFAULT_METHOD", "MANIFEST_FILE", "METHODS", "CompileCacheError", "artifact_info", "compiled_shapes",
           "export_compile_cache", "exported_precision",
           "point_caches_at", "read_manifest", "save_compile_cache", "use_compile_cache"]

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST_FILE, INDUCTOR_DIR, TRITON_DIR, MEGA_FILE = "xgr-compile-cache.json", "inductor", "triton", "mega-cache.bin"
METHODS = ("cache-dir", "mega-cache")
# Per device type, the method with the shortest process start to first answer (docs/cold_start.md): on the CPU
# the mega-cache compiles every C++ kernel again (tiny: 35.1 s against 6.8 s); on an H100 the cache directory
# won three workloads of four by 3 to 4 s and lost one by 2.7 s.
DEFAULT_METHOD = {"cpu": "cache-dir", "cuda": "cache-dir"}
_ENV = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


class CompileCacheError(ValueError):
    """An artifact that is missing, incomplete, or not one ``xgr export`` writes."""


def point_caches_at(root: str | Path) -> tuple[Path, Path]:
    """Point ``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR`` at ``root/inductor`` and ``root/triton``
    (created); -> both. Call it before anything compiles: inductor and Triton read them when they write."""
    root = Path(root).resolve()
    dirs = (root / INDUCTOR_DIR, root / TRITON_DIR)
    for name, path in zip(_ENV, dirs):
        path.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(path)
    utils = sys.modules.get("torch._inductor.utils")  # not imported: nothing compiled yet, nothing to clear
    if utils is not None and hasattr(utils, "clear_caches"):  # else what this process compiled is not rewritten
        utils.clear_caches()
    return dirs


def compiled_shapes(config, beam_width: int) -> dict:
    """What decides the compiled graphs (and so the cache keys) besides device and versions: the model's shape,
    the engine's beam width, batch and prompt buckets, dtype, whether it compiles, the linear layers' precision
    (and under float8 the layers kept out of it), and a prompt store's suffix prefill lengths (each named only
    where it departs from the default, so that earlier manifests still match)."""
    serve = config.serve
    shapes = {"model": dataclasses.asdict(config.model), "beam_width": int(beam_width), "max_batch": serve.max_batch,
              "prompt_buckets": list(serve.prompt_buckets), "dtype": serve.dtype, "compile": serve.compile,
              "cuda_graphs": serve.cuda_graphs}
    if serve.prefix_cache_bytes:
        shapes["prefix_cache_suffixes"] = list(serve.prefix_cache_suffixes or serve.prompt_buckets)
    if serve.linear_precision != "dtype":
        shapes.update(linear_precision=serve.linear_precision, float8_skip=list(serve.float8_skip))
    return shapes


def exported_precision(manifest: dict) -> str:
    """The linear precision an artifact was compiled for; artifacts from before the option are "dtype"."""
    return (manifest.get("shapes") or {}).get("linear_precision", "dtype")


def artifact_info(config, device: str | torch.device, engine: str, beam_width: int, warmup_s: float) -> dict:
    """What a manifest says of the compilation it holds: where it ran, for which engine, beam width and
    shapes (:func:`compiled_shapes`), and how long the warm-up took."""
    device = torch.device(device)
    return {"device": str(device), "device_name": _device_name(device), "engine": engine,
            "max_beam_width": int(beam_width), "shapes": compiled_shapes(config, beam_width),
            "warmup_s": round(warmup_s, 3)}


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return platform.processor() or platform.machine()


def _user_triton_entries(triton_dir: Path) -> list[Path]:
    """The entries of a Triton cache that are not inductor's kernels (inductor names every kernel ``triton_*``):
    our ops' kernels and Triton's launcher stubs, which the mega-cache does not hold."""
    keep = []
    for entry in sorted(triton_dir.iterdir()) if triton_dir.is_dir() else ():
        names = {f.name.split(".")[0] for f in entry.iterdir() if not f.name.startswith("__grp__")} \
            if entry.is_dir() else {entry.name}
        if not names or not all(n.startswith("triton_") for n in names):
            keep.append(entry)
    return keep


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def save_compile_cache(out: str | Path, method: str, caches: str | Path, info: dict) -> dict:
    """Write the artifact ``out`` (replacing an artifact there) from this process's compilation, which must
    have run with :func:`point_caches_at` ``(caches)``. ``info`` goes into the manifest; -> the manifest.

    Raises:
        CompileCacheError: an unknown method, nothing compiled, or ``out`` is a directory that is not an artifact.
    """
    if method not in METHODS:
        raise CompileCacheError(f"--method {method!r}: allowed one of {list(METHODS)}")
    out, caches = Path(out), Path(caches)
    if out.exists() and not (out / MANIFEST_FILE).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise CompileCacheError(f"--out {out}: exists and is not a compile artifact; give a new or empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        if method == "cache-dir":
            if not any((caches / INDUCTOR_DIR / d).is_dir() for d in ("fxgraph", "aotautograd")):
                raise CompileCacheError("nothing was compiled: the warm-up left no FX graph in the inductor cache "
                                        "(serve.compile false, or inductor's FX graph cache switched off)")
            shutil.copytree(caches / INDUCTOR_DIR, staged / INDUCTOR_DIR, ignore=shutil.ignore_patterns("locks"))
            shutil.copytree(caches / TRITON_DIR, staged / TRITON_DIR)
        else:
            saved = torch.compiler.save_cache_artifacts()
            if saved is None:
                raise CompileCacheError("nothing was compiled: torch.compiler.save_cache_artifacts() has no entries "
                                        "(serve.compile false, or already saved in this process)")
            (staged / MEGA_FILE).write_bytes(saved[0])
            (staged / TRITON_DIR).mkdir()
            for entry in _user_triton_entries(caches / TRITON_DIR):
                copy = shutil.copytree if entry.is_dir() else shutil.copy2
                copy(entry, staged / TRITON_DIR / entry.name)
        manifest = {"format": FORMAT, "method": method, "torch": torch.__version__, "triton": _triton_version(),
                    "threads": torch.get_num_threads(),
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    **info, "bytes": _size(staged)}
        (staged / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return manifest


def read_manifest(path: str | Path, option: str = "--compile-cache") -> dict | None:
    """The manifest of the artifact ``path`` after checking its files; None for a directory without a manifest
    (a plain ``TORCHINDUCTOR_CACHE_DIR``). Errors name ``option`` and the path.

    Raises:
        CompileCacheError: ``path`` is missing, a file, or an incomplete or unreadable artifact.
    """
    path = Path(path)
    if not path.exists():
        raise CompileCacheError(f"{option} {path}: not found; give the directory `xgr export MODEL_DIR --out DIR` "
                                "wrote")
    if not path.is_dir():
        raise CompileCacheError(f"{option} {path}: a file, not a directory; give the directory `xgr export` wrote")
    if not (path / MANIFEST_FILE).is_file():
        return None
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        method = manifest["method"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CompileCacheError(f"{option} {path / MANIFEST_FILE}: not a compile-cache manifest") from None
    if manifest.get("format") != FORMAT or method not in METHODS:
        raise CompileCacheError(f"{option} {path}: format {manifest.get('format')!r}, method {method!r}: this "
                                f"xgr_toolkit reads format {FORMAT}, methods {list(METHODS)}; export it again")
    needed = INDUCTOR_DIR if method == "cache-dir" else MEGA_FILE  # triton/ may be empty, and zips drop those
    if not (path / needed).exists():
        raise CompileCacheError(f"{option} {path}: incomplete {method} artifact: no {needed}; export it again")
    return manifest


def use_compile_cache(path: str | Path, device: str | torch.device | None = None,
                      linear_precision: str | None = None) -> dict:
    """Make this process's compilation read (and write) the artifact ``path``: call it before the engine compiles.
    ``device`` (where the engine will run) is only compared with the export's; -> what was done, with warnings
    for what will make the cache miss (another torch, device or CPU thread count). ``linear_precision`` (what
    the archive serves, ``serve.linear_precision``) must be the one the artifact was compiled for.

    Raises:
        CompileCacheError: as :func:`read_manifest`; a mega-cache that does not load; an artifact compiled for
            another linear precision (none of its graphs would be used).
    """
    path = Path(path).resolve()
    start = time.perf_counter()
    manifest = read_manifest(path)
    if manifest is None:  # a plain inductor cache directory, as --compile-cache took before
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
        return {"method": "inductor-dir", "path": str(path), "seconds": time.perf_counter() - start}
    if linear_precision is not None and exported_precision(manifest) != linear_precision:
        raise CompileCacheError(f"--compile-cache {path}: compiled for serve.linear_precision "
                                f"{exported_precision(manifest)!r}, the archive serves {linear_precision!r}; "
                                "export it again from the archive's model directory")
    warnings = []
    if manifest["torch"] != torch.__version__:
        warnings.append(f"exported with torch {manifest['torch']}, running {torch.__version__}: nothing will hit")
    if device is not None:
        device = torch.device(device)
        exported = torch.device(manifest.get("device", "cpu"))
        if device.index is None and device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        if exported.index is None and exported.type == "cuda":
            exported = torch.device("cuda", 0)
        if device != exported:
            warnings.append(f"exported for {exported}, running on {device}: inductor's keys name the device")
        elif device.type == "cpu" and manifest.get("threads") not in (None, torch.get_num_threads()):
            warnings.append(f"exported with {manifest['threads']} CPU threads, running with {torch.get_num_threads()}: "
                            "inductor's C++ kernels are keyed by the thread count (xgr export --threads)")
    point_caches_at(path)
    loaded = None
    if manifest["method"] == "mega-cache":
        info = torch.compiler.load_cache_artifacts((path / MEGA_FILE).read_bytes())
        if info is None:
            raise CompileCacheError(f"--compile-cache {path / MEGA_FILE}: torch.compiler.load_cache_artifacts could "
                                    "not read it (another torch version?); export it again")
        loaded = {kind: len(keys) for kind, keys in info.artifacts.items()}
    for warning in warnings:
        log.warning("compile cache %s: %s", path, warning)
    return {"method": manifest["method"], "path": str(path), "loaded": loaded, "warnings": warnings,
            "seconds": time.perf_counter() - start}


def export_compile_cache(model_dir: str | Path, out: str | Path, *, device: str | None = None, engine: str = "fast",
                         beam_width: int = 128, method: str | None = None, threads: int | None = None) -> dict:
    """Build the engine the handler builds for an archive of ``model_dir`` (``xgr package --engine ENGINE
    --beam-width W --compile-cache``: compiled, whatever the directory's ``serve.compile`` says) on ``device``,
    warm it up as the handler does (every bucket compiled, one request answered) with fresh caches, and save
    them as the artifact ``out``; -> its manifest. Run it in a fresh process: what this process compiled
    before is not exported.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N``; default ``cuda`` where there is a GPU (as the handler picks).
        method: one of :data:`METHODS`; default :data:`DEFAULT_METHOD` of the device type.
        threads: CPU threads while compiling; inductor's C++ kernels are keyed by it, so give the workers'
            (the handler's: cores / workers, or ``OMP_NUM_THREADS``). Default: torch's.
    """
    from .config import load_config
    from .model_dir import CONFIG_FILE
    from .serving.service import RecService

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    method = method or DEFAULT_METHOD[torch.device(device).type]
    if method not in METHODS:
        raise CompileCacheError(f"--method {method!r}: allowed one of {list(METHODS)}")
    load_config(Path(model_dir) / CONFIG_FILE)  # ConfigError names the file and key
    if engine != "fast":
        raise ValueError(f"--engine {engine!r}: only the fast engine compiles; nothing to export")
    if threads is not None:
        torch.set_num_threads(threads)
    saved_env = {name: os.environ.get(name) for name in _ENV}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="xgr-export-") as caches:
            point_caches_at(caches)
            # Compiled whatever serve.compile says: an archive packaged with the artifact compiles too.
            service = RecService.from_model_dir(model_dir, engine=engine, max_beam_width=beam_width, device=device,
                                                compile=True)
            warm_ms = service.warm_up()
            from torch._dynamo.utils import counters
            info = {**artifact_info(service.model.config, device, engine, beam_width, warm_ms / 1e3),
                    "graphs_compiled": int(counters["inductor"]["fxgraph_cache_miss"])}
            return save_compile_cache(out, method, caches, info)
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
