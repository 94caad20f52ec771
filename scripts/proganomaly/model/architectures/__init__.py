"""The registered architectures: importing this package registers every module below."""

from proganomaly.model.architectures import berg, ganomaly  # noqa: F401  (registration on import)
from proganomaly.model.architectures.base import ARCHITECTURES, Architecture, architecture, build_networks

__all__ = ["ARCHITECTURES", "Architecture", "architecture", "build_networks"]
