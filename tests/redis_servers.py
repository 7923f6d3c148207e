"""Real redis-server processes for the tests: one server, or a 3-master cluster.

Each listens on a free loopback port with no persistence and is stopped by
the fixture that started it.  A redis-server that cannot be started is a test
failure, not a skip: RedisDict's tests are part of the suite.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

START_TIMEOUT = 20.0


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(cluster: bool = False) -> int:
    """A free loopback port; for a cluster node, port + 10000 (its bus) too."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(20000, 55000)
        if _port_free(port) and (not cluster or _port_free(port + 10000)):
            return port
    raise RuntimeError("no free loopback port found")


def _env() -> dict:
    """The environment for redis-server and redis-cli: without the sanitizer
    runtimes that scripts/test-asan.sh preloads for our extension, which
    have no business in Redis's own (jemalloc) processes."""
    return {k: v for k, v in os.environ.items()
            if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}


def _exe(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} not found: install Debian's redis-server package "
            "(apt-get install redis-server; .ci/run does this)"
        )
    return path


def ping(port: int, timeout: float = 1.0) -> bytes:
    """The first reply line to PING, or b'' when nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
            c.sendall(b"PING\r\n")
            return c.recv(64)
    except OSError:
        return b""


def command(port: int, *args: str) -> str:
    out = subprocess.run(
        [_exe("redis-cli"), "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True, text=True, timeout=30, env=_env(),
    )
    return out.stdout


class Server:
    """One redis-server: ``--save "" --appendonly no --bind 127.0.0.1``."""

    def __init__(self, port: int | None = None, directory: str | None = None,
                 extra: tuple[str, ...] = ()):
        self.port = port or free_port(cluster=bool(extra))
        self.dir = directory or tempfile.mkdtemp(prefix="sbxtest-redis-")
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.log = open(os.path.join(self.dir, f"redis-{self.port}.log"), "ab")
        self.proc = subprocess.Popen(
            [_exe("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
             *self.extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=_env(),
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not ping(self.port).startswith(b"+PONG"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                with open(os.path.join(self.dir, f"redis-{self.port}.log"), "rb") as f:
                    tail = f.read()[-2000:].decode(errors="replace")
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{tail}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    """Three masters (``--cluster-enabled yes``), no replicas, on loopback."""

    def __init__(self, masters: int = 3):
        self.dir = tempfile.mkdtemp(prefix="sbxtest-cluster-")
        self.nodes: list[Server] = []
        try:
            for _ in range(masters):
                port = free_port(cluster=True)
                self.nodes.append(Server(port, self.dir, (
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf",
                    "--cluster-node-timeout", "5000",
                )))
            addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
            out = subprocess.run(
                [_exe("redis-cli"), "--cluster", "create", *addresses,
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, timeout=60, env=_env(),
            )
            if out.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{out.stdout}{out.stderr}")
            deadline = time.monotonic() + START_TIMEOUT
            while not all("cluster_state:ok" in command(n.port, "cluster", "info")
                          for n in self.nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not reach cluster_state:ok")
                time.sleep(0.1)
        except BaseException:
            self.remove()
            raise

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def remove(self) -> None:
        for n in self.nodes:
            n.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
