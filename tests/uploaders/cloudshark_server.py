"""A small CloudShark: the documented upload API, enough for a real client.

`POST /api/v1/<token>/upload` with multipart `file`, `filename`,
`additional_tags`: 200 `{"filename", "id"}` when the token matches, else an
error JSON `{"status", "exceptions"}` as CloudShark answers. Tests queue
extra answers (`fail_next(500, ...)`) or make it hang to exercise timeouts.
"""

from __future__ import annotations

import datetime
import email.parser
import email.policy
import http.server
import ipaddress
import json
import ssl
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import free_port

MAX_BODY = 512 * 1024 * 1024


@dataclass
class Received:
    path: str
    filename: str | None
    additional_tags: str | None
    file_name: str | None  # the `filename` parameter of the `file` part
    data: bytes


@dataclass
class CloudsharkServer:
    token: str
    port: int = field(default_factory=free_port)
    uploads: list[Received] = field(default_factory=list)
    requests: int = 0
    failures: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    raw_answers: list[tuple[int, bytes]] = field(default_factory=list)  # not JSON at all
    hang: threading.Event | None = None  # set: answers wait until it is cleared
    release: threading.Event = field(default_factory=threading.Event)
    answer_released: bool = False  # released, a hung request is answered, not hung up on
    tls: ssl.SSLContext | None = None
    _server: http.server.ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, status: int, exceptions: list[str]) -> None:
        self.failures.append((status, {"status": status, "exceptions": exceptions}))

    def start(self) -> None:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)


def _handler(state: CloudsharkServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet; tests inspect `state` instead

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(min(length, MAX_BODY))
            with state.lock:
                state.requests += 1
            if state.hang is not None and state.hang.is_set():
                state.release.wait(30)
                if not state.answer_released:
                    # Released: hang up, unanswered, so the client's read ends now
                    # (kept open, it would wait out its read_timeout).
                    self.close_connection = True
                    return
            parts = self.path.strip("/").split("/")
            if len(parts) != 4 or parts[:2] != ["api", "v1"] or parts[3] != "upload":
                self._answer(404, {"status": 404, "exceptions": ["api_error_not_found"]})
                return
            if parts[2] != state.token:
                self._answer(401, {"status": 401, "exceptions": ["api_token_invalid: bad token"]})
                return
            with state.lock:
                failure = state.failures.pop(0) if state.failures else None
                raw = state.raw_answers.pop(0) if state.raw_answers else None
            if raw is not None:
                self.send_response(raw[0])
                self.send_header("Content-Length", str(len(raw[1])))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(raw[1])
                return
            if failure is not None:
                self._answer(*failure)
                return
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body
            )
            fields: dict[str, tuple[str | None, bytes]] = {}
            for part in message.iter_parts():
                payload = part.get_payload(decode=True)
                assert isinstance(payload, bytes)
                fields[part.get_param("name", header="content-disposition")] = (  # type: ignore[index]
                    part.get_filename(),
                    payload,
                )
            if "file" not in fields:
                self._answer(422, {"status": 422, "exceptions": ["api_upload_missing_file"]})
                return

            def text(name: str) -> str | None:
                return fields[name][1].decode() if name in fields else None

            received = Received(
                path=self.path, filename=text("filename"),
                additional_tags=text("additional_tags"), file_name=fields["file"][0],
                data=fields["file"][1],
            )  # fmt: skip
            with state.lock:
                state.uploads.append(received)
            self._answer(200, {"filename": received.filename, "id": uuid.uuid4().hex[:12]})

    return Handler


def self_signed(directory: Path) -> tuple[Path, Path]:
    """(cert, key) for 127.0.0.1, made with `cryptography` (a moto dependency)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pcapd test CloudShark")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cs.crt", directory / "cs.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
