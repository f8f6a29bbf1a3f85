"""``GET /docs``: the API described on one page made here from the OpenAPI schema.

FastAPI's own /docs and /redoc load their scripts from third-party CDNs: blank without a network,
and each visit tells those hosts who looks. This page is plain HTML, nothing fetched from elsewhere;
the machine-readable schema stays at /openapi.json.
"""

from __future__ import annotations

from html import escape

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 900px; padding: 0 20px 40px; color: #18181b; }
h1 { font-size: 22px; } h2 { font-size: 16px; margin: 28px 0 6px; font-family: ui-monospace, monospace; }
.method { display: inline-block; min-width: 48px; padding: 1px 6px; border-radius: 4px; color: #fff;
          background: #2563eb; }
.post { background: #16a34a; }
table { border-collapse: collapse; margin: 6px 0; }
td, th { border: 1px solid #e4e4e7; padding: 3px 8px; text-align: left; }
code { font-family: ui-monospace, monospace; } .muted { color: #71717a; }
"""


def api_page(schema: dict) -> str:
    """The endpoints of ``schema`` (an OpenAPI document): each one's summary, parameters, body and answers."""
    info = schema.get("info", {})
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{escape(info.get('title', 'API'))}: API</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(info.get('title', 'API'))} {escape(str(info.get('version', '')))}</h1>",
        f"<p>{escape(info.get('description', ''))}</p>",
        "<p class='muted'>The same, machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI). "
        "<a href='/'>The page</a> to drop photos on.</p>",
    ]
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            parts.append(_operation(method, path, operation))
    parts.append("</body></html>")
    return "\n".join(parts)


def _operation(method: str, path: str, operation: dict) -> str:
    html = [
        f"<h2><span class='method {escape(method)}'>{escape(method.upper())}</span> {escape(path)}</h2>",
        f"<p>{escape(operation.get('summary', ''))}</p>",
    ]
    if description := operation.get("description"):
        html.append(f"<p class='muted'>{escape(description)}</p>")
    parameters = operation.get("parameters", [])
    if parameters:
        html.append("<table><tr><th>parameter</th><th>in</th><th>what</th></tr>")
        for parameter in parameters:
            name, where, what = (escape(parameter.get(key, "")) for key in ("name", "in", "description"))
            html.append(f"<tr><td><code>{name}</code></td><td>{where}</td><td>{what}</td></tr>")
        html.append("</table>")
    if body := operation.get("requestBody"):
        kinds = ", ".join(escape(kind) for kind in body.get("content", {}))
        html.append(f"<p>Body: <code>{kinds}</code>{' (required)' if body.get('required') else ''}.</p>")
    answers = operation.get("responses", {})
    if answers:
        html.append("<table><tr><th>status</th><th>when</th></tr>")
        for status, answer in answers.items():
            html.append(f"<tr><td>{escape(str(status))}</td><td>{escape(answer.get('description', ''))}</td></tr>")
        html.append("</table>")
    return "\n".join(html)
