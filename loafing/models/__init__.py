"""Model registry and the staged view of each network: stem -> stages of blocks -> head, run by a plan.

A model is one `register_model(ModelSpec(...))` (see `registry.py`); the built-in ones are registered
by importing their modules below. A timm or torchvision network (`timm:<name>`, `torchvision:<name>`) needs no
registration: the adapter (`adapter.py`) stages it by its family (`families.py`).
"""
from loafing.models.registry import (IMAGENET_NORMALIZATION, MODELS, ModelSpec, body_layout, create_model,
                                     get_spec, is_library_model, model_choices, register_model, unregister_model)
from loafing.models.staged import StagedModel
from loafing.models import cifar_resnet, densenet, torchvision_nets  # noqa: F401  (registers the built-in models)

__all__ = ["IMAGENET_NORMALIZATION", "MODELS", "ModelSpec", "StagedModel", "body_layout", "create_model", "get_spec",
           "is_library_model", "model_choices", "register_model", "unregister_model"]
