"""How the read models write a moment: RFC 3339 in UTC with microseconds, so text order is time order."""

from datetime import UTC, datetime


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
