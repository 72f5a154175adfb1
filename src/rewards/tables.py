"""The Core ``Table`` of each model, named once, for the set-based SQL of every module.

The ORM classes in :mod:`rewards.models` define the tables; set-based statements
read better against plain tables (``ledger.c.credit``), and the cast from the
declarative attribute is said here rather than in every module.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table

from rewards.models import (
    Account,
    LedgerAnomaly,
    LedgerChange,
    LedgerSyncState,
    NotificationDelivery,
    NotificationJobRun,
    NotificationLog,
    PointAllocation,
    PointLedger,
    PointLot,
    PreferenceChange,
    SendRateBucket,
    User,
)

users = cast(Table, User.__table__)
accounts = cast(Table, Account.__table__)
ledger = cast(Table, PointLedger.__table__)
notification_log = cast(Table, NotificationLog.__table__)
job_runs = cast(Table, NotificationJobRun.__table__)
lots = cast(Table, PointLot.__table__)
allocations = cast(Table, PointAllocation.__table__)
anomalies = cast(Table, LedgerAnomaly.__table__)
changes = cast(Table, LedgerChange.__table__)
sync_state = cast(Table, LedgerSyncState.__table__)
deliveries = cast(Table, NotificationDelivery.__table__)
send_rate = cast(Table, SendRateBucket.__table__)
preference_changes = cast(Table, PreferenceChange.__table__)
