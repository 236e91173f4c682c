"""The app's and the command line's side of Modal: launch, check and cancel.

A batch runs on Modal by spawning the deployed ``process_batch`` function
(:mod:`bulkgpt_core.modal_app`) with the batch's id; the call's id is stored
on the batch so that it can be cancelled later. Everything that talks to
Modal goes through :func:`_lookup_function` and :func:`_function_call`, so
tests replace the Modal client there, and every Modal exception is
translated into :class:`RunnerError` with a message that names the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .batches import Batch, BatchStatus
from .config import Settings
from .errors import RunnerError
from .jobs import resume_batch
from .stores import open_store
from .stores.base import Store

log = logging.getLogger(__name__)

PROCESS_BATCH = "process_batch"
DEPLOY_COMMAND = "modal deploy -m bulkgpt_core.modal_app"
LOCAL_FALLBACK = "Or set BULKGPT_RUNNER=local to run batches on this computer."
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})


# -- the Modal client, in one place


def _lookup_function(app_name: str, name: str) -> Any:
    """The deployed function, looked up lazily (tests replace this)."""
    import modal

    return modal.Function.from_name(app_name, name)


def _function_call(call_id: str) -> Any:
    """A spawned call by its id (tests replace this)."""
    import modal

    return modal.FunctionCall.from_id(call_id)


@contextlib.contextmanager
def _modal_errors(app_name: str) -> Iterator[None]:
    """Translate Modal's exceptions into RunnerError, naming the fix."""
    import modal.exception as mx

    try:
        yield
    except mx.NotFoundError as exc:
        raise RunnerError(_not_deployed(app_name)) from exc
    except (mx.AuthError, mx.PermissionDeniedError) as exc:
        raise RunnerError(
            f"Modal refused the credentials ({_first_line(exc)}): run "
            "`modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET "
            f"to a token of the workspace where the app is deployed. {LOCAL_FALLBACK}"
        ) from exc
    except (mx.ConnectionError, mx.ServiceError, OSError) as exc:
        raise RunnerError(
            f"Modal can't be reached ({_first_line(exc)}): check the internet "
            f"connection and try again. {LOCAL_FALLBACK}"
        ) from exc
    except mx.Error as exc:
        raise RunnerError(
            f"Modal failed: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc


def _not_deployed(app_name: str) -> str:
    return (
        f"The Modal app {app_name!r} is not deployed (or BULKGPT_MODAL_APP names "
        f"another app): deploy it with `{DEPLOY_COMMAND}`. {LOCAL_FALLBACK}"
    )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# -- checks before launch


def check_modal_ready(settings: Settings, *, look_up: bool = True) -> str | None:
    """What stops a batch from running on Modal, in plain words; None if nothing.

    Checks the store first (a container can't see a SQLite file or a
    database on localhost), then the Modal credentials, then (with
    ``look_up``) that the app is deployed and the credentials work.
    """
    problem = _store_problem(settings) or _credentials_problem()
    if problem or not look_up:
        return problem
    try:
        with _modal_errors(settings.modal_app):
            _lookup_function(settings.modal_app, PROCESS_BATCH).hydrate()
    except RunnerError as exc:
        return str(exc)
    return None


def _store_problem(settings: Settings) -> str | None:
    if settings.store == "sqlite":
        return (
            "Batches can't run on Modal with the SQLite store: a Modal container "
            "can't see a file on this computer. Use Supabase or PostgreSQL "
            "(BULKGPT_STORE=supabase or postgres, in the app's settings and in the "
            f"Modal secret). {LOCAL_FALLBACK}"
        )
    if settings.store == "postgres":
        name, url = "DATABASE_URL", settings.database_url
    else:
        name, url = "SUPABASE_URL", settings.supabase_url
    if not url:
        return f"{name} is not set: Modal needs the store's address. {LOCAL_FALLBACK}"
    if _host(url) in LOCAL_HOSTS:
        return (
            f"{name} points at this computer ({_host(url)}), which a Modal "
            "container can't reach: use an address reachable from the internet, "
            f"such as your Supabase project's. {LOCAL_FALLBACK}"
        )
    return None


def _host(url: str) -> str:
    try:
        return (urlparse(url).hostname or "").lower()
    except ValueError:
        return ""


def _credentials_problem(env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    if env.get("MODAL_TOKEN_ID") and env.get("MODAL_TOKEN_SECRET"):
        return None
    path = Path(env.get("MODAL_CONFIG_PATH") or Path.home() / ".modal.toml")
    if _config_has_token(path):
        return None
    return (
        "No Modal credentials were found: run `modal token new` (it writes "
        f"{path}), or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET. {LOCAL_FALLBACK}"
    )


def _config_has_token(path: Path) -> bool:
    """Whether Modal's config file has a profile with a token in it."""
    try:
        with path.open("rb") as handle:
            profiles = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return any(
        isinstance(p, dict) and p.get("token_id") and p.get("token_secret")
        for p in profiles.values()
    )


# -- launch and cancel


def spawn_on_modal(settings: Settings, batch_id: str) -> str:
    """Spawn the deployed ``process_batch`` for a batch; return the call's id.

    Raises :class:`RunnerError` naming the fix when the store or the
    credentials can't work on Modal, or the app is not deployed.
    """
    problem = check_modal_ready(settings, look_up=False)
    if problem:
        raise RunnerError(problem)
    with _modal_errors(settings.modal_app):
        function = _lookup_function(settings.modal_app, PROCESS_BATCH)
        call = function.spawn(batch_id)
        call_id = str(call.object_id)
    log.info("batch %s spawned on Modal as %s", batch_id, call_id)
    return call_id


def cancel_on_modal(call_id: str) -> bool:
    """Cancel a spawned call; False when Modal no longer knows it (it ended)."""
    import modal.exception as mx

    with _modal_errors(""):
        try:
            _function_call(call_id).cancel()
        except mx.NotFoundError:
            log.info("Modal call %s is gone already", call_id)
            return False
    log.info("Modal call %s cancelled", call_id)
    return True


def stop_modal_batch(store: Store, batch: Batch) -> Batch:
    """After the batch's flag is set, stop its Modal call and settle it.

    The cancelled call can't finish the batch any more, so this gives a
    ``cancelling`` batch its final ``cancelled`` status itself.
    """
    if batch.runner != "modal" or not batch.call_id:
        return batch
    cancel_on_modal(batch.call_id)
    if batch.status is BatchStatus.CANCELLING:
        store.requeue_running(batch.id)
        store.set_status(
            batch.id, BatchStatus.CANCELLED, only_from=(BatchStatus.CANCELLING,)
        )
        store.update_batch(batch.id, rows_per_second=0.0)
    return store.get_batch(batch.id)


# -- the command line


def prepare_for_launch(store: Store, batch_id: str) -> Batch:
    """Make a stored batch runnable again, or say why it is not."""
    batch = store.get_batch(batch_id)
    if batch.status in (BatchStatus.RUNNING, BatchStatus.CANCELLING):
        where = f"{batch.runner} {batch.call_id or ''}".strip()
        raise RunnerError(
            f"Batch {batch_id} is {batch.status.value} already ({where}): "
            "wait for it, or cancel it first."
        )
    return resume_batch(store, batch_id)


def launch_on_modal_command(settings: Settings, batch_id: str) -> str:
    """``bulkgpt launch BATCH_ID --runner modal``: spawn a stored batch on Modal.

    Returns the line to show; raises :class:`RunnerError` (or another
    :class:`BulkGPTError`) with the fix when it can't.
    """
    from .runners import start_worker

    settings = dataclasses.replace(settings, runner="modal")
    problem = check_modal_ready(settings)
    if problem:
        raise RunnerError(problem)
    with open_store(settings) as store:
        prepare_for_launch(store, batch_id)
        call_id = start_worker(settings, store, batch_id)
    return (
        f"batch {batch_id} launched on Modal app {settings.modal_app!r} "
        f"(call {call_id}); follow it with: python -m bulkgpt_core status {batch_id}"
    )
