"""Training the weight autoencoder with Ray Train and DeepSpeed ZeRO, fed by Ray Data from a collection.

Owns, in the order a run goes: its settings (``config``), the stream of token windows from the collection
(``token_stream``, cutting views with ``geosane.views``), the DeepSpeed engine and its schedule (``engine``), what
every worker runs (``loop``) and the driver that plans, starts and resumes a run (``run``).

May import: the collection (read only), the autoencoder and the shared pieces. Never generation or the bench.
"""

from geosane.train.config import TrainConfig, deepspeed_config, nvme_folder
from geosane.train.engine import Horizon, build_engine, fit_horizon, parameter_groups, return_large_blocks_to_the_os
from geosane.train.loop import StepMeter, progress_line, remove_offload_files
from geosane.train.run import SPLIT, STEPS_PER_PASS, run_training, training_plan, training_views
from geosane.train.token_stream import ModelSplit, lineage, split_models, window_dataset, windows_per_model_for

__all__ = [
    "SPLIT",
    "STEPS_PER_PASS",
    "Horizon",
    "ModelSplit",
    "StepMeter",
    "TrainConfig",
    "build_engine",
    "deepspeed_config",
    "fit_horizon",
    "lineage",
    "nvme_folder",
    "parameter_groups",
    "progress_line",
    "remove_offload_files",
    "return_large_blocks_to_the_os",
    "run_training",
    "split_models",
    "training_plan",
    "training_views",
    "window_dataset",
    "windows_per_model_for",
]
