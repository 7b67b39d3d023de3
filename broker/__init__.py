"""Everything that knows Pub/Sub: emulator launcher, topology, transport, wire format.

broker imports nothing from train/, server/, streamer/ or configs/.
"""

from broker.errors import BrokerError

__all__ = ["BrokerError"]
