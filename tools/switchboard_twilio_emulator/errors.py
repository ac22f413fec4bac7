"""Twilio's REST error bodies (pure).

Twilio answers an API error with `{"code", "message", "more_info", "status"}`; its client
libraries raise on the HTTP status and read `code` and `message` from the body. The codes
below are the ones Twilio documents for these cases; `INVALID_PARAMETER` is the emulator's
own choice for a value Twilio refuses without a code we could confirm (see README).
"""

from __future__ import annotations

from typing import Any

AUTHENTICATE = 20003
METHOD_NOT_ALLOWED = 20004
NOT_FOUND = 20404
TOO_MANY_REQUESTS = 20429
INTERNAL = 20500
UNAVAILABLE = 20503
INVALID_PARAMETER = 20001
NO_TO = 21201
INVALID_URL = 21205
UNVERIFIED_FROM = 21210
INVALID_TO = 21211
INVALID_FROM = 21212
NO_FROM = 21213
NOT_IN_PROGRESS = 21220


class TwilioError(Exception):
    """An API error as Twilio sends it: the HTTP status, Twilio's code and message."""

    def __init__(self, status: int, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


def authenticate() -> TwilioError:
    return TwilioError(401, AUTHENTICATE, "Authenticate", {"WWW-Authenticate": 'Basic realm="Twilio API"'})


def not_found(path: str) -> TwilioError:
    return TwilioError(404, NOT_FOUND, f"The requested resource {path} was not found")


def method_not_allowed() -> TwilioError:
    return TwilioError(405, METHOD_NOT_ALLOWED, "Method not allowed")


def too_many_requests(retry_after_s: int | None = None) -> TwilioError:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return TwilioError(429, TOO_MANY_REQUESTS, "Too Many Requests", headers)


def server_error(status: int) -> TwilioError:
    if status == 503:
        return TwilioError(503, UNAVAILABLE, "Service is unavailable. Please try again")
    return TwilioError(status, INTERNAL, "An internal server error has occurred")


def no_to() -> TwilioError:
    return TwilioError(400, NO_TO, "No 'To' number is specified")


def invalid_to(to: str) -> TwilioError:
    return TwilioError(400, INVALID_TO, f"The 'To' number {to} is not a valid phone number.")


def no_from() -> TwilioError:
    return TwilioError(400, NO_FROM, "No 'From' number is specified")


def invalid_from(from_: str) -> TwilioError:
    return TwilioError(400, INVALID_FROM, f"The 'From' number {from_} is not a valid phone number.")


def unverified_from(from_: str) -> TwilioError:
    return TwilioError(
        400,
        UNVERIFIED_FROM,
        f"The source phone number provided, {from_}, is not yet verified for your account. "
        "You may only make calls from phone numbers that you've verified or purchased from Twilio.",
    )


def invalid_url(name: str, value: str) -> TwilioError:
    return TwilioError(400, INVALID_URL, f"{name} is not a valid URL: {value[:200]}")


def invalid_parameter(name: str, detail: str) -> TwilioError:
    return TwilioError(400, INVALID_PARAMETER, f"Invalid parameter {name}: {detail}")


def not_in_progress() -> TwilioError:
    return TwilioError(400, NOT_IN_PROGRESS, "Call is not in-progress. Cannot redirect.")
