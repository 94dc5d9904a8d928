import signal
import threading

from django.core.management.base import BaseCommand

from apps.executions.scheduler import SchedulerLoop


class Command(BaseCommand):
    help = "Run the scheduler loop. Only one instance leads at a time; starting two is safe."

    def handle(self, *args, **options):
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        self.stdout.write("Scheduler started; waiting for leadership.")
        SchedulerLoop().run(stop)
        self.stdout.write("Scheduler stopped.")
