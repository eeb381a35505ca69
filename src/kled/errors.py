"""Kled's own exception hierarchy.

Every seam to an outside system (database, NATS, the host's network, a container engine)
translates its library's exceptions into these, so the rest of the code, the API and the
CLI handle one family of errors:

    KledError                    base; ``status`` is the HTTP status the API answers with
      InvalidInput       (400/422) bad input from a user; ``field`` names the path at fault
      Unauthorized       (401)     no or bad credentials
      Forbidden          (403)     authenticated, not allowed (also a policy denial)
      NotFound           (404)     absent, or not visible to the caller (other teams)
      Conflict           (409)     stale resourceVersion, name taken, second intercept...
        Unreadable       (409)     a stored document outside the bounds (an older version's);
                                   only deleting it works
      Gone               (410)     a watch from a revision the event log no longer holds;
                                   ``oldest`` is the oldest kept: list again and resume
      TooLarge           (413)     body over the limit
      Unavailable        (503)     a dependency is down; retrying may help
      TemporaryError               retried by reconcilers after ``delay`` seconds
      PermanentError               reported in a resource's status, not retried

The CLI maps InvalidInput to exit code 2 and every other KledError to exit code 1.
"""

from __future__ import annotations


class KledError(Exception):
    """Base of every error Kled raises on purpose."""

    status: int = 500
    reason: str = "InternalError"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        if self.field and not self.message.startswith(self.field):
            return f"{self.field}: {self.message}"
        return self.message


class InvalidInput(KledError):
    status = 422
    reason = "Invalid"


class Unauthorized(KledError):
    status = 401
    reason = "Unauthorized"


class Forbidden(KledError):
    status = 403
    reason = "Forbidden"

    def __init__(
        self, message: str, *, field: str | None = None, policy: str | None = None
    ) -> None:
        super().__init__(message, field=field)
        self.policy = policy


class NotFound(KledError):
    status = 404
    reason = "NotFound"


class Conflict(KledError):
    status = 409
    reason = "Conflict"


class Unreadable(Conflict):
    """A stored document that breaks the bounds every document keeps (``resources.bounds``).

    Only a store written by an older version can hold one; readers skip it, and the store
    lets it be deleted and nothing else.
    """


class Gone(KledError):
    """The events after a revision were compacted away: list again, then watch from there."""

    status = 410
    reason = "Gone"

    def __init__(self, message: str, *, oldest: int) -> None:
        super().__init__(message, field="resourceVersion")
        self.oldest = oldest


class TooLarge(KledError):
    status = 413
    reason = "RequestEntityTooLarge"


class Unavailable(KledError):
    status = 503
    reason = "ServiceUnavailable"


class TemporaryError(KledError):
    """A reconciler should retry after ``delay`` seconds."""

    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(KledError):
    """A reconciler should stop retrying and report ``message`` in the status."""
