"""What the appliance's own log may hold: never a secret.

Credentials travel in headers and bodies, which nothing logs; what does reach the log is each
request's line (uvicorn's access log, with the query string). A secret that has to be a query
parameter, such as the console's one-time token in its WebSocket URL, is masked there by
MaskSecrets, which `cairn serve` puts on every uvicorn log handler (log_config()).
"""
from __future__ import annotations

import copy
import logging
import re
from typing import Any

# Query parameters that carry secrets: their values are replaced by ***.
SECRET_PARAMETERS = ("token", "access_token", "password", "passphrase", "secret", "totp", "code")
_SECRET_QUERY = re.compile(rf"([?&](?:{'|'.join(SECRET_PARAMETERS)})=)[^&#\s\"]*", re.IGNORECASE)
MASK = "***"


def mask(text: str) -> str:
    return _SECRET_QUERY.sub(rf"\g<1>{MASK}", text)


class MaskSecrets(logging.Filter):
    """Masks secret query parameters in a record's message and arguments (lets every record through)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = mask(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(mask(a) if isinstance(a, str) else a for a in record.args)
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration with MaskSecrets on each of its handlers."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["mask_secrets"] = {"()": f"{__name__}.MaskSecrets"}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("mask_secrets")
    return config
