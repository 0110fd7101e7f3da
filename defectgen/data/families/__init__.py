"""Procedural part families for `make-data` besides the nuts: each module renders one kind of good part and
paints its own defect types; `defectgen.data.procedural` dispatches between them. numpy/opencv only.
"""
