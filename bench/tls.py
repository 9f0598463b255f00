"""Throwaway TLS for local upstreams: a CA and a certificate for 127.0.0.1/localhost signed by it,
made with the ``openssl`` command in a directory of the caller's (nothing is kept), and the SSL
contexts of a server using them and of a client trusting the CA."""
from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA certificate (PEM): what a client trusts
    cert: Path  # the server's certificate chain (PEM)
    key: Path  # the server's private key (PEM)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def _openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {out.stderr.strip()[-500:]}")


def make_certs(directory: Path, name: str = "upstream") -> Certs:
    """A fresh CA and a server certificate for 127.0.0.1, ::1 and localhost (P-256, one day) in ``directory``."""
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is not installed (Debian: apt-get install openssl)")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (d / f"{name}-{n}" for n in ("ca.key", "ca.pem", "key.pem", "csr.pem", "cert.pem"))
    ext = d / f"{name}-ext.cnf"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
                   "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n")
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl("req", "-x509", *curve, "-keyout", str(ca_key), "-out", str(ca), "-days", "1",
             "-subj", "/CN=Zowy bench local CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", "-new", *curve, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1", cwd=d)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(cert), "-days", "1", "-extfile", str(ext), cwd=d)
    return Certs(ca=ca, cert=cert, key=key)
