"""Downstream tasks: the models (a timm backbone under a classification, segmentation or detection head), a task's
data in memory, how models are scored (torchmetrics), and the one fine-tuning recipe.

The zoo, generation, the bench and the benchmarks all build, score and fine-tune task models through this package.
May import: ``geosane.datasets`` and the shared pieces. Never a stage (collection, autoencoder, training,
generation, zoo or bench).
"""

from geosane.tasks.data import TaskData, load_task
from geosane.tasks.fine_tune import Distillation, FineTuning, Recipe, batch_loss
from geosane.tasks.metrics import (
    detection_target,
    is_weight,
    metric_name,
    parameters,
    score,
    score_samples,
    weight_distance,
)
from geosane.tasks.models import (
    TASKS,
    DetectionModel,
    SegmentationModel,
    backbone_features,
    backbone_weights,
    create_model,
    load_backbone,
    sized_for_input,
)
from geosane.tasks.starts import SAME_BANDS, adapt_input, band_mapped_input, start_from

__all__ = [
    "SAME_BANDS",
    "adapt_input",
    "band_mapped_input",
    "start_from",
    "TASKS",
    "DetectionModel",
    "Distillation",
    "FineTuning",
    "Recipe",
    "SegmentationModel",
    "TaskData",
    "backbone_features",
    "backbone_weights",
    "batch_loss",
    "create_model",
    "detection_target",
    "is_weight",
    "load_backbone",
    "load_task",
    "metric_name",
    "parameters",
    "score",
    "score_samples",
    "sized_for_input",
    "weight_distance",
]
