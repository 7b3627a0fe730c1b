"""A certificate and Entra ID tokens that the HTTPS Azurite (`--oauth basic`) accepts,
for the tests and the benchmark."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import time
import uuid
from pathlib import Path


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def unsigned_storage_token(lifetime: int = 3600) -> tuple[str, int]:
    """An Entra ID access token for Azure Storage as Azurite's `--oauth basic` checks it
    (audience, issuer, not-before, expiry; never the signature), and its expiry."""
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"aud": "https://storage.azure.com", "iss": "https://sts.windows.net/00000000-0000-0000-0000-000000000000/",
              "nbf": now - 60, "iat": now - 60, "exp": now + lifetime, "oid": str(uuid.uuid4())}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.", now + lifetime


class TokenEndpoint:
    """An App Service managed identity endpoint on 127.0.0.1 handing out tokens the HTTPS
    Azurite accepts: with `environment()` set, azure-identity's DefaultAzureCredential gets
    its tokens here, in any process (a command-line run, a worker's flow run). Used by the
    tests and by the benchmark's latency scenario."""

    SECRET = "test-identity-header"  # App Service's IDENTITY_HEADER: a request without it is refused

    def __init__(self):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.headers.get("X-IDENTITY-HEADER") != TokenEndpoint.SECRET:
                    self.send_error(401)
                    return
                endpoint.requests += 1
                token, expires = unsigned_storage_token()
                body = json.dumps({"access_token": token, "expires_on": str(expires), "token_type": "Bearer",
                                   "resource": "https://storage.azure.com"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.requests = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def environment(self) -> dict[str, str]:
        return {"IDENTITY_ENDPOINT": f"http://127.0.0.1:{self.server.server_port}/msi/token",
                "IDENTITY_HEADER": self.SECRET}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
