"""webhook events: PSP webhook dedupe by event_id"""

import sqlalchemy as sa
from alembic import op

from store.migrations import columns as col

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        col.varchar("event_id", 128),
        col.varchar("type", 64),
        col.varchar("order_id", 64),
        col.varchar("payment_id", 64),
        col.integer("amount_cents"),
        col.varchar("outcome", 16),
        col.varchar("detail", 200, nullable=True),
        col.timestamp("received_at"),
        col.timestamp("processed_at", nullable=True),
        sa.PrimaryKeyConstraint("event_id"),
    )
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_events_order_id"), ["order_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_events_order_id"))
    op.drop_table("webhook_events")
