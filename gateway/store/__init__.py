"""The durable queue and message log (see ``store.py``; states and errors in ``states.py``; threads and
drivers in ``engine.py``)."""

from .migrations import MIGRATIONS, Migration
from .states import (FINAL, TRANSITIONS, WAITING, DuplicateMessage, Filed, IllegalTransition, ReceiptFiling,
                     SchemaError, StaleState, State, StoreError, UnknownMessage)
from .store import (LEASE_EXPIRED, MessageRecord, NewMessage, NewReceipt, Pickup, Receipt, Store, Transition,
                    utcnow)

__all__ = ["FINAL", "LEASE_EXPIRED", "MIGRATIONS", "TRANSITIONS", "WAITING", "DuplicateMessage", "Filed", "IllegalTransition",
           "MessageRecord", "Migration", "NewMessage", "NewReceipt", "Pickup", "Receipt", "ReceiptFiling", "SchemaError", "StaleState",
           "State", "Store", "StoreError", "Transition", "UnknownMessage", "utcnow"]
