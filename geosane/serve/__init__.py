"""Generation on demand: one Ray Serve application that holds a trained autoencoder and answers generation requests
over HTTP, so that a team shares one service instead of each run loading everything afresh.

    POST /generate               generation's settings (GenerateConfig) as JSON; checked at once (422 names the
                                 field), then queued
    GET  /jobs/{id}              state: queued, running, done or failed (with the error)
    GET  /jobs/{id}/{file}       model-<rank>.safetensors, model-<rank>.json (its card), job.json
    GET  /healthz                the autoencoder served and the service's counts

A job's id is a hash of everything its result depends on (autoencoder, its collection version, the settings and
the seed), so an identical request is answered from storage without recomputing. Results are written to
``storage/<id>/`` file by file under temporary names, ``job.json`` last with the SHA-256 of every file it lists: a
job is done exactly when its ``job.json`` is there, and every file served is checked against it.

It is a public surface, so it answers only for what it was started to offer: job ids of its own form (never a
path), registered datasets and the allow-lists given at start (``--data NAME=SPEC``, ``--prompt-weights
NAME=FILE``), named in requests by NAME. All replicas share one job table (:mod:`geosane.serve.jobs`, a named Ray
actor): any replica answers any job, an identical request in flight joins the running job, and the job of a replica
that dies is retried once, then failed with its reason.

One module each: :mod:`~geosane.serve.config` (settings), :mod:`~geosane.serve.requests` (what a request may ask),
:mod:`~geosane.serve.jobs` (the job table), :mod:`~geosane.serve.service` (running and serving jobs) and
:mod:`~geosane.serve.app` (the Ray Serve application, and starting it).
"""

from typing import TYPE_CHECKING

from geosane.lazy import exports

if TYPE_CHECKING:  # names resolve on first use (geosane.lazy): the job table's actor imports no torch
    from geosane.serve.app import application, build_app, resolved, serve
    from geosane.serve.config import ServeConfig
    from geosane.serve.requests import admitted
    from geosane.serve.service import DamagedResult, GenerationService, Metrics

#: Public name -> the module that defines it.
EXPORTS = {
    **dict.fromkeys(("application", "build_app", "resolved", "serve"), "geosane.serve.app"),
    **dict.fromkeys(("ServeConfig",), "geosane.serve.config"),
    **dict.fromkeys(("admitted",), "geosane.serve.requests"),
    **dict.fromkeys(("DamagedResult", "GenerationService", "Metrics"), "geosane.serve.service"),
}

__all__ = list(EXPORTS)
__getattr__, __dir__ = exports(__name__, EXPORTS)
