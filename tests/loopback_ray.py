"""A real Ray cluster of two nodes on this machine, on loopback only, for the cluster tests.

The head is 127.0.0.2 and a second node, with resources of its own, joins it from 127.0.0.3:
two addresses of the loopback range, because Ray replaces 127.0.0.1 and ``localhost`` by the
machine's network address when nodes join a cluster, and nothing here may talk to that one.
The nodes and the drivers share a token of this cluster's own (Ray's token authentication,
``RAY_AUTH_MODE=token``; nothing is written to ``~/.ray``). Every port is chosen here, the
temporary folder is the test's, and :meth:`stop` ends exactly the processes of this cluster
(never ``ray stop``, which would end every Ray on the machine).
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
HEAD_IP, NODE_IP = "127.0.0.2", "127.0.0.3"


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind((host, 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _ports(ip: str, head: bool) -> list[str]:
    p = free_ports(9, ip)
    args = [f"--node-manager-port={p[0]}", f"--object-manager-port={p[1]}", f"--metrics-export-port={p[2]}",
            f"--dashboard-agent-listen-port={p[3]}", f"--dashboard-agent-grpc-port={p[4]}",
            f"--runtime-env-agent-port={p[5]}", f"--worker-port-list={p[6]},{p[7]},{p[8]}," + ",".join(
                str(q) for q in free_ports(9, ip))]
    if head:
        extra = free_ports(2, ip)
        args += [f"--ray-client-server-port={extra[0]}", f"--dashboard-port={extra[1]}"]
    return args


class LoopbackCluster:
    def __init__(self, tmp: Path, env: dict[str, str] | None = None):
        self.tmp = Path(tmp)
        self.port = free_ports(1, HEAD_IP)[0]
        self.address = f"{HEAD_IP}:{self.port}"
        self.env = {**os.environ, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    # lost nodes noticed within about two seconds
                    "RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
                    "RAY_health_check_failure_threshold": "4"}
        self.logs = self.tmp / "ray-start.log"

    def _start(self, args, env: dict[str, str], node_ip: str, attempts: int = 3) -> None:
        """``ray start`` with ``args()`` (fresh ports each time); tried again, after ending what
        the failed try left of that node, when it fails: on a loaded machine the raylet can
        miss Ray's fixed 30 s to register."""
        for attempt in range(attempts):
            with open(self.logs, "a") as log:
                done = subprocess.run([RAY, "start", *args(), "--num-cpus=1", "--object-store-memory=80000000",
                                       "--disable-usage-stats", "--log-style=record"],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, timeout=180)
            if not done.returncode:
                return
            self.stop(node_ip if node_ip != HEAD_IP else None)
        raise RuntimeError(f"ray start failed {attempts} times:\n{self.logs.read_text()[-3000:]}")

    def start(self) -> "LoopbackCluster":
        self.temp = self.tmp / "ray"  # short: Ray's socket paths must stay under 108 characters
        self._start(lambda: ["--head", f"--node-ip-address={HEAD_IP}", f"--port={self.port}", f"--temp-dir={self.temp}",
                             "--include-dashboard=false", '--resources={"head": 1}', *_ports(HEAD_IP, True)],
                    self.env, HEAD_IP)
        self._start(lambda: [f"--address={self.address}", f"--node-ip-address={NODE_IP}", '--resources={"second": 1}',
                             *_ports(NODE_IP, False)], self.env, NODE_IP)
        return self

    def processes(self, node_ip: str | None = None) -> dict[int, str]:
        """pid → command line of this cluster's processes (of one node, by its address), with their children."""
        table = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            table[int(entry.name)] = (cmd, ppid)
        ours = {pid for pid, (cmd, _) in table.items()
                if (str(self.temp) in cmd or f":{self.port}" in cmd) and pid != os.getpid()}
        if node_ip is not None:
            ours = {pid for pid in ours if f"node_ip_address={node_ip}" in table[pid][0]
                    or f"node-ip-address={node_ip}" in table[pid][0]}
        grown = True
        while grown:
            children = {pid for pid, (_, ppid) in table.items() if ppid in ours} - ours
            grown = bool(children)
            ours |= children
        return {pid: table[pid][0] for pid in ours}

    def raylet(self, node_ip: str) -> int:
        found = [pid for pid, cmd in self.processes(node_ip).items() if "/raylet/raylet " in cmd]
        assert len(found) == 1, found
        return found[0]

    def stop(self, node_ip: str | None = None) -> None:
        """End this cluster's processes (or one node's): SIGTERM, then SIGKILL for what is left after 10 s."""
        pids = self.processes(node_ip)
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.2)
            pids = {p: c for p, c in pids.items() if _alive(p)}
            if not pids:
                return


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
