"""The web UI of ``undertow serve``: server-rendered pages, progressively enhanced.

Why this stack: Undertow is installed with ``pip`` and served by one Python process, often
on a machine without internet. Pages are rendered on the server with Jinja2 (already a
dependency, autoescaping on) and enhanced by htmx 2 and its SSE extension, vendored under
``static/vendor`` (55 kB, no build step, no Node at install time, nothing from a CDN). Every
page works without JavaScript (actions are plain forms that redirect back); with it, forms
submit in place and the run page and the debugger update live over Server-Sent Events.
Charts are inline SVG drawn on the server. A built single-page front end would need a
Node toolchain in every contributor's loop and a second, JavaScript copy of what the pages
show; this way the UI is a thin view over the same serialisers as the JSON API.

Routes (all but /login need the API token as a session; see :mod:`undertow.server.auth`)::

    GET  /                              syncs overview
    GET  /syncs/{sync}                  a sync: config, run history, chart, actions
    GET  /syncs/{sync}/model            model preview (first rows, mapped columns marked)
    GET  /syncs/{sync}/plan             plan preview (what the next run would send)
    GET  /syncs/{sync}/debugger         the live debugger (filter by status and key)
    GET  /syncs/{sync}/test             test a row
    GET  /runs/{run_id}                 a run: stages, counts, rejected and failed rows
    POST /syncs/{sync}/{action}         run, full, pause, resume, retry, test
"""

from undertow.server.ui.pages import ui_router

__all__ = ["ui_router"]
