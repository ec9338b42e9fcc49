"""Events produced by the kam service."""

from __future__ import annotations
