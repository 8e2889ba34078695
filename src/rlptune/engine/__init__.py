"""Training loop, evaluation, feature cache, adapters and checkpoints."""

from .adapter import load_adapter, read_adapter_config, save_adapter
from .api import evaluate, predict, prepare_dataset, train, write_predictions_csv
from .evaluate import classification_metrics
from .features import FeatureCache
from .trainer import Trainer, learning_rate

__all__ = [
    "FeatureCache",
    "Trainer",
    "classification_metrics",
    "evaluate",
    "learning_rate",
    "load_adapter",
    "predict",
    "prepare_dataset",
    "read_adapter_config",
    "save_adapter",
    "train",
    "write_predictions_csv",
]
