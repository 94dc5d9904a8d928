"""`notify.email` and `notify.chat` (issue 14 item 3): tell people what a run did.

`notify.email` hands one message to Django's email backend (EMAIL_BACKEND and the EMAIL_*
settings). Opsflow has no outbox of its own, so the message is sent directly, inside the step:
a mail server that is down fails the step like any other unreachable service.

`notify.chat` posts to a Slack, Microsoft Teams or Mattermost incoming webhook. The webhook's
URL is a secret (whoever has it can post to the channel), so it must come from a credential
bound to the webhook's host. The request goes through http.request's `guarded_exchange`: the
same deny list, host binding of credentials and no environment proxy.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from email.utils import getaddresses, make_msgid, parseaddr
from typing import Any

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage, get_connection
from django.core.validators import validate_email

from apps.executions import errors
from apps.executions.masking import MASK
from apps.executions.nodes.base import NodeContext, NodeType, Problem, cap_text, register
from apps.executions.nodes.http import (
    CredentialNotAllowed,
    DeniedAddress,
    guarded_exchange,
    retry_after_of,
)
from apps.executions.templating import has_template

MAX_RECIPIENTS = 100  # to and cc together: a notification, not a mailing list
SNIPPET = 200  # characters of a refusal's body quoted in the error message


def _templated(value: Any) -> bool:
    """A string with template markup: checked once the engine has rendered it."""
    return isinstance(value, str) and has_template(value)


def _unknown_keys(config: dict[str, Any], known: frozenset[str]) -> list[Problem]:
    return [(str(key), "unknown field") for key in sorted(set(config) - known, key=str)]


def _snippet(body: str) -> str:
    text = " ".join(body.split())
    return text if len(text) <= SNIPPET else text[:SNIPPET] + "…"


# --- notify.email ------------------------------------------------------------------------------


def address_problem(value: Any) -> str | None:
    """Why `value` is not one email address (`ops@example.com` or `On-call <ops@example.com>`)."""
    if not isinstance(value, str) or not value.strip():
        return "must be an email address"
    if any(c in value for c in "\r\n\0"):
        return "must be one address on one line"
    found = getaddresses([value])
    if len(found) != 1:
        return f"{value!r} is not one email address (give each address as its own item)"
    try:
        validate_email(found[0][1])
    except ValidationError:
        return f"{value!r} is not a valid email address"
    return None


def _recipients(value: Any) -> list[str]:
    """`to`/`cc` as a list (one address may be given as a plain string)."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _address_problems(key: str, value: Any, required: bool) -> list[Problem]:
    if value is None:
        return [(key, "required: a list of email addresses")] if required else []
    if _templated(value):
        return []
    if isinstance(value, str):
        problem = address_problem(value)
        return [(key, problem)] if problem else []
    if not isinstance(value, list):
        return [(key, "must be a list of email addresses")]
    if required and not value:
        return [(key, "required: at least one email address")]
    return [
        (f"{key}[{index}]", problem)
        for index, item in enumerate(value)
        if not _templated(item) and (problem := address_problem(item))
    ]


# SMTP replies that mean "your credentials are wrong or missing" (RFC 4954).
AUTH_CODES = frozenset({530, 534, 535, 538})


def _smtp_error(exc: Exception, where: str) -> errors.NodeError:
    """The error type for a failed SMTP exchange (docs/nodes/notify.md, "When sending fails").

    Connection trouble and 421 are ConnectionError and other temporary (4xx) refusals
    RateLimitError: both are retried. Permanent (5xx) refusals are not: a refused recipient or
    message is a DataError, a refused sender an InvalidConfigurationError, a failed login an
    InvalidAccessTokenError."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = exc.recipients  # every recipient was refused; nothing was sent
        shown = "; ".join(
            f"{address}: {code} {_reply_text(reply)}" for address, (code, reply) in refused.items()
        )
        codes = [code for code, _ in refused.values()]
        if all(400 <= code < 500 for code in codes):
            kind = errors.ConnectionError if all(c == 421 for c in codes) else errors.RateLimitError
            return kind(f"{where} deferred every recipient, try again later: {shown}")
        return errors.DataError(f"{where} refused the recipients: {shown}")
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return errors.InvalidAccessTokenError(
            f"{where} refused the login (EMAIL_HOST_USER/EMAIL_HOST_PASSWORD): "
            f"{exc.smtp_code} {_reply_text(exc.smtp_error)}"
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        code, text = exc.smtp_code, _reply_text(exc.smtp_error)
        reply = f"{code} {text}"
        if code == 421 or (isinstance(exc, smtplib.SMTPConnectError) and code < 500):
            return errors.ConnectionError(f"{where} is not taking mail now: {reply}")
        if 400 <= code < 500:
            return errors.RateLimitError(f"{where} deferred the message, try again later: {reply}")
        if code in AUTH_CODES:
            return errors.InvalidAccessTokenError(f"{where} wants a login: {reply}")
        if isinstance(exc, smtplib.SMTPSenderRefused):
            return errors.InvalidConfigurationError(
                f"{where} refused the sender {exc.sender!r}: {reply}"
            )
        if isinstance(exc, smtplib.SMTPDataError):
            return errors.DataError(f"{where} refused the message: {reply}")
        return errors.InvalidConfigurationError(f"{where} refused the session: {reply}")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        if isinstance(exc.__context__, TimeoutError):  # smtplib turns a read timeout into this
            return errors.ModuleTimeoutError(f"{where} did not answer in time")
        return errors.ConnectionError(f"{where} closed the connection: {exc}")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return errors.InvalidConfigurationError(f"{where} does not support it: {exc}")
    if isinstance(exc, smtplib.SMTPException):
        return errors.UnexpectedError(f"{where}: {exc}")
    if isinstance(exc, TimeoutError):  # socket.timeout
        return errors.ModuleTimeoutError(f"{where} did not answer in time: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return errors.InvalidConfigurationError(
            f"{where}: its TLS certificate is not trusted: {exc}"
        )
    if isinstance(exc, socket.gaierror):
        return errors.ConnectionError(f"Could not resolve {where}: {exc}")
    return errors.ConnectionError(f"Could not connect to {where}: {exc}")


def _reply_text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())


@register
class EmailNode(NodeType):
    """One email through Django's email backend: `to`, `cc`, `subject`, `body`, `from`."""

    name = "notify.email"
    default_timeout = 30.0
    keys = frozenset({"to", "cc", "subject", "body", "from"})

    def check_config(self, config) -> list[Problem]:
        problems = _unknown_keys(config, self.keys)
        problems += _address_problems("to", config.get("to"), required=True)
        problems += _address_problems("cc", config.get("cc"), required=False)
        if not _templated(config.get("to")) and not _templated(config.get("cc")):
            count = len(_recipients(config.get("to"))) + len(_recipients(config.get("cc")))
            if count > MAX_RECIPIENTS:
                problems.append(("to", f"at most {MAX_RECIPIENTS} addresses in to and cc"))
        subject = config.get("subject")
        if not isinstance(subject, str) or not subject.strip():
            problems.append(("subject", "required"))
        elif any(c in subject for c in "\r\n\0"):
            problems.append(("subject", "must be one line"))
        if not isinstance(config.get("body"), str):
            problems.append(("body", "required (a string)"))
        sender = config.get("from")
        if sender not in (None, "") and not _templated(sender):
            problem = address_problem(sender)
            if problem:
                problems.append(("from", problem))
        return problems

    def run(self, ctx: NodeContext) -> dict[str, Any]:
        config = ctx.config
        to, cc = _recipients(config["to"]), _recipients(config.get("cc"))
        sender = config.get("from") or settings.DEFAULT_FROM_EMAIL
        # Our own Message-ID (in the sender's domain): the output can name it whatever the
        # backend, and Django need not look up this host's name to make one.
        domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
        message_id = make_msgid(domain=domain)
        # Each exchange with the server waits at most the node's timeout (or EMAIL_TIMEOUT if
        # shorter); past it the step fails with ModuleTimeoutError and is retried.
        timeout = min(ctx.timeout or self.default_timeout, settings.EMAIL_TIMEOUT or float("inf"))
        connection = get_connection(fail_silently=False, timeout=timeout)
        host = getattr(connection, "host", None)
        where = (
            f"the mail server {host}:{getattr(connection, 'port', '')}"
            if host
            else "the email backend"
        )
        message = EmailMessage(
            subject=config["subject"],
            body=config["body"],
            from_email=sender,
            to=to,
            cc=cc,
            headers={"Message-ID": message_id},
            connection=connection,
        )
        try:
            sent = message.send()
        except (smtplib.SMTPException, OSError) as exc:
            raise _smtp_error(exc, where) from exc
        if not sent:
            raise errors.UnexpectedError(
                f"{where} sent nothing (EMAIL_BACKEND {settings.EMAIL_BACKEND})"
            )
        return {
            "backend": settings.EMAIL_BACKEND,
            "from": sender,
            "to": to,
            "cc": cc,
            "recipients": to + cc,
            "subject": config["subject"],
            "message_id": message_id,
        }


# --- notify.chat -------------------------------------------------------------------------------

PROVIDERS = {"slack": "Slack", "teams": "Microsoft Teams", "mattermost": "Mattermost"}
# Mattermost's webhooks also take these (its admin may have to allow the overrides).
MATTERMOST_KEYS = frozenset({"username", "icon_url", "channel"})
ADAPTIVE_CARD_VERSION = "1.4"  # what Teams renders on every client
ADAPTIVE_CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
FROM_A_CREDENTIAL = (
    'the webhook URL must come from a credential (url: "{{ secrets.NAME }}"): whoever has it '
    "can post to the channel"
)


def chat_payload(provider: str, config: dict[str, Any]) -> dict[str, Any]:
    """The JSON each provider's incoming webhook takes, from `text` and/or `blocks`."""
    text, blocks = config.get("text"), config.get("blocks")
    if provider == "teams":  # a message with one Adaptive Card; the text as its first TextBlock
        body = [{"type": "TextBlock", "text": text, "wrap": True}] if text else []
        return {
            "type": "message",
            "attachments": [
                {
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": None,
                    "content": {
                        "$schema": ADAPTIVE_CARD_SCHEMA,
                        "type": "AdaptiveCard",
                        "version": ADAPTIVE_CARD_VERSION,
                        "body": body + list(blocks or []),
                    },
                }
            ],
        }
    payload: dict[str, Any] = {}
    if text:
        payload["text"] = text  # Slack: with blocks, the notification's fallback text
    if blocks:
        payload["blocks" if provider == "slack" else "attachments"] = blocks
    if provider == "mattermost":
        payload.update({k: config[k] for k in sorted(MATTERMOST_KEYS) if config.get(k)})
    return payload


@register
class ChatNode(NodeType):
    """A message to a Slack, Microsoft Teams or Mattermost incoming webhook."""

    name = "notify.chat"
    default_timeout = 30.0
    keys = frozenset({"provider", "url", "text", "blocks"}) | MATTERMOST_KEYS

    def check_config(self, config) -> list[Problem]:
        problems = _unknown_keys(config, self.keys)
        provider = config.get("provider")
        if provider not in PROVIDERS:
            problems.append(("provider", f"required: one of {', '.join(PROVIDERS)}"))
        url = config.get("url")
        if not isinstance(url, str) or not url.strip():
            problems.append(("url", 'required: the webhook URL, "{{ secrets.NAME }}"'))
        text, blocks = config.get("text"), config.get("blocks")
        if not text and not blocks:
            problems.append(("text", "give text, blocks or both"))
        if text is not None and not isinstance(text, str):
            problems.append(("text", "must be a string"))
        if blocks is not None and not _templated(blocks):
            what = {"teams": "Adaptive Card elements", "mattermost": "message attachments"}.get(
                str(provider), "Block Kit blocks"
            )
            if not isinstance(blocks, list) or not blocks:
                problems.append(("blocks", f"must be a non-empty list of {what}"))
            else:
                for index, block in enumerate(blocks):
                    typed = provider in ("slack", "teams")
                    if not isinstance(block, dict) or (
                        typed and not isinstance(block.get("type"), str)
                    ):
                        shape = "a mapping with a type" if typed else "a mapping"
                        problems.append((f"blocks[{index}]", f"must be {shape} ({what})"))
        if provider in PROVIDERS and provider != "mattermost":
            for key in sorted(MATTERMOST_KEYS & set(config)):
                problems.append((key, "only for provider mattermost"))
        for key in sorted(MATTERMOST_KEYS & set(config)):
            if not isinstance(config[key], str):
                problems.append((key, "must be a string"))
        return problems

    def mask_input(self, rendered: Any) -> Any:
        """The URL is shown as *** even when it was typed in (and then refused at run time)."""
        if isinstance(rendered, dict) and "url" in rendered:
            return {**rendered, "url": MASK}
        return rendered

    def run(self, ctx: NodeContext) -> dict[str, Any]:
        config = ctx.config
        provider = config["provider"]
        url = config["url"]
        if not url.startswith(("http://", "https://")):
            raise errors.InvalidConfigurationError("url must be an http(s) URL (the webhook's)")
        if not any(used.value and used.value in url for used in ctx.credentials.values()):
            raise errors.InvalidConfigurationError(FROM_A_CREDENTIAL)
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            raise errors.InvalidConfigurationError("the webhook URL is not a valid URL") from None
        where = f"the {PROVIDERS[provider]} webhook at {parsed.host}" + (
            f":{parsed.port}" if parsed.port else ""
        )
        timeout = ctx.timeout or self.default_timeout
        started = time.perf_counter()
        try:
            response, content, truncated = guarded_exchange(
                {"method": "POST", "url": url, "json": chat_payload(provider, config)},
                timeout=timeout,
                credentials=ctx.credentials,
                stop_requested=ctx.stop_requested,
                follow_redirects=False,  # a webhook answers itself; a redirect is a wrong URL
            )
        except httpx.TimeoutException:
            raise errors.ModuleTimeoutError(f"{where} did not answer within {timeout:g}s") from None
        except DeniedAddress as exc:
            raise errors.InvalidConfigurationError(f"Refused {where}: {exc}") from None
        except CredentialNotAllowed as exc:
            raise errors.InvalidConfigurationError(str(exc)) from None
        except httpx.InvalidURL:
            raise errors.InvalidConfigurationError("the webhook URL is not a valid URL") from None
        except httpx.TransportError as exc:
            raise errors.ConnectionError(f"Could not connect to {where}: {exc}") from None

        body, _ = cap_text(content)
        status = response.status_code
        output: dict[str, Any] = {
            "provider": provider,
            "host": parsed.host,
            "status_code": status,
            "body": body,
            "elapsed_ms": int((time.perf_counter() - started) * 1000),
        }
        if truncated:
            output["truncated"] = True
        if 200 <= status < 300:
            return output
        answer = f"HTTP {status}" + (f": {_snippet(body)}" if body.strip() else "")
        if status == 429:
            raise errors.RateLimitError(
                f"{where} asks to slow down ({answer})",
                output=output,
                retry_after=retry_after_of(response),
            )
        if status >= 500:
            raise errors.ConnectionError(f"{where} failed ({answer})", output=output)
        if status in (401, 403):
            raise errors.InvalidAccessTokenError(
                f"{where} refused the webhook ({answer}): it was revoked or may not post there",
                output=output,
            )
        if status in (404, 410):
            raise errors.InvalidConfigurationError(
                f"{where} has no such webhook ({answer}): check the URL in the credential, "
                "and that the channel still exists",
                output=output,
            )
        if 400 <= status < 500:
            raise errors.DataError(f"{where} refused the message ({answer})", output=output)
        raise errors.InvalidConfigurationError(
            f"{where} answered {answer}, not a webhook's answer (redirects are not followed: "
            "put the final URL in the credential)",
            output=output,
        )
