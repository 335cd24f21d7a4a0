"""Errors the appliance reports to people: each says what is wrong and changes nothing."""


class CairnError(Exception):
    status = 400


class NotFoundError(CairnError):
    status = 404


class ConflictError(CairnError):
    status = 409
