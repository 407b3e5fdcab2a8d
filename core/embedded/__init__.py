"""The embedded default models: two Qwen2.5-Coder GGUF files served on 127.0.0.1.

Used when no pools are configured. ``catalog`` pins what each model is and where its
bytes come from, ``assemble`` joins and verifies the file once, ``host`` is the child
process that serves them and ``manager`` starts, health-checks and stops that child.
See docs/embedded.md.
"""

from core.embedded.assemble import model_file
from core.embedded.catalog import CATALOG, ModelSpec
from core.embedded.manager import EmbeddedModels

__all__ = ["CATALOG", "EmbeddedModels", "ModelSpec", "model_file"]
