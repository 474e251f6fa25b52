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
import sys
from typing import Callable, Sequence

from .errors import HepmlError

log = logging.getLogger("hepml")


def json_arg(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:  # the rule built it, so this is a bug
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc


def run(build: Callable[[argparse.ArgumentParser], None],
        call: Callable[[argparse.Namespace], object],
        argv: Sequence[str] | None = None, description: str | None = None) -> int:
    """Parse ``argv`` with the arguments ``build`` adds, then ``call`` them.

    A :class:`HepmlError` becomes one clear line on stderr and exit status 1.
    """
    parser = argparse.ArgumentParser(description=description)
    build(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        call(args)
    except HepmlError as exc:
        print(f"hepml: error: {exc}", file=sys.stderr)
        return 1
    return 0
