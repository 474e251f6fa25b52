"""A real single-node SLURM cluster on 127.0.0.1 for the live SLURM test.

Installs Debian's slurm-wlm and munge when missing (CI machines start with only
Python), writes its own /etc/slurm/slurm.conf (jobs re-enter Snakemake inside
the allocation and call srun, which reads that path), fakes one GPU with a
character device so GPU jobs are scheduled, starts munged, slurmctld and slurmd,
waits for the node to be idle, and stops every daemon by its PID afterwards.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = Path("/etc/slurm/gres.conf")


def ensure_installed() -> None:
    if shutil.which("slurmctld") and shutil.which("munged") and shutil.which("sbatch"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(pid: int, name: str) -> None:
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


@contextlib.contextmanager
def local_slurm(workdir: Path, gpu_model: str = "a100"):
    ensure_installed()
    workdir = Path(workdir)
    for d in ("state", "spool", "dev"):
        (workdir / d).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    ncpu = os.cpu_count() or 2
    mem_mib = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    fake_gpu = workdir / "dev" / "nvidia0"
    if not fake_gpu.exists():
        os.mknod(fake_gpu, 0o666 | 0o020000, os.makedev(1, 3))  # a char device, like /dev/null
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    GRES_CONF.write_text(f"NodeName={host} Name=gpu Type={gpu_model} File={fake_gpu}\n")
    SLURM_CONF.write_text(f"""# written by hepml's live SLURM test
ClusterName=hepmltest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
StateSaveLocation={workdir}/state
SlurmdSpoolDir={workdir}/spool
SlurmctldPidFile={workdir}/slurmctld.pid
SlurmdPidFile={workdir}/slurmd.pid
SlurmctldLogFile={workdir}/slurmctld.log
SlurmdLogFile={workdir}/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={workdir}/jobcomp.txt
ReturnToService=2
MinJobAge=300
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs={ncpu} RealMemory={mem_mib} Gres=gpu:{gpu_model}:1 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    # munge: a fresh key, owned by munge, and munged running as munge
    key = Path("/etc/munge/munge.key")
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_bytes(os.urandom(1024))
    subprocess.run(["chown", "munge:munge", str(key)], check=True)
    key.chmod(0o400)
    for d in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "munge:munge", d], check=True)
    munge_pidfile = Path("/run/munge/munged.pid")  # a directory munge may write to
    subprocess.run(["runuser", "-u", "munge", "--", "munged", "--force",
                    f"--pid-file={munge_pidfile}"], check=True)
    procs = []
    try:
        for daemon in ("slurmctld", "slurmd"):
            procs.append(subprocess.Popen([daemon, "-D"], stdout=open(workdir / f"{daemon}.out", "wb"),
                                          stderr=subprocess.STDOUT, start_new_session=True))
            time.sleep(1.0)
        deadline = time.time() + 60
        state = ""
        while time.time() < deadline:
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited: " + (workdir / f"{p.args[0]}.out").read_text()[-2000:])
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
            state = out.stdout.strip()
            if state == "idle":
                break
            if state in ("drain", "down", "drain*", "down*"):
                subprocess.run(["scontrol", "update", f"nodename={host}", "state=resume"], capture_output=True)
            time.sleep(1)
        else:
            raise RuntimeError(f"SLURM node not idle after 60 s (state {state!r}):\n"
                               + (workdir / "slurmd.log").read_text()[-2000:])
        yield {"host": host, "workdir": workdir, "jobcomp": workdir / "jobcomp.txt"}
    finally:
        subprocess.run(["scancel", "--user", "root"], capture_output=True)
        for p in reversed(procs):
            _stop(p.pid, p.args[0])
            with contextlib.suppress(Exception):
                p.wait(timeout=5)
        if munge_pidfile.exists():
            _stop(int(munge_pidfile.read_text().strip()), "munged")
