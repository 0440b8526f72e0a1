"""Benchmarks as Ray Tune sweeps: generated models against scratch, the prompt, the baselines that separate the latent
space from copying (anchor, decoded, noised, soup), pruning, distillation, a foundation model and a specialist.

``geosane bench --config sweeps/bench-small.yaml --storage URL`` runs one Tune experiment whose trials are the grid
task x initialization x learning rate x seed. Every trial builds its model with a named initialization
(:data:`INITIALIZATIONS`), scores it before any fine-tuning (epoch 0), fine-tunes it with the task's budget (the same
epochs, AdamW, one-cycle schedule, batch size and flips for every initialization) and reports its metrics after every
epoch: on the test split for the tables, and on the *selection* split for anything that chooses (each
initialization's learning rate, the optional ASHA scheduler, the generation's ranking, the best anchor, the teacher
of distillation and the model that is pruned). Nothing ranks on test.

Tasks flagged ``held_out`` are checked against the collection first: when any collection model trained on one of
the task's test images (:func:`held_out_problems`), the bench refuses to start. Results (a Parquet table of every
trial and epoch, a Markdown summary, convergence curves, TensorBoard logs, the config and the software versions)
are written by :func:`write_results`.

Owns, in the order a sweep goes: its settings (``config``), what a trial's initialization may use (``context``),
the initializations registry (``initializations``, with ``ablations``, ``merging``, ``pruning``, the ``foundation``
model and the real ``specialists``), the held-out
checks (``held_out``), the runner (``runner``) and the results (``results``).

May import: generation (the ``generated`` initialization), the collection (read only), the autoencoder,
``geosane.tasks``, ``geosane.datasets`` and the shared pieces. Never the zoo or training.
"""

from geosane.bench import ablations, foundation, merging, specialists  # register their initializations  # noqa: F401
from geosane.bench.config import INITIALIZATIONS, SPECIALISTS, Asha, BenchConfig, BenchTask
from geosane.bench.context import TrialContext
from geosane.bench.held_out import check_held_out, held_out_problems
from geosane.bench.initializations import build_initial_model
from geosane.bench.pruning import prune_to
from geosane.bench.results import summary_table, verdict, write_results
from geosane.bench.runner import BenchRun, collection_of, run_bench
from geosane.tasks import Distillation, TaskData, load_task, metric_name, score

__all__ = [
    "INITIALIZATIONS",
    "SPECIALISTS",
    "Asha",
    "BenchConfig",
    "BenchRun",
    "BenchTask",
    "Distillation",
    "TaskData",
    "TrialContext",
    "build_initial_model",
    "check_held_out",
    "collection_of",
    "held_out_problems",
    "load_task",
    "metric_name",
    "prune_to",
    "run_bench",
    "score",
    "summary_table",
    "verdict",
    "write_results",
]
