"""Data layer (numpy + opencv only, never torch): image/mask I/O, MVTec layout, procedural set, masks."""
