"""Training loop, evaluation, feature cache, adapters and checkpoints."""

from .adapter import load_adapter, read_adapter_config, save_adapter
from .hub import from_pretrained, push_to_hub, save_pretrained, write_model_card
from .api import evaluate, predict, prepare_dataset, train, write_predictions_csv
from .evaluate import classification_metrics
from .features import FeatureCache
from .schedule import learning_rate
from .trainer import Trainer

__all__ = [
    "FeatureCache",
    "Trainer",
    "classification_metrics",
    "evaluate",
    "from_pretrained",
    "learning_rate",
    "load_adapter",
    "predict",
    "prepare_dataset",
    "push_to_hub",
    "read_adapter_config",
    "save_adapter",
    "save_pretrained",
    "train",
    "write_model_card",
    "write_predictions_csv",
]
