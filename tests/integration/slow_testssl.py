"""Slow suite (`make test-slow`): testssl.sh against a real sluiced with STARTTLS.
Asserts: no protocol below TLS 1.2, no weak suites (no RC4, 3DES, CBC-without-AEAD,
NULL, export, anonymous), forward secrecy for every offered suite."""
import json
import shutil
import subprocess

import pytest

from certs import make_certs
from harness import Daemon


@pytest.mark.skipif(shutil.which("testssl.sh") is None and shutil.which("testssl") is None,
                    reason="testssl.sh not installed (make test-slow installs it)")
def test_testssl_starttls_smtp(tmp_path):
    certs = make_certs(tmp_path / "pki")
    d = Daemon(extra=f'\n[tls]\ncertificate = "{certs.ecdsa_chain}"\nkey = "{certs.ecdsa_key}"\n')
    d.config.write_text(d.config.read_text().replace('role = "mx"\n', 'role = "mx"\ntls = "optional"\n', 1))
    out = tmp_path / "testssl.json"
    tool = shutil.which("testssl.sh") or shutil.which("testssl")
    with d:
        subprocess.run([tool, "--quiet", "--warnings", "off", "--color", "0", "-p", "-e", "-f",
                        "--jsonfile", str(out), "--starttls", "smtp", f"127.0.0.1:{d.port}"],
                       capture_output=True, text=True, timeout=1800)
    findings = {f["id"]: f for f in json.loads(out.read_text())}
    for proto in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"]:
        assert findings[proto]["finding"].startswith("not offered"), findings[proto]
    assert findings["TLS1_2"]["finding"].startswith("offered")
    assert findings["PFS"]["finding"].startswith("offered")
    ciphers = [f for k, f in findings.items() if k.startswith("cipher_x")]
    assert ciphers
    for c in ciphers:
        text = c["finding"]
        assert "ECDHE" in text, text                  # forward secrecy
        assert "GCM" in text or "CHACHA20" in text or "CCM" in text, text  # AEAD only
    # Every offered suite is a forward-secret one.
    assert len(ciphers) == len(findings["PFS_ciphers"]["finding"].split())
