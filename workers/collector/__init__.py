"""The collector (docs/design.md, "Layers"): consumer, committer, supervisor, service.

``consumer``   reads the results stream, claims a dead collector's entries, acknowledges,
               replays after a Redis error;
``committer``  runs the commit stages (convfarm.commit) run by run, isolating bad runs and records;
``supervisor`` leases, forever rounds, adoption (timers), idle sealing, retention (run end);
``service``    the loop on a thread of a Celery worker (``--collector``);
``collector``  wires them together (:class:`Collector`).
"""

from workers.collector.collector import Collector
from workers.collector.committer import COLLECTOR_ERROR
from workers.collector.service import CollectorService
from workers.dedup import DUPLICATE, NEAR_DUPLICATE, content_hash

__all__ = ["COLLECTOR_ERROR", "DUPLICATE", "NEAR_DUPLICATE", "Collector", "CollectorService", "content_hash"]
