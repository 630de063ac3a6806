"""Models: builtin CNNs and timm architectures, built from a name and arguments."""

from imgclf.models.factory import create_model, list_models, model_args

__all__ = ["create_model", "list_models", "model_args"]
