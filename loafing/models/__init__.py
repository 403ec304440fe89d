"""Model registry and the staged view of each network: stem -> stages of blocks -> head, run by a plan.

A model is one `register_model(ModelSpec(...))` (see `registry.py`); the built-in ones are registered
by importing their modules below.
"""
from loafing.models.registry import (IMAGENET_NORMALIZATION, MODELS, ModelSpec, body_layout, create_model,
                                     get_spec, register_model, unregister_model)
from loafing.models.staged import StagedModel
from loafing.models import cifar_resnet, densenet, torchvision_nets  # noqa: F401  (registers the built-in models)

__all__ = ["IMAGENET_NORMALIZATION", "MODELS", "ModelSpec", "StagedModel", "body_layout", "create_model", "get_spec",
           "register_model", "unregister_model"]
