"""The PPS ledger: credit maths, the share journal, the store, payouts."""
