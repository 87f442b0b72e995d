"""Keyed click counting for counter.py, imported from a shipped module on the JobManager and the
TaskManagers' Python workers alike."""

from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

# The state's name and type are part of the savepoint: a compatible change keeps both.
COUNT_STATE = ValueStateDescriptor("count", Types.LONG())


def check_rate(rate):
    """Clicks per second of the generated source; refuses what cannot run."""
    if rate <= 0:
        raise ValueError(f"--rate must be positive, got {rate}")
    return rate


class CountPerUser(KeyedProcessFunction):
    """Emits `user=<id> clicks=<n>` (v1) or `<id>,<n>` (v2) with the user's running count."""

    def __init__(self, output_format):
        self.output_format = output_format
        self.count = None

    def open(self, runtime_context: RuntimeContext):
        self.count = runtime_context.get_state(COUNT_STATE)

    def process_element(self, value, ctx):
        count = (self.count.value() or 0) + 1
        self.count.update(count)
        user = ctx.get_current_key()
        if self.output_format == "v2":
            yield f"{user},{count}"
        else:
            yield f"user={user} clicks={count}"
