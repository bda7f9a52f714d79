"""A one-node SLURM cluster for the tests: munge, slurmctld and slurmd from Debian's ``munge`` and ``slurm-wlm``,
every file under one temporary folder, started in the foreground (so their PIDs are ours) and stopped by PID.

Needs root (slurmd runs jobs as their user) and the two packages (``.ci/run`` installs them with apt-get);
:func:`unavailable` says why a machine cannot run it. Accounting is off (no slurmdbd), as on many small clusters.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scontrol", "setpriv")
PARTITION = "ci"
MUNGE_FLAGS = (
    ("key-file", "munge.key"),
    ("socket", "munge.socket"),
    ("pid-file", "munged.pid"),
    ("log-file", "munged.log"),
    ("seed-file", "seed"),
)


def unavailable() -> str | None:
    """Why this machine cannot run the cluster, or ``None``."""
    if os.geteuid() != 0:
        return "needs root (slurmd starts jobs as their user)"
    missing = [name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if missing:
        return f"needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge); missing {', '.join(missing)}"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "needs the munge user (apt-get install munge)"
    return None


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _munge_files(root: Path) -> dict[str, Path]:
    munge = pwd.getpwnam("munge")
    files = {name: root / "munge" / name for name in ("munge.key", "munge.socket", "munged.pid", "munged.log", "seed")}
    (root / "munge").mkdir()
    (root / "munge").chmod(0o711)  # the socket reachable by every job's user, the key by munge alone
    files["munge.key"].write_bytes(os.urandom(1024))
    files["munge.key"].chmod(0o400)
    for path in (root / "munge", files["munge.key"]):
        os.chown(path, munge.pw_uid, munge.pw_gid)
    return files


def _slurm_conf(root: Path, socket_path: Path, cpus: int, memory_mb: int) -> Path:
    ctld_port, slurmd_port = _free_ports(2)
    for folder in ("state", "spool", "log"):
        (root / folder).mkdir()
    conf = root / "slurm.conf"
    conf.write_text(
        f"""ClusterName=magicremover-ci
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
NodeName=ci-node NodeAddr=127.0.0.1 NodeHostname={socket.gethostname()} CPUs={cpus} RealMemory={memory_mb}
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


def _queue(env: dict) -> str:
    return subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip()


def _steps_in(root: Path) -> list[int]:
    """The PIDs of slurmstepd processes running in ``root`` (slurmd's folder)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == root:
                if b"slurmstepd" in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def _wait(check, what: str, timeout: float, logs: list[Path], fail: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    if not fail:
        return
    tails = "\n".join(f"{p}: {p.read_text()[-800:]}" for p in logs if p.is_file())
    raise RuntimeError(f"{what} did not come up in {timeout:.0f} s\n{tails}")


@contextmanager
def one_node_cluster(cpus: int = 2, memory_mb: int = 8000):
    """Start munged, slurmctld and slurmd under a fresh temporary folder; yield the environment that points SLURM's
    commands at them (``SLURM_CONF``); stop all three by PID and remove the folder on exit."""
    # Its own folder, readable by the munge user (pytest's tmp_path is root's alone).
    root = Path(tempfile.mkdtemp(prefix="magicremover-slurm-"))
    root.chmod(0o755)
    munge = _munge_files(root)
    conf = _slurm_conf(root, munge["munge.socket"], cpus, memory_mb)
    env = os.environ | {"SLURM_CONF": str(conf)}
    logs = [munge["munged.log"], root / "log" / "slurmctld.log", root / "log" / "slurmd.log"]
    processes: list[subprocess.Popen] = []
    try:
        munged = [_binary("munged"), "-F", "--force", *(f"--{flag}={munge[name]}" for flag, name in MUNGE_FLAGS)]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}  # each writes its own log file
        # setpriv execs munged as the munge user, so the PID we hold is munged's own.
        as_munge = [_binary("setpriv"), "--reuid=munge", "--regid=munge", "--init-groups"]
        processes.append(subprocess.Popen([*as_munge, *munged], **quiet))
        _wait(munge["munge.socket"].exists, "munged", 20, logs)
        # In the cluster's folder, so the job steps slurmd forks (slurmstepd, daemonised) can be found there.
        processes.append(subprocess.Popen([_binary("slurmctld"), "-D", "-i"], env=env, cwd=root, **quiet))
        processes.append(subprocess.Popen([_binary("slurmd"), "-D", "-N", "ci-node"], env=env, cwd=root, **quiet))

        def node_idle() -> bool:
            shown = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            return shown.stdout.strip() == "idle"

        _wait(node_idle, "the SLURM node", 60, logs)
        yield env
    finally:
        if processes:
            _wait(lambda: not _queue(env), "an empty queue", 30, [], fail=False)  # let finished steps report
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in _steps_in(root):  # a step that outlived slurmd waits for it forever
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
