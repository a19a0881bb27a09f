"""Progress and summaries for the batch commands: a tqdm bar plus counters that survive Ctrl-C.

The counters live in a :class:`RunStats` created before the event loop starts, so when Ctrl-C
interrupts ``asyncio.run`` the command can still print what was done (a partial summary).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

__all__ = ["RunStats", "ProgressBar", "format_summary"]


@dataclass
class RunStats:
    """What a prefetch or export did so far.

    Attributes
    ----------
    unit
        ``"tiles"`` or ``"pages"``.
    total
        Units planned (None while unknown).
    done
        Units finished, whatever their outcome (fetched, cached, skipped, failed).
    fetched
        Units downloaded (a full response from the network).
    revalidated
        Units the cache held but had to confirm with the server (a conditional request
        answered 304: a request, but no download).
    cached
        Units already in the cache and fresh (no request).
    missing
        Tiles the server reported absent (404/204): transparent, not errors.
    failed
        Units that failed after retries; ``errors`` keeps the first few messages.
    features
        Features received (feature layers).
    requests, bytes
        HTTP requests made and bytes received, from the fetcher's metrics.
    """

    unit: str = "tiles"
    total: int | None = None
    done: int = 0
    fetched: int = 0
    revalidated: int = 0
    cached: int = 0
    missing: int = 0
    failed: int = 0
    features: int = 0
    requests: int = 0
    bytes: int = 0
    truncated: bool = False
    errors: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    interrupted: bool = False

    def add_error(self, message: str, keep: int = 5) -> None:
        """Count a failure and keep its message if fewer than ``keep`` are kept."""
        self.failed += 1
        if len(self.errors) < keep:
            self.errors.append(message)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def format_summary(stats: RunStats, *, action: str = "prefetch") -> str:
    """A few lines for the end of a run (or after Ctrl-C).

    >>> s = RunStats(unit="tiles", total=10, done=10, fetched=4, cached=6, requests=4, bytes=2048)
    >>> print(format_summary(s).splitlines()[0])  # doctest: +ELLIPSIS
    prefetch complete: 10/10 tiles in ...s: 4 fetched, 6 already cached, 0 failed
    """
    total = "?" if stats.total is None else str(stats.total)
    state = "interrupted" if stats.interrupted else "complete"
    if stats.failed and not stats.interrupted:
        state = "finished with failures"
    lines = [
        f"{action} {state}: {stats.done}/{total} {stats.unit} in {stats.elapsed:.1f}s: "
        f"{stats.fetched} fetched, {stats.cached} already cached, {stats.failed} failed"
    ]
    if stats.revalidated:
        lines[0] += f", {stats.revalidated} revalidated (304, not downloaded again)"
    extra = []
    if stats.missing:
        extra.append(f"{stats.missing} absent on the server (404/204)")
    if stats.unit == "pages" or stats.features:
        extra.append(f"{stats.features} features")
    if stats.truncated:
        extra.append("truncated by the layer's feature cap")
    extra.append(f"{stats.requests} HTTP requests, {stats.bytes / 2**20:.2f} MiB")
    lines.append("  " + "; ".join(extra))
    lines.extend(f"  error: {e}" for e in stats.errors)
    if stats.failed > len(stats.errors):
        lines.append(f"  ... and {stats.failed - len(stats.errors)} more errors")
    return "\n".join(lines)


class ProgressBar:
    """A tqdm bar on stderr showing done/total, rate, ETA and failures.

    Disabled (no output) when ``enabled`` is False, e.g. for ``--quiet``; tqdm itself prints
    plain lines when stderr is not a terminal.
    """

    def __init__(self, stats: RunStats, *, desc: str, enabled: bool = True) -> None:
        from tqdm import tqdm

        self.stats = stats
        self._bar = tqdm(
            total=stats.total,
            desc=desc,
            unit=f" {stats.unit}",
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
            mininterval=0.2,
        )

    def set_total(self, total: int | None) -> None:
        self.stats.total = total
        if total is not None and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()

    def advance(self, n: int = 1) -> None:
        """Record ``n`` more units done and refresh the failures/cached figures."""
        self._bar.update(n)
        self._bar.set_postfix(
            failed=self.stats.failed, cached=self.stats.cached, refresh=False
        )

    def close(self) -> None:
        self._bar.close()
