"""Layer 1: classifiers (inputs in [0, 1], normalisation inside) and batched prediction."""
from advbook.models.predict import predict
from advbook.models.zoo import MODELS, Classifier, build_model

__all__ = ["Classifier", "MODELS", "build_model", "predict"]
