"""The daemon's HTTP listener (`SUPERVISOR_HTTP_ADDR`, issue 15): the dashboard pages, the
read-only JSON API under `/api/v1/`, and `/metrics`.

- `server.py`: the aiohttp application and listener, authentication (a bearer token or a
  login form's session cookie), security headers (a strict Content-Security-Policy).
- `reader.py`: the run database read through the query path (`adapters/query.py`), off the
  event loop.
- `api.py`: the JSON API, with the fields of the CLI's `--json`.
- `pages.py`: the server-rendered pages (jinja2, autoescaped) and their live fragments.
- `templates/`, `static/`: the pages' HTML, CSS and JavaScript; `static/vendor/` the browser
  libraries (htmx, uPlot) with their licences. Nothing is loaded from outside the machine.
"""
