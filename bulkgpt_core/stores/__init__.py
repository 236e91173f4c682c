"""Stores: where batches and their rows live. ``open_store`` picks one by settings."""

from __future__ import annotations

from ..config import Settings
from .base import Store
from .sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store", "open_store", "store_label"]


def open_store(settings: Settings, *, owner: str | None = None) -> Store:
    """The store the settings choose, or a ConfigError/StoreError naming the fix."""
    if settings.store == "postgres":
        settings.require("DATABASE_URL")
        from .postgres import PostgresStore

        return PostgresStore(settings.database_url, owner=owner)
    if settings.store == "supabase":
        settings.require("SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY")
        from .supabase import SupabaseStore

        return SupabaseStore(
            settings.supabase_url, settings.supabase_service_role_key, owner=owner
        )
    return SQLiteStore.in_data_dir(settings.data_dir, owner=owner)


def store_label(settings: Settings) -> str:
    """What the sidebar says about the store in use."""
    if settings.store == "postgres":
        return "PostgreSQL"
    if settings.store == "supabase":
        return "Supabase"
    return f"SQLite ({settings.data_dir})"
