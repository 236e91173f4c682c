"""The Supabase store: the same contract over Supabase's REST API (PostgREST).

It talks to the project at SUPABASE_URL with SUPABASE_SERVICE_ROLE_KEY, a key
that bypasses row-level security and so stays on the server. That is why, when
the store has an owner, every request also filters by ``user_id`` (the SQL
functions take it as ``p_owner``).

What each operation costs in requests is the point of this store:

- rows are appended in chunks of at least 500 per request (``bulkgpt_add_rows``
  inserts them and bumps ``total_rows`` together);
- each flush of results is one request (``bulkgpt_record_results``);
- progress is one ``batches`` row.

Network errors, HTTP 5xx and 429 are retried with backoff (0.5, 1, 2 s), then
raised as :class:`StoreError` carrying Supabase's message. Every function the
store calls is safe to repeat: a retried flush or chunk counts once.
``requests_sent`` counts the HTTP requests, retries included.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

import httpx
from postgrest import APIError
from postgrest.types import ReturnMethod
from supabase import Client, ClientOptions, SupabaseException, create_client

from ..batches import (
    Batch,
    BatchStatus,
    NewBatch,
    PendingRow,
    ProgressSample,
    RowResult,
    RowStatus,
    StoredRow,
    utcnow,
)
from ..errors import BatchNotFound, LabRunNotFound, StoreError
from .base import EXPORT_PAGE_ROWS, INGEST_CHUNK_ROWS, Store
from .pg_schema import (
    MISSING_SCHEMA_FIX,
    as_uuid,
    batch_key,
    batch_owner,
    lab_run_key,
    owner_uuid,
    result_payload,
    row_bounds,
    without_nul,
)
from .records import (
    UPDATABLE_FIELDS,
    batch_from_record,
    lab_run_data,
    lab_run_from_record,
    lab_run_name,
    new_batch_id,
    new_batch_record,
    stored_row_from_record,
    to_datetime,
)

log = logging.getLogger(__name__)

#: Fewest rows sent in one insert request (the last chunk may be smaller).
MIN_CHUNK_ROWS = 500
#: Most rows one response may hold: Supabase's API caps responses at 1,000
#: rows by default, and a claimed row cut off from the answer would be lost.
MAX_RESPONSE_ROWS = 1000
#: Seconds to wait before each retry of a transient failure.
RETRY_DELAYS = (0.5, 1.0, 2.0)
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
TERMINAL = [RowStatus.SUCCEEDED.value, RowStatus.FAILED.value]
MISSING_CODES = {"PGRST202", "PGRST205", "42P01", "42883"}
AUTH_CODES = {"PGRST301", "PGRST302", "PGRST303", "42501"}
KEY_FIX = (
    "Set SUPABASE_SERVICE_ROLE_KEY to the project's service_role key "
    "(Project Settings, API keys); it stays on the server."
)


class SupabaseStore(Store):
    """Batches in a Supabase project, over its REST API."""

    label = "Supabase"

    def __init__(
        self,
        url: str,
        service_role_key: str,
        *,
        owner: str | None = None,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        timeout: httpx.Timeout = TIMEOUT,
    ) -> None:
        super().__init__(owner_uuid(owner))
        self.url = url
        self.retry_delays = tuple(retry_delays)
        #: HTTP requests sent so far, retries included.
        self.requests_sent = 0
        self._key = service_role_key
        self._timeout = timeout
        self._lock = threading.RLock()
        self._last_status: int | None = None
        self._http = httpx.Client(
            timeout=timeout,
            event_hooks={
                "request": [self._on_request],
                "response": [self._on_response],
            },
        )
        self.client = self._create_client()

    def scoped(self, owner: str | None) -> SupabaseStore:
        """The same project seen by one owner (its own HTTP client)."""
        return SupabaseStore(
            self.url,
            self._key,
            owner=owner,
            retry_delays=self.retry_delays,
            timeout=self._timeout,
        )

    def close(self) -> None:
        self._http.close()

    # -- HTTP ----------------------------------------------------------------

    def _create_client(self) -> Client:
        options = ClientOptions(
            httpx_client=self._http,
            postgrest_client_retry=False,
            auto_refresh_token=False,
            persist_session=False,
        )
        try:
            return create_client(self.url, self._key, options)
        except SupabaseException as exc:
            raise StoreError(
                f"The Supabase settings are not usable ({exc.message}). Set "
                "SUPABASE_URL to the project URL (https://<project>.supabase.co). "
                + KEY_FIX
            ) from exc

    def _on_request(self, request: httpx.Request) -> None:
        self.requests_sent += 1
        self._last_status = None

    def _on_response(self, response: httpx.Response) -> None:
        self._last_status = response.status_code

    def _execute(self, action: str, request: Any, batch_id: str | None = None) -> Any:
        """Send one built request, retrying transient failures; return its data."""
        attempts = len(self.retry_delays) + 1
        with self._lock:
            for attempt in range(1, attempts + 1):
                try:
                    return request.execute().data
                except (APIError, httpx.TransportError) as exc:
                    if attempt == attempts or not self._transient(exc):
                        raise self._error(action, exc, batch_id, attempt) from exc
                    delay = self.retry_delays[attempt - 1]
                    log.warning(
                        "Supabase failed while %s (%s); retry %s in %.1f s",
                        action,
                        _describe(exc),
                        attempt,
                        delay,
                    )
                    time.sleep(delay)
        raise AssertionError("unreachable")

    def _transient(self, exc: Exception) -> bool:
        if isinstance(exc, httpx.TransportError):
            return True
        status = self._last_status or 0
        return status == 429 or status >= 500

    def _error(
        self, action: str, exc: Exception, batch_id: str | None, attempts: int
    ) -> StoreError:
        """The project's error for a failed request, naming what to check."""
        if isinstance(exc, httpx.TransportError):
            return StoreError(
                f"Supabase cannot be reached at {self.url} while {action} "
                f"({_describe(exc)}; {attempts} attempts). Check SUPABASE_URL and "
                "the network; nothing already stored is lost."
            )
        assert isinstance(exc, APIError)
        code, status = exc.code or "", self._last_status or 0
        said = _describe(exc)
        if code == "PT404":
            return BatchNotFound(batch_id or "")
        if code in MISSING_CODES:
            return StoreError(
                f"Supabase lacks the BulkGPT schema ({said}). {MISSING_SCHEMA_FIX}"
            )
        if code in AUTH_CODES or status in (401, 403):
            return StoreError(
                f"Supabase refused the key while {action} ({said}). {KEY_FIX}"
            )
        if "batches_user_id_fkey" in f"{exc.message} {exc.details}":
            return StoreError(
                "A batch's owner must be a user of the project (Authentication, "
                f"Users) ({said}). Sign the user up first."
            )
        if status >= 500 or status == 429:
            return StoreError(
                f"Supabase failed while {action} ({said}; HTTP {status}, {attempts} "
                "attempts). Check the project's status page; nothing already "
                "stored is lost."
            )
        return StoreError(f"Supabase refused {action}: {said}.")

    def _rpc(
        self, action: str, function: str, args: dict[str, Any], batch_id: str
    ) -> Any:
        """Call one ``bulkgpt_*`` function with this store's owner."""
        request = self.client.rpc(function, {**args, "p_owner": self.owner})
        return self._execute(action, request, batch_id)

    def _owned(self, query: Any) -> Any:
        return query if self.owner is None else query.eq("user_id", self.owner)

    # -- batches -------------------------------------------------------------

    def create_batch(self, spec: NewBatch) -> Batch:
        record = new_batch_record(spec)
        record["user_id"] = batch_owner(spec.user_id, self.owner)
        # Ignoring a duplicate id makes a retried insert harmless.
        request = self.client.table("batches").upsert(
            without_nul(record),
            on_conflict="id",
            ignore_duplicates=True,
            returning=ReturnMethod.representation,
        )
        rows = self._execute("creating a batch", request)
        return batch_from_record(rows[0]) if rows else self.get_batch(record["id"])

    def add_rows(
        self,
        batch_id: str,
        rows: Iterable[Mapping[str, str]],
        *,
        chunk_rows: int = INGEST_CHUNK_ROWS,
    ) -> int:
        """Append rows, at least :data:`MIN_CHUNK_ROWS` per request."""
        start = self.get_batch(batch_id).total_rows
        size = max(chunk_rows, MIN_CHUNK_ROWS)
        iterator = iter(rows)
        added = 0
        while chunk := [dict(r) for r in islice(iterator, size)]:
            args = {
                "p_batch_id": batch_key(batch_id),
                "p_start": start + added,
                "p_rows": without_nul(chunk),
            }
            self._rpc("adding rows", "bulkgpt_add_rows", args, batch_id)
            added += len(chunk)
        return added

    def get_batch(self, batch_id: str) -> Batch:
        query = self.client.table("batches").select("*").eq("id", batch_key(batch_id))
        rows = self._execute("reading a batch", self._owned(query), batch_id)
        if not rows:
            raise BatchNotFound(batch_id)
        return batch_from_record(rows[0])

    def list_batches(self, *, limit: int = 200) -> list[Batch]:
        query = self._owned(self.client.table("batches").select("*"))
        query = query.order("created_at", desc=True).limit(limit)
        return [batch_from_record(r) for r in self._execute("listing batches", query)]

    def update_batch(self, batch_id: str, **fields: Any) -> None:
        unknown = set(fields) - UPDATABLE_FIELDS
        if unknown:
            raise ValueError(f"Fields that cannot be set: {sorted(unknown)}")
        values = {**without_nul(fields), "updated_at": utcnow()}
        query = (
            self.client.table("batches").update(values).eq("id", batch_key(batch_id))
        )
        rows = self._execute(
            "updating a batch", self._owned(query).select("id"), batch_id
        )
        if not rows:
            raise BatchNotFound(batch_id)

    def set_status(
        self,
        batch_id: str,
        status: BatchStatus,
        *,
        only_from: Iterable[BatchStatus] | None = None,
        last_error: str | None = None,
    ) -> bool:
        args = {
            "p_batch_id": batch_key(batch_id),
            "p_status": status.value,
            "p_only_from": None if only_from is None else [s.value for s in only_from],
            "p_last_error": without_nul(last_error),
        }
        done = self._rpc(
            "changing a batch's status", "bulkgpt_set_status", args, batch_id
        )
        return bool(done)

    def delete_batch(self, batch_id: str) -> None:
        query = self.client.table("batches").delete().eq("id", batch_key(batch_id))
        rows = self._execute(
            "deleting a batch", self._owned(query).select("id"), batch_id
        )
        if not rows:
            raise BatchNotFound(batch_id)

    # -- rows, for the engine ------------------------------------------------

    def requeue_running(
        self, batch_id: str, row_range: tuple[int, int] | None = None
    ) -> int:
        lo, hi = row_bounds(row_range)
        args = {"p_batch_id": batch_key(batch_id), "p_lo": lo, "p_hi": hi}
        return int(
            self._rpc("requeueing rows", "bulkgpt_requeue_running", args, batch_id)
        )

    def claim_rows(
        self,
        batch_id: str,
        *,
        after_index: int,
        limit: int,
        row_range: tuple[int, int] | None = None,
    ) -> list[PendingRow]:
        lo, hi = row_bounds(row_range)
        args = {
            "p_batch_id": batch_key(batch_id),
            "p_after": after_index,
            "p_limit": min(limit, MAX_RESPONSE_ROWS),
            "p_lo": lo,
            "p_hi": hi,
        }
        rows = self._rpc("claiming rows", "bulkgpt_claim_rows", args, batch_id)
        claimed = [PendingRow(r["row_index"], r["input"]) for r in rows]
        return sorted(claimed, key=lambda r: r.index)

    def release_rows(self, batch_id: str, indexes: Sequence[int]) -> None:
        key = as_uuid(batch_id)
        if not indexes or key is None:
            return
        args = {"p_batch_id": key, "p_indexes": list(indexes)}
        self._rpc("releasing rows", "bulkgpt_release_rows", args, batch_id)

    def record_results(self, batch_id: str, results: Sequence[RowResult]) -> int:
        """Write a flush of results in one request (the counters move with it)."""
        if not results:
            return 0
        args = {"p_batch_id": batch_key(batch_id), "p_results": result_payload(results)}
        return int(
            self._rpc("recording results", "bulkgpt_record_results", args, batch_id)
        )

    def reset_failed(self, batch_id: str, kinds: Iterable[str] | None = None) -> int:
        args = {
            "p_batch_id": batch_key(batch_id),
            "p_kinds": None if kinds is None else list(kinds),
        }
        return int(
            self._rpc("resetting failed rows", "bulkgpt_reset_failed", args, batch_id)
        )

    # -- progress over time --------------------------------------------------

    def add_progress_sample(self, batch_id: str) -> None:
        key = as_uuid(batch_id)
        if key is not None:
            args = {"p_batch_id": key}
            self._rpc(
                "sampling progress", "bulkgpt_add_progress_sample", args, batch_id
            )

    def progress_samples(
        self, batch_id: str, *, limit: int = 1000
    ) -> list[ProgressSample]:
        self.get_batch(batch_id)
        query = (
            self.client.table("batch_progress")
            .select("at,succeeded,failed")
            .eq("batch_id", batch_key(batch_id))
            .order("at", desc=True)
            .order("id", desc=True)
            .limit(limit)
        )
        rows = self._execute("reading progress", query, batch_id)
        return [
            ProgressSample(to_datetime(r["at"]), r["succeeded"], r["failed"])  # type: ignore[arg-type]
            for r in reversed(rows)
        ]

    # -- rows, for pages and exports -----------------------------------------

    def iter_rows(
        self,
        batch_id: str,
        *,
        status: RowStatus | None = None,
        page_rows: int = EXPORT_PAGE_ROWS,
    ) -> Iterator[StoredRow]:
        """Every row in index order; a page that the project caps is fine."""
        self.get_batch(batch_id)
        after = -1
        while True:
            query = (
                self.client.table("batch_results")
                .select("*")
                .eq("batch_id", batch_key(batch_id))
                .gt("row_index", after)
            )
            if status is not None:
                query = query.eq("status", status.value)
            query = query.order("row_index").limit(page_rows)
            rows = self._execute("reading rows", query, batch_id)
            if not rows:
                return
            yield from (stored_row_from_record(r) for r in rows)
            after = rows[-1]["row_index"]

    def latest_results(self, batch_id: str, *, limit: int = 20) -> list[StoredRow]:
        self.get_batch(batch_id)
        query = (
            self.client.table("batch_results")
            .select("*")
            .eq("batch_id", batch_key(batch_id))
            .in_("status", TERMINAL)
            .order("updated_at", desc=True)
            .limit(limit)
        )
        rows = self._execute("reading the latest results", query, batch_id)
        return [stored_row_from_record(r) for r in rows]

    def failure_counts(self, batch_id: str) -> dict[str, int]:
        args = {"p_batch_id": batch_key(batch_id)}
        rows = self._rpc("counting failures", "bulkgpt_failure_counts", args, batch_id)
        return {r["error_kind"]: int(r["failed_rows"]) for r in rows}

    def find_reusable(
        self, prompt_hashes: Sequence[str], *, batch_id: str | None = None
    ) -> dict[str, StoredRow]:
        key = as_uuid(batch_id)
        if batch_id is not None and key is None:
            return {}
        hashes = list(dict.fromkeys(prompt_hashes))
        found: dict[str, StoredRow] = {}
        for start in range(0, len(hashes), 500):
            args = {"p_hashes": hashes[start : start + 500], "p_batch_id": key}
            rows = self._rpc(
                "looking up earlier answers", "bulkgpt_find_reusable", args, key or ""
            )
            for row in rows:
                found.setdefault(row["prompt_hash"], stored_row_from_record(row))
        return found

    # -- prompt-lab runs -----------------------------------------------------

    def save_lab_run(self, run: Mapping[str, Any]) -> str:
        values = {"name": lab_run_name(run), "data": lab_run_data(run)}
        if run.get("id") is None:
            run_id = new_batch_id()
            record = {"id": run_id, "user_id": self.owner, **values}
            # Ignoring a duplicate id makes a retried insert harmless.
            request = self.client.table("lab_runs").upsert(
                without_nul(record),
                on_conflict="id",
                ignore_duplicates=True,
                returning=ReturnMethod.minimal,
            )
            self._execute("saving a lab run", request)
            return run_id
        key = lab_run_key(str(run["id"]))
        changes = {**without_nul(values), "updated_at": utcnow()}
        query = self.client.table("lab_runs").update(changes).eq("id", key)
        rows = self._execute("saving a lab run", self._owned(query).select("id"))
        if not rows:
            raise LabRunNotFound(str(run["id"]))
        return key

    def list_lab_runs(self, *, limit: int = 50) -> list[dict[str, Any]]:
        query = self._owned(self.client.table("lab_runs").select("*"))
        query = query.order("created_at", desc=True).order("id").limit(limit)
        rows = self._execute("listing lab runs", query)
        return [lab_run_from_record(r) for r in rows]

    def get_lab_run(self, run_id: str) -> dict[str, Any]:
        query = self.client.table("lab_runs").select("*").eq("id", lab_run_key(run_id))
        rows = self._execute("reading a lab run", self._owned(query))
        if not rows:
            raise LabRunNotFound(run_id)
        return lab_run_from_record(rows[0])

    def delete_lab_run(self, run_id: str) -> None:
        query = self.client.table("lab_runs").delete().eq("id", lab_run_key(run_id))
        rows = self._execute("deleting a lab run", self._owned(query).select("id"))
        if not rows:
            raise LabRunNotFound(run_id)


def _describe(exc: Exception) -> str:
    """Supabase's own words for a failure."""
    if isinstance(exc, APIError):
        parts = [exc.message or "no message", f"code {exc.code}"]
        parts += [str(p) for p in (exc.details, exc.hint) if p]
        return "; ".join(parts)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
