"""A socket guard for the test process: TCP connections may go to this machine only.

:func:`install` wraps ``socket.socket.connect`` / ``connect_ex``: a TCP connection to an address that is not this
machine's (loopback, the unspecified address, or an address of one of its own interfaces) is refused with
:class:`NetworkBlocked` (an ``OSError``, so the code under test sees what it would see offline) and recorded;
``tests/conftest.py`` fails the test that made it, with the address, even if the code swallowed the error. Unix
sockets and UDP ``connect`` (which sends nothing; Ray uses it to learn its own address) pass. Code outside Python's
``socket`` module (gRPC, TensorFlow's and pyarrow's C++ clients) is held back by the environment ``conftest.py``
sets instead (no credentials, metadata server on a closed loopback port).
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
import tempfile
import threading
from typing import Any

import pytest

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_lock = threading.Lock()
VIOLATIONS: list[str] = []


# For this process and every subprocess it starts: no credentials file, an empty gcloud config, and the metadata
# server (which google-auth and google-cloud-cpp probe for credentials) on a closed loopback port.
NO_NETWORK_ENV = {
    "GCE_METADATA_HOST": "127.0.0.1:9",  # google-auth (Python)
    "GCE_METADATA_ROOT": "127.0.0.1:9",  # its old name, and google-cloud-cpp's (pyarrow's GcsFileSystem)
    "GCE_METADATA_IP": "127.0.0.1:9",
    "NO_GCE_CHECK": "true",  # google-auth: do not even ping the metadata server
    # No gcloud user credentials: one empty config folder, shared by every process of a run (a folder per
    # importing process would leave hundreds behind in /tmp).
    "CLOUDSDK_CONFIG": os.path.join(tempfile.gettempdir(), "mammoflow-tests-gcloud-empty"),
}
os.makedirs(NO_NETWORK_ENV["CLOUDSDK_CONFIG"], exist_ok=True)
REMOVED_ENV = ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_QUOTA_PROJECT")


def protect_environment() -> None:
    """Set :data:`NO_NETWORK_ENV` and drop :data:`REMOVED_ENV` in ``os.environ``, before google-auth is imported
    (it reads them at import)."""
    os.environ.update(NO_NETWORK_ENV)
    for name in REMOVED_ENV:
        os.environ.pop(name, None)


class NetworkBlocked(ConnectionRefusedError):
    """A test tried to connect beyond this machine."""


@functools.lru_cache(maxsize=256)
def is_this_machine(host: str) -> bool:
    """Whether every address ``host`` names belongs to this machine."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(_local_ip(info[4][0]) for info in infos)


def _local_ip(text: str) -> bool:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        probe.bind((text, 0))  # succeeds only for an address of one of this machine's interfaces
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _check(sock: socket.socket, address: Any) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type == socket.SOCK_DGRAM:
        return
    host = str(address[0]) if isinstance(address, tuple) and address else str(address)
    if is_this_machine(host):
        return
    message = f"TCP connection to {address!r}: tests must not reach the network (127.0.0.1 only)"
    with _lock:
        VIOLATIONS.append(message)
    raise NetworkBlocked(errno.ECONNREFUSED, message)


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check(self, address)
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check(self, address)
    return _real_connect_ex(self, address)


def install() -> None:
    """Guard ``socket.socket`` in this process (idempotent)."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


def take_violations() -> list[str]:
    """The violations recorded since the last call (and forget them)."""
    with _lock:
        taken = list(VIOLATIONS)
        VIOLATIONS.clear()
    return taken


def fail_on_violations(when: str) -> None:
    taken = take_violations()
    if taken:
        pytest.fail(f"network access {when}: " + "; ".join(taken), pytrace=False)
