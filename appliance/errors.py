"""Errors the appliance reports to people: each says what is wrong and changes nothing."""


class CairnError(Exception):
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


class CatalogError(CairnError):
    """The catalog cannot be reached or opened (a bad URL, a database that is down)."""
    status = 503
