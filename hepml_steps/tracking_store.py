"""The MLflow tracking store, made safe to share between pipelines.

Several pipelines (different results folders) may publish to one store: a
``sqlite:///`` file named by ``tracking.uri`` or ``MLFLOW_TRACKING_URI``, or a
tracking server. :func:`session` gives a client on which publishing is safe:

* **One publisher at a time per store.** For sqlite an exclusive ``flock`` on
  ``<db>.hepml.lock`` next to the database (so it follows the file, whichever
  results folder uses it); for any other URI a lock keyed on the URI in a
  per-user folder of this host's temp dir (a server serialises its own writes;
  the lock keeps first experiment creation and stale-run clean-up orderly).
* **A new sqlite store appears whole or not at all.** Its schema is built in a
  temp file beside it, which is then renamed into place; an interruption (disk
  full, ``kill -9``) leaves no ``mlflow.db`` behind. A store that a previous
  first use left half-built (tables but no schema version) is refused with
  what to do, instead of letting MLflow migrate it in place.
* **A server that does not answer fails in seconds**: one ``GET /health``
  with a 10 s timeout first, and MLflow's own HTTP retries are kept short
  (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` 2, ``..._TIMEOUT`` 30 s, unless set).
* **Quiet logs**: MLflow's artifact progress bars are off (unless set).
* **Errors are one line**: MLflow, SQLAlchemy, HTTP and OS errors become a
  :class:`HepmlError` naming the store, chained to the library's exception
  (whose traceback the CLI writes to the log).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import sqlite3
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from .errors import HepmlError, StorageError, describe

log = logging.getLogger("hepml.track")

REACH_TIMEOUT_S = 10  # a loaded server can take ~4 s for its first answer
# MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) retry for ~4 min
ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # no tqdm bars in the step's log (logging a model downloads and uploads its files)
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# tables MLflow's first migration expects (its ``initial_models``)
INITIAL_TABLES = {"experiments", "runs", "tags", "metrics", "params"}


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for other stores and ``:memory:``."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def lock_path(uri: str) -> Path:
    """Where the store's lock lives: beside a sqlite file, else in a per-user temp folder."""
    db = sqlite_path(uri)
    if db is not None:
        return db.with_name(db.name + ".hepml.lock")
    key = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f"hepml-{os.getuid()}" / f"store-{key}.lock"


@contextlib.contextmanager
def store_lock(uri: str):
    """Hold the store's exclusive lock (blocking; says so when it has to wait)."""
    path = lock_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for %s (another pipeline is publishing to %s)", path, uri)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_reachable(uri: str, name: str = "tracking store", timeout: float = REACH_TIMEOUT_S) -> None:
    """Fail fast when an ``http(s)://`` tracking server does not answer.

    Any HTTP answer counts (a 401 means the server is there), except a 404
    (every MLflow server answers ``/health``) and the gateway errors (502-504)
    a proxy gives for a server that is down.

    Raises
    ------
    HepmlError
        No answer within ``timeout`` seconds, a 404 or a gateway error.
    """
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise HepmlError(
                f"{name} {uri}: no MLflow tracking server there (GET {url}: HTTP 404 {exc.reason})"
            ) from None
        if exc.code not in (502, 503, 504):
            return
        reason = f"GET {url}: HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        reason = str(exc.reason)
    except OSError as exc:  # timeouts, resets
        reason = str(exc) or type(exc).__name__
    raise HepmlError(f"{name} {uri}: server not reachable ({reason})")


def _inspect(db: Path) -> tuple[set[str], str | None, int]:
    """Tables (without alembic/sqlite bookkeeping), schema revision and run count of ``db``."""
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        rev = None
        if "alembic_version" in names:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
            rev = row[0] if row else None
        n_runs = con.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in names else 0
    finally:
        con.close()
    tables = {n for n in names if not n.startswith(("alembic_", "sqlite_"))}
    return tables, rev, n_runs


def _create_sqlite(db: Path, uri: str, name: str) -> None:
    """Build the schema in a temp file beside ``db``, then rename it into place."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for dead in db.parent.glob(f".{db.name}.hepml-new-*"):  # a killed creation's (we hold the lock)
        dead.unlink(missing_ok=True)
    tmp = db.with_name(f".{db.name}.hepml-new-{uuid.uuid4().hex[:8]}")
    tmp_uri = f"sqlite:///{tmp.resolve()}"
    log.info("creating the MLflow schema of %s (in %s, then renamed)", db, tmp.name)
    try:
        store = SqlAlchemyStore(tmp_uri, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
        store._dispose_engine()  # close its connections before the rename
        SqlAlchemyStore._engine_map.pop(tmp_uri, None)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, db)
    except BaseException as exc:
        for leftover in (tmp, *(tmp.with_name(tmp.name + s) for s in ("-journal", "-wal", "-shm"))):
            leftover.unlink(missing_ok=True)
        if isinstance(exc, Exception):
            raise _store_error(exc, name, uri, "could not create the schema (", f"); nothing was left at {db}") from exc
        raise


def ensure_schema(uri: str, name: str = "tracking store") -> None:
    """Create a new sqlite store atomically; refuse a half-built one. Call under :func:`store_lock`.

    An existing file without tables (e.g. ``touch mlflow.db``) counts as new.
    A store with a schema revision is left to MLflow, which migrates an older
    one itself (serialised here by the lock).

    Raises
    ------
    HepmlError
        The file is not an SQLite database, its schema is incomplete (tables
        but no revision, or initial tables missing), or creating it failed.
    """
    db = sqlite_path(uri)
    if db is None:
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    if db.exists():
        try:
            tables, rev, n_runs = _inspect(db)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):  # locked, unreadable: not about its contents
                raise
            raise HepmlError(
                f"{name} {uri}: {db} cannot be read as an SQLite database ({exc}); "
                "move it away or point tracking.uri elsewhere"
            ) from exc
        if tables and (rev is None or not INITIAL_TABLES <= tables):
            if n_runs == 0:
                raise HepmlError(
                    f"{name} {uri}: incomplete schema (a previous first use was "
                    f"interrupted); it holds no runs: delete {db} and rerun"
                )
            raise HepmlError(
                f"{name} {uri}: incomplete schema (no schema version recorded); it holds "
                f"{n_runs} run(s): back it up, then run `mlflow db upgrade {uri}`"
            )
        if tables:
            return
    _create_sqlite(db, uri, name)


def _store_error(exc: Exception, name: str, uri: str, before: str = "", after: str = "") -> HepmlError:
    """``<name> <uri>: <what>`` for library error ``exc`` (raise it ``from exc``);
    a :class:`StorageError` for an OSError with an errno (disk full, permissions)."""
    inner = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the DB-API error
    if isinstance(inner, OSError) and inner.errno is not None:
        what = f"{f'{inner.filename}: ' if inner.filename else ''}{inner.strerror or describe(inner)}"
        return StorageError(f"{name} {uri}: {before}{what}{after}")
    return HepmlError(f"{name} {uri}: {before}{describe(inner)}{after}")


@contextlib.contextmanager
def _env_defaults():
    """Set MLflow's HTTP retries and progress bars to :data:`ENV_DEFAULTS` where the user set none."""
    added = [k for k in ENV_DEFAULTS if k not in os.environ]
    os.environ.update({k: ENV_DEFAULTS[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextlib.contextmanager
def errors(uri: str, name: str = "tracking store"):
    """Turn MLflow, SQLAlchemy, HTTP and OS errors into one-line :class:`HepmlError`.

    Raises
    ------
    HepmlError
        ``<name> <uri>: <what went wrong>``, chained to the library's exception.
    """
    from mlflow.exceptions import MlflowException
    from requests import RequestException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except HepmlError:
        raise
    except (MlflowException, SQLAlchemyError, RequestException, sqlite3.Error, OSError) as exc:
        raise _store_error(exc, name, uri) from exc


@contextlib.contextmanager
def session(uri: str, name: str = "tracking store"):
    """An ``MlflowClient`` on ``uri``, reachable, with a whole schema, under the store lock.

    ``name`` says where the URI came from (``tracking.uri``, ...), for messages.

    Raises
    ------
    HepmlError
        Server not reachable, schema half-built, or any store error inside the block.
    """
    check_reachable(uri, name)
    from mlflow.tracking import MlflowClient

    with _env_defaults(), errors(uri, name), store_lock(uri):
        ensure_schema(uri, name)
        yield MlflowClient(tracking_uri=uri)


def close_stale_runs(client, exp_id: str, tags: dict[str, str], why: str) -> list[str]:
    """Mark FAILED the RUNNING runs of ``exp_id`` whose tags include all of ``tags``.

    Only safe under :func:`store_lock`: every publisher holds it while its run
    is RUNNING, so a RUNNING run of the same model from the same origin (host
    and results folder) found now was left by a job that died (``kill -9``).
    Runs from other origins may be live elsewhere and are left alone.
    """
    stale = [
        r
        for r in client.search_runs([exp_id], "attributes.status = 'RUNNING'", max_results=1000)
        if all(r.data.tags.get(k) == v for k, v in tags.items())
    ]
    for r in stale:
        client.set_tag(r.info.run_id, "hepml.failure", why)
        client.set_terminated(r.info.run_id, "FAILED")
        log.warning("closed MLflow run %s (%s): %s", r.info.run_id, r.info.run_name, why)
    return [r.info.run_id for r in stale]
