"""Shared plumbing for the thin command-line front ends of the steps.

Each step module exposes a plain function over files plus a ``main()`` that
parses arguments and calls it; rules call ``python -m hepml_steps.<step>``.
Structured settings travel as one JSON argument (``--params '{...}'``) that
the rule builds from the validated config.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable, Sequence

from . import stopping
from .errors import UNSAFE_ADVICE, HepmlError, describe

log = logging.getLogger("hepml")


def json_arg(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:  # the rule built it, so this is a bug
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc


def run(
    build: Callable[[argparse.ArgumentParser], None],
    call: Callable[[argparse.Namespace], object],
    argv: Sequence[str] | None = None,
    description: str | None = None,
    summary: Callable[[object], str] | None = None,
) -> int:
    """Parse ``argv`` with the arguments ``build`` adds, then ``call`` them.

    On success the last line of stderr is the step's one-line summary,
    ``hepml: <step> [<model>]: done in <s> s, peak RSS <MiB> MiB[; <summary>]``
    (``summary(result)`` of what ``call`` returned, when given; a summary that
    fails is left out, never failing the step). The rules print that line to
    the Snakemake console (``rules/common.smk``, ``TO_LOG``).

    Returns
    -------
    int
        0 on success; 1 after any error, printed as the last line of stderr:
        ``hepml: error: <culprit>: <what>``, one line. A :class:`HepmlError` names
        its culprit; an OSError with an errno names its file; any other exception
        is ``<step>: <type>: <message>``. The traceback of a library error goes
        to the log (stderr, before that line), never into the line itself.
        128 + the signal's number when the step's own process (``argv`` None)
        was sent SIGTERM or SIGINT (:mod:`hepml_steps.stopping`): its ``with``
        blocks unwound first, removing temporary outputs and scratch files; the
        last line is ``hepml: error: <step>: terminated by SIGTERM; ...``.
    """
    parser = argparse.ArgumentParser(description=description)
    build(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    step = call.__module__.rsplit(".", 1)[-1]
    if step == "__main__":  # python -m hepml_steps.<step>: argv[0] is the step's file
        step = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    t0 = time.perf_counter()
    try:
        with stopping.stoppable(argv is None):  # SIGTERM, SIGINT: unwind, then exit 128 + signal
            result = call(args)
    except stopping.Terminated as exc:
        print(f"hepml: error: {step}: {exc}; its partial outputs and scratch files were removed", file=sys.stderr)
        return 128 + exc.signum
    except Exception as exc:
        print(f"hepml: error: {_error_line(exc, step)}", file=sys.stderr, flush=True)
        return 1
    print(_done_line(step, args, time.perf_counter() - t0, result, summary), file=sys.stderr, flush=True)
    return 0


def _done_line(step: str, args: argparse.Namespace, seconds: float, result, summary) -> str:
    """The one-line summary of a finished step (see :func:`run`)."""
    model = getattr(args, "model", None) or getattr(args, "model_dir", None)
    subject = f"{step} {os.path.basename(os.path.normpath(model))}" if isinstance(model, str) else step
    # ru_maxrss is in KiB on Linux (getrusage(2))
    line = f"hepml: {subject}: done in {seconds:.1f} s, peak RSS {_peak_rss_kib() / 1024:.0f} MiB"
    if summary is not None:
        try:
            extra = summary(result)
        except Exception as exc:  # a summary is a courtesy: never fail a finished step over it
            log.debug("summary of %s left out: %s", step, exc)
            extra = ""
        if extra:
            line += f"; {extra}"
    return " ".join(line.split())


def _peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _error_line(exc: Exception, step: str) -> str:
    """Log ``exc``'s traceback (the library's, for a wrapped one); return the one-line message."""
    if isinstance(exc, HepmlError):
        if exc.__cause__ is not None:
            log.error("the error below came from this library error:\n%s", _traceback(exc.__cause__))
        return " ".join(str(exc).split())
    log.error("%s failed with an unexpected error:\n%s", step, _traceback(exc))
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{exc.filename or step}: {exc.strerror or describe(exc)}"
    return f"{step}: {type(exc).__name__}: {describe(exc)}"


def _traceback(exc: BaseException) -> str:
    """``exc``'s traceback (with its chain), any library advice to load a file
    unsafely replaced by :func:`describe`'s summary."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        message = str(exc)
        if UNSAFE_ADVICE.search(message):
            text = text.replace(message, describe(exc))
        exc = exc.__cause__ or exc.__context__
    return text
