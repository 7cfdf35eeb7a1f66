"""Run ids: what a hub (in process, or on Redis) names a run by."""

from __future__ import annotations

import secrets

__all__ = ["new_run_id"]


def new_run_id() -> str:
    """An unguessable run id: 192 random bits, URL-safe (32 characters)."""
    return secrets.token_urlsafe(24)
