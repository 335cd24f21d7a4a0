"""Real receivers on loopback for the notification tests: a webhook (an HTTP server that checks
signatures as docs/monitoring.md tells a receiver to) and an SMTP server (aiosmtpd) that demands
STARTTLS and a password."""
from __future__ import annotations

import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from appliance.server.tls import self_signed

SECRET = "webhook-secret-0123456789"
SMTP_USER, SMTP_PASSWORD = "cairn", "smtp password 42"


def signature_ok(secret: str, header: str, body: bytes) -> bool:
    """The receiver's check, as docs/monitoring.md gives it."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300


@dataclass
class Webhook:
    port: int
    received: list[dict[str, Any]] = field(default_factory=list)   # {"headers", "body", "json"}
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def messages(self, rule: str | None = None) -> list[dict[str, Any]]:
        return [m["json"] for m in self.received if rule is None or m["json"]["rule"] == rule]

    def start(self) -> None:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:   # the stdlib names it
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append({"headers": dict(self.headers), "body": body, "json": json.loads(body)})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextmanager
def webhook(port: int = 0) -> Iterator[Webhook]:
    hook = Webhook(port)
    hook.start()
    try:
        yield hook
    finally:
        hook.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Mailbox:
    port: int
    ca_file: Path
    mails: list[Any] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:   # aiosmtpd names it
        self.mails.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


@contextmanager
def smtp_server(tls_dir: Path) -> Iterator[Mailbox]:
    """STARTTLS required, then LOGIN/PLAIN with SMTP_USER/SMTP_PASSWORD; its certificate names 127.0.0.1."""
    files = self_signed(tls_dir, "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert, files.key)
    box = Mailbox(0, files.cert)

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (SMTP_USER.encode(),
                                                                                 SMTP_PASSWORD.encode())
        if ok:
            box.logins.append(mechanism)
        return AuthResult(success=ok)

    controller = Controller(box, hostname="127.0.0.1", port=free_port(), tls_context=context,
                            require_starttls=True, auth_required=True, authenticator=authenticate)
    controller.start()
    box.port = controller.port
    try:
        yield box
    finally:
        controller.stop()
