from __future__ import annotations

from django.db import models


class ReadyProbe(models.Model):
    """One row that /ready rewrites: a real, committed write, so a full disk or a held write lock
    makes the probe fail (a read, or a rolled-back write, would not notice)."""

    checked_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"ready probe at {self.checked_at}"
