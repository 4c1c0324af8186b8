"""The served model's JSON protocol: a request body in, a response or error body out.

Request (a JSON object; every other field is rejected)::

    {"history": [item ids], "k": 5}                  # or "history_tokens": [token ids]
    optional: "beam_width" (1..max, default max), "exclude" (item ids), "exclude_history" (bool),
              "normalize" ("vocab" or "level", default the model's),
              "request_id" (a string of 1..128 characters, echoed in the answer)

Response::

    {"items": [{"item_id", "score", "sid"[, "name"]}], "model": name, "batch_size": n,
     "timing_ms": {...}[, "truncated": tokens dropped from the front of the history][, "request_id": id]}

Error (HTTP 400)::

    {"error": what was wrong and what is allowed, "field": the offending field[, "request_id": id]}

A client matches answers to requests by ``request_id`` (the load tool checks every request is answered
exactly once); an error body carries it too where the body was an object with a valid one.

KServe's v1 protocol is understood too: ``{"instances": [request, ...]}`` is answered with
``{"predictions": [response, ...]}``, or a 400 naming ``instances[i].field`` if any instance is bad.

Nothing here knows TorchServe: the handler only moves bytes and status codes.
"""

from __future__ import annotations

import json
from typing import Any

from ..config import ModelConfig
from ..request import RecRequest, RequestError, ScoredItem, build_request

__all__ = ["INSTANCES", "MAX_REQUEST_ID", "OPTIONAL_FIELDS", "REQUIRED_FIELDS", "decode_body", "error_body",
           "parse_body", "parse_request", "request_id_of", "request_ids", "response_body"]

REQUIRED_FIELDS = ("k",)  # and exactly one of HISTORY_FIELDS
HISTORY_FIELDS = ("history", "history_tokens")
OPTIONAL_FIELDS = ("beam_width", "exclude", "exclude_history", "normalize", "request_id")
_ALLOWED = (*HISTORY_FIELDS, *REQUIRED_FIELDS, *OPTIONAL_FIELDS)
_EXAMPLE = '{"history": [1000, 1001], "k": 5}'
INSTANCES = "instances"  # KServe v1: {"instances": [request, ...]}
MAX_REQUEST_ID = 128  # characters
MAX_ERROR_CHARS, MAX_FIELD_CHARS = 500, 100  # of an error body's message and field name


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def decode_body(body: Any) -> dict:
    """A request body as TorchServe hands it over (bytes, text, or JSON it already parsed) -> a dict."""
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("body", f"must be UTF-8 encoded JSON, e.g. {_EXAMPLE}") from None
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except json.JSONDecodeError as err:
            raise RequestError("body", f"malformed JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                                       f"expected an object, e.g. {_EXAMPLE}") from None
        except ValueError as err:  # an integer of more than sys.get_int_max_str_digits() digits
            raise RequestError("body", f"unreadable JSON ({str(err).split(';')[0]}); expected an object, "
                                       f"e.g. {_EXAMPLE}") from None
        except RecursionError:  # arrays or objects nested thousands deep
            raise RequestError("body", f"JSON nested too deeply; expected an object, e.g. {_EXAMPLE}") from None
    if not isinstance(body, dict):
        raise RequestError("body", f"must be a JSON object, e.g. {_EXAMPLE}; got {_type_name(body)}")
    return body


def _check_request_id(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_REQUEST_ID:
        got = f"a string of {len(value)} characters" if isinstance(value, str) else _type_name(value)
        raise RequestError("request_id", f"must be a string of 1 to {MAX_REQUEST_ID} characters; got {got}")
    return value


def request_id_of(fields: Any) -> str | None:
    """A decoded body's valid ``request_id``, or None (missing, invalid, or not an object): never raises."""
    try:
        return _check_request_id(fields["request_id"]) if isinstance(fields, dict) and "request_id" in fields else None
    except RequestError:
        return None


def request_ids(fields: dict, instances: bool) -> list[str | None]:
    """The ``request_id`` of each request a parsed body holds (see :func:`parse_body`), None where it has none."""
    return [request_id_of(instance) for instance in fields[INSTANCES]] if instances else [request_id_of(fields)]


def parse_request(body: Any, cfg: ModelConfig, catalog, *, max_beam_width: int, normalize: str = "vocab",
                  max_exclusions: int | None = None) -> RecRequest:
    """Validate one request body (see the module docstring) and build the engine's request.

    ``max_exclusions`` (``serve.max_exclusions``) bounds the excluded items, ``exclude`` and, with
    ``exclude_history``, the history's items together.

    Raises:
        RequestError: naming the first offending field and what it allows. A history longer than
            the model takes is not an error: its oldest part is dropped by ``model.truncation``
            (``RecRequest.truncated``).
    """
    fields = decode_body(body)
    unknown = sorted(set(fields) - set(_ALLOWED))
    if unknown:
        raise RequestError(unknown[0], f"unknown field; allowed fields are {list(_ALLOWED)}")
    if not any(name in fields for name in HISTORY_FIELDS):
        raise RequestError("history", "missing: give history (item ids) or history_tokens (token ids)")
    if "k" not in fields:
        raise RequestError("k", "missing: the number of items to return, an integer >= 1")
    exclude_history = fields.get("exclude_history", False)
    if not isinstance(exclude_history, bool):
        raise RequestError("exclude_history", f"must be true or false; got {_type_name(exclude_history)}")
    exclude = fields.get("exclude", [])
    if not isinstance(exclude, list):
        raise RequestError("exclude", f"must be an array of item ids; got {_type_name(exclude)}")
    if "request_id" in fields:
        _check_request_id(fields["request_id"])
    for name in HISTORY_FIELDS:
        if name in fields and not isinstance(fields[name], list):
            raise RequestError(name, f"must be an array of integers; got {_type_name(fields[name])}")
    beam_width = fields.get("beam_width", max_beam_width)
    if isinstance(beam_width, int) and not isinstance(beam_width, bool) and beam_width > max_beam_width:
        raise RequestError("beam_width", f"must be an integer in [1, {max_beam_width}], the served model's widest "
                                         f"beam (set by `xgr package --beam-width`); got {beam_width}")
    request = build_request(cfg, catalog, history_items=fields.get("history"),
                            history_tokens=fields.get("history_tokens"),
                            beam_width=beam_width, top_k=fields["k"],
                            max_beam_width=max_beam_width, exclude_items=exclude, exclude_history=exclude_history,
                            normalize=fields.get("normalize", normalize))
    if max_exclusions is not None and len(request.exclude_items) > max_exclusions:
        raise RequestError("exclude", f"at most {max_exclusions} distinct excluded items (exclude, and the history "
                                      f"with exclude_history); got {len(request.exclude_items)}")
    return request


def parse_body(body: Any, cfg: ModelConfig, catalog, *, max_beam_width: int, normalize: str = "vocab",
               max_exclusions: int | None = None) -> tuple[list[RecRequest], bool]:
    """One HTTP body -> its requests, and whether it was KServe's ``{"instances": [...]}`` form.

    Raises:
        RequestError: for the body, or for ``instances[i].<field>`` of the first bad instance.
    """
    fields = decode_body(body)
    kw = {"max_beam_width": max_beam_width, "normalize": normalize, "max_exclusions": max_exclusions}
    if INSTANCES not in fields:
        return [parse_request(fields, cfg, catalog, **kw)], False
    extra = sorted(set(fields) - {INSTANCES})
    if extra:
        raise RequestError(extra[0], f"unknown field beside {INSTANCES}; put it in each instance")
    instances = fields[INSTANCES]
    if not isinstance(instances, list) or not instances:
        raise RequestError(INSTANCES, f"must be a non-empty array of request objects, e.g. [{_EXAMPLE}]")
    requests = []
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise RequestError(f"{INSTANCES}[{i}]", f"must be a request object, e.g. {_EXAMPLE}; got "
                                                    f"{_type_name(instance)}")
        try:
            requests.append(parse_request(instance, cfg, catalog, **kw))
        except RequestError as err:
            raise RequestError(f"{INSTANCES}[{i}].{err.field}", err.message) from None
    return requests, True


def response_body(items: list[ScoredItem], request: RecRequest, *, model: str, batch_size: int,
                  timing_ms: dict[str, float], names: dict[int, str] | None = None,
                  request_id: str | None = None) -> dict:
    """The JSON object answering one request; items carry ``name`` where the model has names, and the
    body the request's ``request_id`` where it had one."""
    out_items = []
    for item in items:
        entry = item.to_json()
        if names is not None and item.item_id in names:
            entry["name"] = names[item.item_id]
        out_items.append(entry)
    body = {"items": out_items, "model": model, "batch_size": batch_size,
            "timing_ms": {key: round(value, 3) for key, value in timing_ms.items()}}
    if request.truncated:
        body["truncated"] = request.truncated
    if request_id is not None:
        body["request_id"] = request_id
    return body


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def error_body(err: RequestError, request_id: str | None = None) -> dict:
    """``{"error", "field"[, "request_id"]}``; a message or field name that echoes a huge value is clipped, so
    that a bad request never makes an answer over TorchServe's max_response_size."""
    body = {"error": _clip(err.message, MAX_ERROR_CHARS), "field": _clip(err.field, MAX_FIELD_CHARS)}
    if request_id is not None:
        body["request_id"] = request_id
    return body
