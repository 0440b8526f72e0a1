"""Training the weight autoencoder with Ray Train and DeepSpeed ZeRO, fed by Ray Data from a collection.

Owns, in the order a run goes: its settings (``config``), the stream of token windows from the collection
(``token_stream``, cutting views with ``geosane.views``), the DeepSpeed engine and its schedule (``engine``), what
every worker runs (``loop``) and the driver that plans, starts and resumes a run (``run``).

May import: the collection (read only), the autoencoder and the shared pieces. Never generation or the bench.
"""

from typing import TYPE_CHECKING

from geosane.lazy import exports

if TYPE_CHECKING:  # names resolve on first use (geosane.lazy): importing one module loads no other
    from geosane.train.config import TrainConfig, deepspeed_config, nvme_folder
    from geosane.train.engine import (
        Horizon,
        build_engine,
        extensions_dir,
        fit_horizon,
        parameter_groups,
        return_large_blocks_to_the_os,
    )
    from geosane.train.loop import StepMeter, progress_line, remove_offload_files
    from geosane.train.run import SPLIT, STEPS_PER_PASS, run_training, training_plan, training_views
    from geosane.train.token_stream import ModelSplit, lineage, split_models, window_dataset, windows_per_model_for

#: Public name -> the module that defines it.
EXPORTS = {
    **dict.fromkeys(
        ("SPLIT", "STEPS_PER_PASS", "run_training", "training_plan", "training_views"), "geosane.train.run"
    ),
    **dict.fromkeys(
        (
            "Horizon",
            "build_engine",
            "extensions_dir",
            "fit_horizon",
            "parameter_groups",
            "return_large_blocks_to_the_os",
        ),
        "geosane.train.engine",
    ),
    **dict.fromkeys(
        ("ModelSplit", "lineage", "split_models", "window_dataset", "windows_per_model_for"),
        "geosane.train.token_stream",
    ),
    **dict.fromkeys(("StepMeter", "progress_line", "remove_offload_files"), "geosane.train.loop"),
    **dict.fromkeys(("TrainConfig", "deepspeed_config", "nvme_folder"), "geosane.train.config"),
}

__all__ = list(EXPORTS)
__getattr__, __dir__ = exports(__name__, EXPORTS)
