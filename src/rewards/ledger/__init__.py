"""The points ledger: earn, redeem, expire, and what remains of each credit."""
