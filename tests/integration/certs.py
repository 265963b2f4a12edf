"""Throwaway certificates for TLS tests, made with the `openssl` command line.

make_certs(directory) writes a small PKI into `directory` and returns its paths:

    root CA (ECDSA P-256, self-signed)
      └─ intermediate CA (ECDSA P-256)
           ├─ ECDSA P-256 server certificate
           └─ RSA-2048 server certificate

Both server certificates name mx.example.test, localhost and 127.0.0.1 / ::1 in their
subjectAltName. The *_chain files hold leaf + intermediate (what a server must send); the
root is only in ca.pem (what a client trusts). `other_key` matches no certificate (for
key/certificate mismatch tests). Nothing here is secret or long-lived: keys are made per
test run in a temp dir.

Run as a script to make a set by hand: `python3 certs.py DIR`.
"""

import dataclasses
import pathlib
import subprocess
import sys

SERVER_NAME = "mx.example.test"


@dataclasses.dataclass
class Certs:
    dir: pathlib.Path
    ca: pathlib.Path                # root CA certificate (trust anchor)
    intermediate: pathlib.Path      # intermediate CA certificate
    ecdsa_chain: pathlib.Path       # ECDSA leaf + intermediate
    ecdsa_key: pathlib.Path
    ecdsa_leaf: pathlib.Path        # ECDSA leaf alone (an incomplete chain)
    rsa_chain: pathlib.Path         # RSA leaf + intermediate
    rsa_key: pathlib.Path
    other_key: pathlib.Path         # an ECDSA key that matches no certificate


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def _ec_key(d, name):
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", name, cwd=d)


def _rsa_key(d, name, bits=2048):
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}",
             "-out", name, cwd=d)


def _sign(d, key, subject, issuer_cert, issuer_key, out, ext_name, ext_text, days):
    (d / ext_name).write_text(ext_text)
    csr = out + ".csr"
    _openssl("req", "-new", "-key", key, "-subj", subject, "-out", csr, cwd=d)
    _openssl("x509", "-req", "-in", csr, "-CA", issuer_cert, "-CAkey", issuer_key,
             "-CAcreateserial", "-days", str(days), "-sha256", "-extfile", ext_name,
             "-out", out, cwd=d)


def make_certs(directory, days=30):
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _ec_key(d, "ca.key")
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/O=Sluice tests/CN=Test Root CA",
             "-days", str(days), "-sha256",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-out", "ca.pem", cwd=d)
    _ec_key(d, "intermediate.key")
    _sign(d, "intermediate.key", "/O=Sluice tests/CN=Test Intermediate CA", "ca.pem", "ca.key",
          "intermediate.pem", "intermediate.ext",
          "basicConstraints=critical,CA:TRUE,pathlen:0\n"
          "keyUsage=critical,keyCertSign,cRLSign\n", days)
    san = f"subjectAltName=DNS:{SERVER_NAME},DNS:localhost,IP:127.0.0.1,IP:::1\n"
    _ec_key(d, "ecdsa.key")
    _sign(d, "ecdsa.key", f"/CN={SERVER_NAME}", "intermediate.pem", "intermediate.key",
          "ecdsa.pem", "ecdsa.ext",
          "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
          "extendedKeyUsage=serverAuth\n" + san, days)
    _rsa_key(d, "rsa.key")
    _sign(d, "rsa.key", f"/CN={SERVER_NAME}", "intermediate.pem", "intermediate.key",
          "rsa.pem", "rsa.ext",
          "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
          "extendedKeyUsage=serverAuth\n" + san, days)
    _ec_key(d, "other.key")
    inter = (d / "intermediate.pem").read_text()
    (d / "ecdsa_chain.pem").write_text((d / "ecdsa.pem").read_text() + inter)
    (d / "rsa_chain.pem").write_text((d / "rsa.pem").read_text() + inter)
    for key in ("ca.key", "intermediate.key", "ecdsa.key", "rsa.key", "other.key"):
        (d / key).chmod(0o600)
    return Certs(dir=d, ca=d / "ca.pem", intermediate=d / "intermediate.pem",
                 ecdsa_chain=d / "ecdsa_chain.pem", ecdsa_key=d / "ecdsa.key",
                 ecdsa_leaf=d / "ecdsa.pem", rsa_chain=d / "rsa_chain.pem", rsa_key=d / "rsa.key",
                 other_key=d / "other.key")


def verify(certs):
    """Raises CalledProcessError unless both leaves verify up to the root."""
    for leaf in (certs.ecdsa_leaf, certs.dir / "rsa.pem"):
        _openssl("verify", "-CAfile", str(certs.ca), "-untrusted", str(certs.intermediate),
                 "-purpose", "sslserver", "-verify_hostname", SERVER_NAME, str(leaf),
                 cwd=certs.dir)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: certs.py DIR")
    made = make_certs(sys.argv[1])
    verify(made)
    for field in dataclasses.fields(made):
        print(f"{field.name}: {getattr(made, field.name)}")
