"""Card `detail` Markdown -> HTML that is safe to insert into the page.

Raw HTML in the Markdown is not interpreted (markdown-it-py with `html` off, so `<script>` stays
text), and the result is cleaned again with nh3 (Ammonia) to an allow-list of tags, with links
only to http(s) URLs and `rel="noopener noreferrer"`: two independent layers, so a card (from a
model, or a hostile service) cannot run script or restyle the page.
"""
from __future__ import annotations

import nh3
from markdown_it import MarkdownIt

_MD = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(["table", "strikethrough"])
TAGS = {"p", "br", "strong", "em", "del", "code", "pre", "blockquote", "ul", "ol", "li", "hr",
        "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "a"}
ATTRIBUTES = {"a": {"href", "title"}, "th": {"style"}, "td": {"style"}}


def render(markdown: str) -> str:
    html = _MD.render(str(markdown or ""))
    return nh3.clean(html, tags=TAGS, attributes=ATTRIBUTES, url_schemes={"http", "https"},
                     link_rel="noopener noreferrer", filter_style_properties={"text-align"})
