"""defectgen: realistic pixel-labelled industrial defects by in-domain GAN inversion."""

from pathlib import Path

__version__ = "0.2.0"

# Type 0 is always "good"; defect types follow in this order unless a dataset says otherwise.
GOOD = "good"
DEFAULT_DEFECT_TYPES = ("crack", "cut", "hole", "print")

# Shipped data: the embedded default bundle and the example parts `defectgen demo` and `defectgen bench` use.
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
EXAMPLES_DIR = ASSETS_DIR / "examples"
