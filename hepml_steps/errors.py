"""Errors raised for bad input.

Every message names the culprit (file, column, key, family) so the physicist
can fix the input without reading a traceback. The CLIs print these as a
single ``hepml: error: ...`` line and exit with status 1.
"""


class HepmlError(Exception):
    """Bad input or configuration; the message names the culprit."""


class ConfigError(HepmlError):
    """A configuration key is missing, unknown or of the wrong type."""


class DataError(HepmlError):
    """An input file, column or the events in it cannot be used."""


class FamilyError(HepmlError):
    """A model family is unknown, failed to load, or was misused."""
