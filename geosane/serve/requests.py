"""What a request may ask for: its body is generation's own settings (:class:`~geosane.generation.GenerateConfig`,
which FastAPI validates: a 422 names the field), held to what the service offers: registered datasets, and the data
and prompt weights of its allow-lists, never a server path."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from geosane.errors import GeoSANEError
from geosane.generation import GenerateConfig
from geosane.serve.config import ServeConfig

__all__ = ["JOB_ID", "admitted", "offered_only", "request_error"]

#: The ids the service makes (:meth:`~geosane.serve.GenerationService.job_id`): nothing else becomes part of a path.
JOB_ID = re.compile(r"[0-9a-f]{16}")
#: What a dataset option's value may be in a request: a short token, never a path.
OPTION_VALUE = re.compile(r"[A-Za-z0-9_.,-]{1,64}")
#: Dataset options a request may not set: they would make the server download.
SERVER_OPTIONS = ("download",)


def request_error(field: str, reason: str) -> tuple[int, dict[str, Any]]:
    """A 422 answer naming the field and why (the form FastAPI's own validation errors are answered in, too).

    Args:
        field: the field.
        reason: what is wrong with it.

    Returns:
        The status and the answer.
    """
    return 422, {"error": "invalid request", "field": field, "reason": reason}


def admitted(request: GenerateConfig, config: ServeConfig) -> GenerateConfig | tuple[int, dict[str, Any]]:
    """A request, already valid settings (pydantic checked every field), held to what this service offers: registered
    datasets and the data and prompt weights of ``config``'s allow-lists, never a path; its own candidate limit; no
    latent search (it holds a whole model's decoder activations). Offered names are replaced by what they stand for.

    Args:
        request: the request's settings.
        config: the service's settings (its limits and allow-lists).

    Returns:
        The settings to run, or (422, the answer naming the field).
    """
    problem = offered_only(request, config)
    if problem:
        return request_error(*problem)
    if request.candidates > config.max_candidates:
        return request_error("candidates", f"at most {config.max_candidates} per request on this service")
    if request.search_steps:
        return request_error("search_steps", "this service runs no latent search (use geosane generate)")
    data, weights = config.offered("data"), config.offered("prompt_weights")
    return replace(
        request,
        data=data.get(request.data or "", request.data),
        prompt_weights=weights.get(request.prompt_weights or ""),
    )


def offered_only(request: GenerateConfig, config: ServeConfig) -> tuple[str, str] | None:
    """The field and reason where a request names something the service does not offer (a path, a server-side
    option, an unknown dataset or weights), before anything on the server is looked at.

    Args:
        request: the request's settings.
        config: the service's settings (its allow-lists).

    Returns:
        The field and the reason, or None when all is offered.
    """
    import timm

    from geosane.collection.sources import TIMM_SIZE_OPTIONS
    from geosane.datasets import REGISTRY, accepted_options
    from geosane.spec import parse_spec

    try:
        spec = parse_spec(request.prompt, "timm")
    except GeoSANEError as exc:
        return "prompt", str(exc)
    arch, options = spec.name, spec.options
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
    if request.prompt_weights is not None and request.prompt_weights not in weights:
        return "prompt_weights", f"not weights this service offers; offered: {', '.join(weights) or 'none'}"
    data = request.data
    if data is None or data in config.offered("data"):
        return None
    try:
        dataset = parse_spec(data)
    except GeoSANEError as exc:
        return "data", str(exc)
    name = dataset.name
    if name not in REGISTRY:
        offered = [*sorted(REGISTRY), *config.offered("data")]
        return "data", f"not a dataset this service offers; offered: {', '.join(offered)}"
    for key, value in dataset.options.items():
        if key not in accepted_options(name) or key in SERVER_OPTIONS:
            takes = sorted(set(accepted_options(name)) - set(SERVER_OPTIONS))
            return "data", f"{name} takes no option {key!r} here; it takes: {', '.join(takes) or 'none'}"
        if not OPTION_VALUE.fullmatch(value):
            return "data", f"option {key} must be a short value of letters, digits and _ . , -, got {value!r}"
    return None
