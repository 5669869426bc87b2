"""tpgrpo: TP-GRPO fine-tuning of flow-matching text-to-image models as Prefect flows over Parquet."""

import logging

__version__ = "0.1.0"


def _not_torchvision_fallback(record: logging.LogRecord) -> bool:
    """Drop transformers' notice that an image processor falls back to its PIL backend: diffusers'
    SD3/FLUX modules name those processors at import, we never use them, and the notice is noise on
    every console (torchvision is not a dependency). Installed here, before any module of ours
    imports transformers or diffusers; the logger is named after transformers' module."""
    return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_not_torchvision_fallback)
