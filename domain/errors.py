"""The small hierarchy of domain errors. One place (gateway/errors.py) maps them to HTTP."""


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""


class NotFoundError(DomainError):
    """The thing asked for does not exist (or belongs to another tenant)."""


class RunNotFoundError(NotFoundError):
    pass


class RepositoryNotFoundError(NotFoundError):
    pass


class TenantNotFoundError(NotFoundError):
    pass


class TokenNotFoundError(NotFoundError):
    pass


class QuotaExceededError(DomainError):
    """A tenant is over one of its quotas; `retry_after` says when trying again may succeed."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AlreadyExistsError(DomainError):
    """Creating something whose id is taken."""


class RepositoryDeletedError(DomainError):
    """Asking a deleted repository for new work (a re-run of one of its runs)."""


class InvalidTransitionError(DomainError):
    """A command asked for a state change the state machine does not allow."""


class StaleAttemptError(DomainError):
    """A runner command carried an attempt that is no longer the job's current one (fencing)."""


class InvalidWorkflowError(DomainError):
    """The workflow file is invalid; the message names the line and the field."""

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None):
        self.message = message
        self.line = line
        self.field = field
        where = []
        if line is not None:
            where.append(f"line {line}")
        if field:
            where.append(f"field {field}")
        prefix = ", ".join(where)
        super().__init__(f".ledgerci.yml {prefix}: {message}" if prefix else f".ledgerci.yml: {message}")


class InvalidSecretError(DomainError):
    """A secret's name or value breaks the rules of domain.secrets."""


class SecretsUnavailableError(DomainError):
    """Secrets cannot be used here: no LEDGERCI_SECRET_KEY, or a stored one no key decrypts."""


class InvalidCloneUrlError(DomainError):
    """A repository's clone URL that git could not use from the services' machines."""


class InvalidFilterError(DomainError):
    """A query's filter names something that cannot exist (an unknown event type)."""


class WebhookSignatureError(DomainError):
    """A delivery whose signature (or token) does not match the repository's webhook secret: 401."""


class InvalidWebhookError(DomainError):
    """A delivery that is signed correctly but is not a push we can read."""


class InvalidStatusTargetError(DomainError):
    """A commit-status target that cannot be used (its URL, its project name)."""


class SubscriptionNotFoundError(NotFoundError):
    pass


class InvalidSubscriptionError(DomainError):
    """An outgoing-webhook subscription that cannot be used (its URL, its events, its filters)."""


class ArtifactExpiredError(DomainError):
    """The artifact was stored once, and its `expire_in` has passed: 410."""


class ArtifactNotFoundError(NotFoundError):
    pass
