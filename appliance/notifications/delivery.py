"""Sending one message: a signed JSON POST to a webhook, or a mail over SMTP with STARTTLS.

A webhook's body is signed with the target's secret: the header

    X-Cairn-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">

lets the receiver check that the message comes from this appliance and was not altered, and
(with the time in it) refuse an old message replayed; docs/monitoring.md shows the check. X-Cairn-Delivery is the outbox id: a
message retried after a lost answer carries the same one, so a receiver can drop the copy.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from typing import Any

from appliance.errors import CairnError

SIGNATURE_HEADER = "X-Cairn-Signature"
DELIVERY_HEADER = "X-Cairn-Delivery"
TIMEOUT = 15.0   # seconds for one attempt: a hung receiver costs a retry, not the loop


class DeliveryError(CairnError):
    """The receiver could not be reached or refused the message; the outbox tries again later."""
    status = 502


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def post_webhook(url: str, secret: bytes | None, payload: dict[str, Any], delivery_id: str) -> None:
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "Cairn", DELIVERY_HEADER: delivery_id}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, int(time.time()), body)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            answer.read()
    except urllib.error.HTTPError as e:
        raise DeliveryError(f"webhook {url} answered {e.code} {e.reason}") from None
    except (OSError, ValueError) as e:   # refused, unreachable, timed out, TLS, a bad URL
        raise DeliveryError(f"webhook {url} not reached: {getattr(e, 'reason', None) or e}") from None


def send_mail(config: dict[str, Any], password: str | None, subject: str, text: str) -> None:
    """One mail to the target's recipients; STARTTLS unless the target turned it off (a relay on
    localhost), so the password and the message never cross the network in clear."""
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = config["sender"]
    message["To"] = ", ".join(config["recipients"])
    message.set_content(text)
    where = f"{config['host']}:{config['port']}"
    try:
        with smtplib.SMTP(config["host"], config["port"], timeout=TIMEOUT) as smtp:
            if config.get("starttls", True):
                smtp.starttls(context=ssl.create_default_context(cafile=config.get("ca_file")))
            if config.get("username"):
                smtp.login(config["username"], password or "")
            smtp.send_message(message)
    except smtplib.SMTPException as e:
        raise DeliveryError(f"mail server {where} refused the message: {e}") from None
    except OSError as e:   # refused, unreachable, timed out, a certificate it does not trust
        raise DeliveryError(f"mail server {where} not reached: {e}") from None
