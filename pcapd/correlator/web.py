"""The correlator's Flask app: HTML pages and the JSON API over one service.

Flask, because ShoDoHFlo's app is Flask and its users know it; pages are
Jinja templates with autoescaping, the chains are SVG drawn by svg.py. A
strict Content-Security-Policy (scripts only from this server) stands behind
the escaping. Bad input answers 400 with the rule broken, on the page or as
`{"error": ...}`; nothing is retried or guessed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import redis
from flask import Flask, Response, abort, jsonify, redirect, render_template, request, session
from werkzeug.exceptions import HTTPException

from agents.reader_values import ReaderError
from pcapd.core.config import Config
from pcapd.core.logs import event
from pcapd.core.redis_conn import Client
from pcapd.correlator import captures, security, svg
from pcapd.correlator.service import Correlator, clients_query

log = logging.getLogger("pcapd.correlator")
LIVE_RESERVE = 2  # server threads never taken by live result streams
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def create_app(config: Config, redis_client: Client, s3: Any | None = None) -> Flask:
    """`s3`: a boto3 S3 client for pre-signed links, or None to show s3:// URIs."""
    app = Flask(__name__)
    security.configure(app, config.correlator)
    correlator = Correlator(redis_client, config)
    c = config.correlator
    live_slots = threading.BoundedSemaphore(max(1, c.threads - LIVE_RESERVE))

    def decorate(event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "links": captures.links(event, config, s3)}

    @app.context_processor
    def common() -> dict[str, Any]:
        return {
            "changes_off": security.changes_allowed(c), "logged_in": security.logged_in(),
            "csrf": security.csrf_token(),
        }  # fmt: skip

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.errorhandler(ReaderError)
    @app.errorhandler(captures.CaptureFormError)
    def bad_input(exc: ValueError) -> tuple[Any, int]:
        return _error(400, str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Any, int]:
        return _error(exc.code or 500, exc.description or exc.name)

    def redis_failed(path: str, exc: redis.RedisError) -> str:
        """Logged, the operator's one sign of it (the user sees the page, not
        the log); returns the reason the user is shown."""
        event(log, "correlator_redis_error", logging.WARNING, path=path,
              redis=config.redis.describe(), error=str(exc))  # fmt: skip
        return f"Redis at {config.redis.describe()}: {exc}"

    @app.errorhandler(redis.RedisError)
    def redis_down(exc: redis.RedisError) -> tuple[Any, int]:
        return _error(503, redis_failed(request.path, exc))

    # -- pages -------------------------------------------------------------
    @app.get("/")
    def clients_page() -> str:
        query = clients_query(request.args, config)
        return render_template("clients.html", page=correlator.clients(query), args=request.args)

    @app.get("/client/<client>")
    def client_page(client: str) -> str:
        by, others = request.args.get("by", "fqdn"), bool(request.args.get("others"))
        view = correlator.client_view(client, by, others, request.args.get("prefix"))
        sections = [("Chains", view.chains), ("No DNS behind these flows", view.no_dns),
                    ("NXDOMAIN", view.nxdomain)]  # fmt: skip
        pictures = [(title, svg.draw(view.client, nodes, title)) for title, nodes in sections]
        return render_template("client.html", view=view, pictures=pictures, args=request.args)

    @app.get("/pivot/name")
    def pivot_name() -> str:
        found = correlator.who_resolved(request.args.get("name", ""), request.args.get("cursor"))
        return render_template("pivot_name.html", found=found)

    @app.get("/pivot/address")
    def pivot_address() -> str:
        args = request.args
        found = correlator.who_talked(args.get("address", ""), args.get("port"), args.get("cursor"))
        return render_template("pivot_address.html", found=found)

    @app.get("/captures")
    def captures_page() -> str:
        return render_template("captures.html", events=_events(), args=request.args)

    @app.get("/capture/new")
    def capture_form() -> str:
        form = captures.parse_form(request.args, config)
        return render_template("capture_form.html", form=form, nodes=["any", *c.nodere],
                               aliases=captures.aliases(config), limits=c)  # fmt: skip

    @app.post("/capture")
    def capture_post() -> Any:
        security.require_change(c)
        body = _publish(captures.parse_form(request.form, config))
        return redirect(f"/capture/{body['id']}", code=303)

    @app.get("/capture/<request_id>")
    def capture_page(request_id: str) -> str:
        if captures.flow_of(request_id) is None:
            abort(404, "not a request id this correlator made")
        return render_template("capture.html", request_id=request_id,
                               flow=captures.flow_of(request_id))  # fmt: skip

    @app.post("/client/<client>/clear")
    def clear_client(client: str) -> Any:
        security.require_change(c)
        cleared = correlator.clear(client)
        return render_template("cleared.html", cleared=cleared)

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        message = None
        if request.method == "POST":
            why = security.changes_allowed(c)
            if why:
                abort(403, why)
            if security.token_matches(c, request.form.get("token", "")):
                security.log_in()
                return redirect("/", code=303)
            message = "that is not the correlator token"
        return render_template("login.html", message=message), 403 if message else 200

    @app.post("/logout")
    def logout() -> Any:
        security.require_change(c)
        session.clear()
        return redirect("/", code=303)

    # -- JSON API ----------------------------------------------------------
    @app.get("/api/clients")
    def api_clients() -> Response:
        return jsonify(correlator.clients(clients_query(request.args, config)))

    @app.get("/api/clients/<client>")
    def api_client(client: str) -> Response:
        args = request.args
        view = correlator.client_view(client, args.get("by", "fqdn"), bool(args.get("others")),
                                      args.get("prefix"))  # fmt: skip
        return jsonify(view.as_dict())

    @app.get("/api/pivot/name")
    def api_pivot_name() -> Response:
        return jsonify(
            correlator.who_resolved(request.args.get("name", ""), request.args.get("cursor"))
        )

    @app.get("/api/pivot/address")
    def api_pivot_address() -> Response:
        args = request.args
        return jsonify(
            correlator.who_talked(args.get("address", ""), args.get("port"), args.get("cursor"))
        )

    @app.get("/api/captures")
    def api_captures() -> Response:
        return jsonify({"captures": _events()})

    @app.post("/api/captures")
    def api_capture() -> Any:
        security.require_change(c)
        try:
            fields = request.get_json(silent=True)
        except RecursionError:  # json.loads raises it, not a ValueError, past ~1000 levels
            fields = None
        if not isinstance(fields, dict):
            abort(400, "send the capture form fields as a JSON object")
        body = _publish(captures.parse_form({k: str(v) for k, v in fields.items()}, config))
        return jsonify({"id": body["id"], "request": body}), 202

    @app.get("/api/captures/<request_id>/events")
    def api_capture_events(request_id: str) -> Response:
        if captures.flow_of(request_id) is None:
            abort(404, "not a request id this correlator made")
        # Each live stream holds a server thread: keep two for everything else.
        if not live_slots.acquire(blocking=False):
            abort(503, f"{c.threads - LIVE_RESERVE} live result pages are open already; "
                  "close one or raise [correlator] threads")  # fmt: skip
        wait = c.max_duration + c.result_wait
        try:  # subscribes and reads the stream now: Redis failing is a 503 here
            events = captures.live_events(redis_client, config, request_id, wait, decorate)
        except BaseException:
            live_slots.release()
            raise
        path = request.path  # the stream runs after the request context has gone

        def stream() -> Iterator[str]:
            try:
                yield from events
            except redis.RedisError as exc:  # too late for a 503: the reason as the last event
                yield captures.failed_event(redis_failed(path, exc))
            finally:
                live_slots.release()

        return Response(stream(), mimetype="text/event-stream",
                        headers={"X-Accel-Buffering": "no"})  # fmt: skip

    def _events() -> list[dict[str, Any]]:
        filters = {
            k: request.args.get(k, "").strip() for k in ("client", "address", "node", "alertid")
        }
        found = captures.recent(redis_client, config, filters, c.captures_shown)
        return [decorate(e) for e in found]

    def _publish(form: captures.CaptureForm) -> dict[str, Any]:
        return captures.publish(redis_client, config, form.request())

    return app


def _error(code: int, message: str) -> tuple[Any, int]:
    wants_json = request.path.startswith("/api/")
    if wants_json:
        return jsonify({"error": message}), code
    return render_template("error.html", code=code, message=message), code
