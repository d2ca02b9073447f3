"""Webhooks from the git host: a repository's webhook secret, and the deliveries it signs.

`PUT/DELETE /api/v1/repositories/{id}/webhook` set and remove the secret (encrypted like
secrets, never shown again, never given to a job). `POST /api/v1/hooks/{host}/{id}` takes a
delivery without a token: the host's signature over the raw body, checked first
(domain/webhooks.py), is its authentication. A push becomes a run exactly as `POST /push`
makes one (its id derives from the repository and the commit, so the same delivery twice, or
two deliveries of one push, give one run).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, Response, delete, post, put
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED
from msgspec import Meta

from commands.app import LedgerApp
from commands.principal import Principal
from commands.secrets import SecretBook
from domain.errors import InvalidWebhookError
from domain.webhooks import MAX_SECRET_CHARS, MIN_SECRET_CHARS, Host, read, verify
from gateway.blocking import blocking
from gateway.models import Body
from gateway.openapi import errors
from gateway.routes import principal_of
from projections.admission import PushAdmission
from projections.timestamps import rfc3339


class WebhookRequest(Body):
    secret: Annotated[str, Meta(min_length=MIN_SECRET_CHARS, max_length=MAX_SECRET_CHARS)]
    # The host's name of the repository ("org/app"): a delivery naming another is refused.
    host_name: Annotated[str, Meta(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]*$")] | None = None


class WebhookResponse(msgspec.Struct, kw_only=True):
    repository_id: str
    host_name: str | None
    set_at: str
    set_by: str
    paths: dict[str, str]  # where each host delivers: POST <gateway><path>


class DeliveryResponse(msgspec.Struct, kw_only=True):
    delivery_id: str | None
    run_id: str | None = None  # null: the delivery asks for no run (`ignored` says why)
    duplicate: bool = False
    ignored: str | None = None


def _paths(repository_id: str) -> dict[str, str]:
    return {host.value: f"/api/v1/hooks/{host.value}/{repository_id}" for host in Host}


class WebhookSettingsController(Controller):
    path = "/api/v1/repositories/{repository_id:str}/webhook"
    tags = ["webhooks"]

    @put(operation_id="setWebhook", responses=errors(404, 503))
    async def set_webhook(self, request: Request, repository_id: str, data: WebhookRequest,
                          secret_book: NamedDependency[SecretBook]) -> WebhookResponse:
        """Set the repository's webhook secret (and the host's name of it); replaces the old one.
        Give the same secret to the git host, and the path of `paths` for its kind."""
        webhook = await blocking(secret_book.set_webhook, repository_id, data.secret, data.host_name,
                                 principal_of(request))
        return WebhookResponse(repository_id=repository_id, host_name=webhook.host_name,
                               set_at=rfc3339(webhook.set_at), set_by=webhook.set_by, paths=_paths(repository_id))

    @delete(operation_id="deleteWebhook", responses=errors(404))
    async def delete_webhook(self, request: Request, repository_id: str,
                             secret_book: NamedDependency[SecretBook]) -> None:
        """Stop taking deliveries for the repository (its pushes through `POST /push` go on)."""
        await blocking(secret_book.remove_webhook, repository_id, principal_of(request))


class DeliveriesController(Controller):
    path = "/api/v1/hooks"
    tags = ["webhooks"]

    @post("/{host:str}/{repository_id:str}", opt={"public": True}, operation_id="deliverWebhook",
          status_code=HTTP_202_ACCEPTED,
          responses={200: ResponseSpec(DeliveryResponse, description="nothing to run (`ignored`), or its run again"),
                     **errors(401, 404, 429, 503)})
    async def deliver(self, request: Request, host: Host, repository_id: str, ledger: NamedDependency[LedgerApp],
                      secret_book: NamedDependency[SecretBook],
                      admission: NamedDependency[PushAdmission]) -> Response[DeliveryResponse]:
        """A git host's delivery, authenticated by its signature (`X-Hub-Signature-256`,
        `X-Gitea-Signature`) or token (`X-Gitlab-Token`) with the repository's webhook secret:
        401 if it does not match. A push answers 202 with its run (200 and `duplicate` when
        the commit, or for a tag the commit and tag, already has one); anything else (a ping,
        a deleted branch) answers 200 with `ignored` saying why."""
        body = await request.body()
        headers = {name.lower(): value for name, value in request.headers.items()}
        secret, webhook, tenant_id = await blocking(secret_book.webhook, repository_id)
        verify(host, headers, body, secret)
        delivery = read(host, headers, body)
        if delivery.push is None:
            return Response(DeliveryResponse(delivery_id=delivery.delivery_id, ignored=delivery.ignored),
                            status_code=HTTP_200_OK)
        push = delivery.push
        if webhook.host_name is not None and push.repository != webhook.host_name:
            raise InvalidWebhookError(f"the delivery is for {push.repository!r}; repository {repository_id!r} "
                                      f"takes deliveries for {webhook.host_name!r}")
        principal = Principal(f"webhook:{host.value} delivery {delivery.delivery_id or '-'}", tenant_id)
        result = await blocking(ledger.runs.push, repository_id, push.commit, push.ref, principal,
                                lambda tenant: admission.admit(tenant, ledger.clock()))
        return Response(DeliveryResponse(delivery_id=delivery.delivery_id, run_id=str(result.run_id),
                                         duplicate=result.duplicate),
                        status_code=HTTP_200_OK if result.duplicate else HTTP_202_ACCEPTED)
