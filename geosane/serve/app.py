"""The Ray Serve application around :class:`~geosane.serve.service.GenerationService`, and starting it: every
setting is checked before Ray starts."""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any

from geosane import storage
from geosane.errors import GeoSANEError
from geosane.generation import GenerateConfig
from geosane.serve.config import ServeConfig
from geosane.serve.requests import JOB_ID, request_error
from geosane.serve.service import DamagedResult, GenerationService

__all__ = ["application", "build_app", "resolved", "serve"]

log = logging.getLogger(__name__)


def build_app(config: ServeConfig) -> Any:
    """The Ray Serve application: one deployment (``replicas`` of them) around :class:`GenerationService`."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from ray import serve

    app = FastAPI(title="GeoSANE", description="weights generated on demand")

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 in the service's form: the first bad field, and why (pydantic's own words)."""
        first = exc.errors()[0]
        where = [str(part) for part in first["loc"] if part != "body"]
        reason = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            reason = "unknown field; known: " + ", ".join(f.name for f in fields(GenerateConfig))
        status, answer = request_error(".".join(where) or "(body)", reason)
        request.app.state.service.metrics.request(status)  # counted with the service's other answers
        return JSONResponse(answer, status_code=status)

    @serve.deployment(
        num_replicas=config.replicas,
        ray_actor_options={"num_cpus": config.cpus_per_replica, "num_gpus": config.gpus_per_replica},
    )
    @serve.ingress(app)
    class Generator:
        def __init__(self, settings: ServeConfig) -> None:
            self.service = GenerationService(settings)
            app.state.service = self.service  # the replica's one service, for answers made outside a route

        @app.get("/healthz")
        def healthz(self) -> dict[str, Any]:
            return {"ok": True, "autoencoder": self.service.config.autoencoder, **self.service.summary()}

        # annotations are strings here (postponed): FastAPI resolves them in this module, so routes name only
        # module-level types; the body is generation's own settings, which FastAPI validates (422 names the field)
        @app.post("/generate", response_model=None)
        def generate(self, body: GenerateConfig) -> JSONResponse:
            status, answer = self.service.submit(body)
            return JSONResponse(answer, status_code=status)

        @app.get("/jobs/{job}", response_model=None)
        def job(self, job: str) -> JSONResponse:
            try:
                state = self.service.state(job)
            except DamagedResult as exc:
                return JSONResponse({"id": job, "state": "damaged", "error": str(exc)}, status_code=500)
            shown = job if JOB_ID.fullmatch(job) else None
            return JSONResponse({"id": shown, **state}, status_code=404 if state["state"] == "unknown" else 200)

        @app.get("/jobs/{job}/{name}", response_model=None)
        def file(self, job: str, name: str) -> Response:
            try:
                data = self.service.read(job, name)
            except DamagedResult as exc:
                return JSONResponse({"error": str(exc)}, status_code=500)
            if data is None:
                return JSONResponse({"error": "no such file of a finished job"}, status_code=404)
            kind = "application/json" if name.endswith(".json") else "application/octet-stream"
            return Response(data, media_type=kind)

    return Generator.bind(config)  # type: ignore[attr-defined]


def application(args: dict[str, Any]) -> Any:
    """The application from a Serve config's ``args`` (a RayService's ``serveConfigV2``: ``import_path:
    geosane.serve:application``); the keys are :class:`ServeConfig` fields, unknown ones are errors.

    Args:
        args: settings, as the Serve config gives them.

    Returns:
        The bound application.
    """
    known = {f.name for f in fields(ServeConfig)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise GeoSANEError(f"serve args: unknown {unknown}; known: {', '.join(sorted(known))}")
    lists = {k: tuple(v) for k, v in args.items() if k in ("data", "prompt_weights") and isinstance(v, list)}
    return build_app(resolved(ServeConfig(**{**args, **lists})))


def resolved(config: ServeConfig) -> ServeConfig:
    """The settings checked before anything starts, with local paths made absolute (replicas run in folders of
    their own): the limits, the allow-lists (each file there and safe to read), the storage (the output rule of
    every verb, and an existing bucket) and the autoencoder (it loads).

    Raises:
        GeoSANEError: the first problem, named.
    """
    from dataclasses import replace

    from geosane import datasets
    from geosane.autoencoder import Autoencoder
    from geosane.autoencoder.registry import is_shipped
    from geosane.collection.sources import load

    for name in ("replicas", "max_queue", "max_candidates", "anchor_cache"):
        if getattr(config, name) < 1:
            raise GeoSANEError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    autoencoder = config.autoencoder if is_shipped(config.autoencoder) else storage.absolute(config.autoencoder)
    data = []
    for name, spec in config.offered("data").items():
        kind, sep, path = spec.partition(":")
        if not sep or kind not in ("npz", "imagefolder"):
            raise GeoSANEError(
                f"--data {name}={spec}: expected npz:PATH or imagefolder:DIR (registered datasets are offered already)"
            )
        spec = f"{kind}:{storage.absolute(path)}"
        datasets.get(spec)  # there, and readable as a dataset
        data.append(f"{name}={spec}")
    weights = []
    for name, path in config.offered("prompt_weights").items():
        where = path if path.startswith("pretrained:") else storage.absolute(path)
        load(where)  # there (or catalogued), and safe to read (no pickled code)
        weights.append(f"{name}={where}")
    out = storage.absolute(config.storage)
    storage.refuse_output_inside(out, None if is_shipped(autoencoder) else autoencoder, flag="--storage")
    storage.ensure_bucket(out)
    Autoencoder.load(autoencoder)  # named here, not as a replica that fails to start
    return replace(config, storage=out, autoencoder=autoencoder, data=tuple(data), prompt_weights=tuple(weights))


def serve(config: ServeConfig, blocking: bool = True) -> None:
    """Start the service on the Ray cluster of ``RAY_ADDRESS`` (or a local one) at ``host:port``; every setting is
    checked (:func:`resolved`) before Ray starts.

    Args:
        config: the service's settings.
        blocking: wait until interrupted (the CLI), or return once it answers (tests).
    """
    import os

    import ray
    from ray import serve as ray_serve

    config = resolved(config)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    ray_serve.start(http_options={"host": config.host, "port": config.port})
    ray_serve.run(build_app(config), name="geosane", route_prefix="/", blocking=False)
    print(f"serving {config.autoencoder} at http://{config.host}:{config.port} (results in {config.storage})")
    if blocking:
        import time

        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            ray_serve.shutdown()
