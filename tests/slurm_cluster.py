"""A real single-node SLURM cluster on 127.0.0.1 for the live SLURM test, kept
out of the machine's own configuration.

Jobs re-enter Snakemake inside the allocation and call ``srun``, which reads
``/etc/slurm/slurm.conf``; so the cluster needs its config at that path. To give
it one without touching the machine's, everything runs in a private mount
namespace (``unshare --mount --propagation private``):

* a *holder* process (``python tests/slurm_cluster.py serve PRIVATE``) is started
  under ``unshare``; it bind-mounts fresh directories of ``PRIVATE`` (a new
  ``/tmp/hepml-slurm-*`` directory) over ``/etc/slurm`` and over every munge or
  SLURM system directory that exists (``/etc/munge``, ``/var/lib/munge``, ...),
  so the real ones are hidden, never written, and a leftover config from an
  earlier run is never read;
* it writes slurm.conf, gres.conf and a fresh munge key into ``PRIVATE`` only,
  fakes one GPU with a character device, and starts munged (every path given on
  its command line, socket included, and named in slurm.conf's ``AuthInfo``),
  slurmctld and slurmd on free ports of 127.0.0.1. Jobs that slurmd starts
  inherit the namespace;
* the test runs Snakemake, ``squeue`` and ``scancel`` in the same namespace with
  ``nsenter --mount=/proc/<holder>/ns/mnt`` (``Cluster.command``);
* at the end (its stdin closes, or SIGTERM) the holder cancels the jobs of its
  own partition, by id, and stops its three daemons by PID. The namespace,
  and every mount in it, disappears with its last process.

The machine is changed only when missing packages are installed:
``ensure_installed`` runs ``apt-get install slurm-wlm munge``, and it is called
only by the opted-in live test (``HEPML_LIVE_SLURM=1``, what ``.ci/run`` sets).

This file imports only the standard library: the holder runs it as a script.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LIVE_ENV = "HEPML_LIVE_SLURM"
PARTITION = "hepml_live"
#: the directory the SLURM clients and daemons read slurm.conf from (Debian's build)
SLURM_ETC = "etc/slurm"
#: system directories of munge and SLURM that the namespace hides behind empty private
#: ones when they exist, so that nothing in it can write them by default paths
MASKED = (
    "etc/munge",
    "var/lib/munge",
    "var/log/munge",
    "run/munge",
    "var/lib/slurm",
    "var/log/slurm",
    "var/spool/slurmd",
    "var/spool/slurmctld",
    "run/slurm",
)
LIVE_SKIP_REASON = (
    "live SLURM test not requested: it runs as root, starts slurmctld/slurmd in a private mount "
    "namespace and apt-installs slurm-wlm and munge when missing. Run it as root with "
    "`HEPML_LIVE_SLURM=1 make test` (or `HEPML_LIVE_SLURM=1 .venv/bin/python -m pytest -m slurm_live`)"
)
NEEDED = ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "munged", "unshare", "nsenter")


class Refused(RuntimeError):
    """The live cluster cannot be started without touching the machine."""


def live_slurm_requested(environ=os.environ) -> bool:
    """True only when the caller opted in with ``HEPML_LIVE_SLURM=1``."""
    return environ.get(LIVE_ENV, "") == "1"


@dataclass(frozen=True)
class Layout:
    """Every path the private cluster writes, all under ``private``."""

    private: Path

    @property
    def etc_slurm(self) -> Path:
        return self.private / "etc-slurm"

    @property
    def slurm_conf(self) -> Path:
        return self.etc_slurm / "slurm.conf"

    @property
    def gres_conf(self) -> Path:
        return self.etc_slurm / "gres.conf"

    @property
    def munge(self) -> Path:
        return self.private / "munge"

    @property
    def munge_key(self) -> Path:
        return self.munge / "munge.key"

    @property
    def munge_socket(self) -> Path:
        return self.munge / "munge.socket.2"

    @property
    def state(self) -> Path:
        return self.private / "state"

    @property
    def spool(self) -> Path:
        return self.private / "spool"

    @property
    def logs(self) -> Path:
        return self.private / "logs"

    @property
    def fake_gpu(self) -> Path:
        return self.private / "dev" / "nvidia0"

    @property
    def jobcomp(self) -> Path:
        return self.logs / "jobcomp.txt"

    def mask(self, rel: str) -> Path:
        return self.private / "masks" / rel.replace("/", "-")


def mount_plan(layout: Layout, root: Path = Path("/")) -> list[tuple[Path, Path]]:
    """The bind mounts (source, target) that hide the machine's SLURM and munge dirs.

    Every source lies under ``layout.private``; every target is an existing
    directory under ``root``. Raises `Refused` when ``root/etc/slurm`` does not
    exist: it is the only mount point the cluster cannot do without, and creating
    it would change the machine.
    """
    root = Path(root)
    if not (root / SLURM_ETC).is_dir():
        raise Refused(
            f"{root / SLURM_ETC} does not exist: the live SLURM test mounts its private "
            "config over it and will not create it (install slurm-wlm, which does)"
        )
    plan = [(layout.etc_slurm, root / SLURM_ETC)]
    plan += [(layout.mask(rel), root / rel) for rel in MASKED if (root / rel).is_dir()]
    return plan


def slurm_conf_text(layout: Layout, host: str, ncpu: int, mem_mib: int, ports: tuple[int, int], gpu_model: str) -> str:
    """slurm.conf for one node on 127.0.0.1; every path in it lies under ``layout.private``."""
    return f"""# written by hepml's live SLURM test, seen only inside its mount namespace
ClusterName=hepmltest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={layout.munge_socket}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
StateSaveLocation={layout.state}
SlurmdSpoolDir={layout.spool}
SlurmctldPidFile={layout.logs}/slurmctld.pid
SlurmdPidFile={layout.logs}/slurmd.pid
SlurmctldLogFile={layout.logs}/slurmctld.log
SlurmdLogFile={layout.logs}/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={layout.jobcomp}
ReturnToService=2
MinJobAge=300
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs={ncpu} RealMemory={mem_mib} Gres=gpu:{gpu_model}:1 State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def write_private_files(
    layout: Layout, host: str, ncpu: int, mem_mib: int, ports: tuple[int, int], gpu_model: str
) -> list[Path]:
    """Write slurm.conf, gres.conf and a fresh munge key; return the files written."""
    for d in (layout.etc_slurm, layout.munge, layout.state, layout.spool, layout.logs, layout.fake_gpu.parent):
        d.mkdir(parents=True, exist_ok=True)
    layout.slurm_conf.write_text(slurm_conf_text(layout, host, ncpu, mem_mib, ports, gpu_model))
    layout.gres_conf.write_text(f"NodeName={host} Name=gpu Type={gpu_model} File={layout.fake_gpu}\n")
    layout.munge_key.write_bytes(os.urandom(1024))
    layout.munge_key.chmod(0o400)
    return [layout.slurm_conf, layout.gres_conf, layout.munge_key]


def munged_argv(layout: Layout) -> list[str]:
    """munged in the foreground with every file it uses inside ``layout.munge``."""
    m = layout.munge
    return [
        "munged",
        "--foreground",
        f"--socket={layout.munge_socket}",
        f"--key-file={layout.munge_key}",
        f"--pid-file={m / 'munged.pid'}",
        f"--log-file={m / 'munged.log'}",
        f"--seed-file={m / 'munged.seed'}",
    ]


def own_job_ids(squeue_out: str, partition: str = PARTITION) -> list[str]:
    """Job ids in ``partition`` from ``squeue -h -o '%i %P'`` output."""
    ids = []
    for line in squeue_out.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1] == partition and fields[0].replace("_", "").isdigit():
            ids.append(fields[0])
    return ids


def cancel_own_jobs(run, partition: str = PARTITION) -> list[str]:
    """Cancel, by id, the jobs in the private cluster's partition; return their ids.

    ``run(argv) -> str`` runs a SLURM client command in the cluster's namespace and
    returns its stdout. Never cancels by user: only the ids listed are named.
    """
    ids = own_job_ids(run(["squeue", "-h", "-o", "%i %P"]), partition)
    if ids:
        run(["scancel", *ids])
    return ids


def ns_command(holder_pid: int, argv: list[str], cwd: Path | str = "/") -> list[str]:
    """``argv`` run in the mount namespace of ``holder_pid``, in directory ``cwd``."""
    return ["nsenter", f"--mount=/proc/{holder_pid}/ns/mnt", f"--wd={cwd}", "--", *argv]


def snapshot(paths) -> dict:
    """Path -> (mode, uid, gid, sha256 or link target) of every entry under ``paths``.

    Used to check that the machine's /etc/slurm and /etc/munge are unchanged."""
    out = {}
    for top in map(Path, paths):
        entries = [top, *sorted(top.rglob("*"))] if top.exists() else []
        for p in entries:
            st = p.lstat()
            if p.is_symlink():
                what = "->" + os.readlink(p)
            elif p.is_file():
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = "dir" if p.is_dir() else "other"
            out[str(p)] = (st.st_mode, st.st_uid, st.st_gid, what)
    return out


def ensure_installed() -> None:
    """apt-get install slurm-wlm and munge when a needed command is missing (opt-in only)."""
    if all(shutil.which(c) for c in NEEDED):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"], check=True, env=env, stdout=subprocess.DEVNULL
    )


def client_env(layout: Layout, base=os.environ) -> dict:
    """The environment for commands sent to the private cluster: no SLURM_*/SBATCH_*
    variables inherited from a surrounding allocation, SLURM_CONF at the private file."""
    env = {k: v for k, v in base.items() if not k.startswith(("SLURM_", "SBATCH_", "SQUEUE_", "SALLOC_"))}
    env["SLURM_CONF"] = str(layout.slurm_conf)
    return env


# ---------------------------------------------------------------- inside the namespace


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(")")[-1].split()[0] == "Z":  # zombie: stopped, not reaped
                    return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _mount_ns() -> str:
    return os.readlink("/proc/self/ns/mnt")


def _ns_run(argv: list[str], layout: Layout) -> str:
    return subprocess.run(argv, capture_output=True, text=True, env=client_env(layout), timeout=60).stdout


def serve(private: Path, gpu_model: str, caller_ns: str) -> int:
    """Holder body, run under ``unshare --mount --propagation private``.

    ``caller_ns`` is the mount namespace of the test that started it
    (``/proc/self/ns/mnt``): the holder refuses to mount anything while still in it.
    """
    if _mount_ns() == caller_ns:
        print(json.dumps({"error": "serve must run in a private mount namespace; refusing to mount"}), flush=True)
        return 2

    def on_term(signum, frame):
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_term)
    parent = os.getppid()
    layout = Layout(Path(private))
    plan = mount_plan(layout)
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    for source, target in plan:
        source.mkdir(parents=True, exist_ok=True)
        source.chmod(0o755 if source == layout.etc_slurm else 0o700)
        subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    host = socket.gethostname().split(".")[0]
    ncpu = os.cpu_count() or 2
    mem_mib = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    write_private_files(layout, host, ncpu, mem_mib, (_free_port(), _free_port()), gpu_model)
    shutil.chown(layout.munge, "munge", "munge")
    shutil.chown(layout.munge_key, "munge", "munge")
    os.mknod(layout.fake_gpu, 0o666 | 0o020000, os.makedev(1, 3))  # a char device, like /dev/null
    procs: list[subprocess.Popen] = []
    try:
        procs.append(
            subprocess.Popen(
                munged_argv(layout),
                user="munge",
                group="munge",
                extra_groups=[],
                stdin=subprocess.DEVNULL,
                stdout=open(layout.logs / "munged.out", "wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        for _ in range(100):
            if layout.munge_socket.exists() or procs[0].poll() is not None:
                break
            time.sleep(0.1)
        for daemon in ("slurmctld", "slurmd"):
            procs.append(
                subprocess.Popen(
                    [daemon, "-D"],
                    env=client_env(layout),
                    stdin=subprocess.DEVNULL,
                    stdout=open(layout.logs / f"{daemon}.out", "wb"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            time.sleep(1.0)
        deadline = time.time() + 90
        state = ""
        while time.time() < deadline:
            for p in procs:
                if p.poll() is not None:
                    name = Path(p.args[0]).name
                    raise RuntimeError(f"{name} exited: " + (layout.logs / f"{name}.out").read_text()[-2000:])
            state = _ns_run(["sinfo", "-h", "-o", "%t"], layout).strip()
            if state == "idle":
                break
            if state in ("drain", "down", "drain*", "down*"):
                _ns_run(["scontrol", "update", f"nodename={host}", "state=resume"], layout)
            time.sleep(1)
        else:
            raise RuntimeError(
                f"SLURM node not idle after 90 s (state {state!r}):\n"
                + (layout.logs / "slurmd.log").read_text()[-2000:]
            )
        print(json.dumps({"ready": True, "host": host, "pid": os.getpid()}), flush=True)
        sys.stdin.read()  # until the test closes our stdin (or dies)
        return 0
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if len(procs) == 3 and procs[1].poll() is None:
            with contextlib.suppress(Exception):
                cancel_own_jobs(lambda argv: _ns_run(argv, layout))
                for _ in range(30):
                    if not own_job_ids(_ns_run(["squeue", "-h", "-o", "%i %P"], layout)):
                        break
                    time.sleep(1)
        for p in reversed(procs):
            _stop(p.pid)
            with contextlib.suppress(Exception):
                p.wait(timeout=5)
        if os.getppid() != parent:  # the test died: nobody else will remove the private dir
            shutil.rmtree(layout.private, ignore_errors=True)


# ---------------------------------------------------------------- the test's side


@dataclass
class Cluster:
    """A running private cluster, seen from the test."""

    layout: Layout
    holder_pid: int
    host: str
    partition: str = PARTITION

    @property
    def jobcomp(self) -> Path:
        return self.layout.jobcomp

    def env(self, base=os.environ) -> dict:
        return client_env(self.layout, base)

    def command(self, argv: list[str], cwd: Path | str = "/") -> list[str]:
        return ns_command(self.holder_pid, argv, cwd)

    def client(self, argv: list[str]) -> str:
        """Run a SLURM client command (squeue, scancel, ...) against this cluster."""
        return subprocess.run(self.command(argv), capture_output=True, text=True, env=self.env(), timeout=60).stdout

    def cancel_own_jobs(self) -> list[str]:
        return cancel_own_jobs(self.client, self.partition)


def _read_line(stream, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        return stream.readline() if sel.select(timeout) else ""
    finally:
        sel.close()


@contextlib.contextmanager
def local_slurm(gpu_model: str = "a100", keep_logs: Path | None = None):
    """Start the private cluster (root only), yield a `Cluster`, stop it.

    Raises `Refused` when not root or when /etc/slurm is missing after installation.
    """
    if os.geteuid() != 0:
        raise Refused(
            "the live SLURM test must run as root (it mounts in a private namespace and starts slurmctld/slurmd)"
        )
    ensure_installed()
    private = Path(tempfile.mkdtemp(prefix="hepml-slurm-", dir="/tmp"))
    private.chmod(0o755)  # munged, running as munge, must reach its own subdirectory
    layout = Layout(private)
    holder = None
    try:
        mount_plan(layout)  # refuse before starting anything
        err = open(private / "holder.err", "wb")
        holder = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                sys.executable,
                str(Path(__file__).resolve()),
                "serve",
                str(private),
                gpu_model,
                _mount_ns(),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        line = _read_line(holder.stdout, 180)
        msg = (
            json.loads(line)
            if line.strip()
            else {"error": "no ready line from the holder (it exited, or 180 s passed)"}
        )
        if not msg.get("ready"):
            raise RuntimeError(
                f"private SLURM cluster did not start: {msg.get('error')}\n"
                + (private / "holder.err").read_text()[-2000:]
            )
        yield Cluster(layout, holder.pid, msg["host"])
    finally:
        if holder is not None:
            with contextlib.suppress(Exception):
                holder.stdin.close()
            try:
                holder.wait(timeout=120)
            except subprocess.TimeoutExpired:
                holder.terminate()
                try:
                    holder.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    holder.kill()
                    holder.wait()
        if keep_logs is not None and layout.logs.exists():
            shutil.copytree(layout.logs, Path(keep_logs) / "slurm-logs", dirs_exist_ok=True)
        shutil.rmtree(private, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        sys.exit(serve(Path(sys.argv[2]), sys.argv[3], sys.argv[4]))
    sys.exit("usage: slurm_cluster.py serve PRIVATE_DIR GPU_MODEL CALLER_MOUNT_NS")
