"""A small PostgREST-compatible HTTP gateway over a real PostgreSQL, for tests.

PostgREST cannot be installed here, so the Supabase store's tests send the
real supabase client's requests to this gateway, which serves the part of
PostgREST's API the store uses, as PostgREST documents it:

- ``GET``/``HEAD /rest/v1/<table>``: ``select=`` (columns or ``*``), filters
  ``col=<op>.<value>`` (``eq neq gt gte lt lte like ilike in is``, with
  ``not.``), ``order=col.desc.nullslast,...``, ``limit``, ``offset``;
  ``Prefer: count=exact`` adds the total to ``Content-Range: 0-9/42``.
- ``POST /rest/v1/<table>``: a JSON object or array, ``columns=``, ``Prefer:
  return=representation|minimal`` and ``resolution=merge-duplicates|
  ignore-duplicates`` with ``on_conflict=``.
- ``PATCH`` and ``DELETE /rest/v1/<table>`` with filters.
- ``POST /rest/v1/rpc/<function>`` with a JSON object of named arguments.

Each request runs in one transaction as the role its JWT names (from
``Authorization: Bearer`` or ``apikey``; HS256 signed with
:data:`JWT_SECRET`), with ``request.jwt.claims`` set, so row-level security
applies for real. Errors come back in PostgREST's shape and status codes.
:meth:`PostgrestGateway.fail_next` and :meth:`PostgrestGateway.fail_for`
make it answer 503 (or drop the connection) without touching the database.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

JWT_SECRET = "bulkgpt-tests-jwt-secret-with-at-least-32-characters"
REST_PREFIX = "/rest/v1/"
RESERVED_PARAMS = {"select", "order", "limit", "offset", "on_conflict", "columns"}
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
OPERATORS = {
    "eq": "=",
    "neq": "<>",
    "gt": ">",
    "gte": ">=",
    "lt": "<",
    "lte": "<=",
    "like": "like",
    "ilike": "ilike",
}
IS_VALUES = {"null": "null", "not_null": "not null", "true": "true"}
IS_VALUES |= {"false": "false", "unknown": "unknown"}
UNAVAILABLE = {
    "code": "PGRST001",
    "message": "Database client error. Retrying the connection.",
    "details": "The gateway was told to fail this request.",
    "hint": None,
}

NOTHING = sql.SQL("")

Params = list[tuple[str, str]]
Operation = Callable[[psycopg.Connection[Any]], "Reply"]


def make_jwt(
    role: str, sub: str | None = None, *, secret: str = JWT_SECRET, ttl_s: int = 3600
) -> str:
    """An HS256 JWT like Supabase's (``role``, and ``sub`` for a user)."""
    claims: dict[str, Any] = {"role": role, "iss": "supabase"}
    claims["exp"] = int(time.time()) + ttl_s
    if sub is not None:
        claims["sub"] = sub
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class ApiError(Exception):
    """An error answered in PostgREST's JSON shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = {"code": code, "message": message, "details": details}
        self.error["hint"] = hint

    def reply(self) -> Reply:
        return json_reply(self.status, self.error)


def json_reply(status: int, value: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(value).encode(), headers or {})


@dataclass(frozen=True)
class _Fault:
    status: int | None  # None: drop the connection without an answer


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    query: str
    status: int


# -- the server -------------------------------------------------------------


class PostgrestGateway:
    """PostgREST's API for the tests, on a free port of 127.0.0.1."""

    def __init__(self, dsn: str, *, jwt_secret: str = JWT_SECRET) -> None:
        self.dsn = dsn
        self.jwt_secret = jwt_secret
        self.requests: list[LoggedRequest] = []
        self._pool = _Pool(dsn)
        self._lock = threading.Lock()
        self._fail_count = 0
        self._fail_until = 0.0
        self._fail_status: int | None = 503
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> PostgrestGateway:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.gateway = self  # type: ignore[attr-defined]
        self._server = server
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._pool.clear()

    @property
    def url(self) -> str:
        """The project URL to give the supabase client (REST is under /rest/v1)."""
        assert self._server is not None, "start() the gateway first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def service_role_key(self) -> str:
        return make_jwt("service_role", secret=self.jwt_secret)

    @property
    def anon_key(self) -> str:
        return make_jwt("anon", secret=self.jwt_secret)

    def user_jwt(self, user_id: str) -> str:
        """A signed-in user's access token."""
        return make_jwt("authenticated", user_id, secret=self.jwt_secret)

    # -- faults and the request log, for tests -------------------------------

    def fail_next(self, count: int, *, status: int | None = 503) -> None:
        """Answer the next ``count`` requests with ``status`` (None: drop them)."""
        with self._lock:
            self._fail_count, self._fail_status = count, status

    def fail_for(self, seconds: float, *, status: int | None = 503) -> None:
        """Answer every request for ``seconds`` with ``status`` (None: drop)."""
        with self._lock:
            self._fail_until = time.monotonic() + seconds
            self._fail_status = status

    def reset(self) -> None:
        """No faults planned; an empty request log."""
        with self._lock:
            self._fail_count, self._fail_until, self._fail_status = 0, 0.0, 503
            self.requests.clear()

    def count(self, method: str | None = None, path: str = "") -> int:
        """How many requests were served, of a method and under a path."""
        return sum(
            1
            for r in list(self.requests)
            if (method is None or r.method == method) and r.path.startswith(path)
        )

    def _planned_fault(self) -> _Fault | None:
        """The fault this request meets, if one is planned."""
        with self._lock:
            failing = self._fail_count > 0 or time.monotonic() < self._fail_until
            if not failing:
                return None
            self._fail_count = max(self._fail_count - 1, 0)
            return _Fault(self._fail_status)

    def _log(self, method: str, path: str, query: str, status: int) -> None:
        with self._lock:
            self.requests.append(LoggedRequest(method, path, query, status))

    # -- one request ---------------------------------------------------------

    def handle(
        self, method: str, path: str, query: str, headers: Any, body: bytes
    ) -> Reply:
        """Serve one request; every failure becomes PostgREST's error reply."""
        try:
            if not path.startswith(REST_PREFIX):
                raise ApiError(404, "PGRST125", "Invalid path specified in request URL")
            claims = self._claims(headers)
            params = parse_qsl(query, keep_blank_values=True)
            prefer = _prefer(headers.get_all("Prefer") or [])
            target = path[len(REST_PREFIX) :]
            operation = _operation(method, target, params, prefer, headers, body)
            return self._run(operation, claims, read_only=method in ("GET", "HEAD"))
        except ApiError as exc:
            return exc.reply()
        except ValueError as exc:  # a number or a name that does not parse
            return ApiError(400, "PGRST100", f"Bad request: {exc}").reply()

    def _claims(self, headers: Any) -> dict[str, Any]:
        auth = headers.get("Authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        token = token or headers.get("apikey", "")
        if not token:
            raise ApiError(401, "PGRST301", "No API key found in request")
        try:
            return jwt.decode(token, self.jwt_secret, algorithms=["HS256"])
        except jwt.ExpiredSignatureError as exc:
            raise ApiError(401, "PGRST303", "JWT expired") from exc
        except jwt.InvalidTokenError as exc:
            raise ApiError(401, "PGRST301", f"JWT could not be decoded: {exc}") from exc

    def _run(
        self, operation: Operation, claims: dict[str, Any], *, read_only: bool
    ) -> Reply:
        role = str(claims.get("role") or "anon")
        try:
            with self._pool.connection() as conn, conn.transaction():
                if read_only:
                    conn.execute("set transaction read only")
                conn.execute(
                    "select set_config('role', %s, true), "
                    "set_config('request.jwt.claims', %s, true)",
                    (role, json.dumps(claims)),
                )
                return operation(conn)
        except psycopg.Error as exc:
            if _connection_lost(exc):
                raise ApiError(
                    503, "PGRST000", "Could not connect with the database", str(exc)
                ) from exc
            raise _database_error(exc, role) from exc


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle's
    # algorithm and delayed ACKs add 40 ms to every keep-alive request.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        gateway: PostgrestGateway = self.server.gateway  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = gateway._planned_fault()
        if fault is None:
            reply = gateway.handle(method, url.path, url.query, self.headers, body)
        elif fault.status is None:
            gateway._log(method, url.path, url.query, 0)
            self.close_connection = True
            return
        else:
            reply = json_reply(fault.status, UNAVAILABLE)
        gateway._log(method, url.path, url.query, reply.status)
        self.send_response(reply.status)
        if reply.body or reply.status not in (204, 304):
            self.send_header("Content-Type", "application/json; charset=utf-8")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("gateway: " + format, *args)


class _Pool:
    """Idle connections as ``authenticator``, dropped all at once on failure."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
        try:
            yield conn
        finally:
            if conn.broken or conn.closed:
                # The server went away: every idle connection is stale too.
                conn.close()
                self.clear()
            else:
                with self._lock:
                    self._idle.append(conn)

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


# -- requests to SQL --------------------------------------------------------


def _operation(
    method: str,
    target: str,
    params: Params,
    prefer: dict[str, str],
    headers: Any,
    body: bytes,
) -> Operation:
    """What a request asks for, as a function of the connection."""
    if target.startswith("rpc/"):
        if method != "POST":
            raise ApiError(
                405, "PGRST101", "Only POST calls of functions are served here"
            )
        name = _name(target[4:])
        args = _json_body(body, {})
        if not isinstance(args, dict):
            raise ApiError(400, "PGRST102", "Function arguments must be a JSON object")
        return lambda conn: _call_function(conn, name, args)
    table = sql.Identifier("public", _name(target))
    single = headers.get("Accept", "") == "application/vnd.pgrst.object+json"
    if method in ("GET", "HEAD"):
        return lambda conn: _read(conn, table, params, prefer, single)
    if method == "POST":
        rows = _json_body(body, None)
        rows = [rows] if isinstance(rows, dict) else rows
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ApiError(
                400, "PGRST102", "Expected a JSON object or an array of them"
            )
        return lambda conn: _insert(conn, table, rows, params, prefer)
    if method == "PATCH":
        values = _json_body(body, None)
        if not isinstance(values, dict):
            raise ApiError(400, "PGRST102", "Expected a JSON object")
        return lambda conn: _update(conn, table, values, params, prefer)
    if method == "DELETE":
        return lambda conn: _delete(conn, table, params, prefer)
    raise ApiError(405, "PGRST117", f"Unsupported HTTP method: {method}")


def _read(
    conn: psycopg.Connection[Any],
    table: sql.Identifier,
    params: Params,
    prefer: dict[str, str],
    single: bool,
) -> Reply:
    where, args = _where(params)
    options = dict(params)
    offset = int(options.get("offset") or 0)
    query = sql.SQL("select {} from {}{}{}").format(
        _select_list(options.get("select", "*")),
        table,
        where,
        _order(options.get("order")),
    )
    if options.get("limit"):
        query += sql.SQL(" limit {}").format(sql.Literal(int(options["limit"])))
    if offset:
        query += sql.SQL(" offset {}").format(sql.Literal(offset))
    body, count = _as_json(conn, query, args)
    total = "*"
    if prefer.get("count") in ("exact", "planned", "estimated"):
        found = conn.execute(
            sql.SQL("select count(*) from {}{}").format(table, where), args
        )
        total = str(found.fetchone()[0])  # type: ignore[index]
    span = f"{offset}-{offset + count - 1}" if count else "*"
    headers = {"Content-Range": f"{span}/{total}"}
    if single:
        if count != 1:
            raise ApiError(
                406,
                "PGRST116",
                "JSON object requested, multiple (or no) rows returned",
                f"The result contains {count} rows",
            )
        return json_reply(200, json.loads(body)[0], headers)
    return Reply(200, body.encode(), headers)


def _insert(
    conn: psycopg.Connection[Any],
    table: sql.Identifier,
    rows: list[dict[str, Any]],
    params: Params,
    prefer: dict[str, str],
) -> Reply:
    options = dict(params)
    if not rows:
        return Reply(201, b"[]" if prefer.get("return") == "representation" else b"")
    columns = _columns(options.get("columns")) or list(rows[0])
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    statement = sql.SQL(
        "insert into {} ({}) select {} from json_populate_recordset(null::{}, %s::json)"
    ).format(table, names, names, table)
    resolution = prefer.get("resolution")
    if resolution in ("merge-duplicates", "ignore-duplicates"):
        keys = _columns(options.get("on_conflict")) or _primary_key(conn, table)
        target = sql.SQL(", ").join(map(sql.Identifier, keys))
        if resolution == "ignore-duplicates":
            statement += sql.SQL(" on conflict ({}) do nothing").format(target)
        else:
            sets = sql.SQL(", ").join(
                sql.SQL("{} = excluded.{}").format(sql.Identifier(c), sql.Identifier(c))
                for c in columns
            )
            statement += sql.SQL(" on conflict ({}) do update set {}").format(
                target, sets
            )
    return _write(conn, statement, [json.dumps(rows)], options, prefer, created=True)


def _update(
    conn: psycopg.Connection[Any],
    table: sql.Identifier,
    values: dict[str, Any],
    params: Params,
    prefer: dict[str, str],
) -> Reply:
    where, args = _where(params)
    names = sql.SQL(", ").join(map(sql.Identifier, values))
    statement = sql.SQL(
        "update {} set ({}) = (select {} from json_populate_record(null::{}, %s)){}"
    ).format(table, names, names, table, where)
    return _write(conn, statement, [json.dumps(values), *args], dict(params), prefer)


def _delete(
    conn: psycopg.Connection[Any],
    table: sql.Identifier,
    params: Params,
    prefer: dict[str, str],
) -> Reply:
    where, args = _where(params)
    statement = sql.SQL("delete from {}{}").format(table, where)
    return _write(conn, statement, args, dict(params), prefer)


def _write(
    conn: psycopg.Connection[Any],
    statement: sql.Composed,
    args: list[Any],
    options: dict[str, str],
    prefer: dict[str, str],
    *,
    created: bool = False,
) -> Reply:
    """Run a data-changing statement; answer with its rows or none."""
    written = sql.SQL("with written as ({} returning *) ").format(statement)
    query = sql.SQL("select {} from written").format(
        _select_list(options.get("select", "*"))
    )
    body, count = _as_json(conn, query, args, written)
    headers = {"Content-Range": f"0-{count - 1}/*" if count else "*/*"}
    if prefer.get("return") == "representation":
        return Reply(201 if created else 200, body.encode(), headers)
    return Reply(201 if created else 204, b"", headers)


def _call_function(
    conn: psycopg.Connection[Any], name: str, args: dict[str, Any]
) -> Reply:
    """``public.<name>(arg := ...)`` with the JSON arguments, as PostgREST calls it."""
    found = _find_function(conn, name, set(args))
    function = sql.Identifier("public", name)
    if args:
        types = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(found.types[n]))
            for n in args
        )
        source = sql.SQL("json_to_record(%s::json) as _args ({})").format(types)
    else:
        source = sql.SQL("(select) as _args")
    call = sql.SQL("{}({})").format(
        function,
        sql.SQL(", ").join(
            sql.SQL("{} := _args.{}").format(sql.Identifier(n), sql.Identifier(n))
            for n in args
        ),
    )
    params = [json.dumps(args)] if args else []
    if found.returns_set:
        query = sql.SQL(
            "select coalesce(json_agg(_r), '[]')::text from {}, lateral {} as _r"
        ).format(source, call)
    elif found.returns_void:
        query = sql.SQL("select {} from {}").format(call, source)
    else:
        query = sql.SQL("select to_json({})::text from {}").format(call, source)
    row = conn.execute(query, params).fetchone()
    if found.returns_void:
        return Reply(204)
    return Reply(200, (row[0] if row and row[0] is not None else "null").encode())


@dataclass(frozen=True)
class _Function:
    types: dict[str, str]
    returns_set: bool
    returns_void: bool


def _find_function(
    conn: psycopg.Connection[Any], name: str, given: set[str]
) -> _Function:
    """The overload of ``public.<name>`` whose argument names fit the call."""
    rows = conn.execute(
        "select p.proretset, p.prorettype = 'void'::regtype, p.pronargs, "
        "p.pronargdefaults, coalesce(p.proargnames, '{}'), "
        "coalesce(p.proargmodes::text[], '{}'), "
        "array(select format_type(t, null) from unnest(p.proargtypes) t) "
        "from pg_proc p where p.pronamespace = 'public'::regnamespace "
        "and p.proname = %s",
        (name,),
    ).fetchall()
    for returns_set, returns_void, nargs, ndefaults, names, modes, types in rows:
        modes = modes or ["i"] * len(names)
        inputs = [n for n, m in zip(names, modes, strict=True) if m in "ibv"]
        if given <= set(inputs) and set(inputs[: nargs - ndefaults]) <= given:
            arg_types = dict(zip(inputs, types, strict=True))
            return _Function(arg_types, returns_set, returns_void)
    listed = ", ".join(sorted(given))
    raise ApiError(
        404,
        "PGRST202",
        f"Could not find the function public.{name}({listed}) in the schema cache",
        hint="Check the function's name and argument names.",
    )


# -- query string parts -----------------------------------------------------


def _where(params: Params) -> tuple[sql.Composable, list[Any]]:
    """The filters of a query string as a WHERE clause and its arguments."""
    parts: list[sql.Composable] = []
    args: list[Any] = []
    for key, value in params:
        if key in RESERVED_PARAMS:
            continue
        condition, values = _condition(_name(key.strip('"')), value)
        parts.append(condition)
        args.extend(values)
    if not parts:
        return sql.SQL(""), args
    return sql.SQL(" where ") + sql.SQL(" and ").join(parts), args


def _condition(column: str, text: str) -> tuple[sql.Composable, list[Any]]:
    negate = text.startswith("not.")
    op, _, value = text.removeprefix("not.").partition(".")
    name = sql.Identifier(column)
    if op in OPERATORS:
        if op in ("like", "ilike"):
            value = value.replace("*", "%")
        condition = sql.SQL("{} {} %s").format(name, sql.SQL(OPERATORS[op]))
        values: list[Any] = [value]
    elif op == "in":
        values = _in_list(value)
        marks = sql.SQL(", ").join(sql.Placeholder() * len(values))
        condition = (
            sql.SQL("{} in ({})").format(name, marks) if values else sql.SQL("false")
        )
    elif op == "is" and value in IS_VALUES:
        condition = sql.SQL("{} is {}").format(name, sql.SQL(IS_VALUES[value]))
        values = []
    else:
        raise ApiError(400, "PGRST100", f'"failed to parse filter ({text})"')
    return (sql.SQL("not ({})").format(condition) if negate else condition), values


def _in_list(text: str) -> list[str]:
    """The values of ``(a,"b,c",d)``; double quotes protect commas."""
    if not (text.startswith("(") and text.endswith(")")):
        raise ApiError(400, "PGRST100", f'"failed to parse filter (in.{text})"')
    values: list[str] = []
    current, quoted, escaped, was_quoted = "", False, False, False
    for char in text[1:-1]:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted, was_quoted = not quoted, True
        elif char == "," and not quoted:
            values.append(current if was_quoted else current.strip())
            current, was_quoted = "", False
        else:
            current += char
    if current or was_quoted or values:
        values.append(current if was_quoted else current.strip())
    return values


def _order(text: str | None) -> sql.Composable:
    if not text:
        return sql.SQL("")
    terms = []
    for term in text.split(","):
        column, *modifiers = term.split(".")
        parts: list[sql.Composable] = [sql.Identifier(_name(column.strip('"')))]
        for modifier in modifiers:
            words = {"asc": "asc", "desc": "desc"}
            words |= {"nullsfirst": "nulls first", "nullslast": "nulls last"}
            if modifier not in words:
                raise ApiError(400, "PGRST100", f'"failed to parse order ({text})"')
            parts.append(sql.SQL(words[modifier]))
        terms.append(sql.SQL(" ").join(parts))
    return sql.SQL(" order by ") + sql.SQL(", ").join(terms)


def _select_list(text: str) -> sql.Composable:
    if text.strip() in ("", "*"):
        return sql.SQL("*")
    if "(" in text:
        raise ApiError(
            400, "PGRST100", "Embedded resources are not served by this gateway"
        )
    items = []
    for item in text.replace(" ", "").split(","):
        alias, _, column = item.rpartition(":")
        name = sql.Identifier(_name(column.strip('"')))
        items.append(
            sql.SQL("{} as {}").format(name, sql.Identifier(alias)) if alias else name
        )
    return sql.SQL(", ").join(items)


def _columns(text: str | None) -> list[str]:
    if not text:
        return []
    return [_name(c.strip().strip('"')) for c in text.split(",")]


def _primary_key(conn: psycopg.Connection[Any], table: sql.Identifier) -> list[str]:
    rows = conn.execute(
        "select a.attname from pg_index i join pg_attribute a "
        "on a.attrelid = i.indrelid and a.attnum = any (i.indkey) "
        "where i.indrelid = %s::regclass and i.indisprimary",
        (table.as_string(conn),),
    ).fetchall()
    return [r[0] for r in rows]


def _as_json(
    conn: psycopg.Connection[Any],
    query: sql.Composable,
    args: list[Any],
    with_clause: sql.Composable = NOTHING,
) -> tuple[str, int]:
    """A query's rows as a JSON array text, and how many there are."""
    wrapped = sql.SQL(
        "{}select coalesce(json_agg(_row), '[]')::text, count(*) from ({}) _row"
    ).format(with_clause, query)
    row = conn.execute(wrapped, args).fetchone()
    assert row is not None
    return row[0], int(row[1])


def _prefer(values: list[str]) -> dict[str, str]:
    prefer = {}
    for value in values:
        for item in value.split(","):
            key, _, setting = item.strip().partition("=")
            prefer[key] = setting
    return prefer


def _json_body(body: bytes, empty: Any) -> Any:
    if not body.strip():
        return empty
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ApiError(400, "PGRST102", "Empty or invalid json", str(exc)) from exc


def _name(text: str) -> str:
    if not NAME.match(text):
        raise ApiError(400, "PGRST100", f"Not a valid name: {text!r}")
    return text


# -- database errors --------------------------------------------------------

#: PostgREST's HTTP status for a SQLSTATE (exact codes first, then classes).
STATUS_BY_STATE = {
    "23503": 409,
    "23505": 409,
    "25006": 405,
    "42883": 404,
    "42P01": 404,
    "42P17": 500,
    "53400": 500,
    "P0001": 400,
}
STATUS_BY_CLASS = {
    "08": 503,
    "09": 500,
    "0L": 403,
    "0P": 403,
    "25": 500,
    "28": 403,
    "2D": 500,
    "38": 500,
    "39": 500,
    "3B": 500,
    "40": 500,
    "53": 503,
    "54": 500,
    "55": 500,
    "57": 500,
    "58": 500,
    "F0": 500,
    "HV": 500,
    "P0": 500,
    "XX": 500,
}


def _connection_lost(exc: psycopg.Error) -> bool:
    state = exc.sqlstate
    return isinstance(exc, psycopg.OperationalError) and (
        state is None or state.startswith(("08", "57P"))
    )


def _database_error(exc: psycopg.Error, role: str) -> ApiError:
    state = exc.sqlstate or "XX000"
    diag = exc.diag
    if state == "42501":
        status = 401 if role == "anon" else 403
    elif state.startswith("PT") and state[2:].isdigit():
        status = int(state[2:])
    else:
        status = STATUS_BY_STATE.get(state) or STATUS_BY_CLASS.get(state[:2], 400)
    message = diag.message_primary or str(exc)
    return ApiError(status, state, message, diag.message_detail, diag.message_hint)
