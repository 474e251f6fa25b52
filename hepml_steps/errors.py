"""Errors raised for bad input, and the helpers that turn library errors into them.

Every message names the culprit (file, column, key, family) so the physicist
can fix the input without reading a traceback. The CLIs print these as a
single ``hepml: error: ...`` line and exit with status 1; the library's own
exception, when there is one, stays chained (``__cause__``) and goes to the
step's log with its traceback.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator


class HepmlError(Exception):
    """Bad input or configuration; the message names the culprit."""


class ConfigError(HepmlError):
    """A configuration key is missing, unknown or of the wrong type."""


class DataError(HepmlError):
    """An input file, column or the events in it cannot be used."""


class FamilyError(HepmlError):
    """A model family is unknown, failed to load, or was misused."""


class StorageError(HepmlError):
    """A file cannot be read or written for a reason of the system, not of its
    contents: disk full, no permission, missing directory."""


#: Library messages that advise loading a file unsafely (PyTorch's
#: ``weights_only=False`` or ``add_safe_globals``, NumPy's ``allow_pickle``):
#: never passed on to a user, not even in the log.
UNSAFE_ADVICE = re.compile(r"weights_only`?\s*(=|set to)\s*`?False|allow_pickle|safe_globals|unsafely", re.IGNORECASE)
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # the class a refused pickle asks for (PyTorch's message)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DMLC_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: ")  # XGBoost's "[12:00:00] src/x.cc:12: "
MAX_MESSAGE = 300


def describe(exc: BaseException) -> str:
    """What ``exc`` says, as one line a user can read.

    ANSI codes and native stack traces ("Stack trace: ...") are removed,
    whitespace (newlines included) is collapsed, the text is cut to
    :data:`MAX_MESSAGE` characters, and a message that advises loading a file
    unsafely is replaced by "refused to unpickle arbitrary objects".

    Parameters
    ----------
    exc : BaseException
        Any exception, typically raised by a library.

    Returns
    -------
    str
        One line without newlines; the exception's type name when it has no message.
    """
    text = _ANSI.sub("", str(exc)).split("Stack trace:")[0]
    text = _DMLC_PREFIX.sub("", " ".join(text.split()))
    if UNSAFE_ADVICE.search(text):
        asks = _GLOBAL.search(text)
        return "refused to unpickle arbitrary objects" + (f" (it asks for {asks[1]})" if asks else "")
    if not text:
        return type(exc).__name__
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def library_error(name, exc: Exception, error: type[HepmlError] = DataError, context: str = "") -> HepmlError:
    """The :class:`HepmlError` to raise for library exception ``exc`` met while
    working on ``name`` (a file or a config key).

    Parameters
    ----------
    name : str or os.PathLike
        The culprit; the message starts with it.
    exc : Exception
        The library's exception (raise the result ``from exc`` to keep it for the log).
    error : type
        The class for errors of the contents (default :class:`DataError`).
    context : str
        What was being done, put between the name and the library's text
        (e.g. "cannot read as parquet").

    Returns
    -------
    HepmlError
        ``exc`` itself when it already is one; a :class:`StorageError`
        "``<filename or name>: <strerror>``" for an OSError with an errno (disk
        full, permissions); else ``error("<name>: <context>: <describe(exc)>")``.
    """
    if isinstance(exc, HepmlError):
        return exc
    if isinstance(exc, OSError) and exc.errno is not None:
        return StorageError(f"{exc.filename or name}: {exc.strerror or describe(exc)}")
    return error(f"{name}: {context + ': ' if context else ''}{describe(exc)}")


@contextlib.contextmanager
def culprit(name, error: type[HepmlError] = DataError, context: str = "") -> Iterator[None]:
    """Re-raise any exception of the block as a :class:`HepmlError` naming ``name``.

    Wrap the place where the file or key a library works on is known::

        with culprit(path, FamilyError, "not a hepml model weights file"):
            state = torch.load(path, weights_only=True)

    Raises
    ------
    HepmlError
        What :func:`library_error` makes of the exception (HepmlErrors pass
        unchanged), chained to it so the log keeps the original traceback.
    """
    try:
        yield
    except Exception as exc:
        err = library_error(name, exc, error, context)
        if err is exc:
            raise
        raise err from exc
