"""Events produced by the granulator service."""

from __future__ import annotations
