"""`quiver serve` when what it must open is taken, missing or unusable: one line on stderr naming the flag
and the cause, an exit code from the table (README "Exit codes"), no traceback, and nothing left running.
README "Faults and overload" lists these cases with what an operator sees."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quiver.base.errors import AddressInUse, RootError, UsageError
from support.processes import SERVING, ServerProcess, UsersSnapshots, free_port, run_quiver, short_tmpdir, wait_for


def serve(root: Path | str, *flags: str) -> tuple[int, str]:
    """Runs `quiver serve` until it exits (each case here fails within seconds): (exit code, its output)."""
    base = ["--listen", f"127.0.0.1:{free_port()}", "--metrics-port", "0"]
    r = run_quiver("serve", "--root", root, *base, *flags, timeout=60)
    return r.returncode, r.stdout + r.stderr


def error_line(output: str) -> str:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("quiver serve: error: ")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port held by some other program (a plain listener, no SO_REUSEPORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s


def test_metrics_port_in_use(users: UsersSnapshots, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    code, out = serve(users.template, "--metrics-port", str(port))
    assert code == AddressInUse.exit_code == 14
    line = error_line(out)
    assert f"--metrics-port {port} (QUIVER_METRICS_PORT)" in line and "Address already in use" in line, line


def test_grpc_port_in_use(users: UsersSnapshots, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    code, out = serve(users.template, "--listen", f"127.0.0.1:{port}")
    assert code == 14
    line = error_line(out)
    assert f"--listen 127.0.0.1:{port} (QUIVER_LISTEN)" in line and "Address already in use" in line, line


def test_one_port_for_grpc_and_metrics_is_a_usage_error(users: UsersSnapshots) -> None:
    port = free_port()
    code, out = serve(users.template, "--listen", f"127.0.0.1:{port}", "--metrics-port", str(port))
    assert code == UsageError.exit_code == 2
    line = error_line(out)
    assert f"--listen 127.0.0.1:{port}" in line and f"--metrics-port {port}" in line and "same port" in line, line


def test_a_second_server_on_the_same_port_is_refused(users: UsersSnapshots, start_server: Any,
                                                     tmp_path: Path) -> None:
    """The workers bind with SO_REUSEPORT, which would let a second server join the first one's port and take
    half its connections, possibly from another root; the start-up check refuses it."""
    first: ServerProcess = start_server(users.root(tmp_path / "root"))
    first.wait_health(SERVING)
    code, out = serve(users.template, "--listen", first.target)
    assert code == 14 and "another quiver serve" in error_line(out), out
    first.wait_health(SERVING)  # the first one is untouched


def test_unix_socket_paths(users: UsersSnapshots, start_server: Any, tmp_path: Path) -> None:
    d = short_tmpdir()
    regular = d / "regular-file"
    regular.write_text("")
    for path, cause in ((regular, "exists and is not a socket"),
                        (d / "missing" / "q.sock", "No such file or directory")):
        code, out = serve(users.template, "--uds", str(path))
        assert code == 14, out
        line = error_line(out)
        assert f"--uds {path} (QUIVER_UDS)" in line and cause in line, line
    assert regular.read_text() == ""  # not removed
    live = d / "live.sock"
    first: ServerProcess = start_server(users.root(tmp_path / "root"), "--uds", str(live))
    first.wait_health(SERVING)
    code, out = serve(users.template, "--uds", str(live))
    assert code == 14 and "a server already listens on it" in error_line(out), out
    first.wait_health(SERVING, target=f"unix:{live}")  # its socket was not taken over


def test_a_stale_socket_left_by_a_killed_server_is_reused(users: UsersSnapshots, start_server: Any,
                                                          tmp_path: Path) -> None:
    sock = short_tmpdir() / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))  # bound, never listened on, then closed: what SIGKILL leaves behind
    assert sock.exists()
    s2: ServerProcess = start_server(users.root(tmp_path / "root"), "--uds", str(sock))
    s2.wait_health(SERVING, target=f"unix:{sock}")


def test_an_address_only_a_worker_can_check(users: UsersSnapshots) -> None:
    """--listen in gRPC's own unix: form is bound by the workers only: the worker logs one line and the
    server exits 14 at once, without restarting it."""
    path = short_tmpdir() / "missing" / "q.sock"
    r = run_quiver("serve", "--root", users.template, "--listen", f"unix:{path}", "--metrics-port", "0", timeout=60)
    assert r.returncode == 14, r.stderr
    assert "Traceback" not in r.stderr and "restarting" not in r.stderr, r.stderr
    assert f"Failed to bind to address unix:{path}" in r.stderr and "worker 0 could not listen" in r.stderr


@pytest.mark.parametrize("case", ["garbage certificate", "key of another certificate", "garbage client CA"])
def test_tls_files_that_are_not_usable(users: UsersSnapshots, tmp_path: Path, case: str) -> None:
    def pair(name: str) -> tuple[Path, Path]:
        key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
        r = os.system(f"openssl req -x509 -newkey rsa:2048 -nodes -keyout {key} -out {cert} -days 1 "
                      f"-subj /CN={name} 2>/dev/null")
        assert r == 0
        return key, cert

    (key, cert), (other_key, _) = pair("a"), pair("b")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    flags = {"garbage certificate": ("--tls-cert", str(garbage), "--tls-key", str(key)),
             "key of another certificate": ("--tls-cert", str(cert), "--tls-key", str(other_key)),
             "garbage client CA": ("--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(garbage))}
    code, out = serve(users.template, *flags[case])
    assert code == UsageError.exit_code == 2
    line = error_line(out)
    assert "TLS: " in line and flags[case][1] in line, line


def test_root_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "not-a-folder"
    f.write_text("")
    code, out = serve(f)
    assert code == RootError.exit_code == 9
    assert f"--root {f}: exists and is not a folder" in error_line(out)


def test_a_worker_that_keeps_dying_at_start_ends_the_server(users: UsersSnapshots, start_server: Any,
                                                            tmp_path: Path) -> None:
    """Not restarted forever: a worker that dies within seconds of starting, three times in a row, makes the
    supervisor give up and exit 1, so an orchestrator sees a crash loop (here: SIGKILL at each start)."""
    s: ServerProcess = start_server(users.root(tmp_path / "root"))
    killed: set[int] = set()
    for _ in range(3):
        pid = wait_for(lambda: next((p for p in s.worker_pids() if p not in killed), None), timeout=30,
                       what="a (new) worker")
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    assert s.proc.wait(timeout=60) == 1
    assert "3 times in a row; giving up" in s.logs()
