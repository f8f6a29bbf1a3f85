"""The server's door: who may ask, and which uploads come in at all, decided before a body is read.

Web pages the user visits must not use the server: its API answers any program on the machine
(``curl`` sends no ``Origin``), but a browser is let in only on the server's own page.

* ``Host`` must name this server: ``localhost`` (or a name under it), an IP address, this machine's
  host name, the ``--host`` it was given, or a name allowed with ``--allow-host``. A DNS-rebinding
  page (its own name, pointed at 127.0.0.1) sends its own name: 421.
* A ``POST`` that carries an ``Origin`` must come from the origin it is sent to (the server's own
  page); another page's, or ``null`` (a sandboxed frame, a file), is refused: 403. Without a
  preflight, a form on any page could otherwise post images here.
* ``/predict``: a full queue (503, Retry-After), a body declared over ``--max-upload-mb`` (413),
  a body declared larger than the upload budget has room for (503, Retry-After), and answers
  waiting for their clients past the answer budget (503, Retry-After), all answered without
  reading the body, and the connection closed after the answer; a body that passes the limit, or
  takes the bytes in hand past the budget, is cut off (413, 503) as soon as it does.

The upload budget counts the bytes that have arrived, not the lengths the requests declare: a
declared length costs a client nothing to send, and reserving it let 13 connections that declared
20 MB and sent no body hold a 256 MB budget for the whole body timeout (and, reopened as they were
closed, for good). Counted as they arrive, holding the budget takes sending that much, and what is
held is what the server holds. A declared length is still checked against the room left, so an
upload that cannot fit is refused before it is sent; one admitted while there was room, whose
bytes pass the budget because others arrived meanwhile, is cut off then.

The answer budget counts the body of each ``/predict`` answer from its first byte sent until its
last chunk is written to the connection: an answer is sent ``ANSWER_CHUNK`` at a time, each once
the connection's buffer has drained, so an answer its client does not read waits in the app's
hands (counted), not in the connection's buffer (where nothing counted it: 106 MB a client). A
client that does not take its answer is cut off after ``--send-timeout`` (``server.py``), and the
answer let go.
"""

from __future__ import annotations

import ipaddress

from starlette.responses import JSONResponse

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
ANSWER_CHUNK = 256 * 2**10  # an answer is handed to the connection this much at a time


class HostCheck:
    """Which ``Host`` headers name this server."""

    def __init__(self, names: list[str], any_host: bool = False):
        self.names = {name.lower().rstrip(".") for name in names}
        self.any_host = any_host

    def allows(self, host: str) -> bool:
        name = host_name(host)
        if self.any_host or name in self.names or name == "localhost" or name.endswith(".localhost"):
            return True
        try:
            ipaddress.ip_address(name)  # an address is not a name a rebinding page can own
            return True
        except ValueError:
            return False


def host_name(host: str) -> str:
    """'Example.org:8000' -> 'example.org'; '[::1]:8000' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


class Door:
    """ASGI middleware at the door of the app: see the module's docstring."""

    def __init__(self, app, hosts: HostCheck, state, upload_path: str = "/predict"):
        self.app, self.hosts, self.state, self.upload_path = app, hosts, state, upload_path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if (refusal := self._stranger(scope)) is not None:
            return await refusal(scope, receive, send)
        if scope["path"] != self.upload_path:
            return await self.app(scope, receive, send)
        return await self._upload(scope, receive, send)

    def _stranger(self, scope) -> JSONResponse | None:
        hosts = [value.decode("latin-1") for name, value in scope["headers"] if name == b"host"]
        for host in hosts:
            if not self.hosts.allows(host):
                return refusal(
                    421,
                    f"this server does not answer to the name {_shown(host_name(host))}: it answers to localhost, "
                    "its IP addresses and its host name (fer serve --allow-host NAME adds one)",
                )
        if scope["method"] in SAFE_METHODS:
            return None
        origins = [value.decode("latin-1") for name, value in scope["headers"] if name == b"origin"]
        if not origins:
            return None  # not sent by a browser (curl, a script)
        own = _origin(f"{scope.get('scheme', 'http')}://{hosts[0]}") if hosts else None
        if any(_origin(origin) != own for origin in origins):
            return refusal(
                403,
                f"a page of {_shown(origins[0])} may not send requests here: only this server's own page "
                "(or a program that sends no Origin, such as curl)",
            )
        return None

    async def _upload(self, scope, receive, send):
        state, config = self.state, self.state.config
        if state.waiting >= config.queue:
            return await busy(state)(scope, receive, send)
        if state.answering > config.answer_budget_bytes:
            return await answers_waiting(state)(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        size = int(declared) if declared is not None and declared.isdigit() else None
        if size is not None and size > config.max_upload_bytes:
            return await too_large(config.max_upload_bytes)(scope, receive, send)
        if state.uploading + (size or 0) > config.upload_budget_bytes:
            return await uploads_in_hand(state)(scope, receive, send)
        await self._counted(scope, receive, send)

    async def _counted(self, scope, receive, send) -> None:
        """The app, with the body's bytes counted in the upload budget as they arrive (until the
        request is answered), and cut off by a 413 or a 503 as soon as they pass the request's limit
        or the budget; its answer counted in the answer budget while it is sent (``_answering``)."""
        state, config = self.state, self.state.config
        received = 0
        refused = False

        async def counting_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                received += size
                state.uploading += size
                if received > config.max_upload_bytes:
                    answer = too_large(config.max_upload_bytes)
                elif state.uploading > config.upload_budget_bytes:
                    answer = uploads_in_hand(state)
                else:
                    return message
                refused = True
                await answer(scope, None, send)
                return {"type": "http.disconnect"}  # the app stops reading; its answer is dropped
            return message

        async def guarded_send(message):
            if not refused:
                await self._answering(send, message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise
        finally:
            state.uploading -= received

    async def _answering(self, send, message) -> None:
        """``send``, with a response body counted in ``state.answering`` until the connection has
        taken all but its last chunk (uvicorn's ``send`` waits for the connection's buffer to drain
        before it writes, then writes all it is given)."""
        if message["type"] != "http.response.body" or not message.get("body"):
            return await send(message)
        body, more = message["body"], message.get("more_body", False)
        self.state.answering += len(body)
        try:
            for start in range(0, len(body), ANSWER_CHUNK):
                last = start + ANSWER_CHUNK >= len(body)
                await send(
                    {
                        "type": "http.response.body",
                        "body": body[start : start + ANSWER_CHUNK],
                        "more_body": more or not last,
                    }
                )
        finally:
            self.state.answering -= len(body)


def _origin(origin: str) -> tuple[str, str, int | None]:
    """'http://LocalHost:80' and 'http://localhost' -> ('http', 'localhost', 80): what makes two origins one."""
    scheme, _, rest = origin.strip().lower().partition("://")
    if rest.startswith("["):
        name, _, after = rest[1:].partition("]")
        port = after.removeprefix(":")
    else:
        name, _, port = rest.partition(":")
    return scheme, name.rstrip("."), int(port) if port.isdigit() else {"http": 80, "https": 443}.get(scheme)


def refusal(status: int, detail: str, retry_after: int | None = None) -> JSONResponse:
    """An answer given at the door, before the body is read: the connection is closed after it, so
    whatever the client still sends is not read."""
    headers = {"connection": "close"}
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def busy(state) -> JSONResponse:
    return refusal(
        503,
        f"busy: {state.waiting} images waiting (at most {state.config.queue}, fer serve --queue); try again shortly",
        retry_after=state.config.retry_after_s,
    )


def uploads_in_hand(state) -> JSONResponse:
    budget = state.config.upload_budget_bytes
    return refusal(
        503,
        f"busy: {_mb(state.uploading)} of uploads in hand (at most {_mb(budget)}, fer serve --upload-budget-mb); "
        "try again shortly",
        retry_after=state.config.retry_after_s,
    )


def answers_waiting(state) -> JSONResponse:
    budget = state.config.answer_budget_bytes
    return refusal(
        503,
        f"busy: {_mb(state.answering)} of answers waiting for their clients to take them (at most {_mb(budget)}, "
        "fer serve --answer-memory-mb); try again shortly",
        retry_after=state.config.retry_after_s,
    )


def too_large(limit: int) -> JSONResponse:
    return refusal(413, f"the upload is over {limit / 2**20:g} MB (fer serve --max-upload-mb)")


def _shown(text: str, most: int = 80) -> str:
    """A client's header quoted in an answer: printable, and short."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return repr(text if len(text) <= most else text[:most] + "...")


def _mb(size: int) -> str:
    return f"{size / 2**20:,.1f} MB"
