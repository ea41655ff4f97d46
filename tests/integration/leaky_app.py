"""A Celery app on ERDU's settings whose Redis transport leaks prefetch slots: a consumer that goes quiet.

Fault injection for the consumer guard's test: each channel takes three messages and then never polls
again, as a worker did when a broker crash left its books wrong. Only the test's worker uses it.
"""

from __future__ import annotations

import os
from pathlib import Path

from erdu_tasks.celery_ext import broker
from erdu_tasks.app import make_celery
from erdu_tasks.settings import get_settings

TAKES = 3


class LeakyQoS(broker.QoS):
    taken = 0

    def append(self, message, delivery_tag):
        self.taken += 1
        super().append(message, delivery_tag)

    def can_consume(self):
        return self.taken < TAKES and super().can_consume()


class LeakyChannel(broker.Channel):
    QoS = LeakyQoS


class Transport(broker.Transport):
    Channel = LeakyChannel


app = make_celery(get_settings())
app.conf.broker_transport = f"{__name__}:Transport"
app.conf.include = []


@app.task(name="leaky.touch", queue="monitor")
def touch(n: int) -> None:
    with open(Path(os.environ["LEAKY_DONE"]), "a") as out:
        out.write(f"{n}\n")
