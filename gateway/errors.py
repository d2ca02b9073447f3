"""The one place where errors become HTTP answers. Handlers never build HTTP errors."""

from __future__ import annotations

import logging

import psycopg
from eventsourcing.persistence import DataError, PersistenceError
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import (
    HTTP_401_UNAUTHORIZED,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_410_GONE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from psycopg_pool import PoolTimeout

from domain.errors import (
    AlreadyExistsError,
    ArtifactExpiredError,
    DomainError,
    NotFoundError,
    QuotaExceededError,
    RepositoryDeletedError,
    SecretsUnavailableError,
    WebhookSignatureError,
)
from gateway.blocking import StoreUnavailableError
from projections.queries import InvalidCursorError

log = logging.getLogger(__name__)


def _error(status_code: int, detail: str, extra: object = None) -> Response:
    body: dict[str, object] = {"status_code": status_code, "detail": detail}
    if extra:
        body["extra"] = extra
    return Response(body, status_code=status_code)


def _validation(_: Request, exc: ValidationException) -> Response:
    # A malformed body is 422 (API.md), with what was wrong; Litestar's default is 400.
    return _error(HTTP_422_UNPROCESSABLE_ENTITY, exc.detail, exc.extra)


def _domain(_: Request, exc: DomainError) -> Response:
    if isinstance(exc, NotFoundError):
        return _error(HTTP_404_NOT_FOUND, str(exc))
    if isinstance(exc, ArtifactExpiredError):
        return _error(HTTP_410_GONE, str(exc))
    if isinstance(exc, WebhookSignatureError):
        return _error(HTTP_401_UNAUTHORIZED, str(exc))
    if isinstance(exc, (AlreadyExistsError, RepositoryDeletedError)):
        return _error(HTTP_409_CONFLICT, str(exc))
    if isinstance(exc, QuotaExceededError):
        response = _error(HTTP_429_TOO_MANY_REQUESTS, str(exc))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, SecretsUnavailableError):  # the service lacks LEDGERCI_SECRET_KEY: not the request's fault
        return _error(HTTP_503_SERVICE_UNAVAILABLE, str(exc))
    return _error(HTTP_422_UNPROCESSABLE_ENTITY, str(exc))


def _store_unavailable(_: Request, exc: StoreUnavailableError) -> Response:
    response = _error(HTTP_503_SERVICE_UNAVAILABLE, str(exc) + "; retry shortly")
    response.headers["Retry-After"] = "1"
    return response


def _cursor(_: Request, exc: InvalidCursorError) -> Response:
    return _error(HTTP_422_UNPROCESSABLE_ENTITY, str(exc))


def _unexpected(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        response = _error(exc.status_code, exc.detail, exc.extra)
        response.headers.update(exc.headers or {})  # e.g. 405's Allow
        return response
    if isinstance(exc, (psycopg.DataError, DataError)):
        # A value the store cannot hold or compare (a NUL character in a cursor): the request's fault.
        return _error(HTTP_422_UNPROCESSABLE_ENTITY, "a value in the request is out of range or not valid text")
    # Infrastructure trouble (store or NATS away) is a 503 the client may retry; the cause
    # is logged here, never sent (it may name hosts or credentials).
    log.exception("%s %s failed", request.method, request.url.path)
    if isinstance(exc, (OSError, TimeoutError, PersistenceError, PoolTimeout)) or type(exc).__module__.startswith(
        ("psycopg", "nats")
    ):
        return _error(HTTP_503_SERVICE_UNAVAILABLE, "a backing service is unavailable; retry shortly")
    return _error(HTTP_500_INTERNAL_SERVER_ERROR, "internal error")


EXCEPTION_HANDLERS = {
    ValidationException: _validation,
    DomainError: _domain,
    InvalidCursorError: _cursor,
    StoreUnavailableError: _store_unavailable,
    HTTPException: _unexpected,
    Exception: _unexpected,
}
