"""defectgen: realistic pixel-labelled industrial defects by in-domain GAN inversion."""

__version__ = "0.1.0"

# Type 0 is always "good"; defect types follow in this order unless a dataset says otherwise.
GOOD = "good"
DEFAULT_DEFECT_TYPES = ("crack", "cut", "hole", "print")
