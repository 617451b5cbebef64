"""A real nginx running the shipped site (deploy/nginx/run-dat-sheesh.conf) in front of a test
gunicorn, on loopback only: for tests that must see what the deploy path does to an answer.

The site file is used as shipped, with only what ties it to a host replaced (ports, upstream
port, certificate and log paths); each replacement must match exactly once, so a changed site
file fails here loudly instead of testing something else. The http block around it turns gzip
on for every type, as a distribution's nginx.conf may: the site has to hold its own.
"""
from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import subprocess
import time
import typing as t
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.conftest import REPO, free_port, stop_process

NGINX = "/usr/sbin/nginx"
SITE = REPO / "deploy" / "nginx" / "run-dat-sheesh.conf"
MAIN = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/main-error.log info;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {dir}/client_body;
    proxy_temp_path       {dir}/proxy;
    fastcgi_temp_path     {dir}/fastcgi;
    uwsgi_temp_path       {dir}/uwsgi;
    scgi_temp_path        {dir}/scgi;
    gzip on;
    gzip_types *;
    gzip_min_length 1;
    gzip_proxied any;
    include {dir}/site.conf;
}}
"""


def site_config(upstream_port: int, port: int, redirect_port: int, directory: Path) -> str:
    """The shipped site, bound to this test's ports, certificate and logs."""
    text = SITE.read_text()
    for old, new in [
        ("server 127.0.0.1:3000;", f"server 127.0.0.1:{upstream_port};"),
        ("    listen 80;\n", f"    listen 127.0.0.1:{redirect_port};\n"),
        ("    listen [::]:80;\n", ""),
        ("    listen 443 ssl http2;\n", f"    listen 127.0.0.1:{port} ssl http2;\n"),
        ("    listen [::]:443 ssl http2;\n", ""),
        ("/etc/ssl/run-dat-sheesh/fullchain.pem", str(directory / "cert.pem")),
        ("/etc/ssl/run-dat-sheesh/privkey.pem", str(directory / "key.pem")),
        ("/var/log/nginx/run-dat-sheesh.access.log", str(directory / "access.log")),
        ("/var/log/nginx/run-dat-sheesh.error.log", str(directory / "error.log")),
    ]:
        assert text.count(old) == 1, f"{SITE} no longer has {old!r}: update {__name__}"
        text = text.replace(old, new)
    return text


def write_certificate(directory: Path) -> None:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


@contextlib.contextmanager
def nginx_site(upstream_port: int, directory: Path) -> t.Iterator[tuple[int, ssl.SSLContext]]:
    """nginx (not a daemon) with the shipped site in front of ``127.0.0.1:upstream_port``;
    yields its TLS port on 127.0.0.1 and a client context that trusts its certificate."""
    port, redirect_port = free_port(), free_port()
    write_certificate(directory)
    (directory / "site.conf").write_text(site_config(upstream_port, port, redirect_port,
                                                     directory))
    (directory / "nginx.conf").write_text(MAIN.format(dir=directory))
    argv = [NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf")]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30,
                           check=False)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    context = ssl.create_default_context(cafile=str(directory / "cert.pem"))
    try:
        _wait_for(port, process)
        yield port, context
    finally:
        stop_process(process, grace=15)


def _wait_for(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"nginx did not start: {process.communicate()[1]}") from None
            time.sleep(0.1)
