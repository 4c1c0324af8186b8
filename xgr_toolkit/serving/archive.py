"""Check a served model directory (an extracted ``.mar``) before anything in it is used.

TorchServe unpacks an archive into a directory and the handler loads it. A broken or hostile archive
must fail there, at load time, with an error that names the file and the problem, never with a
deserializer's traceback or, worse, by running code:

- the required files (``config.yaml``, ``model.safetensors``, ``catalog.safetensors``) are there;
- no pickled file anywhere (by suffix: ``.pt``, ``.pth``, ``.pkl``, ``.bin``, ... or by content: a
  pickle stream, or a zip holding one, as ``torch.save`` writes): nothing here unpickles, and an
  archive that carries such a file was built wrong or tampered with;
- both safetensors files are complete: a header that parses, tensors whose bytes are all in the file;
- the weights have every tensor the config's model needs, in its shape, and no other;
- the catalog has its ``item_ids``, ``codes`` and ``num_codes``; its contents are checked by
  :class:`~xgr_toolkit.catalog.ItemCatalog` when loaded, and the file is named in any error.

:func:`check_archive` does the same for a ``.mar`` file before it is deployed, and first checks that it is
a complete zip whose members pass their CRC checks: TorchServe's own answer to a corrupt archive is
"Failed to save model" or a worker dying on a missing handler. ``xgr_toolkit.serving.TorchServe`` runs it
on every archive before it starts.

The one exception is an inductor compile cache shipped by ``xgr package --compile-cache``
(``compile_cache/``): inductor writes and reads its own cache entries, pickles among them, so an
archive with a compile cache must come from a builder you trust (docs/reliability.md).
"""

from __future__ import annotations

import json
import logging
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

import torch

from ..catalog import CatalogError
from ..config import load_config
from ..model_dir import CATALOG_FILE, CONFIG_FILE, WEIGHTS_FILE, GRModel, load_model_dir
from ..modules import GRDecoder

__all__ = ["PICKLE_SUFFIXES", "ArchiveError", "check_archive", "check_model_dir", "check_safetensors",
           "load_checked_model_dir"]

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib", ".dill", ".npy", ".npz", ".h5")
TRUSTED_DIRS = ("compile_cache",)  # packaging.COMPILE_CACHE_DIR: inductor's own files
EXPECTED = (CONFIG_FILE, WEIGHTS_FILE, CATALOG_FILE, "item_names.json", "model-config.yaml", "MAR-INF",
            "__pycache__")  # and the handler (*.py)
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


class ArchiveError(ValueError):
    """A served model directory is incomplete, corrupt, or holds what must not be loaded."""


def _looks_pickled(path: Path) -> str | None:
    """Why ``path``'s bytes look like a pickle (or a torch.save zip of one), or None."""
    with path.open("rb") as f:
        head = f.read(4)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"a pickle stream (protocol {head[1]})"
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                pickled = [n for n in z.namelist() if n.endswith((".pkl", ".pickle")) or n.endswith("/data.pkl")]
        except zipfile.BadZipFile:
            return None
        if pickled:
            return f"a zip holding pickles ({pickled[0]}), as torch.save writes"
    return None


def check_safetensors(path: str | Path) -> dict:
    """The header of a complete safetensors file: ``{name: {"dtype", "shape", "data_offsets"}, "__metadata__"}``.

    Raises:
        ArchiveError: naming the file, when it is not a safetensors file, is truncated, or a tensor's
            bytes do not fit its dtype and shape.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise ArchiveError(f"{path}: not a safetensors file: {size} bytes, shorter than the 8-byte header length")
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > min(_MAX_HEADER, size - 8):
            why = _looks_pickled(path)
            raise ArchiveError(f"{path}: not a safetensors file" + (f": it is {why}" if why else
                               f": its header claims {length} bytes, the file has {size - 8} after the length"))
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ArchiveError(f"{path}: not a safetensors file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise ArchiveError(f"{path}: not a safetensors file: its header is not a JSON object")
    data = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (int(v) for v in info["data_offsets"])
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            nbytes = count * _DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise ArchiveError(f"{path}: tensor {name!r} has a malformed entry in the header: {info!r}") from None
        if end > data:
            raise ArchiveError(f"{path}: truncated: tensor {name!r} ends at byte {end} of the data, the file holds "
                               f"{data} bytes of data")
        if not 0 <= start <= end or end - start != nbytes:
            raise ArchiveError(f"{path}: tensor {name!r}: {end - start} bytes for {info['dtype']} {info['shape']} "
                               f"({nbytes} bytes expected)")
    return header


def _check_weights(path: Path, header: dict, config_path: Path) -> None:
    """Every tensor the config's model needs, in its shape, and no other."""
    cfg = load_config(config_path).model
    with torch.device("meta"):  # shapes only: nothing is allocated
        wanted = {name: list(t.shape) for name, t in GRDecoder(cfg).state_dict().items()}
    found = {name: list(info["shape"]) for name, info in header.items() if name != "__metadata__"}
    if cfg.tie_embeddings:  # safetensors' save_model keeps one of the two tied tensors
        tied = [n for n in wanted if n.endswith("lm_head.weight") or n.endswith("embed_tokens.weight")]
        if any(n in found for n in tied):
            for n in tied:
                found.setdefault(n, wanted[n])
    missing = sorted(set(wanted) - set(found))
    unexpected = sorted(set(found) - set(wanted))
    if missing or unexpected:
        raise ArchiveError(f"{path}: does not match {config_path.name}'s model: missing tensors {missing[:5]}"
                           f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                           f"{' ...' if len(unexpected) > 5 else ''}")
    for name, shape in wanted.items():
        if found[name] != shape:
            raise ArchiveError(f"{path}: tensor {name!r} has shape {found[name]}, {config_path.name}'s model needs "
                               f"{shape}")


def _check_catalog(path: Path, header: dict, config_path: Path) -> None:
    for name in ("item_ids", "codes"):
        if name not in header:
            raise ArchiveError(f"{path}: not a catalog: no {name!r} tensor (found {sorted(header)[:5]})")
    meta = header.get("__metadata__") or {}
    if not str(meta.get("num_codes", "")).isdigit():
        raise ArchiveError(f"{path}: not a catalog: metadata 'num_codes' missing or not an integer "
                           f"(metadata {meta!r})")
    ids, codes = header["item_ids"]["shape"], header["codes"]["shape"]
    if len(ids) != 1 or len(codes) != 2 or codes[0] != ids[0]:
        raise ArchiveError(f"{path}: item_ids {ids} and codes {codes}: expected [N] and [N, L]")
    m = load_config(config_path).model
    if codes[1] != m.levels or int(meta["num_codes"]) != m.codes:
        raise ArchiveError(f"{path}: {codes[1]} levels of {meta['num_codes']} codes, but {config_path.name} says "
                           f"{m.levels} levels of {m.codes} codes: the catalog does not match the model")


def check_model_dir(path: str | Path, *, trusted_dirs: tuple[str, ...] = TRUSTED_DIRS) -> None:
    """Check a served model directory's files before any of them is loaded (see the module docstring).

    Raises:
        ArchiveError: naming the first offending file and what is wrong with it.
    """
    path = Path(path)
    if not path.is_dir():
        raise ArchiveError(f"{path}: not a directory")
    for file in sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink()):
        rel = file.relative_to(path)
        if rel.parts[0] in trusted_dirs:
            continue
        if file.is_symlink():
            raise ArchiveError(f"{file}: a symbolic link in the archive; only plain files are loaded")
        if file.suffix.lower() in PICKLE_SUFFIXES:
            raise ArchiveError(f"{file}: unexpected {file.suffix} file: a pickled checkpoint format, never loaded "
                               f"here; weights and catalog must be safetensors ({WEIGHTS_FILE}, {CATALOG_FILE})")
        why = _looks_pickled(file)
        if why:
            raise ArchiveError(f"{file}: {why}; nothing in an archive may be pickled: weights and catalog must be "
                               f"safetensors, the config YAML")
        if rel.parts[0] not in EXPECTED and file.suffix != ".py":
            log.warning("%s: unexpected file in the model archive (not used)", file)
    for name in (CONFIG_FILE, WEIGHTS_FILE, CATALOG_FILE):
        if not (path / name).is_file():
            raise ArchiveError(f"{path / name}: missing; the archive must hold {CONFIG_FILE}, {WEIGHTS_FILE} and "
                               f"{CATALOG_FILE} (xgr package MODEL_DIR --name NAME)")
    load_config(path / CONFIG_FILE)  # ConfigError names the file, the key and what is allowed
    _check_weights(path / WEIGHTS_FILE, check_safetensors(path / WEIGHTS_FILE), path / CONFIG_FILE)
    _check_catalog(path / CATALOG_FILE, check_safetensors(path / CATALOG_FILE), path / CONFIG_FILE)


def load_checked_model_dir(path: str | Path, device: str | None = None, dtype: str | None = None) -> GRModel:
    """:func:`check_model_dir`, then :func:`~xgr_toolkit.model_dir.load_model_dir` on ``device`` in ``dtype``
    (default: the config's ``serve.device`` and ``serve.dtype``); an error that does not name its file (a
    catalog whose contents are wrong, say) gets the file's name."""
    path = Path(path)
    check_model_dir(path)
    serve = load_config(path / CONFIG_FILE).serve
    try:
        return load_model_dir(path, device or serve.device, dtype or serve.dtype)
    except CatalogError as err:
        if str(path / CATALOG_FILE) in str(err):
            raise
        raise CatalogError(f"{path / CATALOG_FILE}: {err}") from None


def check_archive(mar: str | Path) -> None:
    """Check a ``.mar`` before it is served: a complete zip, every member intact, a manifest naming a handler
    that is there, no member outside the archive's folder, and the model directory it holds passes
    :func:`check_model_dir`. Errors name the archive and the member (``NAME.mar!model.safetensors: ...``).

    Raises:
        ArchiveError: the first problem found.
    """
    mar = Path(mar)
    if not mar.is_file():
        raise ArchiveError(f"{mar}: no such archive")
    if not zipfile.is_zipfile(mar):
        raise ArchiveError(f"{mar}: not a model archive: not a zip file, or a truncated one (its end is missing)")
    try:
        with zipfile.ZipFile(mar) as z:
            bad = z.testzip()
            if bad is not None:
                raise ArchiveError(f"{mar}!{bad}: corrupt: fails its CRC check")
            names = z.namelist()
            for name in names:
                if name.startswith("/") or ".." in Path(name).parts:
                    raise ArchiveError(f"{mar}!{name}: a member outside the archive's folder")
            if "MAR-INF/MANIFEST.json" not in names:
                raise ArchiveError(f"{mar}: incomplete: no MAR-INF/MANIFEST.json (build it with xgr package)")
            try:
                manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
                handler = manifest["model"]["handler"]
            except (ValueError, KeyError, TypeError):
                raise ArchiveError(f"{mar}!MAR-INF/MANIFEST.json: not a TorchServe manifest naming a handler") from None
            if handler not in names:
                raise ArchiveError(f"{mar}: incomplete: the manifest's handler {handler!r} is not in the archive")
            with tempfile.TemporaryDirectory(prefix="xgr-check-") as tmp:
                z.extractall(tmp)
                try:
                    check_model_dir(tmp)
                except ValueError as err:  # ArchiveError, ConfigError: say which archive, not the temporary folder
                    raise ArchiveError(str(err).replace(f"{tmp}/", f"{mar}!").replace(tmp, str(mar))) from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise ArchiveError(f"{mar}: corrupt zip: {err}") from None
