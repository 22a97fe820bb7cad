"""The initial schema: records and the chain head.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer, "sqlite")
GENESIS = "0" * 64


def upgrade() -> None:
    op.create_table(
        "inspection_records",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=False),
        sa.Column("inspection_id", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("station", sa.String(128)),
        sa.Column("camera", sa.String(128)),
        sa.Column("part_id", sa.String(256)),
        sa.Column("frame_sha256", sa.String(64)),
        sa.Column("decision", sa.String(32)),
        sa.Column("defect_class", sa.String(128)),
        sa.Column("scores", sa.Text),
        sa.Column("threshold", sa.Float),
        sa.Column("model_name", sa.String(128)),
        sa.Column("model_version", sa.String(128)),
        sa.Column("model_sha256", sa.String(64)),
        sa.Column("latency_ms", sa.Float),
        sa.Column("failsafe_reason", sa.Text),
        sa.Column("ref", sa.String(64)),
        sa.Column("actor", sa.String(128)),
        sa.Column("data", sa.Text),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_records_time", "inspection_records", ["time"])
    op.create_index("ix_records_station_time", "inspection_records", ["station", "time"])
    op.create_index("ix_records_part_id", "inspection_records", ["part_id"])
    op.create_index("ix_records_ref", "inspection_records", ["ref"])
    op.create_index("ix_records_frame_sha256", "inspection_records", ["frame_sha256"])
    op.create_index("ix_records_model_version", "inspection_records", ["model_version"])
    head = op.create_table(
        "inspection_chain_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", _SEQ, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS}])


def downgrade() -> None:
    op.drop_table("inspection_chain_head")
    op.drop_table("inspection_records")
