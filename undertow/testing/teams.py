"""A local fake of a Microsoft Teams Workflows webhook (the "Post to a channel when a webhook
request is received" trigger), for the tests.

``POST /workflows/{id}/triggers/manual/paths/invoke?api-version=...&sig=...``: the ``sig`` is
the credential (401 ``{"error": {"code": "DirectApiAuthorizationRequired", ...}}`` without
it, as Azure Logic Apps answers); the body must be a message whose attachments are Adaptive
Cards (400 otherwise); success is ``202 Accepted`` with an empty body. The connector limits
(4 requests per second per webhook) answer 429 with ``Retry-After``; ``window_seconds``
shortens the second. ``fake.cards`` holds each posted card's content.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from undertow.testing.fakes import FakeAPI, Window

CARD = "application/vnd.microsoft.card.adaptive"


class TeamsFake(FakeAPI):
    type = "teams"
    vendor = "Microsoft Teams"
    request_id_header = "x-ms-workflow-run-id"

    def __init__(
        self, token: str = "demo-sig", *, workflow: str = "0123abcd", window_seconds: float = 1.0
    ) -> None:
        self.sig = token
        self.workflow = workflow
        self.cards: list[dict[str, Any]] = []
        super().__init__(
            auth=lambda r: r.query_params.get("sig") == self.sig,
            windows=[Window(4, window_seconds, "per-second")],
        )

    @property
    def path(self) -> str:
        return f"/workflows/{self.workflow}/triggers/manual/paths/invoke"

    def webhook_url(self) -> str:
        return f"{self.url}{self.path}?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={self.sig}"

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/workflows/{wid}/triggers/manual/paths/invoke", self.invoke, methods=["POST"])
        ]

    def unauthorized(self, captured: Any) -> Response:
        return self.respond(
            401,
            {
                "error": {
                    "code": "DirectApiAuthorizationRequired",
                    "message": "The request must be authenticated only by Shared Access scheme.",
                }
            },
        )

    def slow_down(self, window: Window | None) -> Response:
        return self.respond(
            429,
            {"error": {"code": "WorkflowTriggerIsThrottled", "message": "Rate limit is exceeded."}},
            {"Retry-After": f"{window.seconds if window else 1:g}"},
        )

    async def invoke(self, request: Request) -> Response:
        captured, early = await self.admit(request)
        if early is not None:
            return early
        if request.path_params["wid"] != self.workflow:
            return self.respond(
                404,
                {
                    "error": {
                        "code": "WorkflowNotFound",
                        "message": "The workflow could not be found.",
                    }
                },
            )
        body = captured.body
        attachments = body.get("attachments") if isinstance(body, dict) else None
        if not isinstance(attachments, list) or not attachments:
            return self.respond(
                400,
                {
                    "error": {
                        "code": "InvalidRequestContent",
                        "message": "The message has no attachments.",
                    }
                },
            )
        for attachment in attachments:
            content = attachment.get("content") if isinstance(attachment, dict) else None
            if (
                attachment.get("contentType") != CARD
                or not isinstance(content, dict)
                or content.get("type") != "AdaptiveCard"
            ):
                return self.respond(
                    400,
                    {
                        "error": {
                            "code": "InvalidRequestContent",
                            "message": "Attachments must be Adaptive Cards.",
                        }
                    },
                )
            self.cards.append(content)
        self.note_batch(1)
        return self.respond(202)
