"""Whole networks (like ``timm.models``), registered by name: ``ghostify.models.create(name)``."""

from ghostify.models._registry import create, list_models, register_model

__all__ = ["create", "list_models", "register_model"]
