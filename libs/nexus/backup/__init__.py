"""Backup and restore of the event log and Raw, with a proof manifest over the backup."""

from __future__ import annotations

from nexus.backup._backup import (
    BackupError,
    BackupSummary,
    create_backup,
    restore_backup,
    verify_backup,
)

__all__ = ["BackupError", "BackupSummary", "create_backup", "restore_backup", "verify_backup"]
