"""Whole networks (like ``timm.models``), registered by name: ``ghostify.models.create(name)``."""

# importing the model modules registers their factories (ghostnet_*, vgg16_cifar, resnet*_cifar)
from ghostify.models import cifar as _cifar  # noqa: F401
from ghostify.models import ghostnet as _ghostnet  # noqa: F401
from ghostify.models._registry import create, list_models, register_model

__all__ = ["create", "list_models", "register_model"]
