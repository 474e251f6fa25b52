"""Built-in model families. Each module is imported only when its family is used.

:func:`check_family` (from :mod:`.checks`, imported on first use) checks any
family, built-in or a plugin, against the contract declared by
:class:`.base.Family`.
"""

__all__ = ["FamilyCheckError", "check_family", "family_checks"]


def __getattr__(name: str):
    if name in __all__:
        from . import checks

        return getattr(checks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
