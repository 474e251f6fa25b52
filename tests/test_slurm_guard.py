"""The live SLURM test's guards, checked without root and without SLURM:
it runs only when asked, its cluster writes only under its private directory and
mounts only over existing system directories from a private namespace, and its
cleanup cancels only its own jobs, by id."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import slurm_cluster as sc

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------- opt-in

# Collection only (--co), so that a broken guard can never start the live test here;
# the conftest hook that skips it runs during collection.
PROBE = """
import sys, pytest
class Probe:
    def pytest_collection_finish(self, session):
        for item in session.items:
            skip = item.get_closest_marker("skip")
            print("ITEM", item.nodeid, "|", "skip: " + skip.kwargs["reason"] if skip else "run")
sys.exit(pytest.main(["--co", "-q", "-p", "no:cacheprovider", "tests/test_slurm.py"], plugins=[Probe()]))
"""


def _collected(value):
    env = {k: v for k, v in os.environ.items() if k != sc.LIVE_ENV}
    if value is not None:
        env[sc.LIVE_ENV] = value
    res = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return dict(line[5:].split(" | ", 1) for line in res.stdout.splitlines() if line.startswith("ITEM "))


@pytest.mark.parametrize("value", [None, "0"])
def test_live_test_is_skipped_unless_opted_in(value):
    items = _collected(value)
    assert len(items) == 3, items
    for nodeid, verdict in items.items():
        assert verdict.startswith("skip: "), (nodeid, verdict)
        # the reason says how to run it
        assert "HEPML_LIVE_SLURM=1 make test" in verdict and "as root" in verdict, verdict


def test_live_test_runs_when_opted_in():
    assert set(_collected("1").values()) == {"run"}


@pytest.mark.parametrize(
    "environ, expected",
    [({}, False), ({sc.LIVE_ENV: "0"}, False), ({sc.LIVE_ENV: "true"}, False), ({sc.LIVE_ENV: "1"}, True)],
)
def test_opt_in_is_exactly_one(environ, expected):
    assert sc.live_slurm_requested(environ) is expected


def test_marker_is_registered(pytestconfig):
    assert any(m.startswith("slurm_live:") for m in pytestconfig.getini("markers"))


# --------------------------------------------------------------- nothing outside the private dir


def _fake_machine(root: Path, with_slurm_etc: bool = True) -> None:
    """A machine where an earlier run left its config behind."""
    if with_slurm_etc:
        (root / "etc/slurm").mkdir(parents=True)
        (root / "etc/slurm/slurm.conf").write_text("ClusterName=site\n")
    (root / "etc/munge").mkdir(parents=True)
    (root / "etc/munge/munge.key").write_bytes(b"site key")
    (root / "var/lib/munge").mkdir(parents=True)


def test_mount_plan_targets_only_existing_system_dirs_from_private_sources(tmp_path):
    root, private = tmp_path / "root", tmp_path / "private"
    _fake_machine(root)
    before = sc.snapshot([root])
    plan = sc.mount_plan(sc.Layout(private), root)
    assert {t for _, t in plan} == {root / "etc/slurm", root / "etc/munge", root / "var/lib/munge"}
    assert all(s.is_relative_to(private) for s, _ in plan)
    assert dict((t, s) for s, t in plan)[root / "etc/slurm"] == sc.Layout(private).etc_slurm
    assert len({s for s, _ in plan}) == len(plan)  # every target hidden behind its own dir
    assert sc.snapshot([root]) == before  # planning writes nothing


def test_mount_plan_refuses_without_etc_slurm_and_creates_nothing(tmp_path):
    root = tmp_path / "root"
    _fake_machine(root, with_slurm_etc=False)
    before = sc.snapshot([root])
    with pytest.raises(sc.Refused, match="etc/slurm does not exist"):
        sc.mount_plan(sc.Layout(tmp_path / "private"), root)
    assert sc.snapshot([root]) == before


def _absolute_paths(text: str) -> list[str]:
    return re.findall(r"(?<![\w.])(/[\w./-]+)", text)


def test_private_files_and_config_paths_stay_under_the_private_dir(tmp_path):
    root, private = tmp_path / "root", tmp_path / "private"
    _fake_machine(root)
    before = sc.snapshot([root])
    layout = sc.Layout(private)
    written = sc.write_private_files(layout, "node", 2, 1000, (6817, 6818), "a100")
    assert written and all(p.is_relative_to(private) and p.exists() for p in written)
    assert sc.snapshot([root]) == before
    for text in (layout.slurm_conf.read_text(), layout.gres_conf.read_text(), " ".join(sc.munged_argv(layout))):
        paths = _absolute_paths(text)
        assert paths, text
        outside = [p for p in paths if not Path(p).is_relative_to(private)]
        assert not outside, outside
    assert f"AuthInfo=socket={layout.munge_socket}" in layout.slurm_conf.read_text()
    assert f"PartitionName={sc.PARTITION} " in layout.slurm_conf.read_text()


def test_holder_refuses_to_mount_outside_a_private_namespace(tmp_path, capsys, monkeypatch):
    # called in the test's own namespace, as if unshare had not run: it must stop
    # before running anything (and were it broken, `mount` is not really called here)
    calls = []
    monkeypatch.setattr(sc.subprocess, "run", lambda argv, *a, **k: calls.append(argv) or 1 / 0)
    monkeypatch.setattr(sc.subprocess, "Popen", lambda argv, *a, **k: calls.append(argv) or 1 / 0)
    assert sc.serve(tmp_path / "private", "a100", sc._mount_ns()) == 2
    assert calls == []
    assert "refusing to mount" in capsys.readouterr().out
    assert not (tmp_path / "private").exists()


def test_client_commands_enter_the_namespace_and_drop_an_outer_allocation(tmp_path):
    layout = sc.Layout(tmp_path)
    cmd = sc.ns_command(4242, ["squeue", "-h"], cwd=tmp_path)
    assert cmd[:3] == ["nsenter", "--mount=/proc/4242/ns/mnt", f"--wd={tmp_path}"]
    assert cmd[-3:] == ["--", "squeue", "-h"]
    env = sc.client_env(
        layout, {"SLURM_JOB_ID": "7", "SLURM_CONF": "/etc/slurm/slurm.conf", "SBATCH_PARTITION": "site", "PATH": "/bin"}
    )
    assert env == {"PATH": "/bin", "SLURM_CONF": str(layout.slurm_conf)}


def test_snapshot_sees_content_mode_and_new_files(tmp_path):
    (tmp_path / "etc").mkdir()
    f = tmp_path / "etc" / "slurm.conf"
    f.write_text("a")
    s0 = sc.snapshot([tmp_path / "etc"])
    f.write_text("b")
    s1 = sc.snapshot([tmp_path / "etc"])
    f.chmod(0o600)
    s2 = sc.snapshot([tmp_path / "etc"])
    (tmp_path / "etc" / "gres.conf").write_text("")
    s3 = sc.snapshot([tmp_path / "etc"])
    assert len({repr(s) for s in (s0, s1, s2, s3)}) == 4


# --------------------------------------------------------------- cleanup: own jobs only, by id

SQUEUE = """12 hepml_live
13 debug
14_3 hepml_live
15 hepml_live_other
bogus
"""


def test_own_job_ids_keep_only_the_private_partition():
    assert sc.own_job_ids(SQUEUE) == ["12", "14_3"]


def test_cleanup_cancels_only_its_jobs_by_id():
    calls = []

    def run(argv):
        calls.append(argv)
        return SQUEUE if argv[0] == "squeue" else ""

    assert sc.cancel_own_jobs(run) == ["12", "14_3"]
    assert calls[0][0] == "squeue"
    assert calls[1:] == [["scancel", "12", "14_3"]]


def test_cleanup_without_own_jobs_cancels_nothing():
    calls = []
    sc.cancel_own_jobs(lambda argv: calls.append(argv) or "13 debug\n")
    assert [c[0] for c in calls] == ["squeue"]


def test_no_cancel_by_user_anywhere():
    for name in ("slurm_cluster.py", "test_slurm.py"):
        src = (ROOT / "tests" / name).read_text()
        assert not re.search(r"scancel[^\n]*(--user|-u\b)", src), name
