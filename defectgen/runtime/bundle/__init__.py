"""A bundle on disk: its manifest schema (`manifest`) and the checked, read-only view of it (`loader`)."""

from defectgen.runtime.bundle.loader import Bundle, default_bundle_path, user_cache_dir
from defectgen.runtime.bundle.manifest import MANIFEST_NAME

__all__ = ["MANIFEST_NAME", "Bundle", "default_bundle_path", "user_cache_dir"]
