"""What a request may ask for: generation's settings, checked at once (a 422 names the field), naming only what the
service offers: registered datasets, and the data and prompt weights of its allow-lists, never a server path."""

from __future__ import annotations

import re
from dataclasses import asdict, fields
from typing import Any

from geosane.errors import GeoSANEError
from geosane.generation import GenerateConfig
from geosane.serve.config import ServeConfig

__all__ = ["JOB_ID", "REQUEST_FIELDS", "parse_request"]

#: What a request may set: the CLI's generation settings, less the server's own paths (``data`` and
#: ``prompt_weights`` name only what the service offers).
REQUEST_FIELDS = (
    "prompt",
    "task",
    "anchors",
    "sampling",
    "bandwidth",
    "candidates",
    "top_k",
    "data",
    "prompt_weights",
    "seed",
)
#: The ids the service makes (:meth:`~geosane.serve.GenerationService.job_id`): nothing else becomes part of a path.
JOB_ID = re.compile(r"[0-9a-f]{16}")
#: What a dataset option's value may be in a request: a short token, never a path.
OPTION_VALUE = re.compile(r"[A-Za-z0-9_.,-]{1,64}")
#: Dataset options a request may not set: they would make the server download.
SERVER_OPTIONS = ("download",)


def request_error(field: str, reason: str) -> tuple[int, dict[str, Any]]:
    """A 422 answer naming the field and why."""
    return 422, {"error": "invalid request", "field": field, "reason": reason}


def parse_request(body: Any, config: ServeConfig) -> GenerateConfig | tuple[int, dict[str, Any]]:
    """The request as checked settings, or the 422 answer that says which field is wrong and why. A request names
    only what the service offers (registered datasets, and the data and prompt weights of ``config``'s
    allow-lists); a path anywhere is refused without a look at what exists on the server.

    Args:
        body: the request's JSON.
        config: the service's settings (its limits and allow-lists).

    Returns:
        The settings, with offered names replaced by what they stand for, or (422, the answer).
    """
    if not isinstance(body, dict):
        return request_error("(body)", "expected a JSON object of generation settings")
    unknown = sorted(set(body) - set(REQUEST_FIELDS))
    if unknown:
        return request_error(unknown[0], f"unknown field; known: {', '.join(REQUEST_FIELDS)}")
    if "prompt" not in body:
        return request_error("prompt", "required, e.g. timm:test_resnet?num_classes=10")
    defaults = {f.name: f.default for f in fields(GenerateConfig)}
    for name, value in body.items():
        expected = type(defaults[name]) if defaults[name] is not None else str
        if name == "prompt":
            expected = str
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if value is None and defaults[name] is not None:
            return request_error(name, "must not be null")
        if value is not None and (not isinstance(value, expected) or isinstance(value, bool)):
            return request_error(name, f"expected {expected.__name__}, got {type(value).__name__}")
        body = {**body, name: value}
    problem = offered_only(body, config)
    if problem:
        return request_error(*problem)
    settings = GenerateConfig(**body)
    try:
        settings.validate()
    except GeoSANEError as exc:
        named = next((f for f in REQUEST_FIELDS if str(exc).startswith(f) or f" {f} " in str(exc)), "(settings)")
        return request_error(named, str(exc))
    if settings.candidates > config.max_candidates:
        return request_error("candidates", f"at most {config.max_candidates} per request on this service")
    data, weights = config.offered("data"), config.offered("prompt_weights")
    return GenerateConfig(
        **{
            **asdict(settings),
            "data": data.get(settings.data or "", settings.data),
            "prompt_weights": weights.get(settings.prompt_weights or ""),
        }
    )


def offered_only(body: dict[str, Any], config: ServeConfig) -> tuple[str, str] | None:
    """The field and reason where a request names something the service does not offer (a path, a server-side
    option, an unknown dataset or weights), before anything on the server is looked at; None when all is offered."""
    import timm

    from geosane.collection.sources import TIMM_SIZE_OPTIONS, parse_timm
    from geosane.datasets import REGISTRY, accepted_options, parse_spec

    prompt = body["prompt"]
    if not prompt.startswith("timm:"):
        return "prompt", "expected timm:NAME[?in_chans=C&num_classes=K]"
    try:
        arch, options = parse_timm(prompt)
    except (GeoSANEError, ValueError) as exc:
        return "prompt", str(exc)
    allowed = ("in_chans", "num_classes", *TIMM_SIZE_OPTIONS)
    for key, value in options.items():
        if key not in allowed:
            known = ", ".join(allowed)
            return "prompt", f"option {key!r} is not taken here (seed and prompt_weights are fields); known: {known}"
        if not re.fullmatch(r"\d{1,6}(,\d{1,6})*", value):
            return "prompt", f"option {key} must be a whole number or comma-separated ones, got {value!r}"
    if not timm.is_model(arch):
        return "prompt", "not a timm architecture"
    weights = config.offered("prompt_weights")
    if body.get("prompt_weights") is not None and body["prompt_weights"] not in weights:
        return "prompt_weights", f"not weights this service offers; offered: {', '.join(weights) or 'none'}"
    data = body.get("data")
    if data is None or data in config.offered("data"):
        return None
    name, sep, query = data.partition("?")
    if name not in REGISTRY:
        offered = [*sorted(REGISTRY), *config.offered("data")]
        return "data", f"not a dataset this service offers; offered: {', '.join(offered)}"
    try:
        _, parsed = parse_spec(data)
    except GeoSANEError as exc:
        return "data", str(exc)
    for key, value in parsed.items():
        if key not in accepted_options(name) or key in SERVER_OPTIONS:
            takes = sorted(set(accepted_options(name)) - set(SERVER_OPTIONS))
            return "data", f"{name} takes no option {key!r} here; it takes: {', '.join(takes) or 'none'}"
        if not OPTION_VALUE.fullmatch(value):
            return "data", f"option {key} must be a short value of letters, digits and _ . , -, got {value!r}"
    return None
