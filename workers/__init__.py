"""What runs on farm machines: the Celery app, the resident model, generation, the collector.

``celery -A workers worker ...`` finds the app here.
"""

from workers.app import app

__all__ = ["app"]
