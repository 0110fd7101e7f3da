"""Errors the user can fix. The CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations

import difflib


class DefectgenError(Exception):
    """Base of every error caused by bad input (files, options, bundles), as opposed to a bug."""


class DataError(DefectgenError, ValueError):
    """A dataset, image or mask on disk is missing, unreadable or inconsistent."""


class BundleError(DefectgenError, ValueError):
    """An exported bundle is missing, tampered with, or does not match what was asked of it."""


class JobError(DefectgenError, ValueError):
    """One job (image + mask + type) cannot be run; other jobs go on."""


class NotYetAvailable(DefectgenError):
    """A command whose issue is not done yet: says so instead of pretending."""


def choice_error(what: str, value: str, choices: list[str] | tuple[str, ...]) -> str:
    """Message naming a bad value, the valid choices and the closest match, e.g. for `--space wplsu`."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {value!r}{hint}; choose from {', '.join(map(str, choices))}"
