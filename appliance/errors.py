"""Errors the appliance reports to people: each says what is wrong and changes nothing.

CairnError is the root of the appliance's own errors; each kind carries the HTTP status the API
answers it with (the packages below the appliance get theirs in appliance/error_statuses.py).
"""


class CairnError(Exception):
    """Refused as asked: the message says why."""
    status = 400


class NotFoundError(CairnError):
    status = 404


class ConflictError(CairnError):
    status = 409


class UnauthorizedError(CairnError):
    """No valid credentials: not signed in, a wrong password or code, an expired session."""
    status = 401


class TotpRequiredError(UnauthorizedError):
    """The password was right, and the account also needs its TOTP code."""


class ForbiddenError(CairnError):
    """Signed in, but the user's role does not allow this."""
    status = 403


class CatalogValueError(CairnError):
    """A value no catalog may hold: a text with a NUL character (PostgreSQL stores none)."""
    status = 422


class CatalogError(CairnError):
    """The catalog cannot be reached or opened (a bad URL, a database that is down)."""
    status = 503
