"""The API reference page: HTML rendered on the node from its OpenAPI document.

One self-contained page (its style inline, no scripts, nothing fetched from elsewhere), so it
works on a node with no internet access and under a strict content security policy. It lists
every operation by tag with its parameters, body and responses, and every schema with its
properties, linked to each other.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

__all__ = ["REFERENCE_HEADERS", "render"]

#: The page loads nothing and runs nothing.
REFERENCE_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "cache-control": "no-cache",
}

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;display:flex}
nav{width:16rem;flex:none;height:100vh;overflow:auto;position:sticky;top:0;background:#f3f5f8;padding:1rem;
box-sizing:border-box;font-size:13px}
nav a{display:block;color:#234;text-decoration:none;padding:1px 0}nav h3{margin:1rem 0 .3rem}
main{padding:1rem 2rem;max-width:60rem;min-width:0}
.op{border:1px solid #d5dbe3;border-radius:6px;margin:1rem 0;padding:.6rem 1rem}
.m{display:inline-block;min-width:4.2rem;font-weight:700;font-family:monospace}
.GET{color:#1769aa}.POST{color:#2b8a3e}.PUT{color:#b35c00}.DELETE{color:#c92a2a}.PATCH{color:#7048e8}
.OPTIONS,.HEAD{color:#555}
code,pre{font-family:ui-monospace,monospace;font-size:13px}pre{background:#f6f8fa;padding:.5rem;overflow:auto}
table{border-collapse:collapse;margin:.3rem 0}td,th{border-bottom:1px solid #e3e7ec;padding:2px 8px;
text-align:left;vertical-align:top}.tag{font-size:12px;background:#e7f0fb;border-radius:3px;padding:0 4px}
"""


def render(doc: dict[str, Any]) -> str:
    """The reference page for the OpenAPI document ``doc``."""
    info = doc.get("info", {})
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            for tag in op.get("tags") or ["other"]:
                by_tag.setdefault(tag, []).append((path, method.upper(), op))
    schemas = doc.get("components", {}).get("schemas", {})
    nav = ["<nav><strong>", escape(info.get("title", "API")), " ", escape(str(info.get("version", ""))),
           "</strong><br><a href='/openapi.json'>openapi.json</a>"]
    body = [f"<h1>{escape(info.get('title', 'API'))} API reference</h1>",
            f"<p>{escape(info.get('description', ''))}</p>", _security(doc)]
    for tag in sorted(by_tag):
        nav.append(f"<h3>{escape(tag)}</h3>")
        body.append(f"<h2 id='tag-{escape(tag)}'>{escape(tag)}</h2>")
        for path, method, op in by_tag[tag]:
            anchor = escape(op.get("operationId", f"{method}{path}"))
            nav.append(f"<a href='#{anchor}'><span class='m {method}'>{method}</span>{escape(path)}</a>")
            body.append(_operation(anchor, path, method, op))
    nav.append("<h3>schemas</h3>")
    body.append("<h2 id='schemas'>Schemas</h2>")
    for name in sorted(schemas):
        nav.append(f"<a href='#schema-{escape(name)}'>{escape(name)}</a>")
        body.append(_schema_section(name, schemas[name]))
    nav.append("</nav>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            "content='width=device-width,initial-scale=1'><title>"
            f"{escape(info.get('title', 'API'))} API reference</title><style>{_STYLE}</style></head><body>"
            + "".join(nav) + "<main>" + "".join(body) + "</main></body></html>")


def _security(doc: dict[str, Any]) -> str:
    schemes = doc.get("components", {}).get("securitySchemes", {})
    rows = "".join(f"<tr><td><code>{escape(n)}</code></td><td>{escape(s.get('scheme', s.get('type', '')))}</td>"
                   f"<td>{escape(s.get('description', ''))}</td></tr>" for n, s in schemes.items())
    return f"<h2>Authentication</h2><table>{rows}</table>"


def _operation(anchor: str, path: str, method: str, op: dict[str, Any]) -> str:
    out = [f"<div class='op' id='{anchor}'><div><span class='m {method}'>{method}</span> <code>{escape(path)}</code>"]
    security = op.get("security")
    if security == []:
        out.append(" <span class='tag'>no token</span>")
    elif security:
        out.append(" <span class='tag'>" + escape(" or ".join(k for s in security for k in s)) + "</span>")
    if op.get("x-edgenode-stream"):
        out.append(" <span class='tag'>streamed</span>")
    out.append(f"</div><p><strong>{escape(op.get('summary', ''))}</strong></p>")
    if op.get("description"):
        out.append(f"<p>{escape(op['description'])}</p>")
    params = op.get("parameters") or []
    if params:
        out.append("<table><tr><th>parameter</th><th>in</th><th>schema</th></tr>")
        for p in params:
            required = "" if p.get("required") else " (optional)"
            out.append(f"<tr><td><code>{escape(p['name'])}</code>{required}</td><td>{escape(p['in'])}</td>"
                       f"<td>{_inline(p.get('schema', {}))}</td></tr>")
        out.append("</table>")
    if "requestBody" in op:
        out.append("<p>Body: " + _media(op["requestBody"].get("content", {})) + "</p>")
    out.append("<table><tr><th>status</th><th>answer</th></tr>")
    for status, response in op.get("responses", {}).items():
        answer = _media(response["content"]) if "content" in response else "no content"
        out.append(f"<tr><td>{escape(status)}</td><td>{escape(response.get('description', ''))}: {answer}</td></tr>")
    out.append("</table></div>")
    return "".join(out)


def _media(content: dict[str, Any]) -> str:
    parts = []
    for media, entry in content.items():
        text = f"<code>{escape(media)}</code> {_inline(entry.get('schema', {}))}"
        if "x-edgenode-stream" in entry:
            text += f" streamed as {escape(entry['x-edgenode-stream'])}"
        if "x-edgenode-item" in entry:
            text += ", each " + _inline(entry["x-edgenode-item"])
        parts.append(text)
    return "; ".join(parts)


def _inline(schema: dict[str, Any]) -> str:
    """A short rendering of a schema: a link for a reference, its type and constraints otherwise."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"<a href='#schema-{escape(name)}'>{escape(name)}</a>"
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " | ".join(_inline(s) for s in schema[key])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        kind = " | ".join(kind)
    text = escape(str(kind))
    if kind == "array" and "items" in schema:
        text = f"array of {_inline(schema['items'])}"
    elif kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        text = f"object of {_inline(schema['additionalProperties'])}"
    extras = {k: v for k, v in schema.items() if k in ("enum", "const", "pattern", "minimum", "maximum",
                                                       "exclusiveMinimum", "exclusiveMaximum", "minLength",
                                                       "maxLength", "maxItems", "default", "format")}
    if extras:
        text += " <code>" + escape(json.dumps(extras, ensure_ascii=False)) + "</code>"
    return text


def _schema_section(name: str, schema: dict[str, Any]) -> str:
    out = [f"<div class='op' id='schema-{escape(name)}'><strong>{escape(name)}</strong>"]
    if schema.get("description"):
        out.append(f"<p>{escape(schema['description'])}</p>")
    props = schema.get("properties")
    if props:
        required = set(schema.get("required", ()))
        out.append("<table><tr><th>field</th><th>schema</th><th></th></tr>")
        for prop, sub in props.items():
            mark = "required" if prop in required else ""
            note = escape(sub.get("description", "")) if isinstance(sub, dict) else ""
            out.append(f"<tr><td><code>{escape(prop)}</code> {mark}</td><td>{_inline(sub)}</td><td>{note}</td></tr>")
        out.append("</table>")
    else:
        out.append(f"<p>{_inline(schema)}</p>")
    out.append("</div>")
    return "".join(out)
