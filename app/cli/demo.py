"""``mapstream demo``: run the embedded demo services (:mod:`mapstream.demo`) until Ctrl-C or
SIGTERM, printing their URLs."""

from __future__ import annotations

import sys

import click

from .params import DURATION, FRACTION
from .shared import one_line

__all__ = ["demo"]


@click.command()
@click.option("--latency", type=DURATION, default=None, help="Delay added to every response, e.g. 150ms [env MAPSTREAM_DEMO_LATENCY; default 0].")
@click.option("--fail-rate", type=FRACTION, default=None, help="Fraction of tile and item requests answered 503, e.g. 0.05 [env MAPSTREAM_DEMO_FAIL_RATE; default 0].")
def demo(latency, fail_rate) -> None:
    """Run the embedded demo services (OGC API Features and XYZ tiles) until Ctrl-C."""
    import signal
    import threading

    from mapstream.demo import start_demo
    from mapstream.layers.errors import LayersError

    try:
        services = start_demo(latency=latency, fail_rate=fail_rate)
    except (LayersError, OSError) as exc:
        raise click.ClickException(f"cannot start the demo services: {one_line(exc)}") from None
    stop = threading.Event()
    # SIGTERM stops as cleanly as Ctrl-C (process managers, test harnesses).
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        click.echo(f"OGC API Features: {services.ogc_url}")
        click.echo(f"XYZ tiles:        {services.tiles_url}")
        started = getattr(services, "startup_seconds", None)
        if started is not None:
            click.echo(f"started in {started:.2f}s; press Ctrl-C to stop", err=True)
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        services.stop()
        click.echo("demo services stopped", err=True)
