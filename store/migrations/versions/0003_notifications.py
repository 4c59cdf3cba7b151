"""merchant notifications"""

import sqlalchemy as sa
from alembic import op

from store.migrations import columns as col

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        col.integer("attempts"),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("ix_notifications_order_id", "notifications", ["order_id"])


def downgrade() -> None:
    op.drop_index("ix_notifications_order_id", table_name="notifications")
    op.drop_table("notifications")
