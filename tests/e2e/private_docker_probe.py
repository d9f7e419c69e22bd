"""Runs inside a sandbox (python3, stdlib only) and prints what it finds, one KEY=value a line.

With `--docker private`: the daemon at DOCKER_HOST answers over TLS with the client certificate
(VERSION=), refuses a client without one (NOCERT=refused), and runs a container: an image is
imported from a tiny root filesystem made here (/bin/sh and its libraries), then created,
started, waited for and its output read, through the Engine API as `docker run` does
(HELLO=). Always: whether the host's docker socket is anywhere the sandbox can see (SOCKET=).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import ssl
import struct
import sys
import tarfile
from urllib.parse import urlsplit

SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


def context(with_cert: bool) -> ssl.SSLContext:
    certs = os.environ["DOCKER_CERT_PATH"]
    ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.pem"))
    if with_cert:
        ctx.load_cert_chain(os.path.join(certs, "cert.pem"), os.path.join(certs, "key.pem"))
    return ctx


def call(method: str, path: str, body: bytes | None = None, *, with_cert: bool = True,
         content_type: str = "application/json") -> tuple[int, bytes]:  # fmt: skip
    url = urlsplit(os.environ["DOCKER_HOST"].replace("tcp://", "https://", 1))
    conn = http.client.HTTPSConnection(url.hostname, url.port, context=context(with_cert),
                                       timeout=120)  # fmt: skip
    try:
        headers = {"Content-Type": content_type} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def rootfs() -> bytes:
    """/bin/sh (dash) and the libraries it loads: a root filesystem of a few MB."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for inside, real in (
            ("bin/sh", "/bin/dash"),
            ("lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
            ("lib64/ld-linux-x86-64.so.2", "/lib64/ld-linux-x86-64.so.2"),
        ):
            info = tar.gettarinfo(os.path.realpath(real), arcname=inside)
            info.uid = info.gid = 0
            with open(os.path.realpath(real), "rb") as handle:
                tar.addfile(info, handle)
    return out.getvalue()


def frames(data: bytes) -> str:
    """The Engine API's multiplexed log stream: 8-byte headers, then the bytes."""
    text, at = [], 0
    while at + 8 <= len(data):
        size = struct.unpack(">I", data[at + 4 : at + 8])[0]
        text.append(data[at + 8 : at + 8 + size].decode("utf-8", "replace"))
        at += 8 + size
    return "".join(text)


def private() -> None:
    status, body = call("GET", "/version")
    print("VERSION=%s" % (json.loads(body).get("Version") if status == 200 else status))
    try:
        status, _ = call("GET", "/version", with_cert=False)
        print(f"NOCERT=answered {status}")
    except (ssl.SSLError, ConnectionError, OSError):
        print("NOCERT=refused")
    status, body = call("POST", "/images/create?fromSrc=-&repo=jackin-hello&tag=probe",
                        rootfs(), content_type="application/x-tar")  # fmt: skip
    assert status == 200, (status, body[-300:])
    spec = {"Image": "jackin-hello:probe", "Cmd": ["/bin/sh", "-c", "echo hello from $0", "inner"],
            "HostConfig": {"NetworkMode": "none"}}  # fmt: skip
    status, body = call("POST", "/containers/create", json.dumps(spec).encode())
    assert status == 201, (status, body)
    cid = json.loads(body)["Id"]
    status, body = call("POST", f"/containers/{cid}/start", b"")
    assert status == 204, (status, body)
    status, body = call("POST", f"/containers/{cid}/wait", b"")
    assert status == 200, (status, body)
    _, logs = call("GET", f"/containers/{cid}/logs?stdout=1&stderr=1")
    print(f"HELLO={frames(logs).strip()}")
    print("EXIT={}".format(json.loads(body).get("StatusCode")))


def main() -> None:
    print("SOCKET=%s" % ("present" if any(os.path.exists(p) for p in SOCKETS) else "absent"))
    print("DOCKER_HOST={}".format(os.environ.get("DOCKER_HOST", "")))
    if os.environ.get("DOCKER_HOST"):
        private()
    print("PROBE_DONE")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
