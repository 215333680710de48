"""The ledger store's schema: its migrations (SQLite's dialect; ``pool.ledger.dialect``
rewrites them for PostgreSQL) and the share upserts ``Store.apply_batch`` runs."""

from __future__ import annotations

from pool.ledger.store_bans import BANS_MIGRATION
from pool.ledger.store_best import MIGRATION as BEST_SHARES_MIGRATION
from pool.ledger.store_chain_sim import CHAIN_SIM_MIGRATION
from pool.ledger.store_live import LIVE_MIGRATION
from pool.ledger.store_pplns import MIGRATION as PPLNS_MIGRATION
from pool.ledger.store_processes import PROCESSES_MIGRATION

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE workers (
        name TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        shares INTEGER NOT NULL DEFAULT 0,
        difficulty_sum REAL NOT NULL DEFAULT 0,
        credit_units INTEGER NOT NULL DEFAULT 0,
        fee_units INTEGER NOT NULL DEFAULT 0,
        first_share REAL,
        last_share REAL
    );
    CREATE TABLE balances (
        address TEXT PRIMARY KEY,
        credited_units INTEGER NOT NULL DEFAULT 0,
        paid_units INTEGER NOT NULL DEFAULT 0,
        pending_units INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE share_minutes (
        minute INTEGER NOT NULL,
        worker TEXT NOT NULL,
        shares INTEGER NOT NULL DEFAULT 0,
        difficulty_sum REAL NOT NULL DEFAULT 0,
        expected_blocks REAL NOT NULL DEFAULT 0,
        credit_units INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (minute, worker)
    );
    CREATE TABLE blocks (
        hash TEXT PRIMARY KEY,
        height INTEGER NOT NULL,
        worker TEXT NOT NULL,
        address TEXT NOT NULL,
        reward_sat INTEGER NOT NULL,
        network_difficulty REAL NOT NULL,
        found_at REAL NOT NULL,
        status TEXT NOT NULL,
        confirmations INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL
    );
    CREATE INDEX blocks_status ON blocks (status);
    CREATE TABLE payouts (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        status TEXT NOT NULL,
        txid TEXT,
        total_sat INTEGER NOT NULL,
        error TEXT
    );
    CREATE TABLE payout_items (
        payout_id TEXT NOT NULL REFERENCES payouts (id),
        address TEXT NOT NULL,
        amount_sat INTEGER NOT NULL,
        PRIMARY KEY (payout_id, address)
    );
    CREATE INDEX payout_items_address ON payout_items (address);
    """,
    # 2: indexes for the API's bounded reads (one worker's or address's history, newest blocks)
    """
    CREATE INDEX share_minutes_worker ON share_minutes (worker, minute);
    CREATE INDEX workers_address ON workers (address);
    CREATE INDEX blocks_height ON blocks (height);
    """,
    # 3: best share difficulty per worker, address and pool (pool/ledger/store_best.py)
    BEST_SHARES_MIGRATION,
    # 4: every process's heartbeat (whole-pool views with several writers)
    PROCESSES_MIGRATION,
    # 5: payout schemes per port: the PPLNS share log and block splits, blocks' scheme
    PPLNS_MIGRATION,
    # 6: bans shared by every process/instance writing this store (pool/ledger/store_bans.py)
    BANS_MIGRATION,
    # 7: the simulated chain's state shared by every process/instance (store_chain_sim.py)
    CHAIN_SIM_MIGRATION,
    # 8: every process's live workers, for the whole-pool API views (pool/ledger/store_live.py)
    LIVE_MIGRATION,
)
SCHEMA_VERSION = len(MIGRATIONS)
# Several processes commit into one store (server.processes > 1): a writer that finds the
# database locked waits this long for the other's transaction instead of failing at once.
BUSY_TIMEOUT_SECONDS = 5.0
WAL_SWITCH_ATTEMPTS = 100  # "database is locked" while another process creates the file


_UPSERT_WORKER = """
    INSERT INTO workers (name, address, shares, difficulty_sum, credit_units, fee_units,
                         first_share, last_share)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET
        address = excluded.address,
        shares = workers.shares + excluded.shares,
        difficulty_sum = workers.difficulty_sum + excluded.difficulty_sum,
        credit_units = workers.credit_units + excluded.credit_units,
        fee_units = workers.fee_units + excluded.fee_units,
        last_share = MAX(COALESCE(workers.last_share, 0), excluded.last_share)
"""
_UPSERT_BALANCE = """
    INSERT INTO balances (address, credited_units) VALUES (?, ?)
    ON CONFLICT (address) DO UPDATE SET
        credited_units = balances.credited_units + excluded.credited_units
"""
_UPSERT_MINUTE = """
    INSERT INTO share_minutes (minute, worker, shares, difficulty_sum, expected_blocks,
                               credit_units)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (minute, worker) DO UPDATE SET
        shares = share_minutes.shares + excluded.shares,
        difficulty_sum = share_minutes.difficulty_sum + excluded.difficulty_sum,
        expected_blocks = share_minutes.expected_blocks + excluded.expected_blocks,
        credit_units = share_minutes.credit_units + excluded.credit_units
"""
